"""Declarative base, column types shared by every package, and the unit-of-work commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import g, has_request_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry

from app.clock import utcnow
from app.errors import Duplicate, NotFound, field_error

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Ids the database can hold: INTEGER keys, and BIGINT keys (BigId) on PostgreSQL. A bigger one from a client
# is simply not found; sent to PostgreSQL it would be an overflow error.
MAX_ID = 2**31 - 1
MAX_BIG_ID = 2**63 - 1
# PostgreSQL advisory lock that `flask db upgrade` holds while it migrates (migrations/env.py).
MIGRATION_LOCK_KEY = 0x7470685F6D6967  # "tph_mig"


class UTCDateTime(sa.TypeDecorator):
    """Stores UTC and always hands back aware datetimes, on SQLite too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware one is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    registry = registry(
        metadata=sa.MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime},
    )


db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def fits_key(value: object, key_type: sa.types.TypeEngine | None = None) -> bool:
    """Whether `value` can be a key of this column type (INTEGER unless given a BIGINT one). Anything else is
    not found or refused before it reaches the database, where a bigger number is an overflow error."""
    biggest = MAX_BIG_ID if isinstance(key_type, sa.BigInteger) else MAX_ID
    return type(value) is int and 1 <= value <= biggest  # a bool is an int, but never a key


def find(model, obj_id: object):
    """The row with this primary key, or None; an id the key column cannot hold never reaches the database."""
    return db.session.get(model, obj_id) if fits_key(obj_id, sa.inspect(model).primary_key[0].type) else None


def require_exists(model, obj_id: int | None, field: str, message: str):
    """A reference in a request body (a community, an organisation) must name a row: otherwise it is that field's
    validation error, not the database's foreign key error. Returns the row; None refers to nothing and passes."""
    if obj_id is None:
        return None
    obj = find(model, obj_id)
    if obj is None:
        raise field_error(field, message)
    return obj


def get_or_404(model, obj_id: int, message: str = "资源不存在"):
    obj = find(model, obj_id)
    if obj is None:
        raise NotFound(message)
    return obj


def insert_unique(obj, message: str):
    """Insert one row whose natural key is unique; a clash becomes 409 duplicate, not a 500,
    and the rest of the transaction survives: the row is added inside a savepoint (opening one flushes what was
    pending before it)."""
    try:
        with db.session.begin_nested():
            db.session.add(obj)
            db.session.flush()
    except IntegrityError as exc:
        raise Duplicate(message) from exc
    return obj


def flush_unique(message: str) -> None:
    """Write the session's pending changes to rows already there, whose unique keys another transaction may have
    taken meanwhile: 409 duplicate, not a 500. The transaction is spent then; the refusal rolls the request back."""
    try:
        db.session.flush()
    except IntegrityError as exc:
        raise Duplicate(message) from exc


def run(statement: sa.Executable, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> sa.Result:
    """Execute a prebuilt Core statement on the session's connection and transaction. The hot paths build
    their fixed statements once (with bind parameters) and skip the ORM's execution layer; on PostgreSQL, a
    single execution also skips the Core one (see `_Direct`). No autoflush: flush first if the statement must
    see pending ORM rows."""
    conn = db.session.connection()
    if conn.dialect.name == "postgresql" and not isinstance(params, list):
        params = params or {}
        direct = _direct(statement, conn.dialect, params)
        if direct is not None:
            return direct.execute(conn, params)
    return conn.execute(statement, params)


class _Direct:
    """A prebuilt statement that answers rows, compiled once for PostgreSQL and sent straight to psycopg's cursor.
    SQLAlchemy's per-execution work (an execution context, parameter and result bookkeeping) costs about 70 µs
    a statement, more than psycopg's own; a check-in runs three. What that work does for these statements is
    kept: parameters go through their types' bind processors, rows through their result processors (chosen, as
    SQLAlchemy chooses them, by the first answer's column types) into a Result keyed as SQLAlchemy keys it, and a
    driver error goes through the connection's own error handling (the same exception classes, a lost connection
    invalidating the pool). Cursor events and echo do not see these statements. Relies on two SQLAlchemy
    internals, `_result_columns` and `_handle_dbapi_exception`, hence the pin to 2.1.x in pyproject.toml."""

    def __init__(self, compiled: sa.engine.Compiled, dialect) -> None:
        self.sql, self.compiled, self.dialect = compiled.string, compiled, dialect
        escaped = compiled.escaped_bind_names
        self.binds = {
            escaped.get(name, name): processor
            for bind, name in compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self.columns = [(column.keyname, column.type.dialect_impl(dialect)) for column in compiled._result_columns]
        self.shape: tuple[SimpleResultMetaData, list] | None = None  # set from the first answer

    def execute(self, conn: sa.Connection, params: dict[str, Any]) -> sa.Result:
        values = self.compiled.construct_params(params)
        for name, processor in self.binds.items():
            values[name] = processor(values[name])
        cursor = None
        try:
            with conn.connection.dbapi_connection.cursor() as cursor:
                cursor.execute(self.sql, values)
                if self.shape is None:
                    self.shape = self._shape(cursor.description)
                rows = cursor.fetchall()
        except Exception as exc:
            conn._handle_dbapi_exception(exc, self.sql, values, cursor, None)  # raises
        metadata, processors = self.shape
        if any(processors):
            rows = [tuple(p(v) if p else v for p, v in zip(processors, row, strict=True)) for row in rows]
        return IteratorResult(metadata, iter(rows))

    def _shape(self, description) -> tuple[SimpleResultMetaData, list]:
        """The Result's keys and each column's result processor, for the column types the server answers with."""
        if len(description) != len(self.columns):
            raise RuntimeError(f"{len(description)} columns answered where {len(self.columns)} were compiled")
        processors = [kind.result_processor(self.dialect, column.type_code)
                      for (_, kind), column in zip(self.columns, description, strict=True)]  # fmt: skip
        return SimpleResultMetaData([key for key, _ in self.columns]), processors


_DIRECT_LIMIT = 1024
_directs: dict[tuple, _Direct | None] = {}  # None: leave the statement to SQLAlchemy


def _direct(statement: sa.Executable, dialect, params: dict[str, Any]) -> _Direct | None:
    """The statement's direct form, or None where SQLAlchemy's execution layer is needed: expanding (IN) or
    literal-rendered parameters, column defaults computed in Python, DML without an explicit RETURNING (no rows
    to answer, or implicit ones), or anything but a Core SELECT, INSERT, UPDATE or DELETE. As in SQLAlchemy's
    own cache, the parameters' names are part of the key: an INSERT takes its columns from them."""
    key = (statement, dialect, tuple(sorted(params)))
    direct = _directs.get(key, False)
    if direct is False:
        direct = None
        dml = isinstance(statement, sa.Insert | sa.Update | sa.Delete)
        if isinstance(statement, sa.Select) or (dml and statement.returning_column_descriptions):
            compiled = statement.compile(dialect=dialect, column_keys=list(key[2]))
            needs_context = (compiled.literal_execute_params or compiled.post_compile_params or compiled.insert_prefetch
                             or compiled.update_prefetch or compiled.implicit_returning)  # fmt: skip
            if not needs_context and compiled._result_columns:
                direct = _Direct(compiled, dialect)
        if len(_directs) >= _DIRECT_LIMIT:  # prebuilt statements are few: this only bounds a misuse
            _directs.clear()
        _directs[key] = direct
    return direct


def bound_row(table: sa.Table, params: dict[str, str]) -> sa.Select:
    """SELECT of one row of bind parameters, typed like `table`'s columns ({column: parameter name}): the source
    of an INSERT … SELECT that only writes under a condition (a WHERE on this SELECT)."""
    return sa.select(*(sa.bindparam(param, type_=table.c[column].type) for column, param in params.items()))


def dialect_name() -> str:
    return db.session.get_bind().dialect.name


def upsert_insert(dialect: str):
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite only)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def commit() -> None:
    """Ends a use case. Inside an idempotent request the idempotency layer commits instead,
    so the stored response and the effects land in one transaction."""
    if has_request_context() and g.get("defer_commit"):
        db.session.flush()
    else:
        db.session.commit()


def after_commit(action: Callable[[], None]) -> None:
    """Run `action` once the use case's writes are committed: at once after `commit()`, or after the idempotency
    layer's commit when it defers it (and never if that rolls back). A cache cleared before the commit could be
    filled again from the old rows by another request in between."""
    if has_request_context() and g.get("defer_commit"):
        g.setdefault("after_commit", []).append(action)
    else:
        action()


def end_request_transaction(_error: BaseException | None = None) -> None:
    """Roll back what a request left open (a read's transaction) before Flask-SQLAlchemy closes the session. A
    connection lost after the answer was made (a restart, a failover) would otherwise be raised out of the request's
    teardown, and gunicorn would replace the finished answer with a bare 500; the connection is dropped instead.
    A request that never used the database (/healthz), or committed, has nothing to end: no session is made for it."""
    if not db.session.registry.has() or not (session := db.session()).in_transaction():
        return
    try:
        session.rollback()
    except sa.exc.DBAPIError:
        logging.getLogger("app.db").warning("database connection lost while ending a request; its answer stands")
        session.invalidate()  # no round trip: the connection is discarded, not rolled back


def ping_idle_connections(engine: Engine, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Pessimistic disconnect handling without a round trip on every request. A connection given back to the
    pool less than `idle_s` ago worked then; one idle for longer is pinged at checkout, and a dead one is
    replaced before a request sees it (HikariCP's "alive bypass window"). Replaces pool_pre_ping."""

    def mark(dbapi_connection, record, *_) -> None:
        record.info["used_at"] = clock()

    def check(dbapi_connection, record, proxy) -> None:
        if clock() - record.info.get("used_at", float("-inf")) < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("connection failed its ping") from exc  # the pool reconnects

    event.listen(engine, "connect", mark)
    event.listen(engine, "checkin", mark)
    event.listen(engine, "checkout", check)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        # Autocommit at the driver level so "begin" below can take the write lock up front:
        # a deferred transaction that reads then writes fails with SQLITE_BUSY under concurrency.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


@event.listens_for(Engine, "begin")
def _sqlite_begin_immediate(conn) -> None:
    if conn.dialect.name == "sqlite":
        # Read-only work (the ledger audit) reads a WAL snapshot without blocking writers.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("read_only") else "BEGIN IMMEDIATE")
