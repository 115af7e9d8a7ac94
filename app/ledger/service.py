"""The only code that moves points: `post` and `reverse`, and what is built on them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache, lru_cache
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.carbon import service as carbon
from app.carbon.methodology import CapCharge
from app.carbon.models import DAILY_TOTAL
from app.clock import local_day, local_midnight, utcnow
from app.common import keyset_page
from app.db import bound_row, commit, db, dialect_name, get_or_404, run
from app.errors import (
    CapReached,
    Duplicate,
    InsufficientPoints,
    InvalidState,
    NotFound,
    ServiceUnavailable,
    field_error,
)
from app.ledger.chain import TOKEN, canonical, link, micros, new_salt, reason_digest
from app.ledger.models import Account, DailyEarning, EntryReason, LedgerEntry, PointLot
from app.people.models import Resident

log = logging.getLogger(__name__)


def _tz() -> str:
    return current_app.config["TIMEZONE"]


def open_account(resident_id: int) -> Account:
    account = Account(resident_id=resident_id)
    db.session.add(account)
    db.session.flush()
    return account


_LOCK_ACCOUNT = (
    sa.select(Account.id, Account.balance, Account.last_seq, Account.last_hash, Account.last_entry_at)
    .where(Account.resident_id == sa.bindparam("lock_resident_id"))
    .with_for_update(of=Account.__table__)
)


@dataclass(frozen=True)
class Claim:
    """A slot that a posting takes first, such as a check-in per point and day: a prebuilt INSERT … ON CONFLICT
    DO NOTHING RETURNING the slot's id, or (PostgreSQL only) a SELECT of the id that data-modifying CTEs write,
    such as a deposit with its lines. Its bind parameters never clash with the lock's. The slot's id becomes the
    entry's ref_id. When no id comes back, the posting raises what `refused()` returns, which may look up why.
    On PostgreSQL the claim travels with the account lock, in one round trip."""

    statement: sa.Insert | sa.Select
    params: dict[str, Any]
    refused: Callable[[], Exception]


@lru_cache(maxsize=64)
def _lock_with_claim(statement: sa.Insert | sa.Select) -> sa.Select:
    """The lock, with the claim as a data-modifying CTE: built once per claim statement, which callers prebuild."""
    claimed = statement.cte("claimed")
    return _LOCK_ACCOUNT.add_columns(sa.select(*claimed.c).scalar_subquery().label("claim_id"))


def _lock_account(resident_id: int, claim: Claim | None = None):
    """The account's chain head, locked until the caller's transaction ends (a row lock on PostgreSQL;
    SQLite transactions already hold the write lock), and the claimed slot's id if there is a claim (taken
    first). Read with Core: a lock is only as good as a fresh read. The posting's statements skip the ORM, so
    its pending rows (an entry's referent) are flushed first, as a session execute would."""
    db.session.flush()
    params = {"lock_resident_id": resident_id}
    claim_id = None
    if claim is None:
        account = run(_LOCK_ACCOUNT, params).first()
    elif dialect_name() == "postgresql":
        account = run(_lock_with_claim(claim.statement), params | claim.params).first()
        claim_id = account.claim_id if account is not None else None
    else:
        claim_id = run(claim.statement, claim.params).scalar()
        account = run(_LOCK_ACCOUNT, params).first()
    if account is None:
        raise NotFound("居民不存在")
    if claim is not None and claim_id is None:
        raise claim.refused()
    return account, claim_id


_ENTRY_COLUMNS = (
    "account_id", "seq", "delta", "balance_after", "kind", "source", "activity", "rule_id", "co2e_g", "ref_type",
    "ref_id", "memo", "actor_type", "actor_id", "reverses_id", "created_at", "hash", "reason_digest",
)  # fmt: skip


_REASON = sa.insert(EntryReason)  # built once: run() caches a statement's compiled form by the statement


def _counter_upsert(insert_stmt):
    """A counter only moves while it stays within its cap; a row that would not is not returned."""
    table = DailyEarning.__table__
    return insert_stmt.on_conflict_do_update(
        index_elements=["account_id", "day", "activity"],
        set_={"points": table.c.points + insert_stmt.excluded.points, "cap": insert_stmt.excluded.cap},
        where=insert_stmt.excluded.cap.is_(None)
        | (table.c.points + insert_stmt.excluded.points <= insert_stmt.excluded.cap),
    ).returning(table.c.activity)


def _head_update(*conditions) -> sa.Update:
    accounts = Account.__table__
    return (
        accounts.update()
        .where(accounts.c.id == sa.bindparam("p_account_id"), *conditions)
        .values(
            balance=sa.bindparam("p_balance_after"),
            last_seq=sa.bindparam("p_seq"),
            last_hash=sa.bindparam("p_hash"),
            last_entry_at=sa.bindparam("p_created_at", type_=accounts.c.last_entry_at.type),
            co2e_g=accounts.c.co2e_g + sa.bindparam("p_co2e_g"),
            lifetime_earned=accounts.c.lifetime_earned + sa.bindparam("p_lifetime"),
        )
    )


def _lot_upsert(insert_stmt):
    table = PointLot.__table__
    return insert_stmt.on_conflict_do_update(
        index_elements=["account_id", "year"], set_={"credited": table.c.credited + insert_stmt.excluded.credited}
    )


_LOT_COLUMNS = {"account_id": "p_account_id", "year": "p_year", "credited": "p_lot"}


@cache
def _sqlite_statements() -> dict[str, sa.Executable]:
    """A posting on SQLite, one statement at a time (the transaction already holds the write lock)."""
    entries = LedgerEntry.__table__
    return {
        "caps": _counter_upsert(sqlite.insert(DailyEarning.__table__)),
        "entry": entries.insert()
        .values({name: sa.bindparam(f"p_{name}") for name in _ENTRY_COLUMNS})
        .returning(entries.c.id),
        "head": _head_update(),
        "lot": _lot_upsert(
            sqlite.insert(PointLot.__table__).values({c: sa.bindparam(p) for c, p in _LOT_COLUMNS.items()})
        ),
    }


@cache
def _postgresql_posting(capped: bool, credit: bool) -> sa.Select:
    """A posting on PostgreSQL in one round trip, with data-modifying CTEs: count the caps, then append the entry,
    move the account's head and credit the year's lot. The entry is written only if every counter accepted its
    charge, and the head and the lot only if the entry was. Answers the entry's id (None when refused) and the
    counters that accepted. Parameters are prefixed so that one name never means two columns; the charges come
    as arrays so that one cached statement serves any number of them."""
    entries, caps_table = LedgerEntry.__table__, DailyEarning.__table__
    entry_source = bound_row(entries, {name: f"p_{name}" for name in _ENTRY_COLUMNS})
    counted = None
    if capped:
        charges = (
            sa.func.unnest(
                sa.bindparam("c_activities", type_=postgresql.ARRAY(sa.String)),
                sa.bindparam("c_points", type_=postgresql.ARRAY(sa.Integer)),
                sa.bindparam("c_caps", type_=postgresql.ARRAY(sa.Integer)),
            )
            .table_valued("activity", "points", "cap")
            .render_derived(name="charges")
        )
        source = sa.select(
            sa.bindparam("p_account_id", type_=sa.Integer), sa.bindparam("p_day", type_=caps_table.c.day.type),
            charges.c.activity, charges.c.points, charges.c.cap,
        )  # fmt: skip
        columns = ["account_id", "day", "activity", "points", "cap"]
        counted = _counter_upsert(postgresql.insert(caps_table).from_select(columns, source)).cte("counted")
        all_counted = sa.select(sa.func.count()).select_from(counted).scalar_subquery() == sa.bindparam("c_count")
        entry_source = entry_source.where(all_counted)
    entry = entries.insert().from_select(list(_ENTRY_COLUMNS), entry_source).returning(entries.c.id).cte("new_entry")
    written = sa.exists(sa.select(entry.c.id))
    posting = sa.select(
        sa.select(entry.c.id).scalar_subquery().label("entry_id"),
        (
            sa.select(sa.func.array_agg(counted.c.activity)).scalar_subquery() if counted is not None else sa.null()
        ).label("counted"),
    ).add_cte(_head_update(written).cte("new_head"))
    if credit:
        lot_source = bound_row(PointLot.__table__, _LOT_COLUMNS).where(written)
        lot = _lot_upsert(postgresql.insert(PointLot.__table__).from_select(list(_LOT_COLUMNS), lot_source))
        posting = posting.add_cte(lot.cte("new_lot"))
    return posting


def _apply(params: dict[str, Any], charges: Sequence[CapCharge]) -> tuple[int | None, set[str]]:
    """Count the caps and, if every one accepts, write the entry, the head and the lot: (entry id or None, the
    counters that accepted). A refusal may leave counters charged; the caller's transaction rolls back."""
    credit = params["p_lot"] != 0
    if dialect_name() == "postgresql":
        if charges:
            params |= {
                "c_activities": [c.key for c in charges], "c_points": [c.amount for c in charges],
                "c_caps": [c.limit for c in charges], "c_count": len(charges),
            }  # fmt: skip
        row = run(_postgresql_posting(bool(charges), credit), params).one()
        return row.entry_id, set(row.counted or ())
    statements = _sqlite_statements()
    counted: set[str] = set()
    if charges:
        rows = [
            {"account_id": params["p_account_id"], "day": params["p_day"], "activity": c.key, "points": c.amount,
             "cap": c.limit}
            for c in charges
        ]  # fmt: skip
        counted = set(run(statements["caps"], rows).scalars())
        if len(counted) < len(charges):
            return None, counted
    entry_id = run(statements["entry"], params).scalar_one()
    run(statements["head"], params)
    if credit:
        run(statements["lot"], params)
    return entry_id, counted


def _counted(account_id: int, day: date, keys: Sequence[str]) -> dict[str, int]:
    """The day's counts so far of the counters named `keys` that have counted anything."""
    counters = sa.select(DailyEarning.activity, DailyEarning.points).where(
        DailyEarning.account_id == account_id, DailyEarning.day == day, DailyEarning.activity.in_(keys)
    )
    return dict(db.session.execute(counters).all())


def room_under_caps(resident_id: int, caps: Sequence[CapCharge], at: datetime | None = None) -> dict[str, int | None]:
    """How many points each of `caps`' daily counters still takes (None: uncapped), on the day a posting at `at`
    counts on. Read under the account's lock, which the caller's use case holds until it commits, so a posting
    fitted to these figures is not refused."""
    account, _ = _lock_account(resident_id)
    today = _counted(account.id, local_day(_dated(at, account.last_entry_at), _tz()), [c.key for c in caps])
    return {c.key: None if c.limit is None else max(c.limit - today.get(c.key, 0), 0) for c in caps}


def _refuse(account_id: int, day: date, caps: Sequence[CapCharge], refused: set[str] | None = None) -> None:
    """Raise for the charges their daily counters refuse, naming each (a collector takes them all off at once):
    those in `refused` (the counters' own verdict), or else every charge that today's count leaves no room for.
    `details` describe the first, as before, and list every refused counter with its own figures."""
    today = _counted(account_id, day, [c.key for c in caps])
    if refused is None:
        refused = {c.key for c in caps if c.limit is not None and today.get(c.key, 0) + c.amount > c.limit}
    messages, counters = [], []
    for charge in [c for c in caps if c.key in refused]:
        used = today.get(charge.key, 0)
        remaining = max(charge.limit - used, 0)
        if remaining == 0:
            messages.append(f"{charge.label}今天的积分已达上限（每天 {charge.limit} 积分）")
        else:  # what would still fit: a collector can record less, or the rest another day
            messages.append(
                f"{charge.label}今天还可得 {remaining} 积分（每天上限 {charge.limit}），本次 {charge.amount} 积分超出"
            )
        counters.append({"activity": charge.key, "cap": charge.limit, "used": used, "remaining": remaining,
                         "points": charge.amount})  # fmt: skip
    details = counters[0] | {"refused": [c["activity"] for c in counters], "counters": counters}
    raise CapReached("；".join(messages), details=details)


# How far ahead of this server's clock an account's last entry may be and still date the next one: a request waits
# for the lock at most lock_timeout (5 s by default), and servers' clocks agree to well within a second.
MAX_CLOCK_LEAD = timedelta(seconds=60)


def _dated(at: datetime | None, last: datetime | None) -> datetime:
    """An entry's moment, taken under the account's lock: never before the entry it follows, so that one chain's
    entries are dated in the order they are appended. A request that waited for the lock, or a server whose clock
    lags, takes the last entry's moment. `at`, the use case's own moment, has dated its day already (a check-in's,
    the caps'): if the chain has passed into the next local day meanwhile, the use case is refused, to be retried.
    A last entry further ahead was dated by a clock that ran fast: following it would date every later entry in the
    future (and refuse every scan until then), so the clock is kept and `ledger verify` notes the entry."""
    now = at or utcnow()
    if last is None or now >= last:
        return now
    if last - now > MAX_CLOCK_LEAD:
        log.error("account's last entry is dated %s, more than %s after this posting's moment (%s): servers' clocks "
                  "disagree, or the request waited that long", last, MAX_CLOCK_LEAD, now)  # fmt: skip
        return now
    if at is not None and local_day(at, _tz()) != local_day(last, _tz()):
        raise ServiceUnavailable(
            headers={"Retry-After": "1"},
            diagnosis=f"posting dated {at} refused: its account's last entry is dated {last}, on the next day",
        )
    return last


def post(
    resident_id: int,
    delta: int,
    *,
    kind: str,
    source: str,
    ref_type: str,
    ref_id: Any = None,
    actor_type: str,
    actor_id: int | None,
    activity: str | None = None,
    rule_id: int | None = None,
    co2e_g: int = 0,
    memo: str | None = None,
    reason: str | None = None,
    reverses_id: int | None = None,
    caps: Sequence[CapCharge] = (),
    lifetime_delta: int | None = None,
    claim: Claim | None = None,
    lot: tuple[int, int] | None = None,
    at: datetime | None = None,
) -> LedgerEntry:
    """Append one entry to the resident's chain, referring to `ref_id` or to the slot `claim` takes. The caller's
    use case commits. `lot` is the (local year, points) to add to the resident's yearly lots, which expiry reads;
    by default a credit goes to this year's lot and a debit to none (debits consume the oldest lots first). `at` is
    the use case's moment when it has dated something already (a check-in's day): the entry, its caps' day and its
    lot take that moment too, never one a few microseconds later across a local midnight (or the last entry's
    moment, on the same day, see `_dated`). `memo` is the system's words; `reason`, an admin's, is kept beside the
    chain (EntryReason)."""
    if (ref_id is None) == (claim is None):
        raise ValueError("a posting refers to a ref_id or to a claimed slot, exactly one")
    ref_id = None if claim is not None else str(ref_id)  # a claimed slot's id is known after the lock
    for name, value in (("kind", kind), ("source", source), ("ref_type", ref_type), ("ref_id", ref_id or ""),
                        ("activity", activity or ""), ("actor_type", actor_type)):  # fmt: skip
        if not TOKEN.match(value):
            raise ValueError(f"{name} {value!r} is not a ledger token")
    if delta == 0:
        raise ValueError("a ledger entry moves a non-zero number of points")
    if len({c.key for c in caps}) != len(caps):
        raise ValueError("one charge per daily counter: merge charges with the same key")
    account, claim_id = _lock_account(resident_id, claim)
    now = _dated(at, account.last_entry_at)
    today = local_day(now, _tz())
    ref_id = ref_id if claim is None else str(claim_id)
    if account.balance + delta < 0:
        raise InsufficientPoints(
            f"积分不足：当前余额 {account.balance}，需要 {-delta}",
            details={"balance": account.balance, "required": -delta},
        )
    if any(c.limit is not None and c.amount > c.limit for c in caps):
        _refuse(account.id, today, caps)  # with every other counter that today's count leaves no room for
    seq, balance_after = account.last_seq + 1, account.balance + delta
    salt = new_salt() if reason else None
    digest = reason_digest(salt, reason) if salt else None
    values = {
        "account_id": account.id, "seq": seq, "delta": delta, "balance_after": balance_after, "kind": kind,
        "source": source, "activity": activity, "rule_id": rule_id, "co2e_g": co2e_g, "ref_type": ref_type,
        "ref_id": ref_id, "memo": memo, "actor_type": actor_type, "actor_id": actor_id, "reverses_id": reverses_id,
        "created_at": now, "reason_digest": digest,
        "hash": link(
            account.last_hash,
            canonical(account.id, seq, delta, balance_after, kind, source, activity, rule_id, co2e_g,
                      ref_type, ref_id, actor_type, actor_id, reverses_id, micros(now), memo, digest),
        ),
    }  # fmt: skip
    lifetime = lifetime_delta if lifetime_delta is not None else delta if kind == "earn" else 0
    params = {f"p_{name}": value for name, value in values.items()}
    lot_year, lot_points = lot if lot is not None else (today.year, max(delta, 0))
    params |= {"p_lifetime": lifetime, "p_year": lot_year, "p_lot": lot_points, "p_day": today}
    entry_id, counted = _apply(params, caps)
    if entry_id is None:
        _refuse(account.id, today, caps, {c.key for c in caps if c.key not in counted})
    if reason:
        run(_REASON, {"entry_id": entry_id, "salt": salt, "text": reason})
    return LedgerEntry(id=entry_id, reason=reason, **values)


# How to find the cap charges an earn entry made, by its ref_type, registered by the use cases that post them: a
# reversal gives the day's room back, so that a corrected deposit can be recorded the same day.
_CAP_CHARGES_OF: dict[str, Callable[[LedgerEntry], Sequence[CapCharge]]] = {}


def charges_caps(ref_type: str):
    """Register `fn(entry) -> the cap charges that entry made` for entries of `ref_type`."""

    def register(fn: Callable[[LedgerEntry], Sequence[CapCharge]]):
        _CAP_CHARGES_OF[ref_type] = fn
        return fn

    return register


_RELEASE = (
    DailyEarning.__table__.update()
    .where(
        DailyEarning.account_id == sa.bindparam("r_account_id"),
        DailyEarning.day == sa.bindparam("r_day"),
        DailyEarning.activity == sa.bindparam("r_key"),
    )
    .values(points=DailyEarning.points - sa.bindparam("r_amount"))
)


def lock_account(resident_id: int) -> None:
    """Hold the resident's account until the transaction ends, as post() does: a use case that reads the account's
    entries before it posts (a deposit's correction) takes it first, so that nothing is posted in between."""
    _lock_account(resident_id)


def release_caps(entry: LedgerEntry) -> None:
    """Give back what a credit counted against its day's caps (a reversal does, unless told its caller did)."""
    charges_of = _CAP_CHARGES_OF.get(entry.ref_type)
    if entry.kind != "earn" or entry.delta <= 0 or charges_of is None:
        return
    day = local_day(entry.created_at, _tz())  # the day the entry counted on, as post() took it
    for charge in charges_of(entry):
        run(_RELEASE, {"r_account_id": entry.account_id, "r_day": day, "r_key": charge.key, "r_amount": charge.amount})


def _resident_of(entry: LedgerEntry) -> int:
    return db.session.scalar(sa.select(Account.resident_id).where(Account.id == entry.account_id))


def reverse(entry: LedgerEntry, *, kind: str, ref_type: str, ref_id: Any, actor_type: str,
            actor_id: int | None, memo: str, reason: str | None = None,
            caps_released: bool = False) -> LedgerEntry:  # fmt: skip
    """Undo an entry with its exact opposite. One reversal per entry is a unique constraint. `caps_released`: the
    caller gave back the entry's caps already (release_caps), to make room for what replaces it."""
    if entry.kind in ("reverse", "refund", "expire"):
        raise InvalidState("该记录不能被冲正")
    resident_id = _resident_of(entry)
    # Under the account's lock, which concurrent reversals and the expiry job also take: a reversal that lost a race
    # is told the entry is reversed (not that the points are gone), and no year expires between the check and the
    # posting.
    _lock_account(resident_id)
    if db.session.scalar(sa.select(sa.exists().where(LedgerEntry.reverses_id == entry.id))):
        raise InvalidState("该记录已被冲正")
    # Taking back a credit empties the lot it went to, not the oldest one; giving back a debit moves no lot, so the
    # oldest points it had consumed count as unspent again (never as this year's, which would outlive their expiry):
    # if their year has expired meanwhile, the next `points expire` takes them as it would have.
    credit_year = local_day(entry.created_at, _tz()).year
    if entry.delta > 0 and _year_expired(entry.account_id, credit_year):
        # Expiry already took what was left of those points; taking them back would take them twice.
        message = f"这笔积分属于 {credit_year} 年，该年度的积分已到期清零，不能再冲正"
        raise InvalidState(f"{message}；如需追回其中已使用的部分，请做人工调整", details={"year": credit_year})
    reversal = post(
        resident_id, -entry.delta, kind=kind, source=entry.source, ref_type=ref_type, ref_id=ref_id,
        actor_type=actor_type, actor_id=actor_id, activity=entry.activity, rule_id=entry.rule_id,
        co2e_g=-entry.co2e_g, memo=memo, reason=reason, reverses_id=entry.id,
        lifetime_delta=-entry.delta if entry.kind == "earn" else 0,
        lot=(credit_year, -entry.delta) if entry.delta > 0 else (credit_year, 0),
    )  # fmt: skip
    if not caps_released:
        release_caps(entry)
    return reversal


def _year_expired(account_id: int, year: int) -> bool:
    """Whether the expiry job has taken what was left of `year` (its first expire entry is referenced by the year)."""
    expired = sa.exists().where(
        LedgerEntry.account_id == account_id,
        LedgerEntry.kind == "expire",
        LedgerEntry.ref_type == "expiry",
        LedgerEntry.ref_id == str(year),
    )
    return bool(db.session.scalar(sa.select(expired)))


# Admin use cases


def adjust(actor, resident_id: int, delta: int, reason: str, reference: str | None = None) -> LedgerEntry:
    """Grant or claw back points by hand. Audited, and an ordinary entry in the chain. A caller-chosen
    `reference` (a form's nonce) makes a double submission a 409 instead of a second adjustment."""
    actor.require_role("admin")
    if delta == 0:
        raise field_error("delta", "调整积分不能为 0")
    if reference is not None and not (8 <= len(reference) <= 64 and TOKEN.match(reference)):
        raise field_error("reference", "调整编号无效")
    ref = reference or uuid.uuid4().hex
    try:
        with db.session.begin_nested():
            entry = post(
                resident_id, delta, kind="adjust", source="admin", ref_type="adjustment", ref_id=ref,
                actor_type=actor.kind, actor_id=actor.id, memo="人工调整", reason=reason,
            )  # fmt: skip
    except IntegrityError as exc:
        raise Duplicate("这笔调整已经提交过了") from exc
    audit.record(actor, "ledger.adjust", "resident", resident_id, {"delta": delta, "reason": reason, "entry": ref})
    commit()
    return entry


def reverse_entry(actor, entry_id: int, reason: str, of_resident: int | None = None) -> LedgerEntry:
    """`of_resident`: the entry must be this resident's (a page about one resident reverses only its entries)."""
    actor.require_role("admin")
    entry = get_or_404(LedgerEntry, entry_id, "积分记录不存在")
    if of_resident is not None and _resident_of(entry) != of_resident:
        raise NotFound("积分记录不存在")
    try:
        with db.session.begin_nested():
            result = reverse(
                entry, kind="reverse", ref_type="entry", ref_id=entry.id, actor_type=actor.kind,
                actor_id=actor.id, memo="冲正", reason=reason,
            )  # fmt: skip
    except IntegrityError as exc:  # a concurrent reversal of the same entry won the race
        raise InvalidState("该记录已被冲正") from exc
    audit.record(actor, "ledger.reverse", "ledger_entry", entry.id, {"reason": reason})
    commit()
    return result


# Resident views


def account_of(resident_id: int) -> Account:
    account = db.session.scalar(sa.select(Account).where(Account.resident_id == resident_id))
    if account is None:
        raise NotFound("居民不存在")
    return account


def expiry_moment(year: int) -> datetime:
    """Points earned in `year` expire when local year + 1 + POINTS_EXPIRY_YEARS begins."""
    years = current_app.config["POINTS_EXPIRY_YEARS"]
    return local_midnight(date(year + 1 + years, 1, 1), _tz())


def _lots(account: Account) -> list[tuple[int, int]]:
    rows = db.session.execute(
        sa.select(PointLot.year, PointLot.credited).where(PointLot.account_id == account.id).order_by(PointLot.year)
    )
    return [(year, credited) for year, credited in rows]


def _remaining_by_year(account: Account, lots: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Debits consume the oldest lots first: what is left of each year's points."""
    debited = sum(credited for _, credited in lots) - account.balance
    remaining = []
    for year, credited in lots:
        used = min(credited, max(debited, 0))
        debited -= used
        remaining.append((year, credited - used))
    return remaining


def next_expiry(account: Account) -> tuple[int, datetime | None]:
    for year, left in _remaining_by_year(account, _lots(account)):
        if left > 0:
            return left, expiry_moment(year)
    return 0, None


def profile(resident_id: int) -> dict[str, Any]:
    resident = db.session.get(Resident, resident_id)
    account = account_of(resident_id)
    expiring_points, expiring_at = next_expiry(account)
    return {
        "id": resident.id,
        "nickname": resident.nickname,
        "community_id": resident.community_id,
        "status": resident.status,
        "created_at": resident.created_at,
        "balance": account.balance,
        "co2e_g": account.co2e_g,
        "lifetime_earned": account.lifetime_earned,
        "expiring_points": expiring_points,
        "expiring_at": expiring_at,
        # The day to show ("2027-12-31 到期"): the midnight above, cut to its date, reads a day late, or in UTC a
        # day early.
        "expiring_on": local_day(expiring_at, _tz()) - timedelta(days=1) if expiring_at else None,
    }


def entry_count() -> int:
    """How many entries the ledger holds, from each chain's last sequence number: no scan of the entries."""
    return int(db.session.scalar(sa.select(sa.func.coalesce(sa.func.sum(Account.last_seq), 0))))


def daily_caps(resident_id: int) -> dict[str, Any]:
    """Today's capped counters, for a screen that shows what can still be earned: each activity in force with a daily
    cap, the daily total first, with what it has counted today and what it still takes. Read without the account's
    lock: a posting is judged against the counters as they are when it is written."""
    now = utcnow()
    day = local_day(now, _tz())
    capped = [rule for rule in carbon.rules_in_force(now) if rule.daily_cap_points is not None]
    capped.sort(key=lambda rule: (rule.activity != DAILY_TOTAL, rule.activity))
    counted = _counted(account_of(resident_id).id, day, [rule.activity for rule in capped])
    items = []
    for rule in capped:
        used = counted.get(rule.activity, 0)
        items.append({"activity": rule.activity, "title": carbon.cap_label(rule), "cap": rule.daily_cap_points,
                      "used": used, "remaining": max(rule.daily_cap_points - used, 0)})  # fmt: skip
    return {"day": day, "items": items}


def reversed_among(entry_ids: list[int]) -> set[int]:
    """Which of these entries have been reversed already."""
    stmt = sa.select(LedgerEntry.reverses_id).where(LedgerEntry.reverses_id.in_(set(entry_ids)))
    return set(db.session.scalars(stmt))


def ledger_page(resident_id: int, cursor: str | None, limit: int) -> dict[str, Any]:
    account = account_of(resident_id)
    stmt = sa.select(LedgerEntry).where(LedgerEntry.account_id == account.id)
    return keyset_page(stmt, LedgerEntry.seq, cursor, limit)


# Scheduled job


def _expire_year(resident_id: int, account_id: int, year: int, left: int) -> None:
    """One `expire` entry for what is left of a year, referenced by the year. Points of a year that has expired
    already can come back (a debit given back restores the oldest points it took); they expire again under a
    second reference, the year and the new entry's place in the chain."""
    expire = {"kind": "expire", "source": "expiry", "ref_type": "expiry", "actor_type": "system", "actor_id": None,
              "memo": f"{year} 年获得的积分已到期"}  # fmt: skip
    try:
        with db.session.begin_nested():
            post(resident_id, -left, ref_id=year, **expire)
    except IntegrityError:
        seq = db.session.scalar(sa.select(Account.last_seq).where(Account.id == account_id)) + 1
        post(resident_id, -left, ref_id=f"{year}.{seq}", **expire)


def expire_points(as_of: datetime, batch: int = 200) -> dict[str, int]:
    """Write `expire` entries for every lot whose expiry moment is at or before `as_of`. Idempotent:
    a second run finds nothing left to expire, and (account, year) is unique among expire entries."""
    years = current_app.config["POINTS_EXPIRY_YEARS"]
    last_due_year = local_day(as_of, _tz()).year - 1 - years
    # Only accounts that still hold points from a due year: their balance exceeds what later years credited.
    later = sa.func.sum(sa.case((PointLot.year > last_due_year, PointLot.credited), else_=0))
    due = db.session.execute(
        sa.select(Account.id, Account.resident_id)
        .join(PointLot, PointLot.account_id == Account.id)
        .group_by(Account.id, Account.resident_id, Account.balance)
        .having(sa.func.min(PointLot.year) <= last_due_year, Account.balance > later)
        .order_by(Account.id)
    ).all()
    written = points = 0
    for index, (_, resident_id) in enumerate(due, start=1):
        # One consistent reading under the lock: what is left of each year adds up to the balance.
        account, _ = _lock_account(resident_id)
        for year, left in _remaining_by_year(account, _lots(account)):
            if year > last_due_year or left <= 0:
                continue
            _expire_year(resident_id, account.id, year, left)
            written, points = written + 1, points + left
        if index % batch == 0:
            db.session.commit()
    db.session.commit()
    return {"accounts": len(due), "entries": written, "points": points}
