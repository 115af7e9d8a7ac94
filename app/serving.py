"""What gunicorn answers by itself, before a request reaches the app, in the project's JSON envelope.

Gunicorn refuses a request line over 4094 bytes (414), too many or too large headers (431) and malformed requests
(400) with an HTML page of its own. Clients of this API read every error as `{"error": {...}}`, so those answers are
written in the envelope too. Gunicorn looks `util.write_error` up on every error, so replacing it once, in the master
before the workers fork, covers every worker class.
"""

from __future__ import annotations

import json

from app.errors import envelope

GUNICORN_CODES = {
    400: ("bad_request", "请求格式错误"),
    403: ("forbidden", "请求被拒绝"),
    414: ("uri_too_long", "请求地址过长"),
    417: ("expectation_failed", "不支持该 Expect 请求头"),
    431: ("headers_too_large", "请求头过大"),
    501: ("not_implemented", "不支持该传输编码"),
}
SERVER_ERROR = ("internal_error", "服务器内部错误，请稍后再试")


def error_bytes(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response carrying the envelope; gunicorn closes the connection after it."""
    code, message = GUNICORN_CODES.get(status, SERVER_ERROR if status >= 500 else GUNICORN_CODES[400])
    body = json.dumps(
        envelope(code, message, {"reason": detail} if detail else {}), ensure_ascii=False, separators=(",", ":")
    )
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("latin-1") + payload


def install_json_errors() -> None:
    from gunicorn import util

    def write_error(sock, status_int, reason, mesg):
        util.write_nonblock(sock, error_bytes(status_int, reason, mesg))

    util.write_error = write_error
