"""回收点: list, create, poster QR (PNG/SVG), poster rotation, and smart bins: registration, retiring and secret
rotation (sorting.service)."""

from __future__ import annotations

from flask import Response, flash, redirect, render_template, request, url_for

from admin.blueprint import bp
from admin.forms import (
    active_switch,
    int_arg,
    load,
    many,
    nullable,
    once_per_form,
    present,
    query_value,
    rerender_on_error,
    text,
)
from admin.security import current_admin_actor, only
from app import qr
from app.db import find
from app.errors import NotFound, field_error
from app.people import service as people
from app.sorting import service as sorting
from app.sorting.models import CATEGORIES, POINT_KINDS, Device
from app.sorting.schemas import (
    CollectionPointCreateSchema,
    CollectionPointUpdateSchema,
    DepositQuerySchema,
    DeviceCreateSchema,
)

PAGE_SIZE = 50
DEPOSITS_PER_PAGE = 20
CHECKINS_PER_PAGE = 20


def _points_page(error=None) -> str:
    actor = current_admin_actor()
    actor.require_role("admin", "worker")
    community_id = actor.community_id if actor.role == "worker" else int_arg("community_id")
    retired = request.args.get("status") == "retired"
    page = sorting.list_points(community_id, None, request.args.get("cursor") or None, PAGE_SIZE, active=not retired)
    return render_template(
        "admin/points.html",
        page=page,
        community_id=community_id,
        retired=retired,
        communities=people.list_communities(),
        kinds=POINT_KINDS,
        categories=CATEGORIES,
        form=request.form,
        error=error,
    )


@bp.get("/points")
def points():
    return _points_page()


@bp.post("/points")
@only("admin", "worker")
@rerender_on_error(_points_page)
@once_per_form()
def create_point():
    actor = current_admin_actor()
    data = present("name", "kind", "address", "lat", "lng", "geofence_m", "community_id")
    if actor.role == "worker":
        data["community_id"] = str(actor.community_id)
    data["categories"] = many("categories")
    point = sorting.create_point(actor, load(CollectionPointCreateSchema(), data))
    flash(f"已创建回收点「{point.name}」", "success")
    return redirect(url_for("admin.point", point_id=point.id))


def _point_page(error=None, point_id: int = 0, device=None, rotated: bool = False, **_device_route_args) -> str:
    actor = current_admin_actor()
    devices = sorting.list_devices(actor, point_id)  # checks the caller's scope over this point
    point = sorting.get_point(point_id)
    day = query_value(DepositQuerySchema(only=("day",)), "day")
    deposits = sorting.point_deposits(actor, point_id, day, request.args.get("cursor") or None, DEPOSITS_PER_PAGE)
    checkins = sorting.point_checkins(
        actor, point_id, day, request.args.get("checkins_cursor") or None, CHECKINS_PER_PAGE
    )
    return render_template(
        "admin/point.html",
        point=point,
        poster=sorting.poster(actor, point_id) if point.active else None,
        devices=devices,
        deposits=deposits,
        checkins=checkins,
        day=day,
        # A worker opens only its own community's residents: the others are named, not linked to a 404.
        openable=people.residents_in_scope(
            actor, [d.resident_id for d in deposits["items"]] + [c.resident_id for c in checkins["items"]]
        ),
        collectors=people.staff_names([d.collector_id for d in deposits["items"] if d.collector_id]),
        device_codes={d.id: d.code for d in devices},
        retired_by_an_admin=sorting.retired_by_an_admin(devices),
        new_device=device,
        rotated=rotated,
        categories=CATEGORIES,
        form=request.form,
        error=error,
    )


@bp.get("/points/<page_id:point_id>")
def point(point_id: int):
    return _point_page(point_id=point_id)


@bp.post("/points/<page_id:point_id>")
@rerender_on_error(_point_page)
def update_point(point_id: int):
    """The whole form is sent: a blank position or geofence clears it."""
    data = {"name": text("name"), "kind": text("kind"), "address": text("address"),
            **nullable("lat", "lng", "geofence_m"), "categories": many("categories")}  # fmt: skip
    point = sorting.update_point(current_admin_actor(), point_id, load(CollectionPointUpdateSchema(), data))
    flash(f"已保存回收点「{point.name}」", "success")
    # To the message: without a fragment of its own the browser keeps the form's (#fix).
    return redirect(url_for("admin.point", point_id=point_id, _anchor="top"))


@bp.post("/points/<page_id:point_id>/active")
@rerender_on_error(_point_page)
def set_point_active(point_id: int):
    active = active_switch("停用后海报将失效")
    point = sorting.set_point_active(current_admin_actor(), point_id, active)
    flash(f"回收点「{point.name}」已{'重新启用' if active else '停用'}", "success")
    return redirect(url_for("admin.point", point_id=point_id))


def _image(data: bytes, mimetype: str, filename: str | None = None) -> Response:
    response = Response(data, mimetype=mimetype)
    if filename:
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.get("/points/<page_id:point_id>/qr.png")
def point_qr_png(point_id: int):
    return _image(qr.to_png(sorting.poster(current_admin_actor(), point_id)["url"]), "image/png")


@bp.get("/points/<page_id:point_id>/qr.svg")
def point_qr_svg(point_id: int):
    url = sorting.poster(current_admin_actor(), point_id)["url"]
    return _image(qr.to_svg(url), "image/svg+xml", f"collection-point-{point_id}.svg")


@bp.get("/points/<page_id:point_id>/poster")
def point_poster(point_id: int):
    """A printable A4 poster: the QR with the point's name, community and what it takes, so that posters for several
    points are told apart when they are put up."""
    sorting.poster(current_admin_actor(), point_id)  # the caller's scope, and a retired point has no poster (409)
    return render_template("admin/poster.html", point=sorting.get_point(point_id))


@bp.post("/points/<page_id:point_id>/rotate")
@rerender_on_error(_point_page)
def rotate_poster(point_id: int):
    if request.form.get("confirm") != "yes":
        raise field_error("confirm", "请勾选确认：旧海报将立即失效")
    sorting.rotate_poster(current_admin_actor(), point_id)
    flash("已更换海报二维码，旧海报已失效，请打印新海报", "success")
    return redirect(url_for("admin.point", point_id=point_id))


@bp.post("/points/<page_id:point_id>/devices")
@only("admin")
@rerender_on_error(_point_page)
@once_per_form(
    "该设备刚才已经登记。密钥只显示一次：如未记下，请为它更换密钥",
    then=lambda point_id: url_for("admin.point", point_id=point_id),
    category="warning",
)
def register_device(point_id: int):
    """The device secret is shown on this response only: never stored in the session or a redirect."""
    data = load(DeviceCreateSchema(), {"code": text("code"), "collection_point_id": point_id})
    device = sorting.register_device(current_admin_actor(), data)
    return _point_page(point_id=point_id, device=device), 201


def _device_of_point(point_id: int, device_id: int):
    """The device in the URL, if it is this point's: a URL that pairs a device with another point is not a page."""
    device = find(Device, device_id)
    if device is None or device.collection_point_id != point_id:
        raise NotFound("设备不存在")
    return device


@bp.post("/points/<page_id:point_id>/devices/<page_id:device_id>/active")
@rerender_on_error(_point_page)
def set_device_active(point_id: int, device_id: int):
    device = _device_of_point(point_id, device_id)
    active = active_switch("停用后该设备的投递请求将立即被拒绝")
    sorting.set_device_active(current_admin_actor(), device.id, active)
    flash(f"设备 {device.code} 已{'启用' if active else '停用'}", "success")
    return redirect(url_for("admin.point", point_id=point_id))


@bp.post("/points/<page_id:point_id>/devices/<page_id:device_id>/rotate")
@only("admin")
@rerender_on_error(_point_page)
@once_per_form(
    "该设备的密钥刚才已经更换。新密钥只显示一次：如未记下，请再更换一次",
    then=lambda point_id, device_id: url_for("admin.point", point_id=point_id),
    category="warning",
)
def rotate_device_secret(point_id: int, device_id: int):
    """Like registration, the new secret is shown on this response only. The form names the secret it replaces, so
    reloading this page (which sends the form again) does not void the secret just shown."""
    device = _device_of_point(point_id, device_id)
    if request.form.get("confirm") != "yes":
        raise field_error("confirm", "请勾选确认：设备需要换用新密钥")
    device = sorting.rotate_device_secret(current_admin_actor(), device.id, replaces=text("replaces"))
    return _point_page(point_id=point_id, device=device, rotated=True)
