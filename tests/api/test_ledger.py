from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.carbon.methodology import CapCharge
from app.clock import local_day
from app.db import db
from app.errors import CapReached, ServiceUnavailable
from app.idempotency.models import IdempotencyKey
from app.ledger import service as ledger
from app.ledger import verify as verify_module
from app.ledger.models import Account, DailyEarning, LedgerEntry, PointLot
from app.ledger.verify import _local_year as local_year
from app.ledger.verify import verify_ledger
from tests.conftest import SHANGHAI, assert_error, count, without_append_only_guard


def earn(resident_id: int, points: int, ref: str, caps=()):
    entry = ledger.post(
        resident_id, points, kind="earn", source="test", activity="test:earn", ref_type="test", ref_id=ref,
        actor_type="system", actor_id=None, caps=caps,
    )  # fmt: skip
    db.session.commit()
    return entry


def spend(resident_id: int, points: int, ref: str):
    entry = ledger.post(
        resident_id, -points, kind="spend", source="exchange", ref_type="redemption", ref_id=ref,
        actor_type="resident", actor_id=resident_id,
    )  # fmt: skip
    db.session.commit()
    return entry


def lots_of(account_id: int) -> dict[int, int]:
    """Points credited per local year (the lots expiry consumes)."""
    rows = sa.select(PointLot.year, PointLot.credited).filter_by(account_id=account_id)
    return dict(db.session.execute(rows).all())


def test_post_moves_balance_and_chains(api):
    me = api.resident()
    first = earn(me.id, 30, "a")
    second = spend(me.id, 12, "r1")
    assert (first.seq, first.balance_after) == (1, 30)
    assert (second.seq, second.balance_after) == (2, 18)
    account = db.session.scalar(sa.select(Account).filter_by(resident_id=me.id))
    assert account.balance == 18
    assert account.lifetime_earned == 30
    assert account.last_hash == second.hash != first.hash
    assert verify_ledger().ok


def test_overspend_is_refused_and_writes_nothing(api):
    me = api.resident()
    earn(me.id, 5, "a")
    response = api.post(
        f"/residents/{me.id}/adjustments", as_=api.staff("admin"), json={"delta": -6, "reason": "测试扣减"}
    )
    error = assert_error(response, 409, "insufficient_points")
    assert error["details"] == {"balance": 5, "required": 6}
    assert count(LedgerEntry) == 1


def test_me_shows_balance_and_ledger_newest_first_with_cursor(api):
    me = api.resident()
    for i in range(25):
        earn(me.id, i + 1, f"e{i}")
    body = api.get("/me", as_=me).get_json()
    assert body["balance"] == sum(range(1, 26))
    assert body["lifetime_earned"] == body["balance"]
    page = api.get("/me/ledger?limit=10", as_=me).get_json()
    assert [e["delta"] for e in page["items"]] == list(range(25, 15, -1))
    seen = [e["id"] for e in page["items"]]
    while page["next"]:
        page = api.get(f"/me/ledger?limit=10&cursor={page['next']}", as_=me).get_json()
        seen += [e["id"] for e in page["items"]]
    assert len(seen) == len(set(seen)) == 25
    assert_error(api.get("/me/ledger?cursor=!!!", as_=me), 422, "validation_error")
    assert_error(api.get("/me/ledger?limit=101", as_=me), 422, "validation_error")


def test_a_resident_never_reads_another_ledger(api):
    alice, bob = api.resident(), api.resident()
    earn(alice.id, 7, "a")
    assert api.get("/me/ledger", as_=bob).get_json()["items"] == []
    assert api.get("/me", as_=bob).get_json()["balance"] == 0
    assert_error(api.get("/me/ledger", as_=api.staff("admin")), 403, "forbidden")
    assert_error(api.get("/me/ledger"), 401, "unauthorized")


def test_admin_adjustment_is_an_audited_entry(api):
    from app.audit.models import AuditEvent

    me, admin = api.resident(), api.staff("admin")
    response = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 40, "reason": "活动补发"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["kind"], body["source"], body["delta"], body["memo"]) == ("adjust", "admin", 40, "人工调整：活动补发")
    event = db.session.scalar(sa.select(AuditEvent).filter_by(action="ledger.adjust"))
    assert event.actor_id == admin.id
    assert event.details["reason"] == "活动补发"
    assert_error(api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 5}), 422, "validation_error")
    blank = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 5, "reason": " 补 "})
    assert "reason" in assert_error(blank, 422, "validation_error")["details"]["fields"]  # one character once trimmed
    assert_error(
        api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 0, "reason": "零"}),
        422,
        "validation_error",
    )
    worker = api.staff("worker", community_id=1)
    assert_error(
        api.post(f"/residents/{me.id}/adjustments", as_=worker, json={"delta": 5, "reason": "x y"}), 403, "forbidden"
    )
    assert_error(
        api.post("/residents/999999/adjustments", as_=admin, json={"delta": 5, "reason": "不存在"}), 404, "not_found"
    )


def test_reverse_once_with_reason(api):
    me, admin = api.resident(), api.staff("admin")
    entry = earn(me.id, 20, "a")
    response = api.post(f"/ledger/entries/{entry.id}/reverse", as_=admin, json={"reason": "重复发放"})
    assert response.status_code == 201
    assert response.get_json()["delta"] == -20
    again = api.post(f"/ledger/entries/{entry.id}/reverse", as_=admin, json={"reason": "重复发放"})
    assert_error(again, 409, "invalid_state")
    me_now = api.get("/me", as_=me).get_json()
    assert me_now["balance"] == 0
    assert me_now["lifetime_earned"] == 0  # a reversed earn was never really earned
    report = verify_ledger()
    assert report.ok, report.problems


def test_reversing_an_earn_already_spent_is_refused(api):
    me, admin = api.resident(), api.staff("admin")
    entry = earn(me.id, 20, "a")
    spend(me.id, 15, "r")
    response = api.post(f"/ledger/entries/{entry.id}/reverse", as_=admin, json={"reason": "撤销"})
    assert_error(response, 409, "insufficient_points")


def test_idempotent_adjustment_replays_and_conflicts(api):
    me, admin = api.resident(), api.staff("admin")
    headers = {"Idempotency-Key": "adj-1"}
    body = {"delta": 15, "reason": "补发"}
    first = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers)
    second = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert api.get("/me", as_=me).get_json()["balance"] == 15
    other = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={**body, "delta": 16}, headers=headers)
    # said to whoever pressed the button, not to the developer who chose the key
    conflict = assert_error(other, 409, "idempotency_conflict")
    assert conflict["message"] == "该操作已经提交过，但这次的内容不同：请刷新后重新操作"
    too_long = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers={"Idempotency-Key": "k" * 65})
    assert_error(too_long, 422, "validation_error")


def test_a_retry_whose_json_says_the_same_in_another_order_or_spacing_replays(api):
    """A client's serialiser may order keys differently on a retry: the same request, not a conflicting one."""
    me, admin = api.resident(), api.staff("admin")
    headers = {"Idempotency-Key": "adj-order"}
    first, retry = '{"delta":10,"reason":"测试补发"}', '{ "reason": "测试补发",\n  "delta": 10 }'
    path = f"/residents/{me.id}/adjustments"
    answers = [
        api.post(path, as_=admin, data=raw, content_type="application/json", headers=headers) for raw in (first, retry)
    ]
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[1].headers["Idempotent-Replayed"] == "true"
    assert api.get("/me", as_=me).get_json()["balance"] == 10


def on_the_wire(key: str) -> str:
    """A header as a WSGI server hands it over: its UTF-8 bytes read as Latin-1."""
    return key.encode().decode("latin-1")


def test_an_idempotency_key_may_be_any_visible_text_as_documented(api):
    """The OpenAPI pattern allows any visible characters; a client sends them as UTF-8."""
    me, admin = api.resident(), api.staff("admin")
    body, headers = {"delta": 15, "reason": "补发"}, {"Idempotency-Key": on_the_wire("重试-1")}
    first = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers)
    again = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers)
    assert first.status_code == again.status_code == 201, first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.get("/me", as_=me).get_json()["balance"] == 15
    assert db.session.scalar(sa.select(IdempotencyKey.key).filter_by(key="重试-1")) == "重试-1"


@pytest.mark.parametrize(
    "key", ["", "tab\there", "bell\x07", "del\x7f", on_the_wire("重试\x07"), on_the_wire("长" * 65)]
)
def test_an_idempotency_key_that_is_empty_or_has_a_control_character_is_refused(api, key):
    me, admin = api.resident(), api.staff("admin")
    body = {"delta": 15, "reason": "补发"}
    response = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers={"Idempotency-Key": key})
    assert "Idempotency-Key" in assert_error(response, 422, "validation_error")["details"]["fields"]
    assert api.get("/me", as_=me).get_json()["balance"] == 0


def test_an_idempotency_key_reused_for_another_resident_is_a_conflict_not_their_answer(api):
    """The same key and body sent to another resident's path is another request: neither the first resident's answer
    replayed nor a second adjustment."""
    first, second, admin = api.resident(), api.resident(), api.staff("admin")
    headers = {"Idempotency-Key": "adj-same-body"}
    body = {"delta": 15, "reason": "补发"}
    assert api.post(f"/residents/{first.id}/adjustments", as_=admin, json=body, headers=headers).status_code == 201
    other = api.post(f"/residents/{second.id}/adjustments", as_=admin, json=body, headers=headers)
    assert_error(other, 409, "idempotency_conflict")
    assert api.get("/me", as_=first).get_json()["balance"] == 15
    assert api.get("/me", as_=second).get_json()["balance"] == 0


def test_an_idempotent_retry_whose_json_lists_the_fields_in_another_order_is_replayed(api):
    """Requests are compared as JSON, not as bytes: a client that rebuilt the same body gets the first answer."""
    me, admin = api.resident(), api.staff("admin")
    headers = {"Idempotency-Key": "adj-reordered"}
    path, json = f"/residents/{me.id}/adjustments", "application/json"
    first = api.post(path, as_=admin, data='{"delta": 15, "reason": "补发"}', content_type=json, headers=headers)
    again = api.post(path, as_=admin, data='{"reason": "补发", "delta": 15}', content_type=json, headers=headers)
    assert first.status_code == again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert api.get("/me", as_=me).get_json()["balance"] == 15


def test_an_adjustment_retried_after_its_key_was_pruned_is_refused_not_applied_again(api, app, clock):
    from app.idempotency.service import prune_keys

    me, admin = api.resident(), api.staff("admin")
    headers = {"Idempotency-Key": "adj-monthly-2026-06"}
    body = {"delta": 15, "reason": "补发"}
    assert api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers).status_code == 201
    clock.advance(days=app.config["IDEMPOTENCY_KEEP_DAYS"] + 1)
    assert prune_keys() == 1
    retry = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers)
    assert_error(retry, 409, "duplicate")
    assert api.get("/me", as_=me).get_json()["balance"] == 15
    # the key is the caller's: another admin's key of the same name is another adjustment
    other_admin = api.staff("admin")
    assert api.post(f"/residents/{me.id}/adjustments", as_=other_admin, json=body, headers=headers).status_code == 201
    assert api.get("/me", as_=me).get_json()["balance"] == 30


def test_a_refused_request_keeps_its_answer_under_its_key_and_changes_nothing(api):
    """API.md: a retry with the same key and body returns the first status and body and changes nothing; the same
    key with another body is a conflict. A refusal is an answer like any other."""
    me, admin = api.resident(), api.staff("admin")
    headers = {"Idempotency-Key": "retry-me"}
    body = {"delta": -10, "reason": "扣减"}
    first = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers)
    assert_error(first, 409, "insufficient_points")
    earn(me.id, 10, "a")
    retry = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=headers)
    assert retry.status_code == 409
    assert retry.get_json() == first.get_json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert api.get("/me", as_=me).get_json()["balance"] == 10  # the retry changed nothing
    other = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={**body, "delta": -5}, headers=headers)
    assert_error(other, 409, "idempotency_conflict")
    fresh = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers={"Idempotency-Key": "again"})
    assert fresh.status_code == 201  # a new key is a new request
    assert api.get("/me", as_=me).get_json()["balance"] == 0


def test_a_refusal_keeps_nothing_of_what_its_use_case_wrote(api, app):
    """The refused use case's writes are undone to a savepoint taken after the key; the kept refusal is all that
    lands."""
    from flask import jsonify

    from app.db import commit
    from app.errors import CapReached
    from app.idempotency.models import IdempotencyKey
    from app.idempotency.service import run_idempotent
    from app.people.models import Community

    def writes_then_refuses():
        db.session.add(Community(code="half-written", name="写了一半"))
        db.session.flush()
        raise CapReached()

    def writes_then_answers_a_refusal():
        db.session.add(Community(code="half-answered", name="写了一半"))
        db.session.flush()
        response = jsonify({"error": {"code": "cap_reached", "message": "已达到今日积分上限", "details": {}}})
        response.status_code = 409
        return response

    for key, view in (("half", writes_then_refuses), ("half-answered", writes_then_answers_a_refusal)):
        request = {"method": "POST", "json": {"n": 1}, "headers": {"Idempotency-Key": key}}
        with app.test_request_context("/api/v1/anything", **request):
            assert run_idempotent("staff:1", view).status_code == 409
            commit()
        db.session.rollback()
        assert db.session.scalar(sa.select(IdempotencyKey.status_code).filter_by(key=key)) == 409
    assert count(Community, code="half-written") == 0
    assert count(Community, code="half-answered") == 0


def test_a_refused_use_case_does_not_run_what_was_to_follow_its_commit(api, app):
    """`after_commit` actions (cache clears) belong to writes; a refusal undoes the writes, and so the actions."""
    from app.db import after_commit
    from app.errors import CapReached
    from app.idempotency.service import run_idempotent

    ran = []

    def clears_then_refuses():
        after_commit(lambda: ran.append("cleared"))
        raise CapReached()

    request = {"method": "POST", "json": {"n": 1}, "headers": {"Idempotency-Key": "no-after"}}
    with app.test_request_context("/api/v1/anything", **request):
        assert run_idempotent("staff:1", clears_then_refuses).status_code == 409
    assert ran == []


@pytest.mark.parametrize("status", [401, 429, 500, 503])
def test_an_answer_that_says_nothing_of_the_request_is_not_kept(api, app, status):
    """Not yet authenticated, asked too often, or the server failed: the same key works once that has passed."""
    from flask import jsonify

    from app.db import commit
    from app.idempotency.models import IdempotencyKey
    from app.idempotency.service import run_idempotent

    def answer(code: int):
        commit()  # as every use case ends: deferred, so nothing lands before the answer is judged
        response = jsonify({"status": code})
        response.status_code = code
        return response

    request = {"method": "POST", "json": {"n": 1}, "headers": {"Idempotency-Key": f"failed-{status}"}}
    with app.test_request_context("/api/v1/anything", **request):
        assert run_idempotent("staff:1", answer, status).status_code == status
    with app.test_request_context("/api/v1/anything", **request):
        retry = run_idempotent("staff:1", answer, 201)
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert db.session.scalar(sa.select(IdempotencyKey.status_code)) == 201


def test_a_rate_limit_raised_inside_is_not_kept_either(api, app):
    from app.errors import RateLimited
    from app.idempotency.models import IdempotencyKey
    from app.idempotency.service import run_idempotent

    def limited():
        raise RateLimited()

    request = {"method": "POST", "json": {"n": 1}, "headers": {"Idempotency-Key": "limited"}}
    with app.test_request_context("/api/v1/anything", **request), pytest.raises(RateLimited):
        run_idempotent("staff:1", limited)
    db.session.rollback()
    assert count(IdempotencyKey, key="limited") == 0


def test_caps_count_the_local_day_not_the_utc_day(api, clock):
    me = api.resident()
    cap = [CapCharge("test:earn", 10, 10, "测试")]
    clock.set(datetime(2026, 6, 15, 23, 59, tzinfo=SHANGHAI))
    earn(me.id, 10, "late", caps=cap)
    clock.set(datetime(2026, 6, 16, 0, 1, tzinfo=SHANGHAI))  # same UTC date (2026-06-15), next local day
    earn(me.id, 10, "early", caps=cap)
    with pytest.raises(CapReached) as refused:
        earn(me.id, 1, "more", caps=[CapCharge("test:earn", 1, 10, "测试")])
    db.session.rollback()
    assert refused.value.code == "cap_reached"
    assert "10" in refused.value.message
    assert api.get("/me", as_=me).get_json()["balance"] == 20


def test_one_refused_counter_refuses_the_whole_posting(api):
    """The activity counter has room but the daily total does not: no entry, no head move, the right error."""
    me = api.resident()
    earn(me.id, 15, "first", caps=[CapCharge("test:earn", 15, 50, "测试"), CapCharge("daily", 15, 20, "每日合计")])
    with pytest.raises(CapReached) as refused:
        ledger.post(
            me.id, 10, kind="earn", source="test", activity="test:earn", ref_type="test", ref_id="second",
            actor_type="system", actor_id=None,
            caps=[CapCharge("test:earn", 10, 50, "测试"), CapCharge("daily", 10, 20, "每日合计")],
        )  # fmt: skip
    first = {"cap": 20, "used": 15, "activity": "daily", "points": 10, "remaining": 5}
    assert refused.value.details == first | {"refused": ["daily"], "counters": [first]}
    assert refused.value.message == "每日合计今天还可得 5 积分（每天上限 20），本次 10 积分超出"
    # Before the rollback: nothing but the accepted counter moved (the rollback undoes that one).
    account_id = db.session.scalar(sa.select(Account.id).where(Account.resident_id == me.id))
    head = db.session.execute(
        sa.select(Account.balance, Account.last_seq, Account.lifetime_earned).where(Account.id == account_id)
    ).one()
    assert tuple(head) == (15, 1, 15)
    assert db.session.scalar(sa.select(sa.func.count()).where(LedgerEntry.account_id == account_id)) == 1
    assert db.session.scalar(sa.select(PointLot.credited).where(PointLot.account_id == account_id)) == 15
    counters = dict(db.session.execute(sa.select(DailyEarning.activity, DailyEarning.points)).all())
    assert counters == {"test:earn": 25, "daily": 15}
    db.session.rollback()
    account = db.session.scalar(sa.select(Account).where(Account.resident_id == me.id))
    assert (account.balance, account.last_seq) == (15, 1)
    assert dict(db.session.execute(sa.select(DailyEarning.activity, DailyEarning.points)).all())["test:earn"] == 15
    earn(me.id, 5, "fits", caps=[CapCharge("test:earn", 5, 50, "测试"), CapCharge("daily", 5, 20, "每日合计")])
    assert verify_ledger().ok


def test_a_daily_cap_changed_during_the_day_counts_from_the_next_charge(api):
    """A new rule version can raise, lower, lift or impose a daily cap in the middle of a day: each charge is judged
    against the cap in force for it (not the one stored with the counter at its last charge), on what the day has
    counted so far; and the counter keeps the cap of its last charge."""
    me = api.resident()

    def charge(points: int, cap: int | None, ref: str) -> None:
        earn(me.id, points, ref, caps=[CapCharge("test:earn", points, cap, "测试")])

    def refused(points: int, cap: int | None, ref: str) -> dict:
        with pytest.raises(CapReached) as refusal:
            charge(points, cap, ref)
        db.session.rollback()
        return refusal.value.details

    def counter() -> tuple[int, int | None]:
        return tuple(db.session.execute(sa.select(DailyEarning.points, DailyEarning.cap)).one())

    charge(15, 20, "first")
    charge(10, 30, "raised")  # 25 fits the raised cap, though not the 20 it was counted under
    assert counter() == (25, 30)
    lowered = {"cap": 25, "used": 25, "activity": "test:earn", "points": 1, "remaining": 0}
    assert refused(1, 25, "lowered") == lowered | {"refused": ["test:earn"], "counters": [lowered]}
    charge(10, None, "lifted")  # counted, never refused
    assert counter() == (35, None)
    assert refused(10, 40, "imposed")["remaining"] == 5
    charge(5, 40, "fits")
    assert counter() == (40, 40)
    assert api.get("/me", as_=me).get_json()["balance"] == 40
    assert verify_ledger().ok


@pytest.mark.parametrize("both", [True, False], ids=["ref-and-claim", "neither"])
def test_a_posting_refers_to_a_ref_or_a_claim_exactly(api, both):
    me = api.resident()
    extra = {"ref_id": "r1", "claim": ledger.Claim(sa.insert(LedgerEntry), {}, RuntimeError)} if both else {}
    with pytest.raises(ValueError, match="exactly one"):
        ledger.post(me.id, 5, kind="earn", source="test", ref_type="test", actor_type="system", actor_id=None, **extra)


def test_two_charges_to_one_counter_are_a_programming_error(api):
    me = api.resident()
    with pytest.raises(ValueError, match="one charge per daily counter"):
        earn(me.id, 2, "twice", caps=[CapCharge("daily", 1, 20, "每日合计"), CapCharge("daily", 1, 20, "每日合计")])


def test_a_charge_bigger_than_its_cap_is_refused_by_name(api):
    me = api.resident()
    with pytest.raises(CapReached) as refused:
        earn(me.id, 30, "huge", caps=[CapCharge("test:earn", 30, 50, "测试"), CapCharge("daily", 30, 20, "每日合计")])
    db.session.rollback()
    first = {"cap": 20, "used": 0, "activity": "daily", "points": 30, "remaining": 20}
    assert refused.value.details == first | {"refused": ["daily"], "counters": [first]}


def expire_on(runner, clock, day: str):
    """`flask points expire --as-of day`, run on that day (a later one is refused)."""
    clock.set(datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=SHANGHAI))
    return runner.invoke(args=["points", "expire", "--as-of", day])


def test_expiry_is_refused_for_a_day_still_to_come(api, app, clock):
    """A typo in a cron line, or a trial run, must not expire a year's points early (its credits could no longer be
    reversed either)."""
    me = api.resident()
    clock.set(datetime(2026, 12, 2, 12, tzinfo=SHANGHAI))
    earn(me.id, 74, "y2026")
    result = app.test_cli_runner().invoke(args=["points", "expire", "--as-of", "2028-01-01"])
    assert result.exit_code == 2
    assert "2028-01-01 is after today (2026-12-02): nothing was expired" in result.output
    assert api.get("/me", as_=me).get_json()["balance"] == 74
    assert count(LedgerEntry) == 1
    assert "'entries': 0" in app.test_cli_runner().invoke(args=["points", "expire", "--as-of", "2026-12-02"]).output


def test_expiry_oldest_first_and_idempotent(api, app, clock):
    me = api.resident()
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 100, "y2025")
    clock.set(datetime(2026, 2, 1, 12, tzinfo=SHANGHAI))
    spend(me.id, 30, "r1")  # consumes 2025 points first
    earn(me.id, 50, "y2026")
    body = api.get("/me", as_=me).get_json()
    assert body["expiring_points"] == 70
    assert body["expiring_at"] == "2026-12-31T16:00:00+00:00"  # 2027-01-01 00:00 Shanghai
    assert body["expiring_on"] == "2026-12-31"  # the last day they can be spent, not that midnight's date
    runner = app.test_cli_runner()
    assert "'entries': 0" in expire_on(runner, clock, "2026-12-31").output
    result = expire_on(runner, clock, "2027-01-01")
    assert result.exit_code == 0
    assert "'entries': 1" in result.output
    assert "'points': 70" in result.output
    again = expire_on(runner, clock, "2027-01-02")
    assert "'entries': 0" in again.output
    clock.set(datetime(2027, 1, 2, tzinfo=SHANGHAI))
    body = api.get("/me", as_=me).get_json()
    assert body["balance"] == 50
    assert body["expiring_points"] == 50
    assert body["expiring_at"] == "2027-12-31T16:00:00+00:00"
    assert body["expiring_on"] == "2027-12-31"
    kinds = [e["kind"] for e in api.get("/me/ledger", as_=me).get_json()["items"]]
    assert kinds == ["expire", "earn", "spend", "earn"]
    assert verify_ledger().ok


def test_a_spend_bigger_than_the_oldest_lot_empties_it_and_takes_the_rest_from_the_next(api, clock):
    me = api.resident()
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 100, "y2025")
    clock.set(datetime(2026, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 50, "y2026")
    spend(me.id, 120, "r1")  # all 100 of 2025, then 20 of 2026's 50
    body = api.get("/me", as_=me).get_json()
    # 2025 has nothing left (not minus 20), so what expires next is 2026's 30, when 2028 begins in Shanghai
    assert (body["balance"], body["expiring_points"], body["expiring_at"]) == (30, 30, "2027-12-31T16:00:00+00:00")


def test_taking_back_an_earning_empties_its_own_years_lot(api, clock):
    me, admin = api.resident(), api.staff("admin")
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 100, "y2025")
    clock.set(datetime(2026, 3, 1, 12, tzinfo=SHANGHAI))
    wrong = earn(me.id, 50, "y2026")
    assert api.post(f"/ledger/entries/{wrong.id}/reverse", as_=admin, json={"reason": "误发"}).status_code == 201
    body = api.get("/me", as_=me).get_json()
    # the 2025 points are all still there, and still expire when 2027 begins
    assert (body["balance"], body["expiring_points"]) == (100, 100)
    assert body["expiring_at"] == "2026-12-31T16:00:00+00:00"
    assert lots_of(wrong.account_id) == {2025: 100, 2026: 0}


def test_last_years_earning_taken_back_this_year_empties_last_years_lot_and_a_spend_writes_no_lot(api, clock):
    """The reversal's lot is the credit's year, not the year it is reversed in; a debit credits no lot at all (not
    even an empty one for this year): lots hold only what was earned, per year."""
    me, admin = api.resident(), api.staff("admin")
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 100, "y2025")
    wrong = earn(me.id, 30, "y2025-wrong")
    clock.set(datetime(2026, 3, 1, 12, tzinfo=SHANGHAI))
    spend(me.id, 20, "r1")

    assert lots_of(wrong.account_id) == {2025: 130}
    assert api.post(f"/ledger/entries/{wrong.id}/reverse", as_=admin, json={"reason": "误发"}).status_code == 201
    assert lots_of(wrong.account_id) == {2025: 100}
    body = api.get("/me", as_=me).get_json()
    # what is left (80) is all 2025's, and expires when 2027 begins in Shanghai
    assert (body["balance"], body["expiring_points"], body["expiring_at"]) == (80, 80, "2026-12-31T16:00:00+00:00")
    assert verify_ledger().ok


def test_points_earned_before_8am_on_new_years_day_are_the_new_local_years(api, clock):
    """2026-01-01 07:00 in Shanghai is still 2025 in UTC: the points are 2026's, expire when 2028 begins, and taking
    them back empties 2026's lot."""
    me, admin = api.resident(), api.staff("admin")
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 100, "y2025")
    clock.set(datetime(2026, 1, 1, 7, tzinfo=SHANGHAI))
    early = earn(me.id, 50, "new-year")

    assert lots_of(early.account_id) == {2025: 100, 2026: 50}
    assert api.post(f"/ledger/entries/{early.id}/reverse", as_=admin, json={"reason": "误发"}).status_code == 201
    assert lots_of(early.account_id) == {2025: 100, 2026: 0}
    body = api.get("/me", as_=me).get_json()
    assert (body["balance"], body["expiring_points"], body["expiring_at"]) == (100, 100, "2026-12-31T16:00:00+00:00")


def test_a_spend_given_back_in_a_new_year_keeps_its_points_expiry(api, clock):
    me = api.resident()
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 100, "y2025")
    clock.set(datetime(2025, 12, 31, 20, tzinfo=SHANGHAI))
    spent = spend(me.id, 40, "r1")
    clock.set(datetime(2026, 1, 1, 9, tzinfo=SHANGHAI))
    ledger.reverse(
        spent, kind="refund", ref_type="redemption", ref_id="r1", actor_type="system", actor_id=None, memo="取消兑换"
    )
    db.session.commit()
    body = api.get("/me", as_=me).get_json()
    # the 40 points were 2025's: given back, they expire with the rest of 2025's, not a year later
    assert (body["balance"], body["expiring_points"]) == (100, 100)
    assert body["expiring_at"] == "2026-12-31T16:00:00+00:00"


def test_points_given_back_from_a_year_already_expired_expire_again(api, app, clock):
    me, admin = api.resident(), api.staff("admin")
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 150, "y2025")
    spent = spend(me.id, 100, "r1")
    runner = app.test_cli_runner()
    assert "'points': 50" in expire_on(runner, clock, "2027-01-01").output
    clock.set(datetime(2027, 1, 2, 12, tzinfo=SHANGHAI))
    assert api.post(f"/ledger/entries/{spent.id}/reverse", as_=admin, json={"reason": "误扣"}).status_code == 201
    assert api.get("/me", as_=me).get_json()["balance"] == 100
    # the 100 points were 2025's, which expired when 2027 began: the next run takes them too, and runs again cleanly
    again = expire_on(runner, clock, "2027-01-03")
    assert again.exit_code == 0, again.output
    assert "'points': 100" in again.output
    assert "'entries': 0" in expire_on(runner, clock, "2027-01-04").output
    expiries = db.session.scalars(
        sa.select(LedgerEntry.ref_id).where(LedgerEntry.kind == "expire").order_by(LedgerEntry.seq)
    )
    assert list(expiries) == ["2025", "2025.5"]
    assert api.get("/me", as_=me).get_json()["balance"] == 0
    assert verify_ledger().ok


def test_an_earning_whose_year_has_expired_is_not_taken_back_twice(api, app, clock):
    me, admin = api.resident(), api.staff("admin")
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    wrong = earn(me.id, 100, "y2025-wrong")
    clock.set(datetime(2026, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 150, "y2026")
    runner = app.test_cli_runner()
    assert "'points': 100" in expire_on(runner, clock, "2027-01-01").output
    clock.set(datetime(2027, 1, 5, 12, tzinfo=SHANGHAI))

    response = api.post(f"/ledger/entries/{wrong.id}/reverse", as_=admin, json={"reason": "误发"})
    error = assert_error(response, 409, "invalid_state")
    assert error["details"] == {"year": 2025}
    assert "人工调整" in error["message"]
    # expiry already took those 100 points: the 150 earned in 2026 stay whole
    assert api.get("/me", as_=me).get_json()["balance"] == 150
    assert db.session.scalar(sa.select(sa.func.count()).where(LedgerEntry.reverses_id == wrong.id)) == 0
    assert verify_ledger().ok


def test_an_earning_spent_before_its_year_expired_is_still_taken_back(api, app, clock):
    me, admin = api.resident(), api.staff("admin")
    clock.set(datetime(2025, 3, 1, 12, tzinfo=SHANGHAI))
    wrong = earn(me.id, 100, "y2025-wrong")
    spend(me.id, 100, "r1")
    clock.set(datetime(2026, 3, 1, 12, tzinfo=SHANGHAI))
    earn(me.id, 150, "y2026")
    runner = app.test_cli_runner()
    output = expire_on(runner, clock, "2027-01-01").output
    assert "'accounts': 0" in output  # no account holds 2025 points any more
    assert "'entries': 0" in output
    clock.set(datetime(2027, 1, 5, 12, tzinfo=SHANGHAI))
    # nothing of 2025 expired: the mistaken points were spent, so they are taken back from what is left
    assert api.post(f"/ledger/entries/{wrong.id}/reverse", as_=admin, json={"reason": "误发"}).status_code == 201
    assert api.get("/me", as_=me).get_json()["balance"] == 50
    assert verify_ledger().ok


def test_verify_names_the_altered_entry(api, app):
    alice, bob = api.resident(), api.resident()
    earn(alice.id, 10, "a")
    target = earn(bob.id, 20, "b")
    earn(bob.id, 5, "c")
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["ledger", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "checked 3 entries" in ok.output
    without_append_only_guard("UPDATE ledger_entries SET delta = delta + 100 WHERE id = :id", params={"id": target.id})
    bad = runner.invoke(args=["ledger", "verify"])
    assert bad.exit_code == 1
    assert f"first bad entry {target.id}" in bad.output


def test_an_admins_reason_is_kept_beside_the_chain_so_that_it_can_be_erased(api):
    """What an admin types may name a person, and a resident who closes their account has their personal data erased
    (PIPL): the reason is kept outside the hashed entry, which holds only its salted digest, so the text can be
    erased and the chain still verifies, while any other change to it fails the check."""
    from app.ledger.models import EntryReason

    me, admin = api.resident(), api.staff("admin")
    reason = "代张三（13800000000）补发 6 月投递积分"
    adjusted = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 40, "reason": reason})
    assert adjusted.status_code == 201, adjusted.get_json()
    assert adjusted.get_json()["memo"] == f"人工调整：{reason}"
    entry = db.session.get(LedgerEntry, adjusted.get_json()["id"])
    assert (entry.memo, entry.reason) == ("人工调整", reason)
    assert reason not in "".join(str(value) for value in db.session.execute(
        sa.select(LedgerEntry.__table__).where(LedgerEntry.id == entry.id)).one())  # fmt: skip
    reversed_ = api.post(f"/ledger/entries/{entry.id}/reverse", as_=admin, json={"reason": "张三本人已领取"})
    assert reversed_.get_json()["memo"] == "冲正：张三本人已领取"
    memos = [item["memo"] for item in api.get("/me/ledger", as_=me).get_json()["items"]]
    assert memos == ["冲正：张三本人已领取", f"人工调整：{reason}"]
    assert verify_ledger().ok

    kept = db.session.get(EntryReason, entry.id)
    kept.text = "另一个理由"
    db.session.commit()
    report = verify_ledger()
    assert report.first_bad_entry == entry.id
    assert "reason" in report.problems[0]

    kept.text = None  # blanked, but the salt kept: a short reason could be found again by guessing
    db.session.commit()
    assert verify_ledger().first_bad_entry == entry.id
    kept.salt = None  # erased, as closing an account will: the entry stands, and says only what kind it is
    db.session.commit()
    assert verify_ledger().ok
    db.session.expire_all()  # as a new request's session would read it
    assert api.get("/me/ledger", as_=me).get_json()["items"][1]["memo"] == "人工调整"

    db.session.delete(kept)  # a reason removed, not erased
    db.session.commit()
    report = verify_ledger()
    assert report.first_bad_entry == entry.id


def test_each_verification_is_kept_with_its_result(api, app, clock):
    """The nightly run's result is what the admin site shows: a city's ledger is not read inside a request."""
    from app.ledger.models import LedgerCheck

    me = api.resident()
    target = earn(me.id, 10, "a")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0
    kept = db.session.scalars(sa.select(LedgerCheck)).one()
    assert (kept.ok, kept.entries, kept.accounts, kept.run_by, kept.staff_id) == (True, 1, 1, "cli", None)
    assert kept.finished_at == clock.now
    assert (kept.problems, kept.problem_count, kept.first_bad_entry) == ([], 0, None)
    without_append_only_guard("UPDATE ledger_entries SET delta = delta + 100 WHERE id = :id", params={"id": target.id})
    clock.advance(hours=24)
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 1
    failed = db.session.scalars(sa.select(LedgerCheck).order_by(LedgerCheck.id.desc())).first()
    assert (failed.ok, failed.first_bad_entry, failed.problem_count) == (False, target.id, len(failed.problems))
    assert f"entry {target.id}" in failed.problems[0]
    assert failed.finished_at == clock.now


def test_a_verification_that_cannot_be_kept_still_gives_its_verdict(api, app, monkeypatch):
    """A read-only role or replica, or the code deployed before `db upgrade`: keeping the run fails, but cron still
    gets the verdict, and a tampered entry is still named."""
    import app.ledger.verify as verify

    def refused() -> None:
        raise sa.exc.OperationalError("INSERT INTO ledger_checks", {}, Exception("read-only transaction"))

    monkeypatch.setattr(verify, "commit", refused)
    me = api.resident()
    target = earn(me.id, 10, "a")
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["ledger", "verify"])
    assert ok.exit_code == 0
    assert "OK: every chain, balance and year's points verify" in ok.stdout
    assert "warning: this run's result was not kept for the admin site" in ok.stderr
    without_append_only_guard("UPDATE ledger_entries SET delta = delta + 100 WHERE id = :id", params={"id": target.id})
    bad = runner.invoke(args=["ledger", "verify"])
    assert bad.exit_code == 1
    assert f"FAILED: first bad entry {target.id}" in bad.stderr


@pytest.mark.parametrize(
    "statement", ["UPDATE ledger_entries SET delta = delta + 1", "DELETE FROM ledger_entries"], ids=["update", "delete"]
)
def test_the_database_refuses_to_change_or_remove_entries(api, statement):
    me = api.resident()
    earn(me.id, 10, "a")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        db.session.execute(sa.text(statement))
    db.session.rollback()
    assert db.session.scalar(sa.select(LedgerEntry.delta)) == 10


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"balance": 999}, "stored balance=999"),
        ({"last_entry_at": datetime(2026, 6, 15, 10, 1, tzinfo=SHANGHAI)}, "after its last entry"),
    ],
    ids=["balance", "last-entry-moment-ahead"],
)
def test_verify_catches_an_account_edited_without_an_entry(api, app, edit, named):
    me = api.resident()
    earn(me.id, 10, "a")
    db.session.execute(sa.update(Account).where(Account.resident_id == me.id).values(**edit))
    db.session.commit()
    report = verify_ledger()
    assert not report.ok
    assert named in report.problems[0]
    failed = app.test_cli_runner().invoke(args=["ledger", "verify"])
    assert failed.exit_code == 1
    assert "FAILED\n" in failed.output  # no entry to name: an account's figure is wrong


def test_verify_notes_a_last_entry_moment_an_older_release_left_behind(api, app, clock):
    """During a rollout, a server still on the release before the dating rule posts without moving the moment."""
    me = api.resident()
    earn(me.id, 10, "a")
    clock.advance(seconds=5)
    last = earn(me.id, 5, "b")
    db.session.execute(sa.update(Account).values(last_entry_at=last.created_at - timedelta(seconds=5)))
    db.session.commit()
    report = verify_ledger()
    assert report.ok, report.problems
    assert report.notices == [
        f"account {last.account_id}: stored last entry at 2026-06-15 02:00:00+00:00, behind its last entry "
        "(2026-06-15 02:00:05+00:00): a server on an older release posted it"
    ]
    noted = app.test_cli_runner().invoke(args=["ledger", "verify"])
    assert noted.exit_code == 0
    assert "note: account" in noted.output


def test_an_adjustment_for_nobody_is_a_404_naming_the_resident(api):
    response = api.post("/residents/999999/adjustments", as_=api.staff("admin"), json={"delta": 5, "reason": "补发"})
    assert assert_error(response, 404, "not_found")["message"] == "居民不存在"


def test_a_posting_is_never_dated_before_the_entry_it_follows(api, clock):
    """A request that waited for the account's lock, or a server whose clock lags, takes the last entry's moment;
    with no moment of its own (an adjustment), also when that moment is on the next local day."""
    me = api.resident()
    clock.set(datetime(2026, 6, 15, 10, 0, 5, tzinfo=SHANGHAI))
    first = earn(me.id, 10, "a")
    clock.set(datetime(2026, 6, 15, 10, 0, 0, tzinfo=SHANGHAI))
    assert earn(me.id, 5, "b").created_at == first.created_at
    clock.set(datetime(2026, 6, 16, 0, 0, 1, tzinfo=SHANGHAI))
    after_midnight = earn(me.id, 5, "c")
    clock.set(datetime(2026, 6, 15, 23, 59, 59, tzinfo=SHANGHAI))
    assert spend(me.id, 3, "d").created_at == after_midnight.created_at
    assert db.session.scalar(sa.select(Account.last_entry_at)) == after_midnight.created_at
    assert verify_ledger().ok


def test_a_posting_dated_on_the_day_its_account_has_left_is_refused_whole(api, clock):
    """A use case that dated its day (`at`: a check-in's, the caps') before the account took an entry after
    midnight is refused as a 503 to retry, with nothing written."""
    me = api.resident()
    clock.set(datetime(2026, 6, 16, 0, 0, 1, tzinfo=SHANGHAI))
    earn(me.id, 10, "a")
    with pytest.raises(ServiceUnavailable) as refused:
        ledger.post(
            me.id, 5, kind="earn", source="test", activity="test:earn", ref_type="test", ref_id="b",
            actor_type="system", actor_id=None, caps=[CapCharge("test:earn", 5, 20, "测试")],
            at=datetime(2026, 6, 15, 23, 59, 59, tzinfo=SHANGHAI),
        )  # fmt: skip
    db.session.rollback()
    assert refused.value.headers == {"Retry-After": "1"}
    assert (count(LedgerEntry), count(DailyEarning)) == (1, 0)
    assert lots_of(db.session.scalar(sa.select(Account.id))) == {2026: 10}


def test_verify_notes_an_entry_dated_before_the_one_it_follows_without_failing(api, clock, monkeypatch):
    """Hashes that hold over dates that go back (written before the dating rule, or by a clock that ran fast): the
    entry cannot be changed, so verify says so without failing every night."""
    me = api.resident()
    earn(me.id, 10, "a")
    monkeypatch.setattr(ledger, "_dated", lambda at, last: at or clock())  # as before the rule
    clock.advance(seconds=-1)
    back = earn(me.id, 5, "b")
    report = verify_ledger()
    assert report.ok, report.problems
    assert report.notices == [
        f"entry {back.id} (account {back.account_id}, seq 2): dated 2026-06-15 01:59:59+00:00, before the entry it "
        "follows (2026-06-15 02:00:00+00:00)"
    ]


def test_a_last_entry_dated_by_a_clock_that_ran_fast_does_not_date_the_next(api, clock, caplog):
    """A server a day ahead wrote one entry: the next ones keep this server's clock, not that moment, which would
    date every later entry in the future; verify notes the inversion."""
    me = api.resident()
    clock.set(datetime(2026, 6, 16, 10, 0, tzinfo=SHANGHAI))
    earn(me.id, 10, "a")
    clock.set(datetime(2026, 6, 15, 10, 0, tzinfo=SHANGHAI))
    later = earn(me.id, 5, "b")
    assert later.created_at == datetime(2026, 6, 15, 10, 0, tzinfo=SHANGHAI)
    assert "servers' clocks disagree" in caplog.text
    report = verify_ledger()
    assert report.ok, report.problems
    assert (report.notice_count, len(report.notices)) == (1, 1)


def test_a_use_case_dated_today_is_not_refused_for_a_fast_clocks_entry_tomorrow(api, clock):
    """Its day (caps, lot) counted before the lock: with the last entry a clock fault ahead, across midnight, it keeps
    its moment and day rather than a 503 until the real time catches up (a review's case)."""
    me = api.resident()
    clock.set(datetime(2027, 1, 1, 0, 0, 30, tzinfo=SHANGHAI))
    earn(me.id, 10, "a")
    at = datetime(2026, 12, 31, 23, 59, tzinfo=SHANGHAI)
    cap = CapCharge("test:earn", 5, 20, "测试")
    kept = ledger.post(me.id, 5, kind="earn", source="test", activity="test:earn", ref_type="test", ref_id="b",
                       actor_type="system", actor_id=None, caps=[cap], at=at)  # fmt: skip
    db.session.commit()
    assert kept.created_at == at
    assert db.session.scalar(sa.select(DailyEarning.day)) == date(2026, 12, 31)
    assert lots_of(kept.account_id) == {2026: 5, 2027: 10}
    report = verify_ledger()
    assert report.ok, report.problems
    assert report.notice_count == 1


def test_verify_counts_every_note_and_the_cli_says_how_many_it_left_out(api, app, clock, monkeypatch):
    me = api.resident()
    monkeypatch.setattr(ledger, "_dated", lambda at, last: at or clock())  # as before the rule
    for ref in range(23):
        earn(me.id, 1, f"r{ref}")
        clock.advance(seconds=-1)
    report = verify_ledger()
    assert report.ok
    assert (report.notice_count, len(report.notices)) == (22, 22)
    output = app.test_cli_runner().invoke(args=["ledger", "verify"]).output
    assert output.count("note: entry") == 20
    assert "note: 22 notes in all, the first 20 shown" in output
    monkeypatch.setattr(verify_module, "KEPT_NOTICES", 5)
    assert (verify_ledger().notice_count, len(verify_ledger().notices)) == (22, 5)


def test_verify_catches_points_moved_to_another_year(api, clock):
    """Expiry reads the lots: a year edited there would expire points early or late, so verify rebuilds them from
    the credits (each in its local year, a reversal taken from the year its credit went to)."""
    me, admin = api.resident(), api.staff("admin")
    clock.set(datetime(2026, 1, 1, 0, 30, tzinfo=SHANGHAI))  # 2025-12-31 in UTC: the lot is local 2026's
    wrong = earn(me.id, 10, "a")
    clock.set(datetime(2027, 3, 1, 9, 0, tzinfo=SHANGHAI))
    earn(me.id, 7, "b")
    reversed_ = api.post(f"/ledger/entries/{wrong.id}/reverse", as_=admin, json={"reason": "误发"})
    assert reversed_.status_code == 201, reversed_.get_json()
    account_id = db.session.scalar(sa.select(Account.id))
    assert lots_of(account_id) == {2026: 0, 2027: 7}
    assert verify_ledger().ok
    db.session.execute(sa.text("UPDATE point_lots SET year = 2028 WHERE year = 2027"))
    db.session.commit()
    report = verify_ledger()
    assert report.problems == [
        f"account {account_id}: stored points by year {{2028: 7}} differ from its credits by local year {{2027: 7}}"
    ]


@pytest.mark.parametrize(
    ("tz", "moment", "year"),
    [
        ("Asia/Shanghai", datetime(2025, 12, 31, 15, 59, 59, 999999, tzinfo=UTC), 2025),
        ("Asia/Shanghai", datetime(2025, 12, 31, 16, 0, tzinfo=UTC), 2026),
        ("Asia/Shanghai", datetime(2026, 6, 15, 2, 0, tzinfo=UTC), 2026),
        ("America/New_York", datetime(2026, 1, 1, 4, 59, 59, tzinfo=UTC), 2025),
        ("America/New_York", datetime(2026, 1, 1, 5, 0, tzinfo=UTC), 2026),
        ("UTC", datetime(2026, 1, 1, tzinfo=UTC), 2026),
    ],
)
def test_verify_reads_a_moments_local_year_from_the_year_boundaries(tz, moment, year):
    assert local_year(tz)(moment) == year == local_day(moment, tz).year


def test_verify_catches_points_by_year_for_an_account_without_entries(api):
    me = api.resident()
    account_id = db.session.scalar(sa.select(Account.id).where(Account.resident_id == me.id))
    db.session.add(PointLot(account_id=account_id, year=2026, credited=50))
    db.session.commit()
    report = verify_ledger()
    assert report.problems == [f"account {account_id}: no entries, yet stored points by year {{2026: 50}}"]


def test_balance_check_constraint_holds_in_the_database(api):
    me = api.resident()
    with pytest.raises(sa.exc.IntegrityError):
        db.session.execute(sa.text("UPDATE accounts SET balance = -1 WHERE resident_id = :id"), {"id": me.id})
    db.session.rollback()


def test_verify_reads_committed_state_without_waiting_for_writers(api):
    me = api.resident()
    earn(me.id, 10, "a")
    # An open posting holds the account lock (and, on SQLite, the write lock) while the audit runs.
    ledger.post(
        me.id, 5, kind="earn", source="test", ref_type="test", ref_id="open", actor_type="system", actor_id=None
    )
    report = verify_ledger()
    assert report.ok, report.problems
    assert report.entries == 1
    db.session.commit()
    assert verify_ledger().entries == 2


def test_hot_path_statements_are_compiled_once():
    """SQLAlchemy recompiles a statement whose cache key is None on every execution (multi-row VALUES are one)."""
    from app.auth.guards import _STAFF_SCOPES, _STATE
    from app.idempotency import service as idempotency
    from app.sorting import service as sorting

    statements = [
        *(ledger._postgresql_posting(capped, credit) for capped in (True, False) for credit in (True, False)),
        *ledger._sqlite_statements().values(),
        ledger._LOCK_ACCOUNT,
        *_STATE.values(),
        _STAFF_SCOPES,
        sorting._POINT_ROW,
        sorting._ALL_POINTS,
        sorting._RESIDENT_STATUS,
        sorting._DEPOSIT_INSERT,
        sorting._DEPOSIT_ITEMS_INSERT,
        sorting._deposit_with_items(),
        *(sorting._checkin_claim(dialect) for dialect in ("postgresql", "sqlite")),
        ledger._lock_with_claim(sorting._checkin_claim("postgresql")),
        ledger._lock_with_claim(sorting._deposit_with_items()),
        *(idempotency._claim(dialect) for dialect in ("postgresql", "sqlite")),
        idempotency._STORED,
        idempotency._RECORD,
    ]
    assert all(statement._generate_cache_key() is not None for statement in statements)


@pytest.mark.parametrize("cursor", ["OTk5OTk5OTk5OTk", "dHJ1ZQ", "MTE4MDU5MTYyMDcxNzQxMTMwMzQyNA", "MA"])
def test_a_cursor_that_is_no_valid_key_is_refused(api, cursor):
    """99999999999, true, 2**70 and 0: none is a key a page can end on; none may reach the database as one."""
    me, admin = api.resident(), api.staff("admin")
    point = api.post("/collection-points", as_=admin, json={"name": "游标站", "community_id": 1, "kind": "station"})
    paths = [("/me/ledger", me), ("/residents", admin), ("/staff", admin), ("/communities", None),
             ("/organizations", None), ("/collection-points", None), ("/rules", None),
             (f"/collection-points/{point.get_json()['id']}/devices", admin),
             ("/collection-points?near=31.2,121.5", None)]  # fmt: skip
    for path, caller in paths:
        path += ("&" if "?" in path else "?") + f"cursor={cursor}"
        error = assert_error(api.get(path, as_=caller), 422, "validation_error")
        assert "cursor" in error["details"]["fields"], path


def test_an_empty_cursor_is_the_first_page(api):
    """`?cursor=` from a client that fills in a null `next`."""
    api.post("/communities", as_=api.staff("admin"), json={"name": "游标社区", "code": "cursor-first"})
    first = api.get("/communities?limit=1").get_json()
    assert api.get("/communities?limit=1&cursor=").get_json() == first


@pytest.mark.parametrize("delta", [1.5, -0.5, "2.5", 1e400, True])
def test_an_adjustment_of_a_fraction_of_a_point_is_refused_not_truncated(api, delta):
    me, admin = api.resident(), api.staff("admin")
    response = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": delta, "reason": "测试小数"})
    assert "delta" in assert_error(response, 422, "validation_error")["details"]["fields"]
    assert api.get("/me", as_=me).get_json()["balance"] == 0


def test_an_adjustment_given_as_a_whole_float_is_that_whole_number(api):
    me, admin = api.resident(), api.staff("admin")
    response = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 3.0, "reason": "测试整数"})
    assert response.status_code == 201, response.get_json()
    assert api.get("/me", as_=me).get_json()["balance"] == 3


def test_callers_without_the_admin_role_are_refused_before_their_request_is_read(api):
    """Adjusting and reversing are for admins: a worker, a collector or a resident gets 403 whatever it sends, not a
    validation error about a change it could never make, and the balance stays."""
    me = api.resident()
    entry = earn(me.id, 20, "a")
    worker = api.staff("worker", community_id=1)
    for caller in (worker, me):
        for body in ({}, {"delta": 0.5, "reason": "x"}):
            assert_error(api.post(f"/residents/{me.id}/adjustments", as_=caller, json=body), 403, "forbidden")
        for body in ({}, {"reason": ""}):
            assert_error(api.post(f"/ledger/entries/{entry.id}/reverse", as_=caller, json=body), 403, "forbidden")
    assert api.get("/me", as_=me).get_json()["balance"] == 20
    assert count(LedgerEntry) == 1


def test_the_adjustment_services_refuse_a_worker_whoever_calls_them(api):
    """The API and the admin site each let only admins adjust or reverse; the ledger service checks again for any
    other caller, whatever the resident's community."""
    from app.auth.guards import Actor
    from app.errors import Forbidden

    me = api.resident()
    entry = earn(me.id, 20, "a")
    worker = Actor(kind="staff", id=1, role="worker", community_id=1)
    with pytest.raises(Forbidden):
        ledger.adjust(worker, me.id, 500, "自己补发")
    db.session.rollback()
    with pytest.raises(Forbidden):
        ledger.reverse_entry(worker, entry.id, "撤销")
    db.session.rollback()
    assert count(LedgerEntry) == 1
    assert api.get("/me", as_=me).get_json()["balance"] == 20
