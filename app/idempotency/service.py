"""`Idempotency-Key` for every POST that moves points or stock.

The key row is inserted before the use case runs, so a concurrent duplicate blocks on the unique index
until the first commits, then finds the stored response. As API.md says, a retry gets the first status and body and
changes nothing, a refusal's included: the refused use case's writes are rolled back to a savepoint taken after the
key row, and the refusal is kept in their place. Only answers that say nothing about the request are not kept, so
that the same key works once the cause has passed: 401 (who asks is not known yet), 429 (asked too often) and 5xx
(the server failed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from functools import cache, partial, wraps

import sqlalchemy as sa
from flask import current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.apidoc import IDEMPOTENCY_HEADER, extend_doc
from app.auth.guards import current_actor
from app.clock import utcnow
from app.db import db, dialect_name, run, upsert_insert
from app.errors import AppError, IdempotencyConflict, field_error
from app.http import error_response, handle_http_exception, json_body
from app.idempotency.models import IdempotencyKey

HEADER = IDEMPOTENCY_HEADER
HEADER_DOC = {
    "in": "header",
    "name": HEADER,
    "required": False,
    # Control characters are refused as well (not printable); the pattern says as much as JSON Schema can.
    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\u0000-\\u001f\\u007f]+$"},
    "description": "重试时携带相同的键（1 到 64 个可见字符）：同样的请求只生效一次，并返回第一次的结果（拒绝也一样，"
    "401、429 和 5xx 除外）；同一个键配不同的请求内容是 409 idempotency_conflict",
}


def _request_hash() -> str:
    body = json_body()
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


def _replay(row, request_hash: str):
    if row.request_hash != request_hash:
        raise IdempotencyConflict()
    response = jsonify(row.response_body)
    response.status_code = row.status_code
    response.headers["Idempotent-Replayed"] = "true"
    return response


_STORED = sa.select(IdempotencyKey.request_hash, IdempotencyKey.status_code, IdempotencyKey.response_body).where(
    IdempotencyKey.scope == sa.bindparam("scope"), IdempotencyKey.key == sa.bindparam("key")
)
_RECORD = (
    sa.update(IdempotencyKey.__table__)
    .where(IdempotencyKey.__table__.c.id == sa.bindparam("key_id"))
    .values(status_code=sa.bindparam("status"), response_body=sa.bindparam("body"))
    .returning(IdempotencyKey.__table__.c.id)
)


@cache
def _claim(dialect: str) -> sa.Executable:
    """Insert the key, or nothing if it is taken; a concurrent first request makes this wait until it ends."""
    table = IdempotencyKey.__table__
    return upsert_insert(dialect)(table).on_conflict_do_nothing(index_elements=["scope", "key"]).returning(table.c.id)


def _key() -> str | None:
    """The request's Idempotency-Key as the client wrote it: a WSGI server reads header bytes as Latin-1, and a key
    in other scripts comes as UTF-8."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


def _usable(key: str) -> bool:
    return 1 <= len(key) <= 64 and key.isprintable()


def run_idempotent(scope: str, view, *args, **kwargs):
    key = _key()
    if key is None:
        return view(*args, **kwargs)
    if not _usable(key):
        raise field_error(HEADER, "幂等键长度必须为 1 到 64 个可见字符")
    request_hash = _request_hash()

    return run_once(
        scope,
        key,
        request_hash,
        partial(_answer_or_refusal, partial(view, *args, **kwargs)),
        keep=lambda response: kept(response.status_code),
        answer=lambda response: response.get_json(),
        replay=lambda row: _replay(row, request_hash),
    )


def kept(status: int) -> bool:
    """Whether an answer with this status is kept under its Idempotency-Key (and replayed to a retry): all but those
    that say nothing about the request, 401, 429 and 5xx."""
    return status < 500 and status not in (401, 429)


def refusal_kept(error: AppError | HTTPException) -> bool:
    """Whether a raised refusal answers the request itself, and so is kept, or only says to try again."""
    return kept(error.status if isinstance(error, AppError) else (error.code or 500))


def _answer_or_refusal(view):
    """The view's answer, or the refusal it raised as an answer to keep, with the use case's writes undone."""
    savepoint = db.session.begin_nested()
    pending = len(g.get("after_commit", []))

    def undo() -> None:  # the writes, and what was to follow their commit
        savepoint.rollback()
        del g.setdefault("after_commit", [])[pending:]

    try:
        response = view()
    except (AppError, HTTPException) as error:
        if not refusal_kept(error):
            raise
        undo()
        if isinstance(error, AppError):
            return error_response(error.code, error.message, error.status, error.details, error.headers)
        return handle_http_exception(error)
    if 200 <= response.status_code < 300:
        savepoint.commit()
    else:  # a refusal answered rather than raised keeps nothing either
        undo()
    return response


def run_once(scope: str, key: str, request_hash: str, view, keep, answer, replay):
    """Run `view()` once per (scope, key). A response that `keep(response)` accepts is committed with its effects and
    `answer(response)` (what a repeat needs); a repeat gets `replay(stored row)`, after the first has ended if they
    overlap. Any other response is rolled back with its effects, so that a failed request can be tried again."""
    claim = {"scope": scope, "key": key, "request_hash": request_hash, "status_code": 0, "response_body": {},
             "created_at": utcnow()}  # fmt: skip
    key_id = run(_claim(dialect_name()), claim).scalar()
    if key_id is None:  # answered before (committed together with its effects): replay it
        return replay(run(_STORED, {"scope": scope, "key": key}).one())
    g.defer_commit = True
    try:
        response = view()
    finally:
        g.defer_commit = False
        pending = g.pop("after_commit", [])
        refusal_notes = g.pop("on_kept_refusal", [])
    if keep(response):
        if response.status_code >= 400:
            for note in refusal_notes:
                note()
        run(_RECORD, {"key_id": key_id, "status": response.status_code, "body": answer(response)}).scalar_one()
        db.session.commit()
        for action in pending:
            action()
    else:
        db.session.rollback()
    return response


def on_kept_refusal(note: Callable[[], None]) -> None:
    """Write `note` into the transaction that keeps this request's refusal under its Idempotency-Key, before that
    commits: what must be true of every kept refusal lands with it, or not at all."""
    g.setdefault("on_kept_refusal", []).append(note)


def stored_answer(scope: str):
    """The first answer to this request's Idempotency-Key in `scope`, replayed; None without a key or an answer."""
    key = _key()
    if key is None or not _usable(key):  # read before any view validates it: a key no request could have kept
        return None
    row = run(_STORED, {"scope": scope, "key": key}).one_or_none()
    if row is None or not row.status_code:
        return None
    return _replay(row, _request_hash())


def idempotent(view):
    """Decorate a view (below the auth guard, above @blp.arguments) to honour Idempotency-Key."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        return run_idempotent(current_actor().identity, view, *args, **kwargs)

    return extend_doc(wrapper, view, errors=(IdempotencyConflict,), headers=(HEADER_DOC,))


def key_reference() -> str | None:
    """A reference for this request drawn from its Idempotency-Key and caller, or None without a key. A use case
    whose once-only rule is a constraint on such a reference (an adjustment) then refuses a retry even after the
    key's stored answer was pruned."""
    key = _key()
    if key is None:
        return None
    return "key-" + hashlib.sha256(f"{current_actor().identity}\n{key}".encode()).hexdigest()[:40]


def prune_keys() -> int:
    """Forget keys older than IDEMPOTENCY_KEEP_DAYS. A retry comes within minutes, and once its answer is gone it
    still cannot apply twice: the member code or the day it was for has expired, a device signature's window has
    passed, an entry is reversed once, and an adjustment's reference comes from its key (`key_reference`)."""
    cutoff = utcnow() - timedelta(days=current_app.config["IDEMPOTENCY_KEEP_DAYS"])
    deleted = db.session.execute(sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff)).rowcount
    db.session.commit()
    return deleted
