"""Who is calling, and may they? Guards load the caller once per request into `g.actor`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps

import sqlalchemy as sa
from flask import g
from flask_jwt_extended import get_jwt, verify_jwt_in_request

from app.apidoc import extend_doc
from app.auth.models import RevokedSession
from app.clock import utcnow
from app.db import MAX_ID, run
from app.errors import AccountFrozen, Forbidden, TokenExpired, TokenRevoked, Unauthorized
from app.people.models import STAFF_ROLES, Resident, Staff, staff_collection_points, staff_stores

RESIDENT = "resident"
STAFF = STAFF_ROLES
ANYONE_LOGGED_IN = (RESIDENT, *STAFF_ROLES)


@dataclass(frozen=True)
class Actor:
    kind: str  # resident | staff | device
    id: int
    role: str
    community_id: int | None = None
    organization_id: int | None = None
    store_ids: frozenset[int] = field(default_factory=frozenset)
    collection_point_ids: frozenset[int] = field(default_factory=frozenset)
    # A smart bin's: when it signed the request (its X-Timestamp, which the signature vouches for, within the window).
    signed_at: datetime | None = None

    @property
    def identity(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_role(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden()

    def require_community(self, community_id: int | None) -> None:
        """Admins act anywhere; a worker only in its own community."""
        if not self.is_admin and (community_id is None or community_id != self.community_id):
            raise Forbidden("只能操作本社区的数据")

    def require_organization(self, organization_id: int | None) -> None:
        if not self.is_admin and (organization_id is None or organization_id != self.organization_id):
            raise Forbidden("只能操作本单位的数据")

    def require_collection_point(self, point_id: int) -> None:
        if not self.is_admin and point_id not in self.collection_point_ids:
            raise Forbidden("您不是该回收点的回收员，不能查看或记录该点的投递")


def identity_for(kind: str, obj_id: int) -> str:
    return f"{kind}:{obj_id}"


_SUBJECT = re.compile(r"(resident|staff):([0-9]{1,10})", re.ASCII)


def _parse_identity(sub: object) -> tuple[str, int] | None:
    found = _SUBJECT.fullmatch(sub) if isinstance(sub, str) else None
    if found is None or int(found[2]) > MAX_ID:
        return None
    return found[1], int(found[2])


def well_formed(claims: dict) -> bool:
    """The claims this app reads have the types it minted them with. Only a holder of the signing key could send
    others, but a mistake there should be a 401, not a 500."""
    sid, since = claims.get("sid"), claims.get("since", 0)
    return (
        _parse_identity(claims.get("sub")) is not None
        and isinstance(sid, str)
        and 0 < len(sid) <= 64
        and type(since) is int
        and 0 <= since < 2**53
    )


SCOPED_ROLES = ("merchant", "collector")


_SCOPES = sa.union_all(
    sa.select(sa.literal("store").label("kind"), staff_stores.c.store_id.label("ref"), staff_stores.c.staff_id),
    sa.select(sa.literal("point"), staff_collection_points.c.collection_point_id, staff_collection_points.c.staff_id),
).subquery("scopes")
_STAFF_SCOPES = sa.select(_SCOPES.c.kind, _SCOPES.c.ref).where(_SCOPES.c.staff_id == sa.bindparam("id"))


def staff_actor(staff_id: int, role: str, community_id: int | None, organization_id: int | None, scopes=None) -> Actor:
    """A staff caller. Store and collection-point ids are the (kind, ref) rows `scopes`, or are read for the
    roles that have them."""
    if scopes is None:
        scopes = run(_STAFF_SCOPES, {"id": staff_id}).all() if role in SCOPED_ROLES else ()
    return Actor(
        kind="staff",
        id=staff_id,
        role=role,
        community_id=community_id,
        organization_id=organization_id,
        store_ids=frozenset(ref for kind, ref in scopes if kind == "store"),
        collection_point_ids=frozenset(ref for kind, ref in scopes if kind == "point"),
    )


def actor_for_staff(staff: Staff) -> Actor:
    return staff_actor(staff.id, staff.role, staff.community_id, staff.organization_id)


_REVOKED = sa.exists().where(RevokedSession.sid == sa.bindparam("sid"))


def _state_of(model, *columns) -> sa.Select:
    """The person's state and the session's revocation, in one statement."""
    return sa.select(*columns, model.community_id, _REVOKED.label("revoked")).where(model.id == sa.bindparam("id"))


_STATE = {
    "resident": _state_of(Resident, Resident.status, Resident.sessions_valid_after),
    # One row per store or collection point in scope (or one row with none): a single round trip for staff too.
    "staff": _state_of(
        Staff,
        Staff.active,
        Staff.role,
        Staff.organization_id,
        Staff.sessions_valid_after,
        _SCOPES.c.kind,
        _SCOPES.c.ref,
    )
    .select_from(Staff)
    .outerjoin(_SCOPES, _SCOPES.c.staff_id == Staff.id),
}


def session_now() -> int:
    """Now, as sessions record when they began: Unix milliseconds by the app's clock."""
    return int(utcnow().timestamp() * 1000)


def session_after(cut_off: datetime) -> int:
    """The start (Unix milliseconds) of a session that a cut-off at `cut_off` does not end: its millisecond,
    rounded up."""
    return math.ceil(cut_off.timestamp() * 1000)


def session_start(claims: dict) -> int:
    """When the token's session began (Unix milliseconds): its `since` claim, or, for a token minted without one,
    the start of the second its iat names."""
    return int(claims["since"]) if "since" in claims else int(claims.get("iat", 0)) * 1000


def issued_before(started_ms: int, valid_after: datetime | None) -> bool:
    """Whether a session begun at `started_ms` predates the account's cut-off."""
    return valid_after is not None and started_ms < valid_after.timestamp() * 1000


def load_actor(claims: dict) -> Actor:
    """The caller as of now, in as few round trips as the hot paths allow: the person's state and the
    session's revocation in one statement, and scope ids only for the roles that have them."""
    parsed = _parse_identity(claims["sub"])
    if parsed is None:
        raise Unauthorized("登录凭证无效")
    kind, obj_id = parsed
    rows = run(_STATE[kind], {"id": obj_id, "sid": claims.get("sid")}).all()
    row = rows[0] if rows else None
    if row is not None and row.revoked:
        raise TokenRevoked()
    if kind == "resident":
        if row is None or row.status == "closed":
            raise Unauthorized("账户不存在或已注销")
        if row.status == "frozen":
            raise AccountFrozen()
        if row.sessions_valid_after is not None and issued_before(session_start(claims), row.sessions_valid_after):
            raise TokenRevoked("账户状态已变更，请重新登录")  # most residents were never frozen: no cut-off to read
        return Actor(kind="resident", id=obj_id, role=RESIDENT, community_id=row.community_id)
    if row is None or not row.active:
        raise Unauthorized("账户不存在或已停用")
    if issued_before(session_start(claims), row.sessions_valid_after):
        raise TokenRevoked("密码已更改或账户曾被停用，请重新登录")
    scopes = [(r.kind, r.ref) for r in rows if r.kind is not None]
    return staff_actor(obj_id, row.role, row.community_id, row.organization_id, scopes)


def current_actor() -> Actor:
    actor = g.get("actor")
    if actor is None:
        raise Unauthorized()
    return actor


def authenticate(*roles: str, refresh: bool = False) -> Actor:
    verify_jwt_in_request(refresh=refresh)
    actor = load_actor(get_jwt())
    if roles and actor.role not in roles:
        raise Forbidden()
    g.actor = actor
    return actor


def _require_open_session() -> None:
    """A valid token, access or refresh, of a session not yet ended, whatever its account's state now: a client whose
    access token has expired can still end its session with the refresh token."""
    verify_jwt_in_request(verify_type=False)
    if run(_SESSION_REVOKED, {"sid": get_jwt().get("sid")}).scalar():
        raise TokenRevoked()


_SESSION_REVOKED = sa.select(_REVOKED)


def login_required(*roles: str, refresh: bool = False, standing: bool = True):
    """Require a valid bearer token and, if given, one of `roles` ('resident' or a staff role). With
    `standing=False` (ending a session) the account's state is not asked: a frozen resident or a deactivated staff
    member can still log a device out, so that its tokens do not come back to life with the account."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if standing:
                authenticate(*roles, refresh=refresh)
            else:
                _require_open_session()
            return view(*args, **kwargs)

        documented = [Unauthorized, TokenExpired, TokenRevoked]
        documented += ([AccountFrozen] if standing else []) + ([Forbidden] if roles else [])
        # Which token is the bearer, for a client generator's auth: the refresh token on /auth/refresh, either one
        # to end a session.
        schemes = ["refreshToken"] if refresh else ["bearerAuth"] if standing else ["bearerAuth", "refreshToken"]
        return extend_doc(wrapper, view, errors=documented, security=[{scheme: []} for scheme in schemes])

    return decorator
