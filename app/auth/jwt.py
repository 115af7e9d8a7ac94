"""flask-jwt-extended callbacks: every token failure answers in the error envelope."""

from __future__ import annotations

import time
from datetime import timedelta

from flask_jwt_extended import JWTManager
from flask_jwt_extended.config import config
from flask_jwt_extended.default_callbacks import default_decode_key_callback
from flask_jwt_extended.tokens import _decode_jwt

from app.auth.guards import well_formed
from app.http import error_response


class CachingJWTManager(JWTManager):
    """Verifying a token is a pure function of the token and the key, and PyJWT checks every character in pure
    Python, about a tenth of a check-in's CPU. Each worker remembers the claims of the tokens it has verified and
    re-checks only their expiry; a revoked session is still refused by load_actor on every request."""

    MAX_TOKENS = 10_000

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._verified: dict[tuple, dict] = {}  # cache_key(token) → claims

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        if csrf_value is not None or allow_expired or self._decode_key_callback is not default_decode_key_callback:
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        key = self.cache_key(encoded_token)
        claims = self._verified.get(key)
        leeway = config.leeway
        leeway_s = leeway.total_seconds() if isinstance(leeway, timedelta) else leeway
        if claims is None or claims["exp"] <= time.time() - leeway_s:
            claims = self._verify(encoded_token)
            if "exp" not in claims:
                return claims
            if len(self._verified) >= self.MAX_TOKENS:
                self._verified.clear()
            self._verified[key] = claims
        return dict(claims)  # callers may annotate their copy

    @staticmethod
    def cache_key(encoded_token: str) -> tuple:
        """Everything that decides whether the library accepts the token, so that two apps in one process (the
        tests make several) never share a verdict."""
        return (
            config.decode_key, tuple(config.decode_algorithms), repr(config.decode_audience), config.decode_issuer,
            config.identity_claim_key, config.verify_sub, encoded_token,
        )  # fmt: skip

    def _verify(self, encoded_token: str) -> dict:
        """The library's verified decode, once. Its own path parses the token three times to choose a key, which
        only a custom key loader varies; it still handles every failure, with the details its callbacks need."""
        try:
            return _decode_jwt(
                algorithms=config.decode_algorithms, allow_expired=False, audience=config.decode_audience,
                csrf_value=None, encoded_token=encoded_token, identity_claim_key=config.identity_claim_key,
                issuer=config.decode_issuer, leeway=config.leeway, secret=config.decode_key,
                verify_aud=config.decode_audience is not None, verify_sub=config.verify_sub,
            )  # fmt: skip
        except Exception:
            return super()._decode_jwt_from_config(encoded_token)


def register_jwt(jwt: JWTManager) -> None:
    @jwt.unauthorized_loader
    def missing(reason: str):
        return error_response("unauthorized", "请先登录", 401)

    @jwt.invalid_token_loader
    def invalid(reason: str):
        return error_response("unauthorized", "登录凭证无效", 401)

    @jwt.expired_token_loader
    def expired(header, payload):
        return error_response("token_expired", "登录已过期，请重新登录", 401)

    @jwt.revoked_token_loader
    def revoked(header, payload):
        return error_response("token_revoked", "登录已失效，请重新登录", 401)

    @jwt.needs_fresh_token_loader
    def not_fresh(header, payload):
        return error_response("unauthorized", "请重新登录后再试", 401)

    @jwt.token_verification_loader
    def verify_claims(header, payload) -> bool:
        return well_formed(payload)

    @jwt.token_verification_failed_loader
    def failed(header, payload):
        return error_response("unauthorized", "登录凭证无效", 401)

    @jwt.user_lookup_error_loader
    def unknown_user(header, payload):
        return error_response("unauthorized", "账户不存在", 401)
