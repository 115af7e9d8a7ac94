"""Recompute every hash chain, balance and year's points, and note entries dated out of their order. Streams the
entries in (account, seq) order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache

import sqlalchemy as sa
from flask import current_app

from app.clock import local_midnight, utcnow
from app.db import commit, db
from app.ledger.chain import canonical, link, micros, reason_digest
from app.ledger.models import GENESIS_HASH, LedgerCheck

ENTRY_COLUMNS = (
    "id, account_id, seq, delta, balance_after, kind, source, activity, rule_id, co2e_g, ref_type, ref_id, "
    "actor_type, actor_id, reverses_id, created_at, memo, hash, reason_digest"
)


KEPT_NOTICES = 200
log = logging.getLogger(__name__)


@dataclass
class Report:
    """`problems` fail the check: an entry altered, a chain or a stored figure that its entries do not give.
    `notices` do not: what verifies but is not as this release writes it, and can no longer be changed (an entry
    dated before the one it follows, written before the dating rule or by a server whose clock ran ahead; a last
    entry's moment that a server still on an older release left behind during a rollout)."""

    entries: int = 0
    accounts: int = 0
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # the first KEPT_NOTICES of notice_count
    notice_count: int = 0
    first_bad_entry: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def note(self, message: str) -> None:
        """A ledger written before the dating rule may hold an inversion per entry: count them all, keep a few."""
        self.notice_count += 1
        if len(self.notices) < KEPT_NOTICES:
            self.notices.append(message)

    def fail(self, message: str, entry_id: int | None = None) -> None:
        if entry_id is not None and self.first_bad_entry is None:
            self.first_bad_entry = entry_id
        self.problems.append(message)


@dataclass
class _Chain:
    account_id: int
    seq: int = 0
    balance: int = 0
    earned: int = 0
    co2e_g: int = 0
    hash: str = GENESIS_HASH
    last_at: datetime | None = None
    deltas: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)  # kind, delta, a credit's year
    lots: dict[int, int] = field(default_factory=dict)  # points credited by local year, as expiry reads them


def _local_year(tz: str) -> Callable[[datetime], int]:
    """The local calendar year of a UTC moment, from cached year boundaries: a time zone conversion per entry would
    cost more than the rest of its check."""
    start = cache(lambda year: local_midnight(date(year, 1, 1), tz))

    def year_of(moment: datetime) -> int:
        year = moment.year
        return year + 1 if moment >= start(year + 1) else year - 1 if moment < start(year) else year

    return year_of


def _by_year(lots: dict[int, int]) -> dict[int, int]:
    return {year: points for year, points in sorted(lots.items()) if points}


def _close(chain: _Chain, accounts: dict[int, tuple], lots: dict[int, dict[int, int]], report: Report) -> None:
    stored = accounts.pop(chain.account_id, None)
    if stored is None:
        report.fail(f"account {chain.account_id}: entries exist but the account does not")
        return
    stored_lots, credited = _by_year(lots.pop(chain.account_id, {})), _by_year(chain.lots)
    if stored_lots != credited:
        report.fail(
            f"account {chain.account_id}: stored points by year {stored_lots} differ from its credits by local year "
            f"{credited}"
        )
    balance, earned, co2e_g, last_seq, last_hash, last_at = stored
    if (balance, earned, co2e_g, last_seq, last_hash) != (
        chain.balance,
        chain.earned,
        chain.co2e_g,
        chain.seq,
        chain.hash,
    ):
        report.fail(
            f"account {chain.account_id}: stored balance={balance} lifetime={earned} co2e_g={co2e_g} "
            f"seq={last_seq} differ from the entries (balance={chain.balance} lifetime={chain.earned} "
            f"co2e_g={chain.co2e_g} seq={chain.seq}) or the last hash does not match"
        )
    if last_at is None or last_at < chain.last_at:  # the next posting may be dated before the last entry
        report.note(
            f"account {chain.account_id}: stored last entry at {last_at}, behind its last entry ({chain.last_at}): "
            "a server on an older release posted it"
        )
    elif last_at > chain.last_at:  # no release writes this: the next postings would be dated after it
        report.fail(
            f"account {chain.account_id}: stored last entry at {last_at}, after its last entry ({chain.last_at})"
        )


def _check(chain: _Chain, row, year_of: Callable[[datetime], int], reasons: dict, report: Report) -> None:
    (entry_id, account_id, seq, delta, balance_after, kind, source, activity, rule_id, co2e_g, ref_type,
     ref_id, actor_type, actor_id, reverses_id, created_at, memo, stored_hash, digest) = row  # fmt: skip
    where = f"entry {entry_id} (account {account_id}, seq {seq})"
    if seq != chain.seq + 1:
        report.fail(f"{where}: sequence gap after {chain.seq}", entry_id)
    if balance_after != chain.balance + delta or balance_after < 0:
        report.fail(f"{where}: balance_after {balance_after} != {chain.balance} + {delta}", entry_id)
    expected = link(
        chain.hash,
        canonical(account_id, seq, delta, balance_after, kind, source, activity, rule_id, co2e_g, ref_type,
                  ref_id, actor_type, actor_id, reverses_id, micros(created_at), memo, digest),
    )  # fmt: skip
    if chain.last_at is not None and created_at < chain.last_at:
        report.note(f"{where}: dated {created_at}, before the entry it follows ({chain.last_at})")
    if expected != stored_hash:
        report.fail(f"{where}: hash mismatch, the entry or its predecessor was altered", entry_id)
    kept = reasons.pop(entry_id, None)
    if digest is not None and kept is None:
        report.fail(f"{where}: its reason was removed", entry_id)
    elif digest is not None and kept[1] is None and kept[0] is not None:
        report.fail(f"{where}: its reason was blanked but its salt kept (the digest could be guessed)", entry_id)
    elif digest is not None and kept[1] is not None and reason_digest(kept[0] or "", kept[1]) != digest:
        report.fail(f"{where}: its reason was altered", entry_id)  # an erased one (text and salt NULL) verifies
    elif digest is None and kept is not None:
        report.fail(f"{where}: a reason it never had was added", entry_id)
    if kind == "spend" and (delta >= 0 or ref_type != "redemption"):
        report.fail(f"{where}: a spend must be negative and reference its redemption", entry_id)
    target = chain.deltas.get(reverses_id) if reverses_id is not None else None
    if kind in ("refund", "reverse"):
        wanted_kind = ("spend",) if kind == "refund" else ("earn", "spend", "adjust")
        if target is None or target[0] not in wanted_kind or target[1] != -delta:
            report.fail(f"{where}: {kind} does not undo an earlier {'/'.join(wanted_kind)} of this account", entry_id)
    # As post() and reverse() credit the lots: a credit to its own year's, taking one back from the year it went to.
    year = None
    if delta > 0 and reverses_id is None:
        year = year_of(created_at)
        chain.lots[year] = chain.lots.get(year, 0) + delta
    elif delta < 0 and target is not None and target[2] is not None:
        chain.lots[target[2]] = chain.lots.get(target[2], 0) + delta
    chain.deltas[entry_id] = (kind, delta, year)
    chain.seq, chain.balance, chain.hash, chain.last_at = seq, balance_after, stored_hash, created_at
    chain.co2e_g += co2e_g
    if kind == "earn" or (kind == "reverse" and target is not None and target[0] == "earn"):
        chain.earned += delta


def _snapshot():
    """A read-only connection that sees one consistent state of accounts and entries, however long the
    check takes and whatever is posted meanwhile; on SQLite it does not take the write lock."""
    options: dict = {"read_only": True}
    if db.engine.dialect.name == "postgresql":
        options |= {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    return db.engine.connect().execution_options(**options)


def verify_ledger(chunk: int = 20000) -> Report:
    report = Report(started_at=utcnow())
    entries = (
        sa.text(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY account_id, seq")  # noqa: S608
        .columns(created_at=db.metadata.tables["ledger_entries"].c.created_at.type)
        .execution_options(yield_per=chunk)
    )
    chain: _Chain | None = None
    count = 0
    year_of = _local_year(current_app.config["TIMEZONE"])
    with _snapshot() as connection, connection.begin():
        accounts = {
            row[0]: tuple(row[1:])
            for row in connection.execute(
                sa.text(
                    "SELECT id, balance, lifetime_earned, co2e_g, last_seq, last_hash, last_entry_at FROM accounts"
                ).columns(last_entry_at=db.metadata.tables["accounts"].c.last_entry_at.type)
            )
        }
        report.accounts = len(accounts)
        lots: dict[int, dict[int, int]] = {}
        for account_id, year, credited in connection.execute(
            sa.text("SELECT account_id, year, credited FROM point_lots")
        ):
            lots.setdefault(account_id, {})[year] = credited
        # Only admins' actions have reasons: few enough to hold while the entries stream past.
        reasons = {
            entry_id: (salt, text)
            for entry_id, salt, text in connection.execute(
                sa.text("SELECT entry_id, salt, text FROM ledger_entry_reasons")
            )
        }
        for row in connection.execute(entries):
            count += 1
            if chain is None or row[1] != chain.account_id:
                if chain is not None:
                    _close(chain, accounts, lots, report)
                chain = _Chain(row[1])
            _check(chain, row, year_of, reasons, report)
    if chain is not None:
        _close(chain, accounts, lots, report)
    for account_id, (balance, earned, co2e_g, last_seq, last_hash, last_at) in accounts.items():
        if (balance, earned, co2e_g, last_seq, last_hash, last_at) != (0, 0, 0, 0, GENESIS_HASH, None):
            report.fail(
                f"account {account_id}: no entries, yet balance={balance} lifetime={earned} co2e_g={co2e_g} "
                f"seq={last_seq} last entry at {last_at}"
            )
    for account_id, by_year in lots.items():
        if stored := _by_year(by_year):
            report.fail(f"account {account_id}: no entries, yet stored points by year {stored}")
    report.entries, report.finished_at = count, utcnow()
    return report


def keep_check(report: Report, run_by: str, staff_id: int | None = None) -> tuple[LedgerCheck, bool]:
    """Keep a run's result (`run_by` "cli" or "admin") for the admin site, which shows the latest; and whether it
    was kept. Keeping may fail (a read-only replica or role, the code deployed before `db upgrade`): the verdict
    stands all the same, and comes back unkept."""
    check = LedgerCheck(
        started_at=report.started_at, finished_at=report.finished_at, ok=report.ok, accounts=report.accounts,
        entries=report.entries, first_bad_entry=report.first_bad_entry, problem_count=len(report.problems),
        problems=report.problems[:KEPT_NOTICES], notice_count=report.notice_count, notices=report.notices,
        run_by=run_by, staff_id=staff_id,
    )  # fmt: skip
    try:
        db.session.add(check)
        commit()
    except sa.exc.SQLAlchemyError:
        db.session.rollback()
        log.warning("ledger check not kept", exc_info=True)
        return check, False
    return check, True


def latest_check() -> LedgerCheck | None:
    return db.session.scalars(sa.select(LedgerCheck).order_by(LedgerCheck.finished_at.desc()).limit(1)).first()
