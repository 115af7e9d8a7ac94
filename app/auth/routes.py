from __future__ import annotations

from flask import request

from app.apidoc import error_docs
from app.auth import service
from app.auth.guards import STAFF, current_actor, login_required
from app.auth.limits import failed_staff_logins, password_change_attempts, staff_login_attempts
from app.auth.schemas import (
    AccessTokenSchema,
    PasswordChangeSchema,
    ResidentTokensSchema,
    StaffLoginSchema,
    StaffTokensSchema,
    WeChatLoginSchema,
)
from app.errors import (
    AccountFrozen,
    Forbidden,
    InvalidCredentials,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from app.http import Blueprint, no_body

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="登录、刷新与退出")


def _username() -> str:
    body = request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    return str(username or "")


@blp.route("/wechat", methods=["POST"])
@error_docs(InvalidCredentials, AccountFrozen, Forbidden, RateLimited, UpstreamError, UpstreamUnavailable)
@blp.arguments(WeChatLoginSchema)
@blp.response(200, ResidentTokensSchema)
def wechat_login(body):
    """Resident login with a wx.login() code; the resident is created on first login."""
    return service.login_resident(body["code"])


@blp.route("/login", methods=["POST"])
@staff_login_attempts()
@failed_staff_logins(_username)
@error_docs(InvalidCredentials, RateLimited)
@blp.arguments(StaffLoginSchema)
@blp.response(200, StaffTokensSchema)
def staff_login(body):
    """Staff login with username and password."""
    return service.login_staff(body["username"], body["password"])


@blp.route("/password", methods=["POST"])
@password_change_attempts()
@login_required(*STAFF)
@error_docs(RateLimited)
@blp.arguments(PasswordChangeSchema)
@blp.response(200, StaffTokensSchema)
def change_password(body):
    """A staff member changes their own password, giving the current one. A wrong one is 422 on
    `current_password`; a session gets five tries per 15 minutes, then 429. Every session begun before, on any
    device, ends; the answer carries new tokens."""
    return service.change_password(current_actor(), body["current_password"], body["new_password"])


@blp.route("/refresh", methods=["POST"])
@login_required(refresh=True)
@blp.response(200, AccessTokenSchema)
@no_body
def refresh():
    """Exchange a refresh token (as the bearer) for a new access token."""
    return service.refresh()


@blp.route("/logout", methods=["POST"])
@login_required(standing=False)
@blp.response(204)
@no_body
def logout():
    """Revoke this session: the access token and its refresh token both stop working. Either may be the bearer, so a
    client whose access token has expired logs out with the refresh token. A frozen or deactivated account may log
    out too."""
    service.logout()
