"""Unbound extension instances; create_app() binds them."""

from collections.abc import Callable

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate

from app.auth.jwt import CachingJWTManager
from app.db import db
from app.http import AppApi

migrate = Migrate(render_as_batch=True, compare_type=True)
jwt = CachingJWTManager()
api = AppApi()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


def staff_login_attempts():
    """Sixty staff login attempts per minute per address, counted together for the API and the admin site."""
    return limiter.shared_limit("60 per minute", scope="staff-login", methods=["POST"])


def failed_staff_logins(username: Callable[[], str]):
    """Five failed staff logins per username per 15 minutes, counted together for the API and the admin site, so
    that a second door does not double the guesses."""
    return limiter.shared_limit(
        "5 per 15 minutes",
        scope="failed-staff-login",
        methods=["POST"],
        key_func=lambda: f"login-user:{username()[:64].lower()}",
        deduct_when=lambda response: response.status_code == 401,
    )


__all__ = ["api", "db", "jwt", "limiter", "migrate"]
