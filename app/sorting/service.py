"""Collection points, poster QR codes, member codes, check-ins and weighed deposits."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import IntegrityError

from app import qr
from app.audit import service as audit
from app.auth.guards import Actor
from app.cache import TtlCache
from app.carbon import service as carbon
from app.carbon.methodology import CapCharge, price
from app.carbon.models import DAILY_TOTAL, Rule
from app.clock import local_day, local_midnight, utcnow
from app.common import keyset_page, list_page
from app.db import (
    MAX_ID,
    after_commit,
    bound_row,
    commit,
    db,
    dialect_name,
    find,
    fits_key,
    flush_unique,
    get_or_404,
    insert_unique,
    require_exists,
    run,
    upsert_insert,
)
from app.errors import (
    AccountFrozen,
    AlreadyClaimed,
    CapReached,
    Duplicate,
    Forbidden,
    InvalidQr,
    InvalidState,
    NotFound,
    QrExpired,
    TooFar,
    Unauthorized,
    ValidationError,
    field_error,
)
from app.http import note
from app.ledger import service as ledger
from app.ledger.models import Account, LedgerEntry
from app.people import service as people
from app.people.models import Community, Resident
from app.sorting.models import (
    Checkin,
    CollectionPoint,
    Deposit,
    DepositCorrection,
    DepositItem,
    Device,
    DeviceSignature,
    new_secret,
)

log = logging.getLogger(__name__)

CHECKIN_ACTIVITY = "checkin:sorting"
# What a scan's refusal tells the resident to do, by the reason it gives the mini-program.
_SCAN_REFUSALS = {
    "not_a_poster": "这不是回收点的海报二维码，分类打卡请扫描回收点张贴的海报",
    "member_code": "这是会员码，请出示给回收员；分类打卡请扫描回收点张贴的海报",
    "poster_replaced": "二维码已失效，海报可能已更换：请扫描回收点现场张贴的最新海报",
    "point_retired": "该回收点已停用，请到附近其他回收点打卡",
}
RETIRED_FOR_DEPOSITS = "该回收点已停用，不能记录投递：请联系社区工作者"
CHECKED_IN_TODAY = "今天已在该回收点打卡，明天再来吧"
CAP_GUIDANCE = "本次未记录，会员码仍可使用：{}，或选择按上限记录（超出部分不计积分）"
CORRECTION_CAP_GUIDANCE = "本次未更正，原投递不变：可选择按上限记录（超出部分不计积分），或明天再更正"
EARTH_RADIUS_M = 6_371_000


def _config(name: str):
    return current_app.config[name]


def _qr_key(*parts: str) -> bytes:
    return qr.derive_key(_config("QR_SECRET"), *parts)


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


# Collection points


def get_point(point_id: int) -> CollectionPoint:
    return get_or_404(CollectionPoint, point_id, "回收点不存在")


def _managed_point(actor: Actor, point_id: int) -> CollectionPoint:
    """A point the caller manages, read again under a row lock, for a change checked against what it is now: two
    edits take turns, and the second sees the first (a position cleared while a fence is set is refused, not a CHECK
    violation). FOR NO KEY UPDATE: check-ins and deposits, which only refer to the point, are not held up."""
    point = get_point(point_id)
    _require_manager(actor, point.community_id)
    db.session.refresh(point, with_for_update={"key_share": True})
    return point


def _require_manager(actor: Actor, point_community_id: int) -> None:
    actor.require_role("admin", "worker")
    actor.require_community(point_community_id)


def _require_staff_in_scope(actor: Actor, point: CollectionPoint) -> None:
    if actor.role == "collector":
        actor.require_collection_point(point.id)
    else:
        _require_manager(actor, point.community_id)


def _name_taken(name: str) -> str:
    return f"本社区已有名为「{name}」的回收点"


def _refuse_taken_name(community_id: int, name: str, point_id: int | None = None) -> None:
    """A community's points have different names (a unique index, which also refuses a point named meanwhile)."""
    same = (CollectionPoint.community_id == community_id, CollectionPoint.name == name)
    other = sa.select(CollectionPoint.id, CollectionPoint.active).where(*same)
    if point_id is not None:
        other = other.where(CollectionPoint.id != point_id)
    taken = db.session.execute(other).first()
    if taken is not None:
        retired = "" if taken.active else "（已停用，可在已停用列表中重新启用）"
        raise Duplicate(_name_taken(name) + retired, details={"collection_point_id": taken.id})


def create_point(actor: Actor, data: dict[str, Any]) -> CollectionPoint:
    _require_manager(actor, data["community_id"])
    require_exists(Community, data["community_id"], "community_id", "社区不存在")
    _refuse_taken_name(data["community_id"], data["name"])
    point = insert_unique(CollectionPoint(**data), _name_taken(data["name"]))
    audit.record(actor, "collection_point.create", "collection_point", point.id, {"name": point.name})
    commit()
    return point


def update_point(actor: Actor, point_id: int, data: dict[str, Any]) -> CollectionPoint:
    point = _managed_point(actor, point_id)
    data = dict(data)
    active = data.pop("active", None)
    if "community_id" in data:
        _require_manager(actor, data["community_id"])
        require_exists(Community, data["community_id"], "community_id", "社区不存在")
        people.refuse_stranding_collectors(point.id, data["community_id"])
    name_key_changed = bool({"name", "community_id"} & data.keys())  # names are unique per community
    if name_key_changed:
        _refuse_taken_name(data.get("community_id", point.community_id), data.get("name", point.name), point.id)
    for key, value in data.items():
        setattr(point, key, value)
    if (point.lat is None) != (point.lng is None):
        raise field_error("lat", "纬度和经度必须同时提供")
    if point.geofence_m is not None and point.lat is None:
        if "geofence_m" in data:
            raise field_error("geofence_m", "设置电子围栏需要先提供回收点位置")
        raise field_error("lat", "该回收点设有电子围栏：清除位置前请先清空「电子围栏半径」")
    if name_key_changed:  # the index refuses a name taken since the check
        flush_unique(_name_taken(point.name))
    if data:
        audit.record(actor, "collection_point.update", "collection_point", point.id, data)
    if active is not None:
        _change_active(actor, point, active)
    commit()
    after_commit(clear_point_cache)
    return point


def set_point_active(actor: Actor, point_id: int, active: bool) -> CollectionPoint:
    """Retire a point (its posters stop working; its history stays) or bring it back. Setting what is already so
    changes and records nothing."""
    point = _managed_point(actor, point_id)
    if _change_active(actor, point, active):
        commit()
        after_commit(clear_point_cache)
    return point


def _change_active(actor: Actor, point: CollectionPoint, active: bool) -> bool:
    """Retiring and bringing back are audited as such, whichever endpoint does it; what is already so is no change."""
    if point.active == active:
        return False
    point.active = active
    action = "collection_point.reactivate" if active else "collection_point.deactivate"
    audit.record(actor, action, "collection_point", point.id)
    return True


def _parse_near(near: str) -> tuple[float, float]:
    lat, lng = (float(part) for part in near.split(","))
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise field_error("near", "坐标超出范围")
    return lat, lng


def _takes(category: str) -> sa.ColumnElement[bool]:
    """The point's categories (a JSON list) include this one."""
    if dialect_name() == "postgresql":
        return sa.cast(CollectionPoint.categories, JSONB).contains([category])
    # As PostgreSQL's @> reads it: a string among the list's items, not the list's own text or an object's value.
    listed = sa.func.json_each(CollectionPoint.categories).table_valued("value", "type")
    found = sa.exists(sa.select(listed.c.value).where(listed.c.value == category, listed.c.type == "text"))
    return sa.and_(sa.func.json_type(CollectionPoint.categories) == "array", found)


def list_points(
    community_id: int | None,
    near: str | None,
    cursor: str | None,
    limit: int,
    kind: str | None = None,
    category: str | None = None,
    active: bool = True,
) -> dict[str, Any]:
    stmt = sa.select(CollectionPoint).where(CollectionPoint.active.is_(active))
    if community_id is not None:
        stmt = stmt.where(CollectionPoint.community_id == community_id)
    if kind is not None:
        stmt = stmt.where(CollectionPoint.kind == kind)
    if category is not None:
        stmt = stmt.where(_takes(category))
    if near is None:
        page = keyset_page(stmt, CollectionPoint.id, cursor, limit, desc=False)
        for point in page["items"]:
            point.distance_m = None
        return page
    lat, lng = _parse_near(near)
    located = list(db.session.scalars(stmt.where(CollectionPoint.lat.is_not(None))))
    for point in located:
        point.distance_m = round(haversine_m(lat, lng, point.lat, point.lng))
    located.sort(key=_by_distance)
    # The cursor says where its distances were measured from: a page asked from another position is refused.
    return list_page(located, _by_distance, cursor, limit, prefix=[round(lat * 1e6), round(lng * 1e6)])


def _by_distance(point: CollectionPoint) -> list[int]:
    return [point.distance_m, point.id]


def poster(actor: Actor, point_id: int) -> dict[str, str]:
    point = get_point(point_id)
    _require_staff_in_scope(actor, point)
    _refuse_retired_poster(point)
    return _poster_of(point)


def _poster_of(point: CollectionPoint) -> dict[str, str]:
    token = qr.static_token(qr.POINT, point.id, _qr_key("point", point.qr_secret))
    return {"token": token, "url": f"{_config('PUBLIC_BASE_URL')}/q/{token}"}


def _refuse_retired_poster(point: CollectionPoint) -> None:
    """A retired point's poster would not check anyone in: printing one would only make a poster that fails."""
    if not point.active:
        raise InvalidState("该回收点已停用，海报无法打卡；请先重新启用回收点")


def rotate_poster(actor: Actor, point_id: int) -> dict[str, str]:
    """A new secret revokes every poster printed so far."""
    point = _managed_point(actor, point_id)
    point.qr_secret = new_secret()  # allowed while retired too: a leaked poster is revoked before the point returns
    audit.record(actor, "collection_point.rotate_qr", "collection_point", point.id)
    commit()
    after_commit(clear_point_cache)
    return _poster_of(point)


# Member codes


def issue_member_code(resident_id: int) -> dict[str, Any]:
    """A fresh member code."""
    now = utcnow()
    token, expires_at = qr.member_code(resident_id, _qr_key("member"), now, ttl_s=_config("MEMBER_CODE_TTL_SECONDS"))
    return _member_code_answer(token, expires_at, now)


def own_member_code(resident_id: int, token: str) -> dict[str, Any]:
    """`token`, a code of the resident's own that is still valid, again: to draw the code that an app keeps with its
    countdown."""
    now = utcnow()
    try:  # whose first, then whether expired: nothing is told about another's code
        token = qr.extract_token(token)  # the code itself is drawn, never the text around it
        code = qr.read_member_code(token, _qr_key("member"), now, expired=True)
    except qr.QRError:
        code = None
    if code is None or code.resident_id != resident_id:
        raise InvalidQr("这不是您的会员码，请刷新")
    if code.expired(now):
        raise QrExpired("会员码已过期，请刷新")
    return _member_code_answer(token, code.expires_at, now)


def member_code_to_draw(resident_id: int, token: str | None) -> dict[str, Any]:
    """The code an image draws: `token`, the resident's own code that the app holds, or a fresh one."""
    return issue_member_code(resident_id) if token is None else own_member_code(resident_id, token)


def _member_code_answer(token: str, expires_at: datetime, now: datetime) -> dict[str, Any]:
    # The code expires on a whole second: the time left is up to a second short of the configured lifetime.
    return {"token": token, "expires_at": expires_at, "expires_in": int((expires_at - now).total_seconds())}


_RESIDENT_STATUS = sa.select(Resident.status).where(Resident.id == sa.bindparam("id"))


_WAIT_FOR_POSTINGS = sa.select(Account.id).where(Account.resident_id == sa.bindparam("id")).with_for_update(read=True)


def _shown_member_code(code: str, point_id: int, at: datetime) -> qr.MemberCode:
    """The resident a member code names, by its signature and its expiry at `at`. Whether the account can take
    points, and whether the code is still unspent, is checked where the deposit is written, in the same statement on
    PostgreSQL. An expired code that paid for a deposit says so, as a fresh one would: a retry whose answer was lost
    must not read as "fetch a new code and record it again"."""
    try:
        token = qr.extract_token(code)
        shown = qr.read_member_code(token, _qr_key("member"), at)
    except qr.ExpiredToken as exc:
        late = qr.read_member_code(token, _qr_key("member"), at, expired=True)
        note(resident=late.resident_id)
        # A first try still writing holds the account's row lock (a fresh code would wait on the spending index):
        # wait for it, so that what it wrote is seen.
        run(_WAIT_FOR_POSTINGS, {"id": late.resident_id}).all()
        spent = _spent_refusal(late.resident_id, late.nonce, point_id)
        raise spent or QrExpired("会员码已过期，请让居民刷新后重试") from exc
    except qr.QRError as exc:
        raise InvalidQr("这不是有效的会员码：请居民在小程序中打开「会员码」再扫") from exc
    note(resident=shown.resident_id)
    return shown


def _holder_refusal(resident_id: int) -> Exception:
    """Why a resident's account cannot take a deposit. Active by now: it was thawed while the deposit was written
    (which read it frozen), so the deposit may simply be sent again."""
    status = run(_RESIDENT_STATUS, {"id": resident_id}).scalar()
    if status == "frozen":
        return AccountFrozen("该居民账户已冻结，无法记录积分：请居民联系所在社区")
    if status == "active":
        return InvalidState("该居民账户的状态刚刚变更，请重新提交这笔投递")
    return InvalidQr("会员码对应的账户不存在")


_CODE_SPENT = sa.select(Deposit.id, Deposit.collection_point_id, Deposit.points).where(
    Deposit.resident_id == sa.bindparam("resident_id"), Deposit.member_code_nonce == sa.bindparam("nonce")
)


def _spent_refusal(resident_id: int, nonce: str, point_id: int) -> Exception | None:
    """The refusal of a member code that paid for a deposit already; None if it is unspent."""
    spent = run(_CODE_SPENT, {"resident_id": resident_id, "nonce": nonce}).first()
    if spent is not None and spent.collection_point_id == point_id:
        # Most likely a retry whose answer was lost: say it went through, so nobody records the recyclables twice.
        return Duplicate(
            f"该会员码已在本回收点记过一笔投递（编号 {spent.id}，{spent.points} 积分）；"
            "如是另一笔投递，请让居民刷新会员码",
            details={"deposit_id": spent.id, "points": spent.points},
        )
    if spent is not None:
        return Duplicate("该会员码已使用，请让居民刷新会员码后重试")
    return None


def _retired_for_deposits() -> Exception:
    """With the reason scans give, for a bin's firmware to key on: a validation_error alone reads as a bad body."""
    return field_error("collection_point_id", RETIRED_FOR_DEPOSITS, reason="point_retired")


def _deposit_refusal(deposit: dict[str, Any], point: PointRow) -> Exception:
    """Why a deposit was not written: its member code paid for one already, the point was retired, or the account
    cannot take it."""
    spent = _spent_refusal(deposit["resident_id"], deposit["member_code_nonce"], deposit["collection_point_id"])
    if spent is not None:
        return spent
    now = _point_now(point)
    if now is None or not now.active:  # retired since this worker read it
        return _retired_for_deposits()
    return _holder_refusal(deposit["resident_id"])


class PointRow(NamedTuple):
    """What a check-in or a deposit reads of a point on every request: this worker's copy of its row (_point_row),
    or the row as it is now (_point_now). Not a CollectionPoint: no community, no timestamps."""

    id: int
    name: str
    qr_secret: str
    active: bool
    categories: list[str]
    geofence_m: int | None
    lat: float | None
    lng: float | None


_POINT_COLUMNS = tuple(getattr(CollectionPoint, name) for name in PointRow._fields)
_ALL_POINTS = sa.select(*_POINT_COLUMNS)
_POINT_ROW = _ALL_POINTS.where(CollectionPoint.id == sa.bindparam("id"))
# Points change rarely and each is scanned only now and then, so each worker keeps all of them, for as long
# as it keeps the rules: a rotated poster or a deactivated point stops working everywhere within that time.
_points = TtlCache(carbon.RULE_CACHE_TTL_S)


def _point_row(point_id: int, accepts: Callable[[PointRow], bool] | None = None) -> PointRow | None:
    """The point's row, from this worker's copy of all points; one created since is read directly, and so is one
    that `accepts` (what the caller is about to check) refuses. So a change that allows more (a new poster, a
    reactivated point, a new category) works at once; only one that allows less waits for the copy to expire."""
    if not fits_key(point_id):
        return None
    point = _points.get("all", lambda: {row.id: PointRow(*row) for row in run(_ALL_POINTS)}).get(point_id)
    if point is None or (accepts is not None and not accepts(point)):
        point = _read_point(point_id)
    return point


def _read_point(point_id: int) -> PointRow | None:
    row = run(_POINT_ROW, {"id": point_id}).first()
    return None if row is None else PointRow(*row)


def _point_now(copy: PointRow) -> PointRow | None:
    """The point as it is now, not as `copy` (this worker's copy of its row) has it. Read when a write refused
    what the copy allowed, say because the point was retired or its poster rotated: a copy found stale is dropped,
    so the next request reads afresh."""
    now = _read_point(copy.id)
    if now != copy:
        clear_point_cache()
    return now


def clear_point_cache() -> None:
    _points.clear()


_CHECKIN_COLUMNS = ("resident_id", "collection_point_id", "day", "created_at")


def _holder_active(param: str) -> sa.Exists:
    """The resident's account is active. FOR SHARE: a freeze committing meanwhile is waited for and then seen, so
    nothing lands on an account frozen a moment earlier (SQLite's write lock already keeps the freeze out)."""
    return sa.exists(
        sa.select(Resident.id)
        .where(Resident.id == sa.bindparam(param), Resident.status == "active")
        .with_for_update(read=True)
    )


def _point_still_open(param: str, secret_param: str | None = None) -> sa.Exists:
    """The point is still active and, with `secret_param`, its poster secret is still the one the token was checked
    against. The worker's copy of the point may be up to RULE_CACHE_TTL_S old; checked in the writing statement
    itself, a retired point or a rotated poster is refused at once."""
    conditions = [CollectionPoint.id == sa.bindparam(param), CollectionPoint.active.is_(True)]
    if secret_param is not None:
        conditions.append(CollectionPoint.qr_secret == sa.bindparam(secret_param))
    return sa.exists(sa.select(CollectionPoint.id).where(*conditions))


@cache
def _checkin_claim(dialect: str) -> sa.Insert:
    """Claims the (resident, point, day) slot for an active account at a point whose poster is current; returns no
    row when the slot is taken, the account was frozen since the caller was authenticated, or the poster was
    rotated or the point retired since this worker read it."""
    checkins = Checkin.__table__
    row = bound_row(checkins, {name: f"claim_{name}" for name in _CHECKIN_COLUMNS})
    return (
        upsert_insert(dialect)(checkins)
        .from_select(
            list(_CHECKIN_COLUMNS),
            row.where(
                _holder_active("claim_resident_id"),
                _point_still_open("claim_collection_point_id", "claim_point_secret"),
            ),
        )
        .on_conflict_do_nothing(index_elements=["resident_id", "collection_point_id", "day"])
        .returning(checkins.c.id)
    )


_CHECKED_IN = sa.select(Checkin.id).where(
    Checkin.resident_id == sa.bindparam("resident_id"),
    Checkin.collection_point_id == sa.bindparam("point_id"),
    Checkin.day == sa.bindparam("day"),
)


def _checkin_refusal(resident_id: int, point: PointRow, day: date) -> Exception:
    """Why the claim wrote no check-in: the point changed, the account is frozen, or the resident checked in here
    today. None of these by now (a thaw committed since the claim read the account): the scan may be sent again."""
    now = _point_now(point)
    if now is None:
        return _scan_refusal("not_a_poster")
    if now.qr_secret != point.qr_secret:
        return _scan_refusal("poster_replaced")
    if not now.active:
        return _scan_refusal("point_retired")
    if run(_RESIDENT_STATUS, {"id": resident_id}).scalar() == "frozen":
        return AccountFrozen()
    if run(_CHECKED_IN, {"resident_id": resident_id, "point_id": point.id, "day": day}).first() is not None:
        return AlreadyClaimed(CHECKED_IN_TODAY)
    return InvalidState("账户状态刚刚变更，请重新登录后再扫码")  # a freeze ended the sessions begun before it


def _signed_with(secret: str, raw: str) -> bool:
    try:
        qr.verify_static(raw, qr.POINT, _qr_key("point", secret))
    except qr.QRError:
        return False
    return True


def _scan_refusal(reason: str) -> Exception:
    return InvalidQr(_SCAN_REFUSALS[reason], details={"reason": reason})


def _point_from_poster(token: str) -> PointRow:
    try:
        raw = qr.extract_token(token)
        header = qr.peek(raw)
    except qr.QRError as exc:
        raise _scan_refusal("not_a_poster") from exc
    if header.kind == qr.MEMBER:  # a resident's own code, or a neighbour's, scanned by mistake
        raise _scan_refusal("member_code")
    if header.kind != qr.POINT:
        raise _scan_refusal("not_a_poster")
    note(point=header.object_id)
    signed = cache(lambda secret: _signed_with(secret, raw))  # the cached point's secret is checked once
    point = _point_row(header.object_id, accepts=lambda p: p.active and signed(p.qr_secret))
    if point is None:
        raise _scan_refusal("not_a_poster")
    if not signed(point.qr_secret):  # a rotated poster, most likely, or a forgery naming a real point
        raise _scan_refusal("poster_replaced")
    if not point.active:
        raise _scan_refusal("point_retired")
    return point


def _fence_refusal(point: PointRow, lat: float | None, lng: float | None) -> Exception | None:
    if not point.geofence_m or point.lat is None:
        return None
    if lat is None:  # a fence that a scan could pass by not saying where it is would keep nobody out
        return field_error("lat", "该回收点需要定位：请允许小程序获取位置后再扫码", reason="location_required")
    away = haversine_m(lat, lng, point.lat, point.lng)
    if away > point.geofence_m:  # reported rounded up: never "300 m away, must be within 300 m"
        distance_m = math.ceil(away)
        message = f"您距离该回收点约 {distance_m} 米，需在 {point.geofence_m} 米以内扫码，请走近后再试"
        return TooFar(message, details={"distance_m": distance_m, "geofence_m": point.geofence_m})
    return None


def scan(actor: Actor, token: str, lat: float | None, lng: float | None) -> dict[str, Any]:
    point = _point_from_poster(token)
    now = utcnow()
    day = local_day(now, _config("TIMEZONE"))
    fence = _fence_refusal(point, lat, lng)
    if fence is not None:
        # Done for today: saying so beats asking for a position, or a walk back, that would earn nothing.
        done = run(_CHECKED_IN, {"resident_id": actor.id, "point_id": point.id, "day": day}).first()
        raise AlreadyClaimed(CHECKED_IN_TODAY) if done else fence
    rule = carbon.require_rule(CHECKIN_ACTIVITY, "token", now)
    priced = price([(rule, Decimal(1))], _config("POINTS_PER_KG_CO2E"))  # one visit
    points, co2e_g = priced.points, priced.co2e_g
    checkin = {"resident_id": actor.id, "collection_point_id": point.id, "day": day, "created_at": now}
    claim = ledger.Claim(
        _checkin_claim(dialect_name()),
        {f"claim_{name}": value for name, value in checkin.items()} | {"claim_point_secret": point.qr_secret},
        lambda: _checkin_refusal(actor.id, point, day),
    )
    answer = {"kind": "checkin", "points": points, "collection_point_id": point.id,
              "collection_point_name": point.name, "day": day}  # fmt: skip
    if points == 0:  # a rule worth nothing today (paused by an admin): the visit still counts once a day
        if run(claim.statement, claim.params).scalar() is None:
            raise claim.refused()
        commit()
        # No entry, so nothing reaches the account: the answer claims no grams either.
        return answer | {"co2e_g": 0, "balance": ledger.account_of(actor.id).balance, "entry_id": None}
    entry = ledger.post(
        actor.id, points, kind="earn", source="checkin", activity=rule.activity, rule_id=rule.id, co2e_g=co2e_g,
        ref_type="checkin", claim=claim, actor_type="resident", actor_id=actor.id,
        memo=f"{point.name} 分类打卡", caps=carbon.cap_charges([(rule, points)], now), at=now,
    )  # fmt: skip
    commit()
    return answer | {"co2e_g": co2e_g, "balance": entry.balance_after, "entry_id": entry.id}


@ledger.charges_caps("checkin")
def _checkin_charges(entry: LedgerEntry) -> list[CapCharge]:
    return carbon.cap_charges([(db.session.get(Rule, entry.rule_id), entry.delta)], entry.created_at)


# Weighed deposits


_SPENDS_CODE = ["resident_id", "member_code_nonce"]  # the unique index that spends a member code
_DEPOSIT_INSERT = (
    upsert_insert("sqlite")(Deposit.__table__).on_conflict_do_nothing(index_elements=_SPENDS_CODE).returning(Deposit.id)
)
_DEPOSIT_ITEMS_INSERT = sa.insert(DepositItem.__table__)
_ITEM_COLUMNS = ("category", "weight_g", "co2e_g", "points", "rule_id")


@cache
def _deposit_with_items() -> sa.Select:
    """PostgreSQL: the deposit and its lines in one round trip, written only if the resident's account and the point
    are active (no row comes back otherwise). The lines come as arrays and keep their order. On SQLite the
    transaction holds the write lock, so reading the states first is as good."""
    deposits, items = Deposit.__table__, DepositItem.__table__
    columns = [c.name for c in deposits.c if c.name != "id"]
    values = bound_row(deposits, {name: f"d_{name}" for name in columns}).where(
        _holder_active("d_resident_id"), _point_still_open("d_collection_point_id")
    )
    deposit = (
        upsert_insert("postgresql")(deposits)
        .from_select(columns, values)
        .on_conflict_do_nothing(index_elements=_SPENDS_CODE)
        .returning(deposits.c.id)
        .cte("new_deposit")
    )
    lines = (
        sa.func.unnest(*(sa.bindparam(f"lines_{name}", type_=ARRAY(items.c[name].type)) for name in _ITEM_COLUMNS))
        .table_valued(*_ITEM_COLUMNS, with_ordinality="line_no")
        .render_derived(name="lines")
    )
    source = (
        sa.select(deposit.c.id, *(lines.c[name] for name in _ITEM_COLUMNS))
        .select_from(deposit.join(lines, sa.true()))  # one deposit row, each line
        .order_by(lines.c.line_no)
    )
    new_items = sa.insert(items).from_select(["deposit_id", *_ITEM_COLUMNS], source).cte("new_items")
    return sa.select(deposit.c.id).add_cte(new_items)


def _deposit_params(deposit: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    params = {f"d_{name}": value for name, value in deposit.items()}
    return params | {f"lines_{name}": [item[name] for item in items] for name in _ITEM_COLUMNS}


def _deposit_claim(deposit: dict[str, Any], items: list[dict[str, Any]], point: PointRow) -> ledger.Claim:
    """PostgreSQL: the deposit and its lines as the slot its ledger entry claims, so that they are written in the
    same round trip as the account lock, and only for an active account at an active point."""
    params = _deposit_params(deposit, items)
    return ledger.Claim(_deposit_with_items(), params, lambda: _deposit_refusal(deposit, point))


def _insert_deposit(deposit: dict[str, Any], items: list[dict[str, Any]], point: PointRow) -> int:
    """Write the deposit and its lines for an active account at an active point; refuse otherwise."""
    deposit_id = None
    if dialect_name() == "postgresql":
        deposit_id = run(_deposit_with_items(), _deposit_params(deposit, items)).scalar()
    elif run(_RESIDENT_STATUS, {"id": deposit["resident_id"]}).scalar() == "active" and getattr(
        _point_now(point), "active", False
    ):
        deposit_id = run(_DEPOSIT_INSERT, deposit).scalar()
        if deposit_id is not None:
            run(_DEPOSIT_ITEMS_INSERT, [{"deposit_id": deposit_id, **item} for item in items])
    if deposit_id is None:
        raise _deposit_refusal(deposit, point)
    return deposit_id


def _when_a_bin_scanned(signed_at: datetime, now: datetime) -> datetime:
    """The moment a bin's member code is judged at. Its request may arrive late (the network dropped): the code counts
    as shown when the bin signed, unless the bin's clock runs ahead of the server's; but by one more code lifetime at
    most, so that a slow clock (or a bin choosing its timestamp) cannot keep a code alive for the whole clock window."""
    grace = timedelta(seconds=_config("MEMBER_CODE_TTL_SECONDS"))
    return max(min(now, signed_at), now - grace)


def _fitted_to_caps(resident_id: int, lines: list[tuple[Rule, int]], now: datetime) -> list[int]:
    """Each line's points that today's caps still take; the account stays locked until the deposit commits."""
    return carbon.fit_to_room(lines, ledger.room_under_caps(resident_id, carbon.cap_charges(lines, now), at=now))


_REFIT_DEPOSIT = (
    sa.update(Deposit.__table__)
    .where(Deposit.id == sa.bindparam("deposit_id"))
    .values(points=sa.bindparam("points"), points_over_cap=sa.bindparam("points_over_cap"))
)
_DEPOSIT_LINE_IDS = (
    sa.select(DepositItem.id).where(DepositItem.deposit_id == sa.bindparam("deposit_id")).order_by(DepositItem.id)
)


def _refit_deposit(deposit_id: int, deposit: dict[str, Any], items: list[dict[str, Any]], fitted: list[int]) -> None:
    """A deposit written whole credits what the caps still take (`fitted`, per line): on its row and its lines (in
    order), and in the answer's `deposit` and `items`."""
    deposit["points_over_cap"], deposit["points"] = deposit["points"] - sum(fitted), sum(fitted)
    for item, points in zip(items, fitted, strict=True):
        item["points"] = points
    run(_REFIT_DEPOSIT, {"deposit_id": deposit_id, "points": deposit["points"],
                         "points_over_cap": deposit["points_over_cap"]})  # fmt: skip
    line_ids = run(_DEPOSIT_LINE_IDS, {"deposit_id": deposit_id}).scalars().all()
    db.session.execute(
        sa.update(DepositItem),
        [{"id": line_id, "points": points} for line_id, points in zip(line_ids, fitted, strict=True)],
    )


def _cap_guidance(details: dict[str, Any]) -> str:
    """No category over its own cap (only the day's total): taking one off is not the advice, weighing less is."""
    fix = "可减少重量后重新提交" if details["refused"] == [DAILY_TOTAL] else "可去掉超出上限的品类后重新提交"
    return CAP_GUIDANCE.format(fix)


def _refuse_categories_not_taken(point: PointRow, lines: list[dict[str, Any]]) -> None:
    refused = sorted({line["category"] for line in lines} - set(point.categories))
    if not refused:
        return
    # As caps name them; keyed by line, as the body's own errors are, so that the app marks the lines to take off.
    names = {c: getattr(carbon.rule_in_force(f"sorting:{c}"), "title", "") or c for c in refused}
    by_line = {
        str(i): {"category": [f"该回收点不收{names[line['category']]}"]}
        for i, line in enumerate(lines)
        if line["category"] in names
    }
    raise ValidationError(f"该回收点不收：{'、'.join(names.values())}", details={"fields": {"items": by_line}})


def _record_deposit(
    point: PointRow, data: dict[str, Any], recorder: Actor, correcting: Deposit | None = None
) -> dict[str, Any]:
    """`recorder` is the collector (staff) or the smart bin (device) that weighed the items, or the admin correcting
    the deposit `correcting`: then the resident is that deposit's, and so are who weighed and the point. The caller
    commits."""
    if not point.active:
        raise _retired_for_deposits()
    now = utcnow()
    if correcting is None:
        shown_at = now if recorder.signed_at is None else _when_a_bin_scanned(recorder.signed_at, now)
        resident_id, nonce, _ = _shown_member_code(data["member_code"], point.id, shown_at)
    else:  # in place of a member code: one per corrected deposit, as the correction itself is
        resident_id, nonce = correcting.resident_id, f"correction-{correcting.id}"
    memo = f"{point.name} 回收投递" + (f"（更正第 {correcting.id} 笔）" if correcting else "")
    _refuse_categories_not_taken(point, data["items"])
    rules = [carbon.require_rule(f"sorting:{line['category']}", "items", now) for line in data["items"]]
    kilograms = [Decimal(line["weight_g"]) / 1000 for line in data["items"]]
    priced = price(list(zip(rules, kilograms, strict=True)), _config("POINTS_PER_KG_CO2E"))
    if max(priced.points, priced.co2e_g) > MAX_ID:  # only a factor far beyond any material's could get here
        raise field_error("items", "本次投递折算的积分或减排量超出可记录范围，请核对重量与品类后分次记录")
    deposit: dict[str, Any] = {
        "resident_id": resident_id, "member_code_nonce": nonce, "collection_point_id": point.id,
        "points": priced.points, "points_over_cap": 0, "co2e_g": priced.co2e_g,
        "weight_g": sum(line["weight_g"] for line in data["items"]), "created_at": now,
        "collector_id": recorder.id if recorder.kind == "staff" else None,
        "device_id": recorder.id if recorder.kind == "device" else None,
    }  # fmt: skip
    if correcting is not None:  # who weighed stays who weighed; the admin is the ledger entry's actor
        deposit |= {"collector_id": correcting.collector_id, "device_id": correcting.device_id}
    items = [
        {"category": line["category"], "weight_g": line["weight_g"], "co2e_g": cg, "points": lp, "rule_id": rule.id}
        for line, rule, lp, cg in zip(data["items"], rules, priced.line_points, priced.line_grams, strict=True)
    ]
    # One category: the entry names its rule, as a check-in's does. Several: the entry names the deposit, whose lines
    # keep each rule (an entry has room for one).
    single = rules[0] if len({r.id for r in rules}) == 1 else None

    def credit(line_points: list[int], claim: ledger.Claim | None = None, ref_id: int | None = None) -> LedgerEntry:
        return ledger.post(
            resident_id, sum(line_points), kind="earn", source="sorting",
            activity=single.activity if single else "sorting", rule_id=single.id if single else None,
            co2e_g=priced.co2e_g, ref_type="deposit", ref_id=ref_id, claim=claim, actor_type=recorder.kind,
            actor_id=recorder.id, memo=memo,
            caps=carbon.cap_charges(list(zip(rules, line_points, strict=True)), now), at=now,
        )  # fmt: skip

    entry = None
    try:
        if priced.points > 0 and dialect_name() == "postgresql" and not data["fit_to_caps"]:
            entry = credit(priced.line_points, claim=_deposit_claim(deposit, items, point))
            deposit_id = int(entry.ref_id)
        else:
            # The code is spent (its unique index taken) before the account is locked, in the order a deposit
            # claimed with its lock takes them: two deposits of one code, one of them fitted, never wait on each other.
            deposit_id = _insert_deposit(deposit, items, point)
            line_points = priced.line_points
            if data["fit_to_caps"] and priced.points > 0:
                line_points = _fitted_to_caps(resident_id, list(zip(rules, line_points, strict=True)), now)
                if sum(line_points) < priced.points:
                    _refit_deposit(deposit_id, deposit, items, line_points)
            if sum(line_points) > 0:
                entry = credit(line_points, ref_id=deposit_id)
    except NotFound:  # no account to lock: the code names no resident who can take points
        raise _holder_refusal(resident_id) from None
    except CapReached as refusal:  # what the collector (or the bin) can do about it
        guidance = CORRECTION_CAP_GUIDANCE if correcting else _cap_guidance(refusal.details)
        raise CapReached(f"{refusal.message}。{guidance}", details=refusal.details) from None
    return deposit | {
        "id": deposit_id,
        "collection_point_name": point.name,
        "items": items,
        "entry_id": entry.id if entry else None,
        "reversal_entry_id": None,
        "corrects_id": correcting.id if correcting else None,
        "corrected_by_id": None,
    }


@ledger.charges_caps("deposit")
def _deposit_charges(entry: LedgerEntry) -> list[CapCharge]:
    lines = db.session.execute(
        sa.select(Rule, DepositItem.points)
        .join(Rule, Rule.id == DepositItem.rule_id)
        .where(DepositItem.deposit_id == int(entry.ref_id))
        .order_by(DepositItem.id)
    ).all()
    return carbon.cap_charges([(rule, points) for rule, points in lines], entry.created_at)


def _deposit_point(data: dict[str, Any]) -> PointRow | None:
    note(point=data["collection_point_id"])
    categories = {line["category"] for line in data["items"]}
    return _point_row(data["collection_point_id"], accepts=lambda p: p.active and categories <= set(p.categories))


def record_deposit(actor: Actor, data: dict[str, Any]) -> dict[str, Any]:
    actor.require_role("collector")
    point = _deposit_point(data)
    if point is None:
        raise field_error("collection_point_id", "回收点不存在")
    actor.require_collection_point(point.id)
    recorded = _record_deposit(point, data, actor)
    commit()
    return recorded


def record_device_deposit(device: Actor, data: dict[str, Any]) -> dict[str, Any]:
    """`device` is the smart bin authenticated by authenticate_device; it records only for its own point."""
    if data["collection_point_id"] not in device.collection_point_ids:
        raise Forbidden("设备只能为其所在的回收点记录投递")
    recorded = _record_deposit(_deposit_point(data), data, device)
    commit()
    return recorded


def correct_deposit(
    actor: Actor, deposit_id: int, data: dict[str, Any], of_resident: int | None = None
) -> dict[str, Any]:
    """Record a deposit again with the right items (a mistyped weight, a wrong category), admins only, in one
    transaction: its credit is reversed (unless it was already) and a new deposit takes its place, with the same
    resident, point and weigher, priced by the rules in force now and charged to today's caps, as a deposit made now
    would be; the ledger names the admin. Once per deposit (the corrections' primary key); a correction can itself
    be corrected."""
    actor.require_role("admin")
    if not fits_key(deposit_id, Deposit.id.type):  # an admin page's id, which no converter bounded
        raise NotFound("投递记录不存在")
    # Locked: a second correction of it waits for the first, then is told of it (not of a member code, or an entry).
    original = db.session.scalar(
        sa.select(Deposit).where(Deposit.id == deposit_id).with_for_update().execution_options(populate_existing=True)
    )
    if original is None or of_resident not in (None, original.resident_id):  # a page about one resident
        raise NotFound("投递记录不存在")
    note(point=original.collection_point_id, resident=original.resident_id)
    done = db.session.get(DepositCorrection, original.id)
    if done is not None:
        raise InvalidState(
            f"这笔投递已经更正过，更正后为第 {done.correction_id} 笔：如仍有误，请更正那一笔",
            details={"deposit_id": done.correction_id},
        )
    point = _deposit_point({"collection_point_id": original.collection_point_id, "items": data["items"]})
    if not point.active:  # a deposit's refusal would name its collection_point_id, which a correction has not
        raise InvalidState("该回收点已停用：请先重新启用回收点，再更正这笔投递")
    # The account first, then what it holds: a reversal or a deposit posted meanwhile is seen, and none comes between.
    ledger.lock_account(original.resident_id)
    _with_links([original])
    entry = None
    if original.entry_id is not None and original.reversal_entry_id is None:
        entry = db.session.get(LedgerEntry, original.entry_id)
        ledger.release_caps(entry)  # today's room is counted without the credit being replaced
    try:
        recorded = _record_deposit(point, data, actor, correcting=original)
    except AccountFrozen:
        raise AccountFrozen("该居民账户已冻结，不能按新重量记录：可先冲正这笔积分，解冻后再更正") from None
    if entry is not None:  # after the new credit: only a correction that takes back more than is left is refused
        try:
            with db.session.begin_nested():
                ledger.reverse(
                    entry, kind="reverse", ref_type="entry", ref_id=entry.id, actor_type=actor.kind,
                    actor_id=actor.id, memo="更正投递", reason=data["reason"], caps_released=True,
                )  # fmt: skip
        except IntegrityError as exc:  # a reversal of the same entry won the race
            raise InvalidState("这笔投递刚被冲正或更正，请刷新后再看") from exc
    db.session.add(DepositCorrection(deposit_id=original.id, correction_id=recorded["id"], reason=data["reason"],
                                     staff_id=actor.id))  # fmt: skip
    flush_unique("这笔投递刚被更正，请刷新后再看")
    audit.record(actor, "deposit.correct", "deposit", original.id,
                 {"reason": data["reason"], "correction_id": recorded["id"]})  # fmt: skip
    commit()
    return recorded


def not_corrected() -> sa.ColumnElement[bool]:
    """The deposits that stand: a deposit recorded again counts once, as corrected (weights and counts summed over
    deposits, such as the day's on the dashboard)."""
    return ~Deposit.id.in_(sa.select(DepositCorrection.deposit_id))


def get_deposit(actor: Actor, deposit_id: int) -> Deposit:
    deposit = get_or_404(Deposit, deposit_id, "投递记录不存在")
    # Out of scope reads as missing, for staff as for residents: ids are sequential, and another's are not to count.
    if not _sees_deposit(actor, deposit):
        raise NotFound("投递记录不存在")
    _with_links([deposit])
    return deposit


def _sees_deposit(actor: Actor, deposit: Deposit) -> bool:
    if actor.kind == "resident":
        return deposit.resident_id == actor.id
    try:
        _require_staff_in_scope(actor, get_point(deposit.collection_point_id))
    except Forbidden:
        return False
    return True


def _with_links(deposits: list[Deposit]) -> None:
    """Fill in each deposit's ledger entry (none for a deposit worth 0 points), the entry that reversed it, and the
    deposits it corrected or was corrected by, if any. The entry is found by its whole (account, kind, ref_type,
    ref_id) key, each deposit's pair named exactly, so that each is one probe of that unique index: an IN list of
    residents beside another of ids made PostgreSQL read every deposit entry of every resident on the page. Its
    reversal, through the unique reverses_id."""
    if not deposits:
        return
    accounts = dict(
        db.session.execute(
            sa.select(Account.resident_id, Account.id).where(Account.resident_id.in_({d.resident_id for d in deposits}))
        ).all()
    )
    keys = [(accounts[d.resident_id], str(d.id)) for d in deposits if d.resident_id in accounts]
    entries = {}
    if keys:
        reversal = sa.orm.aliased(LedgerEntry)
        found = db.session.execute(
            sa.select(LedgerEntry.account_id, LedgerEntry.ref_id, LedgerEntry.id, reversal.id)
            .outerjoin(reversal, reversal.reverses_id == LedgerEntry.id)
            .where(
                LedgerEntry.kind == "earn",
                LedgerEntry.ref_type == "deposit",
                sa.tuple_(LedgerEntry.account_id, LedgerEntry.ref_id).in_(keys),
            )
        )
        entries = {(account_id, ref_id): (entry_id, undone) for account_id, ref_id, entry_id, undone in found}
    ids = [d.id for d in deposits]
    links = db.session.execute(
        sa.select(DepositCorrection.deposit_id, DepositCorrection.correction_id).where(
            DepositCorrection.deposit_id.in_(ids) | DepositCorrection.correction_id.in_(ids)
        )
    ).all()
    corrected_by, corrects = dict(links), {new: old for old, new in links}
    for deposit in deposits:
        deposit.corrected_by_id, deposit.corrects_id = corrected_by.get(deposit.id), corrects.get(deposit.id)
        key = (accounts.get(deposit.resident_id), str(deposit.id))
        deposit.entry_id, deposit.reversal_entry_id = entries.get(key, (None, None))


def _deposit_page(stmt: sa.Select, day: date | None, cursor: str | None, limit: int) -> dict[str, Any]:
    """A page of deposits, newest first, optionally of one local day, each with its lines (loaded in one more query)
    and its ledger entry."""
    if day is not None:
        tz = _config("TIMEZONE")
        stmt = stmt.where(
            Deposit.created_at >= local_midnight(day, tz), Deposit.created_at < local_midnight(day + timedelta(1), tz)
        )
    page = keyset_page(stmt, Deposit.id, cursor, limit)
    _with_links(page["items"])
    return page


def my_deposits(resident_id: int, day: date | None, cursor: str | None, limit: int) -> dict[str, Any]:
    """The resident's own deposits, optionally of one local day: what was weighed where, and what it earned."""
    return _deposit_page(sa.select(Deposit).where(Deposit.resident_id == resident_id), day, cursor, limit)


def point_deposits(actor: Actor, point_id: int, day: date | None, cursor: str | None, limit: int) -> dict[str, Any]:
    """A point's deposits, newest first, optionally of one local day: what its collectors and bins recorded, for
    them (a collector in scope), the community's worker and admins."""
    point = get_point(point_id)
    _require_staff_in_scope(actor, point)
    return _deposit_page(sa.select(Deposit).where(Deposit.collection_point_id == point.id), day, cursor, limit)


def point_checkins(actor: Actor, point_id: int, day: date | None, cursor: str | None, limit: int) -> dict[str, Any]:
    """A point's check-ins, newest first, optionally of one local day, for the community's worker and admins: who
    came and when. A poster shared beyond the point shows up here, and is the cue to rotate it."""
    point = get_point(point_id)
    _require_manager(actor, point.community_id)
    return _checkin_page(Checkin.collection_point_id == point.id, day, cursor, limit)


def my_checkins(resident_id: int, day: date | None, cursor: str | None, limit: int) -> dict[str, Any]:
    """The resident's own check-ins, newest first, optionally of one local day: today's are the points the map can
    mark as done, before a scan answers 409 already_claimed."""
    return _checkin_page(Checkin.resident_id == resident_id, day, cursor, limit)


def _checkin_page(whose: sa.ColumnElement[bool], day: date | None, cursor: str | None, limit: int) -> dict[str, Any]:
    stmt = sa.select(Checkin).where(whose)
    if day is not None:
        stmt = stmt.where(Checkin.day == day)
    return keyset_page(stmt, Checkin.id, cursor, limit)


# Smart-bin devices


def _require_key_holder(actor: Actor) -> None:
    """Whoever sees a bin's secret can sign deposits as the bin and so credit points. Only admins, who can adjust
    points anyway, register bins or re-key them; a community worker retires and reactivates its own bins."""
    actor.require_role("admin")


def _refuse_taken_code(code: str) -> None:
    """A bin's code is unique whatever its case. The refusal names the bin: an admin whose answer, and its one-time
    secret, was lost re-keys that bin rather than registering another."""
    taken = db.session.execute(
        sa.select(Device.id, Device.collection_point_id).where(sa.func.lower(Device.code) == code.lower())
    ).first()
    if taken is not None:
        raise Duplicate(
            f"设备编号已存在（设备 {taken.id}）：如密钥遗失，请为该设备更换密钥",
            details={"device_id": taken.id, "collection_point_id": taken.collection_point_id},
        )


def _refuse_retired_for_bins(point: CollectionPoint, field: str, message: str) -> None:
    """A bin is registered, or brought back, only at an active point: its deposits would all be refused. Read under
    FOR SHARE, so that a retirement in flight ends first, then is seen."""
    db.session.refresh(point, with_for_update={"read": True})
    if not point.active:
        raise field_error(field, message)


def register_device(actor: Actor, data: dict[str, Any]) -> Device:
    _require_key_holder(actor)  # an admin: any community's point
    point = require_exists(CollectionPoint, data["collection_point_id"], "collection_point_id", "回收点不存在")
    _refuse_retired_for_bins(point, "collection_point_id", "该回收点已停用，请先重新启用")
    _refuse_taken_code(data["code"])
    try:
        device = insert_unique(Device(code=data["code"], collection_point_id=point.id), "设备编号已存在")
    except Duplicate:  # registered meanwhile (a double tap): named all the same
        _refuse_taken_code(data["code"])
        raise
    audit.record(actor, "device.register", "device", device.id, {"code": device.code, "point": point.id})
    commit()
    return device


def _managed_device(actor: Actor, device_id: int) -> Device:
    """A bin the caller manages, read again under a row lock: a concurrent change is waited for, then seen (two
    retirements make one change and one audit record). FOR NO KEY UPDATE, as for a point."""
    device = get_or_404(Device, device_id, "设备不存在")
    _require_manager(actor, get_point(device.collection_point_id).community_id)
    db.session.refresh(device, with_for_update={"key_share": True})
    return device


def set_device_active(actor: Actor, device_id: int, active: bool) -> Device:
    """Retire a smart bin (lost, stolen, broken) or bring it back. Its next request is checked against this at
    once: devices are read fresh on every request."""
    device = _managed_device(actor, device_id)
    recorded = audit.records_hold_change(
        actor, held=not device.active, hold=not active, held_by_an_admin=bool(retired_by_an_admin([device])),
        refusal=Forbidden("该设备由平台管理员停用，请联系经发办重新启用"),
    )  # fmt: skip
    if not recorded:
        return device
    if active:
        point = db.session.get(CollectionPoint, device.collection_point_id)
        _refuse_retired_for_bins(point, "active", "该设备所在的回收点已停用，请先重新启用回收点")
    device.active = active
    action = "device.reactivate" if active else "device.deactivate"
    audit.record(actor, action, "device", device.id, {"code": device.code, "by_role": actor.role})
    commit()
    return device


def rotate_device_secret(actor: Actor, device_id: int, replaces: str | None = None) -> Device:
    """A new secret for a bin whose secret leaked: requests signed with the old one fail from now on. The new
    one is shown in this answer only. `replaces`, the fingerprint of the secret the caller saw, makes a form sent
    twice (a reload) a 409 instead of a second rotation that would void the secret just copied."""
    _require_key_holder(actor)
    device = _managed_device(actor, device_id)
    if replaces is not None and not hmac.compare_digest(replaces.encode(), device.secret_fingerprint.encode()):
        raise InvalidState("该设备的密钥已经更换过了，请刷新页面后再试")
    device.secret = new_secret()
    audit.record(actor, "device.rotate_secret", "device", device.id, {"code": device.code})
    commit()
    return device


def _devices_of(actor: Actor, point_id: int) -> sa.Select:
    point = get_point(point_id)
    _require_manager(actor, point.community_id)
    return sa.select(Device).where(Device.collection_point_id == point.id)


def list_devices(actor: Actor, point_id: int) -> list[Device]:
    return list(db.session.scalars(_devices_of(actor, point_id).order_by(Device.id)))


def device_codes(device_ids: list[int]) -> dict[int, str]:
    """How these bins are shown beside what they recorded."""
    rows = db.session.execute(sa.select(Device.id, Device.code).where(Device.id.in_(set(device_ids))))
    return {row.id: row.code for row in rows}


def retired_by_an_admin(devices: list[Device]) -> set[int]:
    """Which of these retired bins an admin retired: only an admin brings those back (their keys may have leaked)."""
    return audit.held_by_admins("device", "device.deactivate", [d.id for d in devices if not d.active])


def device_page(actor: Actor, point_id: int, cursor: str | None, limit: int) -> dict[str, Any]:
    return keyset_page(_devices_of(actor, point_id), Device.id, cursor, limit, desc=False)


def string_to_sign(method: str, path: str, timestamp: str, body: bytes) -> str:
    """What a bin signs: method, path, timestamp and the body's SHA-256 in lower-case hex, one per line."""
    return f"{method.upper()}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}"


def device_signature(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 of the string to sign, hex encoded."""
    message = string_to_sign(method, path, timestamp, body)
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


# What each signature header must look like: the bin's numeric id, Unix seconds, and the hex HMAC.
DEVICE_HEADERS = {
    "X-Device-Id": re.compile(r"[1-9][0-9]{0,17}"),
    "X-Timestamp": re.compile(r"[0-9]{1,11}"),
    "X-Signature": re.compile(r"[0-9a-fA-F]{64}"),
}


BURN_AHEAD_S = 86_400  # how far ahead a refused request's timestamp may be for its signature to be kept as used


class ReplayedSignature(Duplicate):
    """A signed request seen before, from an authentic device. `details.refused` says whether that first try was
    refused, so that a bin that lost the answer does not take this 409 for "recorded"; one that was recorded names
    the deposit (`deposit_id`, `points`), for the bin to show the resident."""

    message = "重复的设备请求"

    def __init__(self, device_id: int, refused: bool = False, recorded: dict[str, int] | None = None):
        if refused:
            message = "该请求已被拒绝过，签名已失效：请重新签名后再提交"
        elif recorded:  # what the bin can show the resident who is still standing at it
            message = f"这笔投递已经记录（编号 {recorded['deposit_id']}，{recorded['points']} 积分），无需重复提交"
        else:
            message = "重复的设备请求：该请求已处理"
        super().__init__(message, details={"refused": refused} | (recorded or {}))
        self.device_id = device_id


_RECORDED_BY_DEVICE = _CODE_SPENT.where(Deposit.device_id == sa.bindparam("device_id"))


def _recorded_by(device_id: int, body: bytes) -> dict[str, int] | None:
    """The deposit this bin's request recorded, found by the member code it paid with; None if there is none."""
    try:
        code = json.loads(body)["member_code"]
        member = qr.read_member_code(qr.extract_token(code), _qr_key("member"), utcnow(), expired=True)
    except (ValueError, KeyError, TypeError, qr.QRError):
        return None
    params = {"resident_id": member.resident_id, "nonce": member.nonce, "device_id": device_id}
    spent = run(_RECORDED_BY_DEVICE, params).first()
    return {"deposit_id": spent.id, "points": spent.points} if spent is not None else None


_REFUSED_BEFORE = sa.select(DeviceSignature.refused).where(DeviceSignature.signature == sa.bindparam("signature"))


def authenticate_device(headers, method: str, path: str, body: bytes) -> Actor:
    """Verify the device's signature and timestamp, and burn the signature so it cannot be replayed. Each refusal's
    `details.reason` says what a bin should fix: bad_headers (with the headers named), unknown_device,
    stale_timestamp (with the server's time), device_retired (only to the key's holder, on a fresh request) or
    bad_signature. An authentic request refused for a cause that can pass (a bin brought back, a clock that catches
    up) stays refused: its signature is burned too."""
    values = {name: headers.get(name, "") for name in DEVICE_HEADERS}
    # ASCII digits of bounded length only (str.isdigit() accepts "²", which int() refuses, and a huge id
    # overflows the driver); hex only, since compare_digest raises on non-ASCII text.
    wrong = [name for name, pattern in DEVICE_HEADERS.items() if not pattern.fullmatch(values[name])]
    if wrong:
        message, details = f"缺少或无效的设备签名头：{'、'.join(wrong)}", {"reason": "bad_headers", "headers": wrong}
        if "X-Timestamp" in wrong:  # the server's clock, in seconds, to sign again with
            millis = re.fullmatch(r"[0-9]{12,14}", values["X-Timestamp"])
            message += f"（X-Timestamp 应为 Unix 时间的整数秒{'，不是毫秒' if millis else ''}）"
            details["server_time"] = int(utcnow().timestamp())
        raise Unauthorized(message, details=details)
    raw_id, timestamp, signature = values.values()
    device = find(Device, int(raw_id))
    signed_by_it = device is not None and hmac.compare_digest(
        device_signature(device.secret, method, path, timestamp, body), signature.lower()
    )
    if device is None or (not device.active and not signed_by_it):
        log.warning("device request from unknown or inactive device %s", raw_id)
        raise Unauthorized("设备未登记或已停用", details={"reason": "unknown_device"})
    device_id = device.id  # read before a failed flush expires the instance
    now = int(utcnow().timestamp())
    skew = abs(now - int(timestamp))
    if skew > _config("DEVICE_CLOCK_SKEW_SECONDS"):
        log.warning("device %s timestamp off by %.0f s", device_id, skew)
        # Kept as seen at its own time, so that pruning keeps it until it is too old anyway. Not when stamped days
        # ahead (a bin's clock gone wild): each retry would keep a row until then, and by then the member code it
        # carries has long expired, so sending it could credit nothing.
        if signed_by_it and now < int(timestamp) <= now + BURN_AHEAD_S:
            burn_refused_signature(device_id, signature, datetime.fromtimestamp(int(timestamp), UTC))
        # The server's clock, so that a registered bin can correct its own and sign again.
        details = {"reason": "stale_timestamp", "server_time": now}
        raise Unauthorized("设备时间与服务器相差过大，请校准时间", details=details)
    if not device.active:
        log.warning("signed request from retired device %s", device_id)
        burn_refused_signature(device_id, signature)
        raise Unauthorized("该设备已停用，请联系社区工作者重新启用", details={"reason": "device_retired"})
    if not signed_by_it:
        log.warning("bad signature from device %s", device_id)
        # What the server signed, to compare with what the bin signed: every part of it is the bin's own.
        details = {"reason": "bad_signature", "string_to_sign": string_to_sign(method, path, timestamp, body)}
        raise Unauthorized("设备签名无效：请核对 details.string_to_sign 与设备签名的内容是否一致", details=details)
    if not _burn(device_id, signature):
        log.warning("replayed signature from device %s", device_id)
        refused = bool(run(_REFUSED_BEFORE, {"signature": signature.lower()}).scalar())
        raise ReplayedSignature(device_id, refused, None if refused else _recorded_by(device_id, body))
    return Actor(
        kind="device", id=device.id, role="device", collection_point_ids=frozenset({device.collection_point_id}),
        signed_at=datetime.fromtimestamp(int(timestamp), UTC),
    )  # fmt: skip


@cache
def _burn_signature(dialect: str) -> sa.Insert:
    table = DeviceSignature.__table__
    insert = upsert_insert(dialect)(table).on_conflict_do_nothing(index_elements=["signature"])
    return insert.returning(table.c.device_id)


def _burn(device_id: int, signature: str, refused: bool = False, seen_at: datetime | None = None) -> bool:
    """Record the signature as used; False if it was already."""
    values = {"signature": signature.lower(), "device_id": device_id, "seen_at": seen_at or utcnow(),
              "refused": refused}  # fmt: skip
    return run(_burn_signature(dialect_name()), values).scalar() is not None


def burn_refused_signature(device_id: int, signature: str, seen_at: datetime | None = None) -> None:
    """Authentication refused an authentic request for a cause that can pass (a bin brought back, a clock catching
    up): its signature is used all the same, in its own transaction, so that its bytes cannot be sent later. One
    already seen keeps its row as it is (an accepted request resent late stays accepted)."""
    _burn(device_id, signature, refused=True, seen_at=seen_at)
    db.session.commit()


_MARK_REFUSED = (
    sa.update(DeviceSignature.__table__)
    .where(DeviceSignature.__table__.c.signature == sa.bindparam("sig"))
    .values(refused=True)
)


def mark_signature_refused(signature: str) -> None:
    """The request whose signature this transaction burned (or an earlier one, under the same Idempotency-Key,
    committed) was refused: say so on its row, in this transaction (the caller commits). The row is never released
    on the way, so an identical request waiting on its unique index finds it used rather than being judged again."""
    run(_MARK_REFUSED, {"sig": signature.lower()})


def prune_device_signatures() -> int:
    """Signatures older than the clock window can never be accepted again, so they need not be kept. A signature
    stamped T is accepted while the server's whole second is within the window of T, which lasts until just before
    T + skew + 1 s; seen no sooner than T - skew, it is kept for 2 x skew + 1 s."""
    cutoff = utcnow() - timedelta(seconds=2 * _config("DEVICE_CLOCK_SKEW_SECONDS") + 1)
    deleted = db.session.execute(sa.delete(DeviceSignature).where(DeviceSignature.seen_at < cutoff)).rowcount
    commit()
    return deleted
