from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy import DDL, event
from sqlalchemy.orm import Mapped, column_property, mapped_column

from app.clock import utcnow
from app.db import db

KINDS = ("earn", "spend", "refund", "expire", "adjust", "reverse")
GENESIS_HASH = "0" * 64
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Account(db.Model):
    """A resident's points account. Only ledger.service changes it, always together with an entry."""

    __tablename__ = "accounts"
    __table_args__ = (sa.CheckConstraint("balance >= 0", name="balance_non_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    resident_id: Mapped[int] = mapped_column(sa.ForeignKey("residents.id"), unique=True)
    balance: Mapped[int] = mapped_column(default=0)
    lifetime_earned: Mapped[int] = mapped_column(default=0)
    co2e_g: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_seq: Mapped[int] = mapped_column(default=0)
    last_hash: Mapped[str] = mapped_column(sa.String(64), default=GENESIS_HASH)
    # The newest entry's moment: the next is never dated before it, so the chain's order is also its time order.
    last_entry_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EntryReason(db.Model):
    """Why an admin moved points, as they typed it: it may name a person, whose personal data is erased when they
    close their account (PIPL). So it is kept beside the chain, which holds only its salted digest
    (`LedgerEntry.reason_digest`): erasing the text (`text` NULL) leaves a chain that verifies, while any other change
    to it, or its row removed, fails `ledger verify`. Erasure takes the salt too, so the digest tells nothing."""

    __tablename__ = "ledger_entry_reasons"

    entry_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("ledger_entries.id"), primary_key=True)
    salt: Mapped[str | None] = mapped_column(sa.String(32))
    text: Mapped[str | None] = mapped_column(sa.String(200))


class LedgerEntry(db.Model):
    """Append-only. Never updated or deleted; a correction is a reversing entry. Its memo is written by the system
    (a point's name, 人工调整); what an admin types is its reason (EntryReason)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "seq"),
        sa.UniqueConstraint("account_id", "kind", "ref_type", "ref_id"),
        sa.CheckConstraint(sa.column("kind").in_(KINDS), name="kind"),
        sa.CheckConstraint("balance_after >= 0", name="balance_after_non_negative"),
        sa.CheckConstraint("delta <> 0", name="delta_non_zero"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"))
    seq: Mapped[int]
    delta: Mapped[int]
    balance_after: Mapped[int]
    kind: Mapped[str] = mapped_column(sa.String(16))
    source: Mapped[str] = mapped_column(sa.String(32))
    activity: Mapped[str | None] = mapped_column(sa.String(64))
    rule_id: Mapped[int | None] = mapped_column(sa.ForeignKey("rules.id"))
    co2e_g: Mapped[int] = mapped_column(default=0)
    ref_type: Mapped[str] = mapped_column(sa.String(32))
    ref_id: Mapped[str] = mapped_column(sa.String(64))
    memo: Mapped[str | None] = mapped_column(sa.String(200))
    actor_type: Mapped[str] = mapped_column(sa.String(16))
    actor_id: Mapped[int | None]
    reverses_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("ledger_entries.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    hash: Mapped[str] = mapped_column(sa.String(64))
    reason_digest: Mapped[str | None] = mapped_column(sa.String(64))
    reason: Mapped[str | None] = column_property(
        sa.select(EntryReason.text).where(EntryReason.entry_id == id).scalar_subquery()
    )

    @property
    def note(self) -> str | None:
        """What the resident and staff read: the memo, and the reason unless it was erased."""
        return "：".join(part for part in (self.memo, self.reason) if part) or None


class DailyEarning(db.Model):
    """Points counted per resident, local day and activity (or the daily total), for caps. A charge is refused against
    the limit it carries, the one in force now, so a cap changed during the day counts from the next charge; `cap`
    records that limit as of the last charge, for whoever reads the counter."""

    __tablename__ = "daily_earnings"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    activity: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    points: Mapped[int] = mapped_column(default=0)
    cap: Mapped[int | None]


class PointLot(db.Model):
    """Points credited per local calendar year: expiry consumes the oldest lots first."""

    __tablename__ = "point_lots"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), primary_key=True)
    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    credited: Mapped[int] = mapped_column(default=0)


class LedgerCheck(db.Model):
    """One run of the ledger's verification, kept: the admin site shows the latest (the nightly job's, usually)
    rather than reading a city's whole ledger inside a request. The first problems and notes are kept, with counts."""

    __tablename__ = "ledger_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime] = mapped_column(index=True)
    ok: Mapped[bool]
    accounts: Mapped[int]
    entries: Mapped[int]
    first_bad_entry: Mapped[int | None] = mapped_column(sa.BigInteger)
    problem_count: Mapped[int]
    problems: Mapped[list[str]] = mapped_column(sa.JSON)
    notice_count: Mapped[int]
    notices: Mapped[list[str]] = mapped_column(sa.JSON)
    run_by: Mapped[str] = mapped_column(sa.String(8))  # "cli" (the nightly job, an operator) or "admin"
    staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))


# The database itself refuses to change or remove an entry, whoever connects. The same statements are in
# the initial migration; tests that simulate tampering have to take them off first.
APPEND_ONLY_TRIGGERS = {
    "postgresql": (
        "CREATE OR REPLACE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'ledger_entries is append-only'; END $$",
        "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries "
        "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()",
    ),
    "sqlite": (
        "CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries "
        "BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END",
        "CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries "
        "BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END",
    ),
}
DROP_APPEND_ONLY_TRIGGERS = {
    "postgresql": ("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries",),
    "sqlite": ("DROP TRIGGER IF EXISTS ledger_entries_no_update", "DROP TRIGGER IF EXISTS ledger_entries_no_delete"),
}

for _dialect, _statements in APPEND_ONLY_TRIGGERS.items():
    for _sql in _statements:
        event.listen(LedgerEntry.__table__, "after_create", DDL(_sql).execute_if(dialect=_dialect))
