"""The AppError family and the JSON error envelope shared by every response."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A domain error with a stable code, an HTTP status and a zh-CN message; a server error may carry an English
    diagnosis for its log line, where the message only says what the user can do."""

    status: int = 400
    code: str = "bad_request"
    message: str = "请求无效"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers=None,
        diagnosis: str | None = None,
    ):
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.details = details or {}
        self.headers = headers or {}
        self.diagnosis = diagnosis

    def to_dict(self) -> dict[str, Any]:
        return envelope(self.code, self.message, self.details)


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _error(name: str, status: int, code: str, message: str) -> type[AppError]:
    return type(name, (AppError,), {"status": status, "code": code, "message": message})


BadRequest = _error("BadRequest", 400, "bad_request", "请求格式错误")
Unauthorized = _error("Unauthorized", 401, "unauthorized", "请先登录")
TokenExpired = _error("TokenExpired", 401, "token_expired", "登录已过期，请重新登录")
TokenRevoked = _error("TokenRevoked", 401, "token_revoked", "登录已失效，请重新登录")
InvalidCredentials = _error("InvalidCredentials", 401, "invalid_credentials", "用户名或密码错误")
Forbidden = _error("Forbidden", 403, "forbidden", "没有权限执行此操作")
WrongStore = _error("WrongStore", 403, "wrong_store", "该券不属于本门店")
TooFar = _error("TooFar", 403, "too_far", "距离回收点太远，请到现场扫码")
AccountFrozen = _error("AccountFrozen", 403, "account_frozen", "账户已冻结，请联系社区工作者")
NotFound = _error("NotFound", 404, "not_found", "资源不存在")
VoucherNotFound = _error("VoucherNotFound", 404, "voucher_not_found", "兑换券不存在")
MethodNotAllowed = _error("MethodNotAllowed", 405, "method_not_allowed", "不支持该请求方法")
InsufficientPoints = _error("InsufficientPoints", 409, "insufficient_points", "积分不足")
OutOfStock = _error("OutOfStock", 409, "out_of_stock", "库存不足")
LimitReached = _error("LimitReached", 409, "limit_reached", "已达到数量上限")
AlreadyClaimed = _error("AlreadyClaimed", 409, "already_claimed", "今天已经领取过了")
CapReached = _error("CapReached", 409, "cap_reached", "已达到今日积分上限")
IdempotencyConflict = _error(
    "IdempotencyConflict", 409, "idempotency_conflict", "该操作已经提交过，但这次的内容不同：请刷新后重新操作"
)
VoucherUsed = _error("VoucherUsed", 409, "voucher_used", "兑换券已使用")
InvalidState = _error("InvalidState", 409, "invalid_state", "当前状态不允许此操作")
Duplicate = _error("Duplicate", 409, "duplicate", "记录已存在")
QrExpired = _error("QrExpired", 410, "qr_expired", "二维码已过期，请刷新后重试")
VoucherExpired = _error("VoucherExpired", 410, "voucher_expired", "兑换券已过期")
EventClosed = _error("EventClosed", 410, "event_closed", "活动已结束")
PayloadTooLarge = _error("PayloadTooLarge", 413, "payload_too_large", "请求内容过大（上限 64 KiB）")
ValidationError = _error("ValidationError", 422, "validation_error", "提交的内容有误")
InvalidQr = _error("InvalidQr", 422, "invalid_qr", "无效的二维码")
RateLimited = _error("RateLimited", 429, "rate_limited", "操作太频繁，请稍后再试")
InternalError = _error("InternalError", 500, "internal_error", "服务器内部错误，请稍后再试")
NotReady = _error("NotReady", 503, "not_ready", "数据库不可用")
ServiceUnavailable = _error("ServiceUnavailable", 503, "service_unavailable", "服务暂时不可用，请稍后再试")
UpstreamUnavailable = _error("UpstreamUnavailable", 503, "upstream_unavailable", "微信服务暂时不可用，请稍后再试")
UpstreamError = _error("UpstreamError", 502, "upstream_error", "微信服务返回了无法识别的结果，请稍后再试")


# What a refusal by the HTTP layer says, by status: werkzeug's exceptions in the app, and what gunicorn refuses
# before a request reaches it (a request line or headers too large, a malformed request).
HTTP_CODES = {
    400: ("bad_request", "请求格式错误"),
    401: ("unauthorized", "请先登录"),
    403: ("forbidden", "没有权限执行此操作"),
    404: ("not_found", "资源不存在"),
    405: ("method_not_allowed", "不支持该请求方法"),
    409: ("duplicate", "记录已存在"),
    413: ("payload_too_large", "请求内容过大（上限 64 KiB）"),
    414: ("uri_too_long", "请求地址过长"),
    415: ("bad_request", "请求必须是 JSON"),
    417: ("expectation_failed", "不支持该 Expect 请求头"),
    422: ("validation_error", "提交的内容有误"),
    429: ("rate_limited", "操作太频繁，请稍后再试"),
    431: ("headers_too_large", "请求头过大"),
    501: ("not_implemented", "不支持该传输编码"),
}


def fields_error(fields: dict[str, Any]) -> AppError:
    """A validation error naming each field's messages, in the shape marshmallow gives them; its message is the
    first of them, the field named, so that a client showing `message` shows what to fix."""
    from app.i18n import readable

    return ValidationError(readable(fields), details={"fields": fields})


def field_error(field: str, message: str, **more: Any) -> AppError:
    """A validation error for one field, in the same shape marshmallow errors take. The field's sentence is the
    envelope's message too: a client showing `message` shows what to do, not only that something was wrong. `more`
    adds details a program keys on (a `reason`)."""
    return ValidationError(message, details={"fields": {field: [message]}, **more})
