"""Unbound extension instances; create_app() binds them."""

import math
import time
from collections.abc import Callable

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from limits import parse

from app.auth.jwt import CachingJWTManager
from app.db import db
from app.errors import RateLimited
from app.http import AppApi

migrate = Migrate(render_as_batch=True, compare_type=True)
jwt = CachingJWTManager()
api = AppApi()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


def staff_login_attempts():
    """Sixty staff login attempts per minute per address, counted together for the API and the admin site."""
    return limiter.shared_limit("60 per minute", scope="staff-login", methods=["POST"])


def failed_staff_logins(username: Callable[[], str]):
    """Failed staff logins, counted together for the API and the admin site so that a second door does not double
    the guesses: five per username from one address per 15 minutes, and thirty per username from all addresses per
    hour. Someone who only knows a username cannot lock its owner out from one address; guesses spread over many
    addresses still stop at thirty an hour."""

    def name() -> str:
        return username()[:64].lower()

    def failures(limit: str, scope: str, key: Callable[[], str]):
        return limiter.shared_limit(
            limit, scope=scope, methods=["POST"], key_func=key, deduct_when=lambda response: response.status_code == 401
        )

    per_address = failures(
        "5 per 15 minutes", "failed-staff-login", lambda: f"login-user:{name()}@{get_remote_address()}"
    )
    per_username = failures("30 per hour", "failed-staff-login-all", lambda: f"login-user:{name()}")

    def decorator(view):
        return per_address(per_username(view))

    return decorator


_WRONG_PASSWORD = parse("5 per 15 minutes")


class PasswordChecks:
    """Wrong current passwords given by a signed-in staff member (changing their password), per account, counted
    together for the API and the admin site. Without a limit, someone holding a stolen session could guess the
    password itself, which outlives the session, and then lock its owner out by changing it."""

    def __init__(self, staff_id: int):
        self.key = ("password-check", str(staff_id))

    def refuse_if_exhausted(self) -> None:
        if limiter.enabled and not limiter.limiter.test(_WRONG_PASSWORD, *self.key):
            reset_at = limiter.limiter.get_window_stats(_WRONG_PASSWORD, *self.key).reset_time
            wait = max(1, math.ceil(reset_at - time.time()))
            raise RateLimited("当前密码输错次数过多，请稍后再试", headers={"Retry-After": str(wait)})

    def count_wrong(self) -> None:
        if limiter.enabled:
            limiter.limiter.hit(_WRONG_PASSWORD, *self.key)


__all__ = ["api", "db", "jwt", "limiter", "migrate"]
