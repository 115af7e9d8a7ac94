"""Random earn, spend, refund, expire and adjust operations; every ledger invariant holds after each step."""

from __future__ import annotations

import uuid
from datetime import datetime
from itertools import pairwise

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app import clock as app_clock
from app.carbon.methodology import CapCharge
from app.db import db
from app.errors import AppError, ServiceUnavailable
from app.ledger import service as ledger
from app.ledger.models import Account, LedgerEntry, PointLot
from app.ledger.verify import verify_ledger
from app.people.service import resident_for_openid
from tests.conftest import SHANGHAI

# What an admin may type (the API refuses NUL and lone surrogates first).
REASONS = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)


class LedgerMachine(RuleBasedStateMachine):
    """A model of one resident's points next to the real ledger."""

    def __init__(self):
        super().__init__()
        self.clock = app_clock.FrozenClock(datetime(2025, 1, 10, 9, tzinfo=SHANGHAI))
        app_clock.set_clock(self.clock)
        self.expected_balance = 0
        self.earned = 0
        self.spends: dict[int, int] = {}  # open spend entry id -> points
        self.earns: dict[int, int] = {}  # earn entry id not yet taken back -> points

    @initialize()
    def open(self):
        self.resident_id = resident_for_openid(f"h-{uuid.uuid4().hex}", None).id
        db.session.commit()

    def _post(self, delta: int, kind: str, **kw):
        try:
            entry = ledger.post(
                self.resident_id, delta, kind=kind, ref_id=uuid.uuid4().hex, actor_type="system", actor_id=None, **kw
            )
        except AppError as exc:
            db.session.rollback()
            refused = exc.code
        else:
            db.session.commit()
            self.expected_balance += delta
            return entry
        assert refused == "insufficient_points"
        assert self.expected_balance + delta < 0
        return None

    @rule(points=st.integers(min_value=1, max_value=500))
    def earn(self, points):
        # Not "deposit" or "checkin": those entries point at rows (a deposit, a rule) that this model does not write.
        entry = self._post(points, "earn", source="sorting", ref_type="bonus")
        if entry:
            self.earned += points
            self.earns[entry.id] = points

    @precondition(lambda self: self.earns)
    @rule(data=st.data())
    def take_back_an_earn(self, data):
        """An admin reverses an earning: possible while the balance still holds its points, and refused once
        expiry has taken what was left of its year (taking it back then would take it twice)."""
        entry_id = data.draw(st.sampled_from(sorted(self.earns)))
        earn_entry = db.session.get(LedgerEntry, entry_id)
        year_expired = ledger._year_expired(earn_entry.account_id, earn_entry.created_at.astimezone(SHANGHAI).year)
        try:
            ledger.reverse(
                earn_entry, kind="reverse", ref_type="ledger_entry", ref_id=entry_id, actor_type="system",
                actor_id=None, memo="冲正", reason="误发",
            )  # fmt: skip
        except AppError as exc:
            db.session.rollback()
            refused = exc.code
        else:
            db.session.commit()
            assert not year_expired
            points = self.earns.pop(entry_id)
            self.expected_balance -= points
            self.earned -= points
            return
        if refused == "invalid_state":
            assert year_expired
            self.earns.pop(entry_id)  # never to be taken back now
            return
        assert refused == "insufficient_points"
        assert self.expected_balance < self.earns[entry_id]

    @rule(points=st.integers(min_value=1, max_value=600))
    def spend(self, points):
        entry = self._post(-points, "spend", source="exchange", ref_type="redemption")
        if entry:
            self.spends[entry.id] = points

    @precondition(lambda self: self.spends)
    @rule(data=st.data())
    def refund(self, data):
        entry_id = data.draw(st.sampled_from(sorted(self.spends)))
        spend_entry = db.session.get(LedgerEntry, entry_id)
        ledger.reverse(
            spend_entry, kind="refund", ref_type="redemption", ref_id=spend_entry.ref_id,
            actor_type="system", actor_id=None, memo="取消兑换",
        )  # fmt: skip
        db.session.commit()
        self.expected_balance += self.spends.pop(entry_id)

    @rule(delta=st.integers(min_value=-300, max_value=300).filter(bool), reason=REASONS)
    def adjust(self, delta, reason):
        self._post(delta, "adjust", source="admin", ref_type="adjustment", memo="人工调整", reason=reason or None)

    @rule(days=st.integers(min_value=1, max_value=400))
    def time_passes(self, days):
        self.clock.advance(days=days)

    @rule(points=st.integers(min_value=1, max_value=50))
    def earn_dated_before_the_lock(self, points):
        """A use case that dated its day before it took the account (a scan, a deposit): it keeps its moment or takes
        the last entry's on the same day, or is refused whole when the account has passed into the next day."""
        at = self.clock.now
        try:
            entry = ledger.post(
                self.resident_id, points, kind="earn", source="sorting", ref_type="bonus", ref_id=uuid.uuid4().hex,
                actor_type="system", actor_id=None, caps=[CapCharge("test:dated", points, None, "测试")], at=at,
            )  # fmt: skip
        except ServiceUnavailable:  # nothing written: the invariants find the balance as it was
            db.session.rollback()
            return
        db.session.commit()
        self.expected_balance += points
        self.earned += points
        self.earns[entry.id] = points
        assert entry.created_at.astimezone(SHANGHAI).date() == at.astimezone(SHANGHAI).date()

    @rule(seconds=st.one_of(st.integers(min_value=1, max_value=60), st.integers(min_value=61, max_value=2 * 86400)))
    def clock_runs_back(self, seconds):
        """Another server's clock, a little behind (a posting then takes the last entry's moment) or far behind (a
        fast clock dated the last entry: the next keeps this clock)."""
        self.clock.advance(seconds=-seconds)

    @rule()
    def expire(self):
        before = self.expected_balance
        ledger.expire_points(self.clock.now)
        account = db.session.scalar(sa.select(Account).filter_by(resident_id=self.resident_id))
        assert account.balance <= before
        self.expected_balance = account.balance
        # Nothing survives past its expiry moment.
        for year, left in ledger._remaining_by_year(account, ledger._lots(account)):
            if ledger.expiry_moment(year) <= self.clock.now:
                assert left == 0, (year, left)
        # Running the job twice changes nothing the second time.
        assert ledger.expire_points(self.clock.now)["entries"] == 0

    @invariant()
    def ledger_invariants(self):
        if not hasattr(self, "resident_id"):
            return
        db.session.expire_all()
        account = db.session.scalar(sa.select(Account).filter_by(resident_id=self.resident_id))
        entries = list(
            db.session.scalars(sa.select(LedgerEntry).filter_by(account_id=account.id).order_by(LedgerEntry.seq))
        )
        assert account.balance == self.expected_balance == sum(e.delta for e in entries)
        assert account.balance >= 0
        running = 0
        for seq, entry in enumerate(entries, start=1):
            running += entry.delta
            assert (entry.seq, entry.balance_after) == (seq, running)
        assert account.lifetime_earned == self.earned
        # Lots hold the credits, less the credits taken back (from their own year's lot); a debit given back moves
        # no lot, and no lot ever goes below zero.
        rows = db.session.execute(sa.select(PointLot.year, PointLot.credited).filter_by(account_id=account.id))
        lots = {row.year: row.credited for row in rows}
        credits = sum(e.delta for e in entries if e.delta > 0 and e.reverses_id is None)
        taken_back = sum(e.delta for e in entries if e.delta < 0 and e.reverses_id is not None)
        assert sum(lots.values()) == credits + taken_back
        assert min(lots.values(), default=0) >= 0
        # An entry is dated after the one it follows, unless that one is further ahead than a clock may lag
        inversions = [(a, b) for a, b in pairwise(entries) if b.created_at < a.created_at]
        assert all(a.created_at - b.created_at > ledger.MAX_CLOCK_LEAD for a, b in inversions)
        report = verify_ledger()
        assert report.ok, report.problems
        assert len([n for n in report.notices if f"(account {account.id}," in n]) == len(inversions)

    def teardown(self):
        app_clock.set_clock(None)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_ledger_state_machine(db_session):
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,  # a step's time on a busy 2-core runner says nothing about the ledger
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
