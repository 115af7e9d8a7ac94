"""What gunicorn answers by itself, before a request reaches the app, in the project's JSON envelope; and what its
access log writes of a request's path.

Gunicorn refuses a request line over 4094 bytes (414), too many or too large headers (431) and malformed requests
(400) with an HTML page of its own. Clients of this API read every error as `{"error": {...}}`, so those answers are
written in the envelope too. Gunicorn looks `util.write_error` up on every error, so replacing it once, in the master
before the workers fork, covers every worker class.
"""

from __future__ import annotations

import json

from gunicorn.glogging import Logger

from app.errors import HTTP_CODES, InternalError, envelope


def error_bytes(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response carrying the envelope; gunicorn closes the connection after it."""
    fallback = (InternalError.code, InternalError.message) if status >= 500 else HTTP_CODES[400]
    code, message = HTTP_CODES.get(status, fallback)
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


class AccessLogger(Logger):
    """Logs a request's path as the client sent it, still percent-encoded. Gunicorn's `%(U)s` is the decoded path, in
    which a `%0A` starts a new line: anyone could write a line of their own (a time, an address, a login) into the log
    that operators search. What a path may not hold unencoded (RFC 3986), a quote or a backslash that would end the
    quoted field early, is percent-encoded here."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        path = (environ.get("RAW_URI") or "").partition("?")[0]
        atoms["U"] = "".join(c if c.isprintable() and c not in '"\\' else f"%{ord(c):02X}" for c in path)
        return atoms
