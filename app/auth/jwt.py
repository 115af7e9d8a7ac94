"""flask-jwt-extended callbacks: every token failure answers in the error envelope."""

from __future__ import annotations

from flask_jwt_extended import JWTManager

from app.http import error_response


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

    @jwt.token_verification_failed_loader
    def failed(header, payload):
        return error_response("unauthorized", "登录凭证无效", 401)

    @jwt.user_lookup_error_loader
    def unknown_user(header, payload):
        return error_response("unauthorized", "账户不存在", 401)
