"""Log in, log out, and change one's own password."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for

from admin import labels, security
from admin.blueprint import bp
from admin.forms import load, rerender_on_error, text
from app.auth import service as auth
from app.auth.guards import session_after
from app.auth.limits import (
    failed_staff_logins,
    login_wait_message,
    password_change_attempts,
    staff_login_attempts,
)
from app.auth.schemas import PasswordChangeSchema
from app.errors import InvalidCredentials, field_error
from app.people import service as people


def _login_page(error: str | None = None, status: int = 200):
    return render_template(
        "admin/login.html",
        error=error,
        refused=error is not None,
        username=text("username"),
        next=request.values.get("next"),
    ), status


def locked_login_page(message: str | None = None):
    """The login form again, saying how long until the next try (the limiter's Retry-After, to the nearest
    minute, unless `message` says otherwise), rather than an error page without the form."""
    return _login_page(message or login_wait_message(), 429)


@bp.route("/login", methods=["GET", "POST"])
@staff_login_attempts()
@failed_staff_logins(lambda: text("username"))
def login():
    if request.method != "POST":  # GET, or HEAD, which must not count as a login attempt
        if security.current_staff() is not None:
            return redirect(security.next_url())
        return _login_page()
    if not security.csrf_valid():  # a page left open too long, or a forged sign-in: no password is checked
        return _login_page("页面已过期，请重新输入密码登录", 400)
    try:
        staff = auth.login_staff(text("username"), request.form.get("password") or "")["staff"]
    except InvalidCredentials as error:
        return _login_page(error.message, error.status)
    if staff.role not in security.ADMIN_ROLES:
        role = labels.label(labels.ROLES, staff.role)
        return _login_page(f"{role}账号不能登录管理后台，请使用小程序工作端", 403)
    security.log_in(staff)
    flash(f"欢迎，{staff.display_name or staff.username}", "success")
    return redirect(security.next_url())


@bp.route("/logout", methods=["POST"])
def logout():
    security.log_out(revoke=True)
    flash("已退出登录", "success")
    return redirect(url_for("admin.login"))


def _password_page(error=None) -> str:
    return render_template("admin/password.html", error=error)


@bp.get("/password")
def password_form():
    return _password_page()


@bp.post("/password")
@password_change_attempts()
@rerender_on_error(_password_page)
def change_password():
    """The signed-in member's own password. Every other session ends; this browser starts a new one."""
    form = {name: request.form.get(name) or "" for name in ("current_password", "new_password")}
    body = load(PasswordChangeSchema(), form)
    if request.form.get("confirm_password") != body["new_password"]:
        raise field_error("confirm_password", "两次输入的新密码不一致")
    actor = security.current_admin_actor()
    staff = people.change_own_password(actor, security.session_id(), body["current_password"], body["new_password"])
    security.log_in(staff, since=session_after(staff.sessions_valid_after))
    flash("密码已修改；其他设备上的登录已退出", "success")
    return redirect(url_for("admin.dashboard"))
