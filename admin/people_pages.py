"""社区, 联盟单位, 工作人员 and 居民: lists and the forms that create or freeze, through people.service."""

from __future__ import annotations

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for

from admin.blueprint import bp
from admin.forms import active_switch, int_arg, load, many, once_per_form, present, rerender_on_error
from admin.security import current_admin_actor, only
from app.db import db
from app.exchange.models import Store
from app.people import service as people
from app.people.schemas import (
    CommunityCreateSchema,
    OrganizationCreateSchema,
    ResidentUpdateSchema,
    StaffCreateSchema,
    StaffUpdateSchema,
)
from app.sorting import service as sorting

PAGE_SIZE = 50


# 社区


def _communities_page(error=None) -> str:
    return render_template("admin/communities.html", communities=people.list_communities(), error=error)


@bp.get("/communities")
def communities():
    return _communities_page()


@bp.post("/communities")
@only("admin")
@rerender_on_error(_communities_page)
@once_per_form()
def create_community():
    data = load(CommunityCreateSchema(), present("code", "name"))
    community = people.create_community(current_admin_actor(), data)
    flash(f"已创建社区「{community.name}」", "success")
    return redirect(url_for("admin.communities"))


# 联盟单位


def _organizations_page(error=None) -> str:
    return render_template(
        "admin/organizations.html",
        organizations=people.list_organizations(),
        communities=people.list_communities(),
        error=error,
    )


@bp.get("/organizations")
def organizations():
    return _organizations_page()


@bp.post("/organizations")
@only("admin")
@rerender_on_error(_organizations_page)
@once_per_form()
def create_organization():
    data = load(OrganizationCreateSchema(), present("name", "kind", "community_id"))
    org = people.create_organization(current_admin_actor(), data)
    flash(f"已添加联盟单位「{org.name}」", "success")
    return redirect(url_for("admin.organizations"))


# 工作人员


def _store_choices(actor) -> list[Store]:
    """Stores to pick for a merchant. There is no exchange service yet, so this is a read-only query,
    limited to the caller's own organisation for alliance members (the staff service checks it again)."""
    stmt = sa.select(Store).where(Store.active.is_(True)).order_by(Store.id)
    if not actor.is_admin:
        stmt = stmt.where(Store.organization_id == actor.organization_id)
    return list(db.session.scalars(stmt))


def _staff_page(error=None, staff_id: int | None = None) -> str:
    actor = current_admin_actor()
    page = people.list_staff(actor, request.args.get("cursor") or None, PAGE_SIZE)
    roles = ("admin", "worker", "alliance", "merchant", "collector") if actor.is_admin else people.ALLIANCE_MAY_CREATE
    points = sorting.list_points(None, None, None, 1000)["items"] if actor.is_admin else []
    return render_template(
        "admin/staff.html",
        page=page,
        roles=roles,
        communities=people.list_communities(),
        organizations=people.list_organizations(),
        stores=_store_choices(actor),
        points=points,
        form=request.form,
        error=error if staff_id is None else None,
        row_error=error if staff_id is not None else None,
        failed_id=staff_id,
        manageable=lambda staff: people.can_manage_staff(actor, staff),
    )


@bp.get("/staff")
def staff():
    return _staff_page()


@bp.post("/staff")
@rerender_on_error(_staff_page)
@once_per_form()
def create_staff():
    data = present("username", "password", "role", "display_name", "community_id", "organization_id")
    data["password"] = request.form.get("password") or ""  # as typed: spaces are part of a password
    data["store_ids"] = many("store_ids")
    data["collection_point_ids"] = many("collection_point_ids")
    created = people.create_staff(current_admin_actor(), load(StaffCreateSchema(), data))
    flash(f"已创建账号「{created.username}」", "success")
    return redirect(url_for("admin.staff"))


@bp.post("/staff/<page_id:staff_id>/active")
@rerender_on_error(_staff_page)
def set_staff_active(staff_id: int):
    """Deactivating ends the account's sessions at once (API and admin site); it can be undone."""
    active = active_switch("停用后该账号的所有登录立即失效")
    changed = people.update_staff(current_admin_actor(), staff_id, {"active": active})
    flash(f"账号「{changed.username}」已{'启用' if active else '停用'}", "success")
    return redirect(url_for("admin.staff"))


@bp.post("/staff/<page_id:staff_id>/password")
@rerender_on_error(_staff_page)
def reset_staff_password(staff_id: int):
    """A new password, as typed (spaces are part of it); the account's earlier sessions end."""
    data = load(StaffUpdateSchema(), {"password": request.form.get("password") or ""})
    changed = people.update_staff(current_admin_actor(), staff_id, data)
    flash(f"已重置账号「{changed.username}」的密码，原有登录已失效", "success")
    return redirect(url_for("admin.staff"))


# 居民


def _resident_filters() -> dict:
    status = request.args.get("status") or None
    q = (request.args.get("q") or "").strip()[:32] or None
    return {
        "community_id": int_arg("community_id"),
        "status": status if status in ("active", "frozen") else None,
        "q": q,
    }


def _residents_page(error=None, **_ignored) -> str:
    actor = current_admin_actor()
    filters = _resident_filters()
    page = people.list_residents(
        actor, filters["community_id"], filters["status"], request.args.get("cursor") or None, PAGE_SIZE, filters["q"]
    )
    return render_template(
        "admin/residents.html",
        page=page,
        filters=filters,
        communities=people.list_communities(),
        form=request.form,
        failed_id=request.view_args.get("resident_id") if error else None,
        frozen_by_an_admin=people.frozen_by_an_admin(page["items"]) if not actor.is_admin else set(),
        error=error,
    )


@bp.get("/residents")
def residents():
    return _residents_page()


@bp.post("/residents/<page_id:resident_id>/status")
@rerender_on_error(_residents_page)
def set_resident_status(resident_id: int):
    data = load(ResidentUpdateSchema(), present("status", "reason"))
    actor = current_admin_actor()
    resident, changed = people.set_resident_status(actor, resident_id, data["status"], data["reason"])
    name = resident.nickname or resident.id
    if not changed:  # a page opened before someone else's change
        flash(f"居民「{name}」已处于{'冻结' if resident.status == 'frozen' else '正常'}状态，未作更改", "success")
    else:
        flash(f"已{'冻结' if resident.status == 'frozen' else '解冻'}居民「{name}」", "success")
    # Back to the list as it was filtered, on the page it was on; only the known filters and the cursor, never
    # arbitrary query keys, reach url_for.
    back = _resident_filters() | {"cursor": request.args.get("cursor") or None}
    return redirect(url_for("admin.residents", **{k: v for k, v in back.items() if v is not None}))
