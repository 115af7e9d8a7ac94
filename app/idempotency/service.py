"""`Idempotency-Key` for every POST that moves points or stock.

The key row is inserted before the use case runs, so a concurrent duplicate blocks on the unique index
until the first commits, then finds the stored response. Only successful responses are stored: a failed
request rolled back everything, so retrying it is safe and re-evaluates."""

from __future__ import annotations

import hashlib
import json
from functools import wraps

import sqlalchemy as sa
from flask import g, jsonify, request
from sqlalchemy.exc import IntegrityError

from app.apidoc import extend_doc
from app.auth.guards import current_actor
from app.db import db
from app.errors import IdempotencyConflict, field_error
from app.idempotency.models import IdempotencyKey

HEADER = "Idempotency-Key"
HEADER_DOC = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    "description": "重试时携带相同的键：同样的请求只生效一次，并返回第一次的结果",
}


def _request_hash() -> str:
    body = request.get_json(silent=True)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


def _replay(row: IdempotencyKey, request_hash: str):
    if row.request_hash != request_hash:
        raise IdempotencyConflict()
    response = jsonify(row.response_body)
    response.status_code = row.status_code
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _stored(scope: str, key: str) -> IdempotencyKey | None:
    return db.session.scalar(sa.select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key))


def run_idempotent(scope: str, view, *args, **kwargs):
    key = request.headers.get(HEADER)
    if key is None:
        return view(*args, **kwargs)
    if not 1 <= len(key) <= 64 or not key.isprintable():
        raise field_error(HEADER, "幂等键长度必须为 1 到 64 个可见字符")
    request_hash = _request_hash()
    existing = _stored(scope, key)
    if existing is not None:
        return _replay(existing, request_hash)
    row = IdempotencyKey(scope=scope, key=key, request_hash=request_hash, status_code=0, response_body={})
    db.session.add(row)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return _replay(_stored(scope, key), request_hash)
    g.defer_commit = True
    try:
        response = view(*args, **kwargs)
    finally:
        g.defer_commit = False
    if 200 <= response.status_code < 300:
        row.status_code, row.response_body = response.status_code, response.get_json()
        db.session.commit()
    else:
        db.session.rollback()
    return response


def idempotent(view):
    """Decorate a view (below the auth guard, above @blp.arguments) to honour Idempotency-Key."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        return run_idempotent(current_actor().identity, view, *args, **kwargs)

    return extend_doc(wrapper, view, errors=(IdempotencyConflict,), headers=(HEADER_DOC,))
