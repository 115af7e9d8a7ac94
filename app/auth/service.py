"""Logins, tokens and logout."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, get_jwt
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from app.auth.guards import Actor, identity_for, session_after, session_now, session_start
from app.auth.limits import take_login_attempt
from app.auth.models import RevokedSession
from app.auth.wechat import make_client
from app.clock import utcnow
from app.db import commit, db
from app.errors import AccountFrozen, InvalidCredentials
from app.people.models import Staff
from app.people.service import change_own_password, resident_for_openid

# Checked against when the username is unknown, so both paths cost one hash.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


def _tokens(identity: str, role: str, since: int | None = None) -> dict[str, str]:
    sid = str(uuid.uuid4())
    # `since`: when the session began, by the app's clock; the refreshed access tokens keep it.
    claims = {"sid": sid, "role": role, "since": session_now() if since is None else since}
    return {
        "access_token": create_access_token(identity, additional_claims=claims),
        "refresh_token": create_refresh_token(identity, additional_claims=claims),
    }


def wechat_client():
    cfg = current_app.config
    return make_client(
        cfg["WECHAT_MODE"], cfg["WECHAT_API_BASE"], cfg["WECHAT_APPID"], cfg["WECHAT_SECRET"], cfg["WECHAT_TIMEOUT"]
    )


def login_resident(code: str) -> dict[str, Any]:
    session = wechat_client().code2session(code)
    resident = resident_for_openid(session.openid, session.unionid)
    if resident.status == "frozen":
        db.session.rollback()
        raise AccountFrozen()
    tokens = _tokens(identity_for("resident", resident.id), "resident")  # begun under the row's lock, before a freeze
    commit()
    return {**tokens, "resident": resident}


def login_staff(username: str, password: str) -> dict[str, Any]:
    # FOR SHARE: a password change or deactivation in flight (it locks the row) finishes first, so this login
    # either checks the new state or begins before the change's session cut-off.
    give_back = take_login_attempt(username)
    by_name = sa.func.lower(Staff.username) == username.lower()  # the unique index on lower(username)
    staff = db.session.scalar(sa.select(Staff).where(by_name).with_for_update(read=True))
    valid = check_password_hash(staff.password_hash if staff else _DUMMY_HASH, password)
    if staff is None or not valid or not staff.active:
        raise InvalidCredentials()
    give_back()
    return {**_tokens(identity_for("staff", staff.id), staff.role), "staff": staff}


def change_password(actor: Actor, current: str, new: str) -> dict[str, Any]:
    """The caller's own new password; every earlier session ends, and this answer begins the caller's next one."""
    staff = change_own_password(actor, get_jwt()["sid"], current, new)
    since = session_after(staff.sessions_valid_after)
    return {**_tokens(identity_for("staff", staff.id), staff.role, since), "staff": staff}


def refresh() -> dict[str, str]:
    claims = get_jwt()
    extra = {"sid": claims["sid"], "role": claims.get("role"), "since": session_start(claims)}
    return {"access_token": create_access_token(claims["sub"], additional_claims=extra)}


def logout() -> None:
    """Revokes the session: the access and refresh tokens issued together, whichever of them is presented."""
    revoke_session(get_jwt()["sid"], current_app.config["JWT_REFRESH_TOKEN_EXPIRES"])


def revoke_session(sid: str, lifetime: timedelta) -> None:
    """Whatever carries this session id stops working; kept for as long as it could otherwise still be used."""
    if db.session.get(RevokedSession, sid) is None:
        try:
            with db.session.begin_nested():
                db.session.add(RevokedSession(sid=sid, expires_at=utcnow() + lifetime))
        except IntegrityError:
            pass  # a concurrent logout of the same session already revoked it
    commit()


def prune_revoked_sessions() -> int:
    """Forget revocations whose sessions have expired anyway."""
    deleted = db.session.execute(sa.delete(RevokedSession).where(RevokedSession.expires_at < utcnow())).rowcount
    commit()
    return deleted
