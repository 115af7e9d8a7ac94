"""The rate limits on staff credentials (API.md's list), counted together for the API and the admin site so that a
second door does not double the guesses."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from flask import current_app
from limits import parse

from app.errors import RateLimited
from app.extensions import limiter

log = logging.getLogger("app.auth")


def _minutes_to_wait() -> int:
    current = limiter.current_limit  # the breached limit, on a 429
    wait_s = seconds_until(current.reset_at) if current is not None else 60
    return max(round(wait_s / 60), 1)


def login_wait_message() -> str:
    """What a refused login says: how long until the next try, to the nearest minute (Retry-After has it to the
    second), for a person rather than a program."""
    return f"登录尝试次数过多，请 {_minutes_to_wait()} 分钟后再试"


def _per_address(scope: str, error_message: Callable[[], str]):
    return limiter.shared_limit("60 per minute", scope=scope, methods=["POST"], error_message=error_message)


def staff_login_attempts():
    """Sixty staff login attempts per minute per address."""
    return _per_address("staff-login", login_wait_message)


def password_change_attempts():
    """Sixty password changes per minute per address, counted apart from logins: requests refused before any check
    (a resident's token, none at all) must not use up the staff logins of everyone behind the same address."""
    return _per_address("password-change", lambda: f"修改密码尝试次数过多，请 {_minutes_to_wait()} 分钟后再试")


FAILED_LOGINS = "5 per 15 minutes"  # per username, API.md's lock
_FAILED_LOGINS_SCOPE = "failed-staff-login"


def _username_key(username: str) -> str:
    return f"login-user:{username[:64].lower()}"


def _log_lock(limit) -> None:
    log.warning("staff login refused: %s, %s failed within the window", limit.key, limit.limit)


def failed_staff_logins(username: Callable[[], str]):
    """Five failed staff logins per username per 15 minutes: a username locked already is refused here, before the
    body is read. Tested only: each attempt is counted by take_login_attempt."""
    return limiter.shared_limit(
        FAILED_LOGINS,
        scope=_FAILED_LOGINS_SCOPE,
        methods=["POST"],
        key_func=lambda: _username_key(username()),
        deduct_when=lambda response: False,
        error_message=login_wait_message,
        on_breach=_log_lock,
    )


def take_login_attempt(username: str) -> Callable[[], None]:
    """Count a login attempt against the username's five failures before its password is checked, so that parallel
    guesses cannot all pass a test made before any of them was counted (a burst of 16 had 12 checked). Returns what
    gives the attempt back once the password proved right: only failures count."""
    if not limiter.enabled:
        return lambda: None
    limit = parse(FAILED_LOGINS)
    ids = (current_app.config["RATELIMIT_KEY_PREFIX"], _username_key(username), _FAILED_LOGINS_SCOPE)
    key, storage = limit.key_for(*ids), limiter.limiter.storage

    def give_back() -> None:
        if storage.get(key) > 0:  # not into a window begun since (it would start below zero: a sixth guess)
            storage.incr(key, limit.get_expiry(), amount=-1)

    if not limiter.limiter.hit(limit, *ids):
        give_back()  # no password was checked
        wait = seconds_until(limiter.limiter.get_window_stats(limit, *ids).reset_time)
        log.warning("staff login refused: %s, %s failed or being checked within the window", ids[1], limit)
        # Attempts still being checked hold the places too (a double tap of the right password, say): they may yet
        # prove right, so no count of minutes is promised.
        raise RateLimited("登录尝试次数过多，请稍后再试", headers={"Retry-After": str(wait)})
    return give_back


def unlock_username(username: str) -> bool:
    """Forget a username's failed logins, so that its owner can log in before the 15 minutes are up (someone
    else's wrong guesses locked it). Whether it was locked."""
    limit = parse(FAILED_LOGINS)
    identifiers = (current_app.config["RATELIMIT_KEY_PREFIX"], _username_key(username), _FAILED_LOGINS_SCOPE)
    locked = not limiter.limiter.test(limit, *identifiers)
    limiter.limiter.clear(limit, *identifiers)
    return locked


_PASSWORD_CHECKS = parse("5 per 15 minutes")


def take_password_check(staff_id: int, session_id: str) -> None:
    """One check of a signed-in member's current password (changing it), counted before the check, right or wrong,
    so that parallel guesses cannot all pass a test made before any of them is counted. Five per session per 15
    minutes: someone holding a stolen session cannot guess the password, which outlives the session, and cannot use
    up the owner's own session's tries either."""
    if not limiter.enabled:
        return
    key = (current_app.config["RATELIMIT_KEY_PREFIX"], "password-check", f"{staff_id}:{session_id}")
    if not limiter.limiter.hit(_PASSWORD_CHECKS, *key):
        wait = seconds_until(limiter.limiter.get_window_stats(_PASSWORD_CHECKS, *key).reset_time)
        raise RateLimited("修改密码尝试次数过多，请稍后再试", headers={"Retry-After": str(wait)})


def seconds_until(reset_at: float) -> int:
    """Whole seconds until a limit's window resets (at least 1): what Retry-After says."""
    return max(1, math.ceil(reset_at - time.time()))
