"""Residents, staff, communities and alliance organisations: the rules and the one commit per use case."""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from app.audit import service as audit
from app.auth.guards import Actor
from app.auth.limits import take_password_check
from app.clock import utcnow
from app.common import keyset_page
from app.db import MAX_ID, commit, db, get_or_404, insert_unique, require_exists, run
from app.errors import Forbidden, InvalidState, NotFound, Unauthorized, field_error
from app.exchange.models import Store
from app.ledger.service import open_account, profile
from app.people.models import Community, Organization, Resident, Staff, staff_collection_points
from app.sorting.models import CollectionPoint

ALLIANCE_MAY_CREATE = ("merchant", "alliance")


# Communities and organisations


def list_communities() -> list[Community]:
    return list(db.session.scalars(sa.select(Community).order_by(Community.id)))


def community_page(cursor: str | None, limit: int) -> dict[str, Any]:
    return keyset_page(sa.select(Community), Community.id, cursor, limit, desc=False)


def create_community(actor: Actor, data: dict[str, Any]) -> Community:
    actor.require_role("admin")
    community = insert_unique(Community(**data), "社区名称或编码已存在")
    audit.record(actor, "community.create", "community", community.id, data)
    commit()
    return community


def _organizations(community_id: int | None, kind: str | None) -> sa.Select:
    stmt = sa.select(Organization)
    if community_id is not None:
        stmt = stmt.where(Organization.community_id == community_id)
    if kind is not None:
        stmt = stmt.where(Organization.kind == kind)
    return stmt


def list_organizations(community_id: int | None = None, kind: str | None = None) -> list[Organization]:
    return list(db.session.scalars(_organizations(community_id, kind).order_by(Organization.id)))


def organization_page(community_id: int | None, kind: str | None, cursor: str | None, limit: int) -> dict[str, Any]:
    return keyset_page(_organizations(community_id, kind), Organization.id, cursor, limit, desc=False)


def create_organization(actor: Actor, data: dict[str, Any]) -> Organization:
    actor.require_role("admin")
    require_exists(Community, data.get("community_id"), "community_id", "社区不存在")
    org = insert_unique(Organization(**data), "该成员单位已存在")
    audit.record(actor, "organization.create", "organization", org.id, data)
    commit()
    return org


# Staff


def _scoped_rows(model, ids: list[int], field: str, label: str) -> list:
    ids = sorted(set(ids))
    rows = list(db.session.scalars(sa.select(model).where(model.id.in_(ids)))) if ids else []
    if len(rows) != len(ids):
        missing = sorted(set(ids) - {r.id for r in rows})
        raise field_error(field, f"{label}不存在：{'、'.join(map(str, missing))}")
    return rows


def _check_role_scope(role: str, data: dict[str, Any], stores: list[Store], points: list) -> None:
    required = {
        "worker": ("community_id", "社区工作者必须指定所属社区"),
        "alliance": ("organization_id", "联盟成员必须指定所属单位"),
    }
    if role in required:
        field, message = required[role]
        if data.get(field) is None:
            raise field_error(field, message)
    if role == "merchant" and not stores:
        raise field_error("store_ids", "店员必须至少关联一个兑换点")
    if role == "collector" and not points:
        raise field_error("collection_point_ids", "回收员必须至少关联一个回收点")
    community_id = data.get("community_id")
    elsewhere = sorted(p.id for p in points if community_id is not None and p.community_id != community_id)
    if elsewhere:
        raise field_error("collection_point_ids", f"回收点不属于该回收员所在社区：{', '.join(map(str, elsewhere))}")
    if role != "merchant" and stores:
        raise field_error("store_ids", "只有店员可以关联兑换点")
    if role != "collector" and points:
        raise field_error("collection_point_ids", "只有回收员可以关联回收点")
    organization_id = data.get("organization_id")
    foreign = sorted(s.id for s in stores if organization_id is not None and s.organization_id != organization_id)
    if foreign:
        raise field_error("store_ids", f"兑换点不属于该店员所在单位：{', '.join(map(str, foreign))}")


def refuse_stranding_collectors(point_id: int, community_id: int) -> None:
    """The other side of the rule in `_check_role_scope`: a point moves to another community only once no collector
    of its old community serves it."""
    stranded = db.session.scalars(
        sa.select(Staff.username)
        .join(staff_collection_points, staff_collection_points.c.staff_id == Staff.id)
        .where(staff_collection_points.c.collection_point_id == point_id)
        .where(Staff.community_id.is_not(None), Staff.community_id != community_id)
        .order_by(Staff.username)
    ).all()
    if stranded:
        raise field_error("community_id", f"该回收点的回收员属于原社区，请先调整他们的回收点：{'、'.join(stranded)}")


def _check_alliance_grant(actor: Actor, data: dict[str, Any], stores: list[Store]) -> None:
    """An alliance member creates staff only for its own organisation and its own stores."""
    if actor.is_admin:
        return
    if data["role"] not in ALLIANCE_MAY_CREATE:
        raise Forbidden("联盟成员只能创建本单位的店员或联盟账号")
    if data.get("organization_id") is None:
        data["organization_id"] = actor.organization_id
    actor.require_organization(data["organization_id"])
    if any(store.organization_id != actor.organization_id for store in stores):
        raise Forbidden("只能关联本单位的兑换点")


def create_staff(actor: Actor, data: dict[str, Any]) -> Staff:
    actor.require_role("admin", "alliance")
    data = dict(data)
    stores = _scoped_rows(Store, data.pop("store_ids", []), "store_ids", "兑换点")
    points = _scoped_rows(CollectionPoint, data.pop("collection_point_ids", []), "collection_point_ids", "回收点")
    _check_alliance_grant(actor, data, stores)
    if data["role"] == "merchant" and data.get("organization_id") is None and stores:
        # A clerk belongs to its stores' organisation: without it no alliance member would see or manage the account.
        owners = {store.organization_id for store in stores}
        if len(owners) > 1:
            raise field_error("store_ids", "这些兑换点属于不同单位：请指定店员所属单位")
        data["organization_id"] = owners.pop()
    if not actor.is_admin and data.get("community_id") is not None:
        home = db.session.get(Organization, data["organization_id"])
        if home is None or data["community_id"] != home.community_id:
            raise field_error("community_id", "只能填写本单位所在的社区")
    _check_role_scope(data["role"], data, stores, points)
    require_exists(Community, data.get("community_id"), "community_id", "社区不存在")
    require_exists(Organization, data.get("organization_id"), "organization_id", "单位不存在")
    staff = Staff(
        username=data["username"],
        password_hash=generate_password_hash(data["password"]),
        display_name=data.get("display_name") or "",
        role=data["role"],
        community_id=data.get("community_id"),
        organization_id=data.get("organization_id"),
        stores=stores,
        collection_points=points,
    )
    insert_unique(staff, "用户名已被使用")
    audit.record(actor, "staff.create", "staff", staff.id, {"username": staff.username, "role": staff.role})
    commit()
    return staff


def _visible_staff(actor: Actor, staff: Staff) -> None:
    if actor.is_admin or actor.id == staff.id:
        return
    if actor.role == "alliance" and staff.organization_id == actor.organization_id:
        return
    raise NotFound("工作人员不存在")


def list_staff(actor: Actor, cursor: str | None, limit: int) -> dict[str, Any]:
    actor.require_role("admin", "alliance")
    # Each one's stores and points are in its answer: loaded for the whole page at once, not per staff member.
    stmt = sa.select(Staff).options(sa.orm.selectinload(Staff.stores), sa.orm.selectinload(Staff.collection_points))
    if not actor.is_admin:
        stmt = stmt.where(Staff.organization_id == actor.organization_id)
    return keyset_page(stmt, Staff.id, cursor, limit)


def get_staff(actor: Actor, staff_id: int) -> Staff:
    staff = get_or_404(Staff, staff_id, "工作人员不存在")
    _visible_staff(actor, staff)
    return staff


def staff_names(staff_ids: list[int], usernames: bool = True) -> dict[int, str]:
    """How these staff members are shown beside what they recorded: display name, else username (half a login, so
    only to those who may see it: else an empty name)."""
    rows = db.session.execute(
        sa.select(Staff.id, Staff.display_name, Staff.username).where(Staff.id.in_(set(staff_ids)))
    )
    return {row.id: row.display_name or (row.username if usernames else "") for row in rows}


def can_manage_staff(actor: Actor, staff: Staff) -> bool:
    """Who may change an account: admins any; an alliance member its own organisation's clerks and alliance
    accounts (the roles it may create)."""
    if actor.is_admin:
        return True
    return (
        actor.role == "alliance"
        and staff.organization_id == actor.organization_id
        and staff.role in ALLIANCE_MAY_CREATE
    )


_ACTOR_STILL_ACTIVE = sa.select(Staff.active).where(Staff.id == sa.bindparam("id")).with_for_update(key_share=True)


def _lock_accounts(actor: Actor, staff: Staff) -> None:
    """Lock the account being changed, and the caller's own, in id order, before the rest is read.
    - Two edits of one account take turns (each replaces the scope links the other saw), and a login, which reads
      the account FOR SHARE, either ends before a cut-off set after this or sees the change.
    - Two admins deactivating each other at once take turns too, and the second finds itself deactivated, so the
      last active admin always remains.
    FOR NO KEY UPDATE: rows that only refer to an account (a collector's deposits) are not held up."""
    actor_active = True
    accounts = {staff.id, actor.id} if actor.kind == "staff" else {staff.id}  # "system" (the CLI) has none
    for account_id in sorted(accounts):
        if account_id == staff.id:
            db.session.refresh(staff, with_for_update={"key_share": True})
            if account_id == actor.id:
                actor_active = staff.active
        else:
            actor_active = run(_ACTOR_STILL_ACTIVE, {"id": account_id}).scalar()
    if not actor_active:
        raise Unauthorized("账户不存在或已停用")


def update_staff(actor: Actor, staff_id: int, data: dict[str, Any]) -> Staff:
    actor.require_role("admin", "alliance")
    staff = get_staff(actor, staff_id)
    if not can_manage_staff(actor, staff):
        raise Forbidden()
    if data.get("active") is False and staff.id == actor.id:
        raise InvalidState("不能停用自己的账户：请另一位管理员操作")
    if "password" in data and staff.id == actor.id:
        # A reset asks for no current password: on one's own account it would let a borrowed session take the account
        # in one step. (A borrowed admin session can still make another admin and reset from there; that one is
        # audited as a new account.)
        raise InvalidState("修改自己的密码请使用「修改密码」，需要输入当前密码")
    new_hash = generate_password_hash(data["password"]) if "password" in data else None  # slow: before the lock
    _lock_accounts(actor, staff)
    current = {"role": staff.role, "community_id": staff.community_id, "organization_id": staff.organization_id}
    if "store_ids" in data:
        stores = _scoped_rows(Store, data["store_ids"], "store_ids", "兑换点")
        _check_alliance_grant(actor, dict(current), stores)
        _check_role_scope(staff.role, current, stores, staff.collection_points)
        staff.stores = stores
    if "collection_point_ids" in data:
        actor.require_role("admin")
        points = _scoped_rows(CollectionPoint, data["collection_point_ids"], "collection_point_ids", "回收点")
        _check_role_scope(staff.role, current, staff.stores, points)
        staff.collection_points = points
    if new_hash is not None:
        staff.password_hash = new_hash
    if "password" in data or (data.get("active") is False and staff.active):
        # Read under the lock: a login that held the account began before now (its `since` is rounded down).
        staff.sessions_valid_after = utcnow()
    for key in ("display_name", "active"):
        if key in data:
            setattr(staff, key, data[key])
    details = {k: v for k, v in data.items() if k != "password"}
    if "password" in data:
        details["password_reset"] = True  # the password itself is never recorded
    audit.record(actor, "staff.update", "staff", staff.id, details)
    commit()
    return staff


def change_own_password(actor: Actor, session_id: str, current: str, new: str) -> Staff:
    """A staff member changes their own password, giving the current one again. Every session begun before it ends,
    on other devices too (a leaked password is the usual reason); the caller starts a new one at the cut-off.
    `session_id` is the caller's session, whose tries at the current password are limited."""
    staff = get_or_404(Staff, actor.id, "账户不存在")
    take_password_check(staff.id, session_id)
    checked = staff.password_hash
    if not check_password_hash(checked, current):
        raise field_error("current_password", "当前密码不正确")
    if new == current:
        raise field_error("new_password", "新密码不能与当前密码相同")
    new_hash = generate_password_hash(new)  # slow: before the lock
    _lock_accounts(actor, staff)
    if staff.password_hash != checked:  # reset meanwhile (say by an admin): the password given is no longer current
        raise field_error("current_password", "当前密码不正确")
    staff.password_hash = new_hash
    staff.sessions_valid_after = utcnow()
    audit.record(actor, "staff.password_change", "staff", staff.id, {"password_reset": True})
    commit()
    return staff


# Residents


def resident_for_openid(openid: str, unionid: str | None) -> Resident:
    """First login creates the resident and its points account; a concurrent first login reuses it. An existing
    resident is read FOR SHARE: a freeze in flight finishes first, and one that comes later waits for this login."""
    stmt = sa.select(Resident).where(Resident.openid == openid).with_for_update(read=True)
    resident = db.session.scalar(stmt)
    if resident is not None:
        return resident
    # A placeholder until the resident picks one: nothing of the openid, which staff pages and lists show.
    resident = Resident(openid=openid, unionid=unionid, nickname=f"居民{secrets.randbelow(10000):04d}")
    try:
        with db.session.begin_nested():
            db.session.add(resident)
            db.session.flush()
            open_account(resident.id)
    except IntegrityError:
        resident = db.session.scalars(stmt).one()
    return resident


def update_me(actor: Actor, data: dict[str, Any]) -> dict[str, Any]:
    """Change the resident's own profile; answers with the same view as GET /me."""
    resident = get_or_404(Resident, actor.id)
    if "community_id" in data:
        require_exists(Community, data["community_id"], "community_id", "社区不存在")
    for key, value in data.items():
        setattr(resident, key, value)
    commit()
    return profile(resident.id)


def _may_open(actor: Actor, community_id: int | None) -> bool:
    """Staff scope over residents: admins any, a worker its own community's."""
    if actor.is_admin:
        return True
    return actor.role == "worker" and community_id is not None and community_id == actor.community_id


def _resident_in_scope(actor: Actor, resident: Resident) -> None:
    if not _may_open(actor, resident.community_id):
        raise NotFound("居民不存在")


def residents_in_scope(actor: Actor, resident_ids: list[int]) -> dict[int, str | None]:
    """The nicknames of those of these residents the caller may open (`get_resident`), in one query: a page links
    only to those, by name. Those it may not open map to None if they chose no community (another community's
    office would not find them either: 经发办 can), and are left out if they live in another community."""
    if not resident_ids:
        return {}
    rows = db.session.execute(
        sa.select(Resident.id, Resident.community_id, Resident.nickname).where(Resident.id.in_(set(resident_ids)))
    )
    return {
        row.id: row.nickname if _may_open(actor, row.community_id) else None
        for row in rows
        if row.community_id is None or _may_open(actor, row.community_id)
    }


def get_resident(actor: Actor, resident_id: int) -> Resident:
    """A resident as staff may see one: admins any, workers their own community's."""
    actor.require_role("admin", "worker")
    resident = get_or_404(Resident, resident_id, "居民不存在")
    _resident_in_scope(actor, resident)
    return resident


def list_residents(
    actor: Actor, community_id: int | None, status: str | None, cursor, limit, q: str | None = None
) -> dict:
    actor.require_role("admin", "worker")
    if not actor.is_admin:
        if community_id not in (None, actor.community_id):
            raise Forbidden("只能查看本社区的居民")
        community_id = actor.community_id
    stmt = sa.select(Resident).where(Resident.status != "closed")
    if community_id is not None:
        stmt = stmt.where(Resident.community_id == community_id)
    if status is not None:
        stmt = stmt.where(Resident.status == status)
    if q:
        found = Resident.nickname.icontains(q, autoescape=True)
        stmt = stmt.where(
            found | (Resident.id == int(q)) if q.isascii() and q.isdecimal() and int(q) <= MAX_ID else found
        )
    return keyset_page(stmt, Resident.id, cursor, limit)


def status_history(actor: Actor, resident_id: int, limit: int = 10) -> list[dict[str, Any]]:
    """Who froze or thawed this resident, when and why, newest first: what a worker needs to answer "why can I not
    earn points?"."""
    get_resident(actor, resident_id)
    events = audit.history("resident", resident_id, ("resident.frozen", "resident.active"), limit)
    names = staff_names([e.actor_id for e in events if e.actor_type == "staff" and e.actor_id])
    return [
        {"status": e.action.removeprefix("resident."), "at": e.created_at, "reason": e.details.get("reason", ""),
         "by": names.get(e.actor_id, "系统") if e.actor_type == "staff" else "系统"}
        for e in events
    ]  # fmt: skip


def frozen_by_an_admin(residents: list[Resident]) -> set[int]:
    """Which of these frozen residents an admin froze: only an admin thaws those."""
    return audit.held_by_admins("resident", "resident.frozen", [r.id for r in residents if r.status == "frozen"])


def set_resident_status(actor: Actor, resident_id: int, status: str, reason: str) -> tuple[Resident, bool]:
    """Freeze or thaw; (the resident, whether this call changed anything)."""
    actor.require_role("admin", "worker")
    resident = get_or_404(Resident, resident_id, "居民不存在")
    _resident_in_scope(actor, resident)
    # Two workers at once: one change, one audit record. FOR NO KEY UPDATE: earnings, which only refer to the
    # resident, are not held up.
    db.session.refresh(resident, with_for_update={"key_share": True})
    if resident.status == "closed":
        raise NotFound("居民不存在")
    recorded = audit.records_hold_change(
        actor, held=resident.status == "frozen", hold=status == "frozen",
        held_by_an_admin=bool(frozen_by_an_admin([resident])),
        refusal=Forbidden("该账户由平台管理员冻结，请联系经发办解冻"),
    )  # fmt: skip
    if not recorded:  # a stale page or a retry: nothing changes, so nothing is recorded
        db.session.rollback()
        return resident, False
    previous, resident.status = resident.status, status
    if status == "frozen" and previous != "frozen":
        # Read under the lock: a login that held the row began before now (and read its `since` under it).
        resident.sessions_valid_after = utcnow()
    details = {"from": previous, "reason": reason, "by_role": actor.role}
    audit.record(actor, f"resident.{status}", "resident", resident.id, details)
    commit()
    return resident, True
