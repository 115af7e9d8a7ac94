"""Admin sessions: who is logged in, the CSRF token, cookie flags and response headers.

The Flask session (a signed cookie) holds only the staff id, the CSRF token, the session's id and when it began.
Role and scope are reloaded from the database on every request, so a deactivated or re-scoped account takes effect
at once. A signed cookie cannot be taken back, so logging out revokes the session's id (as the API revokes a
token's), and a password change or deactivation ends the sessions begun before it."""

from __future__ import annotations

import hmac
import secrets
import uuid
from functools import wraps
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, flash, g, redirect, request, session, url_for
from markupsafe import Markup, escape

from app.auth import service as auth
from app.auth.guards import Actor, actor_for_staff, issued_before, session_now
from app.auth.models import RevokedSession
from app.db import db, find
from app.people.models import Staff

ADMIN_ROLES = ("admin", "worker", "alliance")
STAFF_KEY = "admin_staff_id"
CSRF_KEY = "admin_csrf"
SID_KEY = "admin_sid"
SINCE_KEY = "admin_since"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Endpoints reachable without a login: the login form itself and the HTML 404.
NOT_FOUND = "admin.not_found"
PUBLIC_ENDPOINTS = frozenset({"admin.login", NOT_FOUND})
# The HTML 404/405 changes nothing; the login form checks its own token, to show itself again, not an error page.
NO_TOKEN_CHECK = frozenset({NOT_FOUND, "admin.login"})

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def configure_cookies(app: Flask) -> None:
    """HttpOnly and SameSite=Lax on the session cookie; Secure in production."""
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    if not app.config.get("SESSION_COOKIE_SAMESITE"):
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if app.config.get("APP_ENV") == "production":  # which is served over https only (app.config refuses otherwise)
        app.config["SESSION_COOKIE_SECURE"] = True


# CSRF


def csrf_token() -> str:
    token = session.get(CSRF_KEY)
    if not token:
        token = session[CSRF_KEY] = secrets.token_urlsafe(32)
    return token


def csrf_field() -> Markup:
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(csrf_token()))


def csrf_valid() -> bool:
    expected = session.get(CSRF_KEY)
    given = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token")
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


# Session


def log_in(staff: Staff, since: int | None = None) -> None:
    """A fresh session (and a fresh CSRF token) at every login. `since`: when it began, if not now."""
    session.clear()
    session[STAFF_KEY] = staff.id
    session[SID_KEY] = str(uuid.uuid4())
    session[SINCE_KEY] = session_now() if since is None else since
    csrf_token()


def log_out(*, revoke: bool = False) -> None:
    """`revoke`: a copy of the cookie kept from before stops working too (the logout button)."""
    sid = session.get(SID_KEY)
    if revoke and sid:
        auth.revoke_session(sid, current_app.config["PERMANENT_SESSION_LIFETIME"])
    session.clear()


def session_id() -> str:
    """The signed-in session's id (a page behind the sign-in has one)."""
    return session[SID_KEY]


def _session_ended(staff: Staff) -> bool:
    sid = session.get(SID_KEY)
    if sid is None or issued_before(session.get(SINCE_KEY, 0), staff.sessions_valid_after):
        return True
    return db.session.get(RevokedSession, sid) is not None


def current_staff() -> Staff | None:
    return g.get("admin_staff")


def current_admin_actor() -> Actor:
    return g.admin_actor


def only(*roles: str):
    """The role is checked before the form is read: a member without it gets 403 whatever the form says."""

    def decorator(view):
        @wraps(view)
        def wrapper(**kwargs):
            current_admin_actor().require_role(*roles)
            return view(**kwargs)

        return wrapper

    return decorator


def _safe_next(target: str | None) -> str | None:
    """Only a path inside the admin site; never another host."""
    if (
        target
        and target.startswith("/admin/")
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()  # no CR or LF, which cannot go into a Location header
    ):
        return target
    return None


def next_url() -> str:
    return _safe_next(request.args.get("next") or request.form.get("next")) or url_for("admin.dashboard")


def _sign_in_again(message: str | None = None):
    """To the sign-in, then back: to the page asked for, or for a form, to the page it was sent from (the site's
    own, by its Referer). A form's input is not kept, and the message says it was not sent."""
    if request.method in ("GET", "HEAD"):
        target = request.full_path.rstrip("?")
    else:
        sent_from = urlsplit(request.referrer or "")
        same_site = sent_from.netloc == request.host
        target = (sent_from.path + (f"?{sent_from.query}" if sent_from.query else "")) if same_site else None
        message = "登录已失效，刚才的操作没有提交：请重新登录后再操作一次"
    if message:
        flash(message, "error")
    return redirect(url_for("admin.login", next=_safe_next(target)))


def before_request():
    g.admin_staff = None
    staff_id = session.get(STAFF_KEY)
    if staff_id is not None:
        staff = find(Staff, staff_id)
        if staff is None or not staff.active or staff.role not in ADMIN_ROLES:
            log_out()
            flash("账户已停用或无权使用管理后台，请联系平台管理员", "error")
            return redirect(url_for("admin.login"))
        if _session_ended(staff):
            log_out()
            return _sign_in_again("登录已失效，请重新登录")
        g.admin_staff = staff
        g.admin_actor = g.actor = actor_for_staff(staff)
    signed_out = g.admin_staff is None and request.endpoint not in PUBLIC_ENDPOINTS
    # A form sent signed out (from another tab, or after the cookie's hours) changes nothing: to the sign-in, rather
    # than a CSRF refusal blaming "another window". Once signed in, the check comes after the sign-in is known, so
    # that a refusal (or a form too large to read) shows the signed-in page, menu and all; a wrong method gets its
    # 405, not a CSRF refusal.
    if signed_out and request.method in UNSAFE_METHODS and request.endpoint is not None:
        if request.endpoint == "admin.logout":  # signed out already: nothing to do again
            return redirect(url_for("admin.login"))
        return _sign_in_again()
    if request.method in UNSAFE_METHODS and request.endpoint not in NO_TOKEN_CHECK and not csrf_valid():
        abort(400, description="页面已过期或来源无效（例如在别的窗口重新登录过），请返回上一页重新提交")
    if signed_out:
        return _sign_in_again()
    return None


def after_request(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response
