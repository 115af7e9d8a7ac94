"""首页: a few counts, scoped to what the caller may see. Read-only."""

from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, render_template

from admin.blueprint import bp
from admin.security import current_admin_actor
from app.clock import local_day, local_midnight, utcnow
from app.db import db
from app.ledger.models import Account
from app.people.models import Resident, Staff
from app.sorting import service as sorting
from app.sorting.models import Checkin, CollectionPoint, Deposit


def _scalar(stmt) -> int:
    return int(db.session.scalar(stmt) or 0)


def _counts(actor) -> list[tuple[str, str, str]]:
    """(label, value, note) cards. Ledger figures come from the accounts (one row per resident): the
    number of entries is the sum of each chain's last sequence number, so this stays cheap at scale."""
    community = actor.community_id if actor.role == "worker" else None
    cards: list[tuple[str, str, str]] = []

    # One pass over the residents for both figures: at the zone's 200,000 each count is a scan of its own.
    residents = sa.select(sa.func.count(), sa.func.count().filter(Resident.status == "frozen")).where(
        Resident.status != "closed"
    )
    points = sa.select(sa.func.count()).select_from(CollectionPoint).where(CollectionPoint.active.is_(True))
    staff = sa.select(sa.func.count()).select_from(Staff)
    accounts = sa.select(
        sa.func.coalesce(sa.func.sum(Account.last_seq), 0),
        sa.func.coalesce(sa.func.sum(Account.lifetime_earned), 0),
        sa.func.coalesce(sa.func.sum(Account.balance), 0),
        sa.func.coalesce(sa.func.sum(Account.co2e_g), 0),
    )
    if community is not None:
        residents = residents.where(Resident.community_id == community)
        points = points.where(CollectionPoint.community_id == community)
        staff = staff.where(Staff.community_id == community)
        accounts = accounts.join(Resident, Resident.id == Account.resident_id).where(Resident.community_id == community)
    if actor.role == "alliance":
        staff = staff.where(Staff.organization_id == actor.organization_id)
        return [
            ("本单位工作人员", str(_scalar(staff)), "含店员与联盟账号"),
            ("回收点", str(_scalar(points)), "全区在用"),
        ]

    # Today at the points in scope, whoever the residents are: what the community's own bins and stations took in.
    today = local_day(utcnow(), current_app.config["TIMEZONE"])
    since = local_midnight(today, current_app.config["TIMEZONE"])
    checkins = sa.select(sa.func.count()).select_from(Checkin).where(Checkin.day == today)
    deposits = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Deposit.weight_g), 0)).where(
        Deposit.created_at >= since,
        sorting.not_corrected(),
    )
    if community is not None:
        in_scope = sa.select(CollectionPoint.id).where(CollectionPoint.community_id == community)
        checkins = checkins.where(Checkin.collection_point_id.in_(in_scope))
        deposits = deposits.where(Deposit.collection_point_id.in_(in_scope))
    deposit_count, deposit_g = db.session.execute(deposits).one()

    resident_count, frozen_count = db.session.execute(residents).one()
    entries, earned, balance, co2e_g = db.session.execute(accounts).one()
    scope = "本社区" if community is not None else "全区"
    cards += [
        ("居民", str(resident_count), f"{scope}，其中已冻结 {frozen_count} 人"),
        ("工作人员", str(_scalar(staff)), scope),
        ("回收点", str(_scalar(points)), f"{scope}在用"),
        ("今日打卡", str(_scalar(checkins)), f"{scope}回收点，今天"),
        ("今日回收", f"{int(deposit_g) / 1000:,.1f} kg", f"{scope}回收点今天 {int(deposit_count)} 笔投递"),
        ("积分记录", str(int(entries)), f"{scope}账本条目"),
        ("累计活动积分", str(int(earned)), f"{scope}，不含人工调整；当前余额合计 {int(balance)}"),
        ("累计减排", f"{int(co2e_g) / 1000:,.1f} kg", "CO₂e"),
    ]
    return cards


@bp.get("/")
def dashboard():
    return render_template("admin/dashboard.html", cards=_counts(current_admin_actor()))
