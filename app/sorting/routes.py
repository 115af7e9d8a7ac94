from __future__ import annotations

from flask import Response
from marshmallow import EXCLUDE

from app import qr
from app.apidoc import error_docs, file_docs
from app.auth.guards import RESIDENT, current_actor, login_required
from app.common import PageArgsSchema, page_schema
from app.db import MAX_BIG_ID
from app.errors import (
    AccountFrozen,
    AlreadyClaimed,
    CapReached,
    Duplicate,
    Forbidden,
    InsufficientPoints,
    InvalidQr,
    InvalidState,
    NotFound,
    QrExpired,
    TooFar,
)
from app.http import Blueprint, no_body
from app.idempotency.service import idempotent
from app.sorting import service
from app.sorting.device_auth import device_required
from app.sorting.schemas import (
    EXPIRES_IN,
    CheckinQuerySchema,
    CheckinSchema,
    CollectionPointCreateSchema,
    CollectionPointSchema,
    CollectionPointUpdateSchema,
    DepositCorrectionSchema,
    DepositCreateSchema,
    DepositQuerySchema,
    DepositSchema,
    DeviceCreateSchema,
    DeviceSchema,
    DeviceUpdateSchema,
    DeviceWithSecretSchema,
    MemberCodeImageQuerySchema,
    MemberCodeSchema,
    PointQuerySchema,
    PosterSchema,
    ScanResultSchema,
    ScanSchema,
)

blp = Blueprint("sorting", __name__, url_prefix="/api/v1", description="垃圾分类：回收点、扫码打卡与称重投递")

PointPage = page_schema(CollectionPointSchema, "CollectionPointPage")
DevicePage = page_schema(DeviceSchema, "DevicePage")
DepositPage = page_schema(DepositSchema, "DepositPage")
CheckinPage = page_schema(CheckinSchema, "CheckinPage")
DEPOSIT_ERRORS = (InvalidQr, QrExpired, AccountFrozen, CapReached, Duplicate, InvalidState)
MEMBER_CODE_IMAGE_HEADERS = {
    "X-Expires-At": {
        "description": "when this image's code expires",
        "schema": {"type": "string", "format": "date-time"},
    },
    "X-Expires-In": {
        "description": EXPIRES_IN,
        "schema": {"type": "integer"},
    },
}


def _image(data: bytes, mimetype: str) -> Response:
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("/collection-points", methods=["GET"])
@blp.arguments(PointQuerySchema, location="query")
@blp.response(200, PointPage)
def list_points(query):
    """Active collection points, the nearest first with `near=lat,lng`. With `near`, only the points that have a
    position are listed: one without cannot be placed on the map. `community_id`, `kind` and `category` narrow the
    list (`category=glass`: the points that take glass). `active=false` lists the retired ones instead."""
    return service.list_points(**query)


@blp.route("/collection-points", methods=["POST"])
@login_required("admin", "worker")
@error_docs(Duplicate)
@blp.arguments(CollectionPointCreateSchema)
@blp.response(201, CollectionPointSchema)
def create_point(body):
    """Create a collection point (admin; a worker in its own community)."""
    return service.create_point(current_actor(), body)


@blp.route("/collection-points/<int:point_id>", methods=["GET"])
@error_docs(NotFound)
@blp.response(200, CollectionPointSchema)
def get_point(point_id):
    """One collection point."""
    return service.get_point(point_id)


@blp.route("/collection-points/<int:point_id>", methods=["PATCH"])
@login_required("admin", "worker")
@error_docs(NotFound, Duplicate)
@blp.arguments(CollectionPointUpdateSchema, required=False)  # no body changes nothing, and answers as it is
@blp.response(200, CollectionPointSchema)
def update_point(body, point_id):
    """Change a collection point (admin; a worker in its own community). Check-ins and deposits see the change
    within 10 seconds: each server process keeps a point's details that long. Retiring it (`active: false`) stops
    check-ins and deposits at once."""
    return service.update_point(current_actor(), point_id, body)


@blp.route("/collection-points/<int:point_id>", methods=["DELETE"])
@login_required("admin", "worker")
@error_docs(NotFound)
@blp.response(204)
@no_body
def delete_point(point_id):
    """Retire a collection point: its posters and deposits there stop at once; its history stays."""
    service.set_point_active(current_actor(), point_id, False)


@blp.route("/collection-points/<int:point_id>/qr", methods=["GET"])
@login_required("admin", "worker", "collector")
@error_docs(NotFound, InvalidState)
@blp.response(200, PosterSchema)
def point_qr(point_id):
    """The poster's signed token and the URL its QR encodes (staff in scope)."""
    return service.poster(current_actor(), point_id)


@blp.route("/collection-points/<int:point_id>/qr.png", methods=["GET"])
@login_required("admin", "worker", "collector")
@error_docs(NotFound, InvalidState)
@blp.response(200, content_type="image/png")
@file_docs("image/png")
def point_qr_png(point_id):
    """The poster QR as PNG."""
    return _image(qr.to_png(service.poster(current_actor(), point_id)["url"]), "image/png")


@blp.route("/collection-points/<int:point_id>/qr.svg", methods=["GET"])
@login_required("admin", "worker", "collector")
@error_docs(NotFound, InvalidState)
@blp.response(200, content_type="image/svg+xml")
@file_docs("image/svg+xml")
def point_qr_svg(point_id):
    """The poster QR as SVG, for print."""
    return _image(qr.to_svg(service.poster(current_actor(), point_id)["url"]), "image/svg+xml")


@blp.route("/collection-points/<int:point_id>/qr/rotate", methods=["POST"])
@login_required("admin", "worker")
@idempotent
@error_docs(NotFound)
@blp.response(200, PosterSchema)
@no_body
def rotate_point_qr(point_id):
    """Issue a new poster secret: every poster printed before stops working at once. Each call rotates again (the
    poster an earlier answer gave stops working too): a retry sends the first try's `Idempotency-Key` to get its
    answer back instead."""
    return service.rotate_poster(current_actor(), point_id)


@blp.route("/me/member-code", methods=["GET"])
@login_required(RESIDENT)
@blp.response(200, MemberCodeSchema)
def my_member_code():
    """A short-lived signed code (about 2 minutes) that staff scan. Each code pays for one deposit, as a payment code
    does: show a fresh one for the next."""
    return service.issue_member_code(current_actor().id)


@blp.route("/me/member-code.png", methods=["GET"])
@login_required(RESIDENT)
@error_docs(InvalidQr, QrExpired)
# Other parameters are passed over, not refused: an image's address often carries a cache-buster (?t=…).
@blp.arguments(MemberCodeImageQuerySchema, location="query", unknown=EXCLUDE)
@blp.response(200, content_type="image/png")
@file_docs("image/png", headers=MEMBER_CODE_IMAGE_HEADERS)
def my_member_code_png(query):
    """The member code as a QR image; its headers say when this code expires. Without `token` the image is a fresh
    code (another than the JSON answer's); with `token=` a code of one's own from GET /me/member-code, still valid,
    it is that code."""
    code = service.member_code_to_draw(current_actor().id, query.get("token"))
    response = _image(qr.to_png(code["token"]), "image/png")
    response.headers.update({"X-Expires-At": code["expires_at"].isoformat(), "X-Expires-In": str(code["expires_in"])})
    return response


@blp.route("/me/deposits", methods=["GET"])
@login_required(RESIDENT)
@blp.arguments(DepositQuerySchema, location="query")
@blp.response(200, DepositPage)
def my_deposits(query):
    """The caller's own deposits, newest first, with their lines and ledger entries; `day` keeps one local day's."""
    return service.my_deposits(current_actor().id, **query)


@blp.route("/me/checkins", methods=["GET"])
@login_required(RESIDENT)
@blp.arguments(CheckinQuerySchema, location="query")
@blp.response(200, CheckinPage)
def my_checkins(query):
    """The caller's own check-ins, newest first; `day` keeps one local day's (today's: the points to mark as done)."""
    return service.my_checkins(current_actor().id, **query)


@blp.route("/scans", methods=["POST"])
@login_required(RESIDENT)
@idempotent
@error_docs(InvalidQr, AlreadyClaimed, InvalidState, CapReached, TooFar)
@blp.arguments(ScanSchema)
@blp.response(201, ScanResultSchema)
def scan(body):
    """Scan a collection point poster: the daily sorting check-in.

    409 invalid_state: the account was frozen and thawed while the scan was written; nothing was credited, and the
    resident logs in again (the freeze ended the session) and scans again."""
    return service.scan(current_actor(), body["token"], body["lat"], body["lng"])


@blp.route("/deposits", methods=["POST"])
@login_required("collector")
@idempotent
@error_docs(*DEPOSIT_ERRORS)
@blp.arguments(DepositCreateSchema)
@blp.response(201, DepositSchema)
def create_deposit(body):
    """A collector records weighed recyclables against a resident's member code. A code pays for one deposit, as a
    payment code does: using it again answers 409 duplicate (a retry with the same Idempotency-Key gets the first
    answer back instead). The code is judged when the deposit arrives and lasts 2 minutes: weigh first, then scan.
    Over a daily cap the deposit is refused whole (409 cap_reached), unless `fit_to_caps` asks to record it whole
    and credit what the caps still take."""
    return service.record_deposit(current_actor(), body)


@blp.route(f"/deposits/<int(max={MAX_BIG_ID}):deposit_id>/correction", methods=["POST"])
@login_required("admin")
@idempotent
@error_docs(NotFound, Forbidden, CapReached, AccountFrozen, InvalidState, InsufficientPoints)
@blp.arguments(DepositCorrectionSchema)
@blp.response(201, DepositSchema)
def correct_deposit(body, deposit_id):
    """Correct a deposit recorded with the wrong items: a mistyped weight, a wrong category (admins).

    Its credit is reversed and the right items are recorded as a new deposit in its place (`corrects_id`), with the
    same resident, point and collector or bin, priced by the rules in force now and counted against today's caps. Once
    per deposit: 409 invalid_state names the correction (`details.deposit_id`), which can itself be corrected; and 409
    invalid_state at a retired point. The right load is credited before the old is taken back, so only a correction
    taking back more than the resident has left is 409 insufficient_points, with nothing changed."""
    return service.correct_deposit(current_actor(), deposit_id, body)


@blp.route("/collection-points/<int:point_id>/deposits", methods=["GET"])
@login_required("admin", "worker", "collector")
@error_docs(NotFound)
@blp.arguments(DepositQuerySchema, location="query")
@blp.response(200, DepositPage)
def list_point_deposits(query, point_id):
    """A point's deposits, newest first; `day` keeps one local day's (its collectors, the community's worker,
    admins)."""
    return service.point_deposits(current_actor(), point_id, **query)


@blp.route("/collection-points/<int:point_id>/checkins", methods=["GET"])
@login_required("admin", "worker")
@error_docs(NotFound)
@blp.arguments(CheckinQuerySchema, location="query")
@blp.response(200, CheckinPage)
def list_point_checkins(query, point_id):
    """Who checked in at a point and when, newest first; `day` keeps one local day's (the community's worker,
    admins)."""
    return service.point_checkins(current_actor(), point_id, **query)


@blp.route(f"/deposits/<int(max={MAX_BIG_ID}):deposit_id>", methods=["GET"])
@login_required(RESIDENT, "collector", "worker", "admin")
@error_docs(NotFound, Forbidden)
@blp.response(200, DepositSchema)
def get_deposit(deposit_id):
    """One deposit: its resident, the collector's point, or the community's staff."""
    return service.get_deposit(current_actor(), deposit_id)


@blp.route("/devices/deposits", methods=["POST"])
@device_required
@idempotent
@error_docs(*DEPOSIT_ERRORS, Forbidden)
@blp.arguments(DepositCreateSchema)
@blp.response(201, DepositSchema)
def device_deposit(body):
    """A smart bin records a deposit, HMAC-signed. Each signature is used once, whether its request was accepted or
    refused (sent again, it answers 409 duplicate), and each member code pays for one deposit: to retry after a
    lost answer, send the same Idempotency-Key as the first try, with the same signed bytes or signed again, to get
    the first answer back, a refusal's too. To try again after a refusal, sign again with a new key. A bin posts
    for the point it is registered to (another point: 403 forbidden).
    A timestamp more than 5 minutes off answers 401 with the server's clock in `details.server_time` (Unix
    seconds), so that the bin can correct its own and sign again. A 5xx spends nothing: after its Retry-After, send
    the same signed bytes again (or sign again, within the 5 minutes)."""
    return service.record_device_deposit(current_actor(), body)


@blp.route("/devices", methods=["POST"])
@login_required("admin")
@error_docs(Duplicate)
@blp.arguments(DeviceCreateSchema)
@blp.response(201, DeviceWithSecretSchema)
def register_device(body):
    """Register a smart bin at an active point (admins only: whoever holds a bin's secret can sign deposits). The
    secret is shown only in this response: a code registered already answers 409 duplicate naming its bin
    (`details.device_id`), to re-key with POST /devices/{id}/secret/rotate if the secret was lost."""
    return service.register_device(current_actor(), body)


@blp.route("/devices/<int:device_id>", methods=["PATCH"])
@login_required("admin", "worker")
@error_docs(NotFound)
@blp.arguments(DeviceUpdateSchema)
@blp.response(200, DeviceSchema)
def update_device(body, device_id):
    """Retire a smart bin (`active: false`), or bring it back (admin; a worker in the point's community). A
    retired bin's requests answer 401 from the next one on."""
    return service.set_device_active(current_actor(), device_id, body["active"])


@blp.route("/devices/<int:device_id>/secret/rotate", methods=["POST"])
@login_required("admin")
@idempotent
@error_docs(NotFound)
@blp.response(200, DeviceWithSecretSchema)
@no_body
def rotate_device_secret(device_id):
    """Issue a new secret for a smart bin whose secret leaked (admins only). Requests signed with the old one answer
    401 from now on; the new one is in this answer only (and in a retry's with the same `Idempotency-Key`)."""
    return service.rotate_device_secret(current_actor(), device_id)


@blp.route("/collection-points/<int:point_id>/devices", methods=["GET"])
@login_required("admin", "worker")
@error_docs(NotFound)
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, DevicePage)
def list_devices(query, point_id):
    """The smart bins registered at a point, oldest first."""
    return service.device_page(current_actor(), point_id, **query)
