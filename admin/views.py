"""The admin site's table of contents: the blueprint, its request hooks, error pages and page modules."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from flask import current_app, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from admin import labels, security
from admin.blueprint import bp
from admin.forms import (
    BOX_FOCUS,
    REFUSED,
    field_messages,
    flashed,
    form_key_field,
    invalid,
    said_by_fields,
    settle_focus,
)
from app.db import db
from app.errors import AppError, NotFound
from app.http import note_outage, refuse_unstorable_query_and_form
from app.people import service as people

log = logging.getLogger("app.admin")

# (endpoint, label, roles that see it in the menu); each page still asks its service for permission.
NAV = (
    ("admin.dashboard", "首页", ("admin", "worker", "alliance")),
    ("admin.communities", "社区", ("admin", "worker")),
    ("admin.organizations", "联盟单位", ("admin", "worker", "alliance")),
    ("admin.staff", "工作人员", ("admin", "alliance")),
    ("admin.residents", "居民", ("admin", "worker")),
    ("admin.rules", "积分规则", ("admin", "worker", "alliance")),
    ("admin.points", "回收点", ("admin", "worker")),
    ("admin.verify", "账本校验", ("admin",)),
)

HTTP_MESSAGES = {
    400: "请求无效",
    403: "没有权限访问此页面",
    404: "页面不存在",
    405: "不支持该请求方法",
    413: "提交的内容过大",
    429: "操作太频繁，请稍后再试",
}


bp.record_once(lambda state: security.configure_cookies(state.app))
bp.before_request(security.before_request)
bp.before_request(refuse_unstorable_query_and_form)  # after the sign-in is known: the error page keeps the menu
bp.after_request(security.after_request)
bp.after_request(settle_focus)


def local_time(moment: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if moment is None:
        return "—"
    return moment.astimezone(ZoneInfo(current_app.config["TIMEZONE"])).strftime(fmt)


def plain_number(value) -> str:
    """1000.000 → "1000", 12.500 → "12.5" (no exponent, unlike Decimal.normalize())."""
    if value is None:
        return ""
    text = f"{Decimal(value):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def community_names() -> dict[int, str]:
    if "admin_communities" not in g:
        g.admin_communities = {c.id: c.name for c in people.list_communities()}
    return g.admin_communities


def organization_names() -> dict[int, str]:
    if "admin_organizations" not in g:
        g.admin_organizations = {o.id: o.name for o in people.list_organizations()}
    return g.admin_organizations


@bp.context_processor
def _template_helpers():
    staff = security.current_staff()
    nav = [(endpoint, text) for endpoint, text, roles in NAV if staff is not None and staff.role in roles]
    return {
        "me": staff,
        "nav": nav,
        "csrf_field": security.csrf_field,
        "form_key_field": form_key_field,
        "L": labels,
        "label": labels.label,
        "local_time": local_time,
        "plain_number": plain_number,
        "community_names": community_names,
        "organization_names": organization_names,
        "field_messages": field_messages,
        "said_by_fields": said_by_fields,
        "flashed": flashed,
        "invalid": invalid,
        "box_focus": BOX_FOCUS,
        "refused": g.get(REFUSED, False),
    }


def render_error(status: int, message: str, error: AppError | None = None):
    return render_template("admin/error.html", status=status, message=message, error=error), status


@bp.errorhandler(AppError)
def _app_error(error: AppError):
    db.session.rollback()
    if error.status >= 500:
        log.error("admin: %s %s", error.code, error.message)
    if error.status == 429 and request.endpoint == "admin.login":  # the form again, with the wait (as below)
        body, status = auth_pages.locked_login_page(error.message)
    else:
        body, status = render_error(error.status, error.message, error)
    return body, status, dict(error.headers)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    status = error.code or 500
    if status >= 500:
        return _unexpected(error)
    if status == 429 and request.endpoint == "admin.login":
        body, status = auth_pages.locked_login_page()
        return body, status, {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    message = HTTP_MESSAGES.get(status, "请求无效")
    if status == 400 and error.description and not error.description.isascii():
        message = error.description  # our own zh-CN reason, e.g. the CSRF refusal
    body, status = render_error(status, message)
    return body, status, {k: v for k, v in error.get_headers() if k.lower() != "content-type"}


@bp.errorhandler(Exception)
def _unexpected(error: Exception):
    db.session.rollback()
    headers = note_outage(error, log, prefix="admin: ")
    if headers:  # the page says to come back
        g.admin_staff = None  # the page's menu would read the signed-in member from the database that is away
        body, status = render_error(503, "服务暂时不可用，请稍后再试")
        return body, status, headers
    log.exception("admin: unhandled error on %s %s", request.method, request.path)
    return render_error(500, "服务器内部错误，请稍后再试")


@bp.route("/", methods=["POST", "PUT", "PATCH", "DELETE"], defaults={"anything": ""})
@bp.route("/<path:anything>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(anything: str):
    """Any other path or method under /admin: an HTML 404 or 405 with the site's headers, not the API's JSON."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = set()
    for method in ("GET", "POST"):
        try:
            endpoint, _ = adapter.match(method=method)
        except HTTPException:
            continue
        if endpoint != security.NOT_FOUND:
            allowed.add(method)
    if allowed == {"POST"} and request.method in ("GET", "HEAD"):
        # A refused form's page stays at its action's address, which a tab reopened (a phone's, say) asks for by
        # GET: to the page the action belongs to, the nearest one above it.
        return redirect(_page_above(adapter, request.path), 303)
    if allowed:
        raise MethodNotAllowed(valid_methods=sorted(allowed | ({"HEAD"} if "GET" in allowed else set())))
    raise NotFound("页面不存在")


def _page_above(adapter, path: str) -> str:
    parts = path.rstrip("/").split("/")
    while len(parts) > 3:  # "", "admin", and at least a page's name
        parts.pop()
        candidate = "/".join(parts)
        try:
            endpoint, _ = adapter.match(candidate, method="GET")
        except HTTPException:
            continue
        if endpoint != security.NOT_FOUND:
            return candidate
    return url_for("admin.dashboard")


# The page modules register their routes on `bp`.
from admin import (  # noqa: E402
    auth_pages,
    dashboard,  # noqa: F401
    ledger_pages,  # noqa: F401
    people_pages,  # noqa: F401
    point_pages,  # noqa: F401
    rule_pages,  # noqa: F401
)

__all__ = ["bp"]
