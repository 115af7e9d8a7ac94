from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from app.audit.models import AuditEvent
from app.carbon.models import Rule
from app.db import db
from tests.conftest import SHANGHAI, assert_error, count, pg_concurrency, race


def rule_in_force(api, activity: str) -> dict:
    return next(r for r in api.get("/rules?limit=100").get_json()["items"] if r["activity"] == activity)


def test_rules_in_force_are_public_and_cited(api):
    rules = {r["activity"]: r for r in api.get("/rules?limit=100").get_json()["items"]}
    assert rules["sorting:paper"]["co2e_g_per_unit"] == 1760
    assert type(rules["sorting:paper"]["co2e_g_per_unit"]) is int  # 1760 on the wire, not 1760.0 or "1760.000"
    assert rules["sorting:paper"]["source"].startswith("EPA WARM v15")
    assert rules["checkin:sorting"]["points"] == 5
    assert rules["checkin:sorting"]["daily_cap_points"] == 10
    assert rules["daily:total"]["daily_cap_points"] == 500
    assert rules["tradein:refrigerator"]["daily_total_exempt"] is True
    assert "PLACEHOLDER" in rules["sorting:textile"]["source"]
    # Residents and staff read these in zh-CN; the cited works keep their own names.
    assert rules["sorting:paper"]["source"] == "EPA WARM v15（美国环保署废弃物减量模型）：混合废纸"
    assert all(re.search(r"[\u4e00-\u9fff]", r["source"]) for r in rules.values()), "a source without zh-CN"
    only = api.get("/rules?prefix=tradein:").get_json()["items"]
    assert {r["activity"] for r in only} == {
        f"tradein:{kind}" for kind in ("refrigerator", "air_conditioner", "washing_machine", "television", "phone")
    }


# FACTORS.md: activity → (g CO2e per unit, fixed points, daily cap, exempt from the daily total)
FACTORS_MD = {
    "sorting:paper": (1760, None, 200, False),
    "sorting:cardboard": (3160, None, 200, False),
    "sorting:plastic": (1370, None, 200, False),
    "sorting:metal": (1830, None, 200, False),
    "sorting:aluminium": (8110, None, 200, False),
    "sorting:glass": (260, None, 200, False),
    "sorting:textile": (2000, None, 200, False),
    "sorting:ewaste": (4700, None, 200, False),
    "tradein:refrigerator": (30000, None, None, True),
    "tradein:air_conditioner": (30000, None, None, True),
    "tradein:washing_machine": (20000, None, None, True),
    "tradein:television": (15000, None, None, True),
    "tradein:phone": (25000, None, None, True),
    "checkin:sorting": (0, 5, 10, False),
    "event:checkin": (0, 20, None, False),
    "market:gift": (0, 10, 30, False),
    "market:swap": (0, 10, 30, False),
    "travel:bus": (26.9, None, None, False),
    "travel:metro": (46.7, None, None, False),
    "daily:total": (0, None, 500, False),
}


def test_the_seeded_methodology_is_the_one_in_factors_md(api):
    rules = {r["activity"]: r for r in api.get("/rules?limit=100").get_json()["items"]}
    assert {
        activity: (r["co2e_g_per_unit"], r["points"], r["daily_cap_points"], r["daily_total_exempt"])
        for activity, r in rules.items()
    } == FACTORS_MD


def test_new_version_supersedes_and_old_entries_keep_theirs(api, clock):
    admin, collector_point = api.staff("admin"), 1
    del collector_point
    me = api.resident()
    # Earn under version 1 through a check-in, then publish version 2 with more points.
    point = api.post(
        "/collection-points", as_=admin, json={"name": "测试点", "community_id": 1, "kind": "station"}
    ).get_json()
    url = api.get(f"/collection-points/{point['id']}/qr", as_=admin).get_json()["url"]
    first = api.post("/scans", as_=me, json={"token": url}).get_json()
    v1 = rule_in_force(api, "checkin:sorting")
    response = api.post(
        "/rules", as_=admin, json={"activity": "checkin:sorting", "points": 8, "source": "经发办 2026 年调整"}
    )
    assert response.status_code == 201, response.get_json()
    v2 = response.get_json()
    assert (v2["version"], v2["points"], v2["daily_cap_points"]) == (2, 8, 10)
    assert rule_in_force(api, "checkin:sorting")["id"] == v1["id"]
    clock.advance(seconds=11)  # a new version starts once every worker's rule cache can have seen it
    in_force = rule_in_force(api, "checkin:sorting")
    assert in_force["id"] == v2["id"]
    clock.advance(days=1)
    second = api.post("/scans", as_=me, json={"token": url}).get_json()
    assert second["points"] == 8
    entries = {e["id"]: e for e in api.get("/me/ledger", as_=me).get_json()["items"]}
    assert entries[first["entry_id"]]["rule_id"] == v1["id"]
    assert entries[second["entry_id"]]["rule_id"] == v2["id"]


def test_future_version_waits_for_its_start(api, clock):
    admin = api.staff("admin")
    start = (clock.now + timedelta(days=10)).astimezone(SHANGHAI).isoformat()
    body = {"activity": "sorting:glass", "co2e_g_per_unit": 300, "source": "新因子", "effective_from": start}
    assert api.post("/rules", as_=admin, json=body).status_code == 201
    glass = lambda: rule_in_force(api, "sorting:glass")  # noqa: E731
    assert glass()["version"] == 1
    clock.advance(days=11)
    from app.carbon.service import clear_cache

    clear_cache()
    assert glass()["version"] == 2


def test_a_new_version_cannot_start_before_every_worker_can_see_it(api, clock):
    admin = api.staff("admin")
    body = {"activity": "sorting:paper", "co2e_g_per_unit": 1800, "source": "经发办"}
    too_soon = (clock.now + timedelta(seconds=5)).astimezone(SHANGHAI).isoformat()
    error = assert_error(
        api.post("/rules", as_=admin, json={**body, "effective_from": too_soon}), 422, "validation_error"
    )
    assert "10" in error["details"]["fields"]["effective_from"][0]
    created = api.post("/rules", as_=admin, json=body).get_json()
    assert created["valid_from"] == (clock.now + timedelta(seconds=10)).isoformat()


def _publish(api, admin, activity: str, factor, start=None):
    body = {"activity": activity, "co2e_g_per_unit": factor, "source": "经发办"}
    if start is not None:
        body["effective_from"] = start.astimezone(SHANGHAI).isoformat()
    return api.post("/rules", as_=admin, json=body)


def _versions(activity: str) -> dict[int, Rule]:
    db.session.expire_all()
    return {r.version: r for r in db.session.scalars(sa.select(Rule).filter_by(activity=activity))}


def test_a_mistaken_future_version_is_replaced_by_publishing_again(api, clock):
    """A year typed wrong would otherwise hold the rule until then: a version starting no later withdraws it."""
    admin = api.staff("admin")
    assert _publish(api, admin, "sorting:metal", 2000, clock.now + timedelta(days=300)).status_code == 201
    corrected = _publish(api, admin, "sorting:metal", 1900)
    assert corrected.status_code == 201, corrected.get_json()
    assert corrected.get_json()["version"] == 3
    versions = _versions("sorting:metal")
    assert versions[2].valid_to == versions[2].valid_from  # withdrawn: never in force
    assert versions[1].valid_to == versions[3].valid_from
    assert versions[3].valid_to is None
    event = db.session.scalars(sa.select(AuditEvent).filter_by(action="rule.publish").order_by(AuditEvent.id)).all()
    assert event[-1].details["withdrawn_versions"] == [2]

    from app.carbon.service import clear_cache

    clock.advance(days=301)
    clear_cache()
    assert rule_in_force(api, "sorting:metal")["version"] == 3


def test_a_version_that_changes_nothing_is_not_published(api, clock):
    """The admin's publish form comes filled in with the version in force: sent as it is, it would publish a copy."""
    admin = api.staff("admin")
    in_force = rule_in_force(api, "sorting:glass")
    same = {"activity": "sorting:glass", "source": in_force["source"]}
    error = assert_error(api.post("/rules", as_=admin, json=same), 422, "validation_error")
    assert error["message"] == "与第 1 版完全相同，未发布：请修改要调整的数值或依据来源"
    assert error["details"]["fields"] == {"source": [error["message"]]}
    assert len(_versions("sorting:glass")) == 1
    # a new source alone (a corrected citation) is a change
    assert api.post("/rules", as_=admin, json={**same, "source": "EPA WARM v16, glass"}).status_code == 201
    # and the same values again for a future version's start correct its date (withdrawing it)
    assert _publish(api, admin, "sorting:metal", 2000, clock.now + timedelta(days=300)).status_code == 201
    assert _publish(api, admin, "sorting:metal", 2000, clock.now + timedelta(days=30)).status_code == 201


def test_a_version_published_again_for_the_same_start_withdraws_the_first(api, clock):
    admin = api.staff("admin")
    start = clock.now + timedelta(days=10)
    assert _publish(api, admin, "sorting:metal", 2000, start).status_code == 201
    assert _publish(api, admin, "sorting:metal", 2100, start).status_code == 201
    versions = _versions("sorting:metal")
    assert versions[2].valid_to == versions[2].valid_from  # withdrawn: the same start is "at or after" it
    assert versions[1].valid_to == versions[3].valid_from
    event = db.session.scalars(sa.select(AuditEvent).filter_by(action="rule.publish").order_by(AuditEvent.id)).all()
    assert event[-1].details["withdrawn_versions"] == [2]


def test_a_version_starting_before_a_future_one_keeps_it_and_one_after_ends_it(api, clock):
    admin = api.staff("admin")
    _publish(api, admin, "sorting:metal", 2000, clock.now + timedelta(days=10))
    assert _publish(api, admin, "sorting:metal", 2100, clock.now + timedelta(days=20)).status_code == 201
    versions = _versions("sorting:metal")
    assert versions[2].valid_to == versions[3].valid_from  # v2 runs from day 10 to day 20
    assert versions[3].co2e_g_per_unit == 2100


def test_a_version_cannot_start_more_than_a_year_ahead(api, clock):
    response = _publish(api, api.staff("admin"), "sorting:metal", 2000, clock.now + timedelta(days=400))
    assert "effective_from" in assert_error(response, 422, "validation_error")["details"]["fields"]
    assert set(_versions("sorting:metal")) == {1}


def test_a_rules_unit_cannot_change(api):
    """Deposits weigh in kg: a glass factor per item would be applied per kg all the same."""
    admin = api.staff("admin")
    body = {"activity": "sorting:glass", "unit": "item", "co2e_g_per_unit": 100, "source": "单位变化"}
    error = assert_error(api.post("/rules", as_=admin, json=body), 422, "validation_error")
    assert "unit" in error["details"]["fields"]
    assert set(_versions("sorting:glass")) == {1}
    assert api.post("/rules", as_=admin, json={**body, "unit": "kg"}).status_code == 201


@pytest.mark.parametrize(
    ("sent", "answered"),
    [(312.5, 312.5), ("0.125", 0.125), (2500, 2500), ("2500.000", 2500), ("0.0010", 0.001), ("1e3", 1000)],
)
def test_a_factor_is_answered_as_the_number_it_is(api, sent, answered):
    body = {"activity": "sorting:textile", "co2e_g_per_unit": sent, "source": "经发办 2026 local factor"}
    response = api.post("/rules", as_=api.staff("admin"), json=body)
    assert response.status_code == 201, response.get_json()
    value = response.get_json()["co2e_g_per_unit"]
    assert (value, type(value)) == (answered, type(answered))


def test_publishing_rules_is_admin_only_and_validated(api):
    worker = api.staff("worker", community_id=1)
    body = {"activity": "sorting:paper", "co2e_g_per_unit": 1800, "source": "经发办"}
    assert_error(api.post("/rules", as_=worker, json=body), 403, "forbidden")
    admin = api.staff("admin")
    assert_error(api.post("/rules", as_=admin, json={**body, "co2e_g_per_unit": -1}), 422, "validation_error")
    # a factor is kept to the gram's thousandth, never rounded away (0.0001 had become 0), and true is not 1
    for factor, said in ((True, "必须是数字"), (0.0001, "最多 3 位小数"), ("26.9001", "最多 3 位小数")):
        error = assert_error(api.post("/rules", as_=admin, json={**body, "co2e_g_per_unit": factor}), 422,
                             "validation_error")  # fmt: skip
        assert error["details"]["fields"] == {"co2e_g_per_unit": [said]}, factor
    assert_error(api.post("/rules", as_=admin, json={**body, "activity": "Paper"}), 422, "validation_error")
    assert_error(api.post("/rules", as_=admin, json={**body, "activity": "sorting:unknown"}), 404, "not_found")
    past = datetime(2020, 1, 1, tzinfo=SHANGHAI).isoformat()
    error = assert_error(api.post("/rules", as_=admin, json={**body, "effective_from": past}), 422, "validation_error")
    assert "effective_from" in error["details"]["fields"]
    # the ends of the calendar, which no database datetime holds once in UTC
    for moment in ("9999-12-31T23:00:00-12:00", "0001-01-01T00:30:00+14:00"):
        response = api.post("/rules", as_=admin, json={**body, "effective_from": moment})
        assert "effective_from" in assert_error(response, 422, "validation_error")["details"]["fields"]


def test_a_rule_has_a_name_residents_can_read(api):
    """The title is what a cap's refusal and the caps screen name: a blank one showed residents `sorting:glass`."""
    admin = api.staff("admin")
    body = {"activity": "sorting:glass", "co2e_g_per_unit": 260, "source": "经发办复核"}
    before = count(Rule)
    error = assert_error(api.post("/rules", as_=admin, json={**body, "title": "   "}), 422, "validation_error")
    assert list(error["details"]["fields"]) == ["title"]
    fresh = {"activity": "event:river_cleanup", "unit": "item", "points": 10, "source": "经发办新增"}
    error = assert_error(api.post("/rules", as_=admin, json=fresh), 422, "validation_error")
    assert error["details"]["fields"] == {"title": ["请填写规则名称：居民在积分明细和上限提示中看到的就是它"]}
    assert count(Rule) == before
    assert api.post("/rules", as_=admin, json={**fresh, "title": "河道清洁"}).get_json()["title"] == "河道清洁"
    # a new version of a named rule keeps its name when none is sent
    assert api.post("/rules", as_=admin, json=body).get_json()["title"] == "玻璃"


@pg_concurrency
def test_admins_publishing_one_rule_at_once_get_versions_in_turn_or_a_409(api, app):
    admin = api.staff("admin")

    def publish(client, i):
        body = {"activity": "sorting:glass", "co2e_g_per_unit": 260 + i, "source": "经发办"}
        return client.post("/api/v1/rules", json=body, headers=admin.auth)

    responses = race(app, publish, 8)
    codes = [r.status_code for r in responses]
    assert 201 in codes, codes
    refused = {r.get_json()["error"]["code"] for r in responses if r.status_code != 201}
    assert refused <= {"invalid_state", "validation_error"}, codes  # never a 500
    rules = db.session.scalars(sa.select(Rule).filter_by(activity="sorting:glass").order_by(Rule.version)).all()
    assert [r.version for r in rules] == list(range(1, len(rules) + 1))
    assert len(rules) == 1 + codes.count(201)
    assert [r.valid_to is None for r in rules].count(True) == 1


@pg_concurrency
def test_a_publication_that_waited_for_the_lock_starts_late_enough_for_every_workers_cache(api, app, clock):
    """Workers keep rules for RULE_CACHE_TTL_S; one that read them while a publication waited for another's lock
    would apply the superseded version past the new one's start, were the start reckoned from before the wait."""
    import threading

    from app.carbon.service import RULE_CACHE_TTL_S

    admin = api.staff("admin")
    holder = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.NullPool)
    with holder.connect() as conn:
        newest = sa.select(Rule.id).filter_by(activity="sorting:glass").order_by(Rule.version.desc()).limit(1)
        conn.execute(newest.with_for_update())
        answer: dict = {}
        body = {"activity": "sorting:glass", "co2e_g_per_unit": 261, "source": "经发办"}
        thread = threading.Thread(target=lambda: answer.update(response=api.post("/rules", as_=admin, json=body)))
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # waiting on the lock
        released_at = clock.advance(seconds=8)
        conn.commit()
    thread.join(timeout=10)
    holder.dispose()
    assert answer["response"].status_code == 201, answer["response"].get_json()
    starts = datetime.fromisoformat(answer["response"].get_json()["valid_from"])
    assert starts >= released_at + timedelta(seconds=RULE_CACHE_TTL_S)


def test_rules_come_in_pages_that_add_up_to_the_whole_methodology(api):
    everything = api.get("/rules?limit=100").get_json()
    assert everything["next"] is None
    assert len(everything["items"]) > 5
    walked, cursor = [], None
    while True:
        page = api.get("/rules?limit=5" + (f"&cursor={cursor}" if cursor else "")).get_json()
        assert len(page["items"]) <= 5
        walked += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert walked == everything["items"]
    assert [r["activity"] for r in walked] == sorted(r["activity"] for r in walked)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "cursor=bm90LWEtbnVtYmVy", "cursor=LTE"])
def test_a_bad_rules_page_request_is_refused(api, query):
    assert_error(api.get(f"/rules?{query}"), 422, "validation_error")


def test_a_correction_of_a_future_version_starts_from_it(api, clock):
    """What the new version does not say comes from the version it replaces, not from the one in force before both:
    correcting one figure of a mistaken future version keeps its other changes."""
    admin = api.staff("admin")
    future = {"activity": "sorting:metal", "co2e_g_per_unit": 2000, "source": "复核", "title": "金属（复核）",
              "daily_total_exempt": True, "effective_from": (clock.now + timedelta(days=300)).isoformat()}  # fmt: skip
    assert api.post("/rules", as_=admin, json=future).status_code == 201
    assert _publish(api, admin, "sorting:metal", 1900).status_code == 201
    corrected = _versions("sorting:metal")[3]
    assert (corrected.title, corrected.daily_total_exempt, corrected.co2e_g_per_unit) == ("金属（复核）", True, 1900)
