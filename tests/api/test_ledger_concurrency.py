"""Races that only a real server shows: run against PostgreSQL."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from app import clock as app_clock
from app.db import db
from app.ledger.models import LedgerEntry
from app.ledger.verify import verify_ledger
from tests.conftest import PG_CONCURRENCY, SHANGHAI, Ticking, count, race

pytestmark = PG_CONCURRENCY

THREADS = 50


def test_fifty_replays_of_one_key_credit_once(api, app):
    me, admin = api.resident(), api.staff("admin")
    headers = {**admin.auth, "Idempotency-Key": "same-key"}
    body = {"delta": 25, "reason": "并发补发"}
    path = f"/api/v1/residents/{me.id}/adjustments"
    responses = race(app, lambda c, _: c.post(path, json=body, headers=headers), THREADS)
    assert [r.status_code for r in responses] == [201] * THREADS
    assert len({r.get_data() for r in responses}) == 1
    db.session.expire_all()
    assert api.get("/me", as_=me).get_json()["balance"] == 25
    assert count(LedgerEntry) == 1


def test_fifty_replays_of_one_refused_key_give_its_one_refusal(api, app):
    """The first to hold the key is refused; the others wait on the key, then replay that refusal. Meanwhile the
    balance comes to cover the spend, and still none applies."""
    me, admin = api.resident(), api.staff("admin")
    headers = {**admin.auth, "Idempotency-Key": "refused-key"}
    path = f"/api/v1/residents/{me.id}/adjustments"
    responses = race(
        app, lambda c, _: c.post(path, json={"delta": -10, "reason": "并发扣减"}, headers=headers), THREADS
    )
    assert [r.status_code for r in responses] == [409] * THREADS
    assert {r.get_json()["error"]["code"] for r in responses} == {"insufficient_points"}
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == THREADS - 1
    assert (
        api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 10, "reason": "补发积分"}).status_code
        == 201
    )
    again = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": -10, "reason": "并发扣减"},
                     headers={"Idempotency-Key": "refused-key"})  # fmt: skip
    assert again.status_code == 409
    db.session.expire_all()
    assert api.get("/me", as_=me).get_json()["balance"] == 10
    assert count(LedgerEntry) == 1


def test_fifty_spends_from_a_balance_that_covers_five(api, app):
    me, admin = api.resident(), api.staff("admin")
    assert (
        api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 50, "reason": "初始"}).status_code == 201
    )
    path = f"/api/v1/residents/{me.id}/adjustments"

    def spend(client, i):
        headers = {**admin.auth, "Idempotency-Key": f"k{i}"}
        return client.post(path, json={"delta": -10, "reason": f"扣减{i}"}, headers=headers)

    responses = race(app, spend, THREADS)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 5
    assert statuses.count(409) == THREADS - 5
    assert {r.get_json()["error"]["code"] for r in responses if r.status_code == 409} == {"insufficient_points"}
    db.session.expire_all()
    assert api.get("/me", as_=me).get_json()["balance"] == 0
    report = verify_ledger()
    assert report.ok, report.problems


def test_parallel_reversals_of_one_credit_reverse_it_once_and_tell_the_others_so(api, app):
    """The losers wait on the account's lock and then find the reversal, not an empty balance."""
    me, admin = api.resident(), api.staff("admin")
    granted = api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 30, "reason": "误发"})
    entry_id = granted.get_json()["id"]
    path = f"/api/v1/ledger/entries/{entry_id}/reverse"
    responses = race(app, lambda c, i: c.post(path, json={"reason": f"并发冲正{i}"}, headers=admin.auth), 20)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    refusals = [r.get_json()["error"] for r in responses if r.status_code == 409]
    assert {e["code"] for e in refusals} == {"invalid_state"}
    assert {e["message"] for e in refusals} == {"该记录已被冲正"}
    db.session.expire_all()
    assert api.get("/me", as_=me).get_json()["balance"] == 0
    assert db.session.scalar(sa.select(sa.func.count()).where(LedgerEntry.reverses_id == entry_id)) == 1
    report = verify_ledger()
    assert report.ok, report.problems


def test_parallel_postings_to_one_account_are_dated_in_the_order_they_are_appended(api, app):
    """Each posting reads the clock once it holds the account's lock: a request that waited its turn is not dated
    before the entries appended while it waited (an entry after local midnight would count on the day before)."""
    me, admin = api.resident(), api.staff("admin")
    path = f"/api/v1/residents/{me.id}/adjustments"
    app_clock.set_clock(Ticking(datetime(2026, 6, 15, 23, 59, 59, tzinfo=SHANGHAI)))
    responses = race(app, lambda c, i: c.post(path, json={"delta": 1, "reason": f"并发{i}"}, headers=admin.auth), 40)
    assert [r.status_code for r in responses] == [201] * 40
    db.session.expire_all()
    dated = db.session.scalars(sa.select(LedgerEntry.created_at).order_by(LedgerEntry.seq)).all()
    assert len(dated) == 40
    assert dated == sorted(dated)
