"""OpenAPI documentation that our own decorators add to a view: error codes, security, headers.

flask-smorest reads a view's `_apidoc["manual_doc"]`; each decorator copies it before changing it so the
wrapped function's documentation is never shared."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from app.errors import AppError

ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
RETRY_AFTER = {"Retry-After": {"description": "多少秒后再试", "schema": {"type": "integer", "minimum": 1}}}
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID = "X-Request-Id"
REQUEST_ID_PARAMETER = {
    "in": "header",
    "name": REQUEST_ID,
    "required": False,
    "description": "a request id of your own (8 to 64 of A-Z a-z 0-9 . _ -), sent back in X-Request-Id and logged; "
    "another value is replaced by the server's",
    "schema": {"type": "string"},
}
REQUEST_ID_HEADER = {
    REQUEST_ID: {"description": "this request's id, to quote when reporting a problem", "schema": {"type": "string"}}
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "true: the first answer to this request's Idempotency-Key, sent again; nothing was done now",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def _manual(func) -> dict[str, Any]:
    func._apidoc = deepcopy(getattr(func, "_apidoc", {}))
    return func._apidoc.setdefault("manual_doc", {})


def document_errors(responses: dict[str, Any], *errors: type[AppError]) -> None:
    """Add these error codes to an operation's responses, merged per status."""
    for error in errors:
        entry = responses.setdefault(str(error.status), {"description": "", "content": ERROR_CONTENT})
        if error.status in (429, 503):
            entry["headers"] = RETRY_AFTER
        codes = [c for c in entry["description"].split(", ") if c]
        if error.code not in codes:
            codes.append(error.code)
        entry["description"] = ", ".join(codes)


def error_docs(*errors: type[AppError]):
    """Document the error codes a view can answer with."""

    def decorator(func):
        document_errors(_manual(func).setdefault("responses", {}), *errors)
        return func

    return decorator


def extend_doc(wrapper, view, *, errors=(), headers: tuple[dict[str, Any], ...] = (), security=None):
    """Give a decorator's wrapper the view's documentation plus what the decorator itself adds."""
    wrapper._apidoc = getattr(view, "_apidoc", {})
    manual = _manual(wrapper)
    if headers:
        manual["parameters"] = [*manual.get("parameters", []), *headers]
    if security is not None:
        manual["security"] = security
    return error_docs(*errors)(wrapper)


def file_docs(mimetype: str, headers: dict[str, Any] | None = None):
    """Document a view's 200 answer as a file of this media type (without a schema, flask-smorest describes no
    content at all), with the headers it carries."""

    def decorator(func):
        content = {mimetype: {"schema": {"type": "string", "format": "binary"}}}
        answer = {"description": "OK", "content": content} | ({"headers": headers} if headers else {})
        _manual(func).setdefault("responses", {})["200"] = answer
        return func

    return decorator
