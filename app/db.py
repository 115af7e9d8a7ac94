"""Declarative base, column types shared by every package, and the unit-of-work commit."""

from __future__ import annotations

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
from sqlalchemy.engine.result import IteratorResult
from sqlalchemy.engine.result import SimpleResultMetaData as ResultMetaData
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry

from app.clock import utcnow
from app.errors import Duplicate, NotFound

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


def get_or_404(model, obj_id: int, message: str = "资源不存在"):
    key_type = sa.inspect(model).primary_key[0].type
    obj = db.session.get(model, obj_id) if fits_key(obj_id, key_type) else None
    if obj is None:
        raise NotFound(message)
    return obj


def insert_unique(obj, message: str):
    """Insert one row whose natural key is unique; a clash becomes 409 duplicate, not a 500,
    and the rest of the transaction survives (a savepoint)."""
    db.session.add(obj)
    try:
        with db.session.begin_nested():
            db.session.flush()
    except IntegrityError as exc:
        raise Duplicate(message) from exc
    return obj


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
    """A prebuilt statement compiled once for PostgreSQL and sent straight to psycopg's cursor. SQLAlchemy's
    per-execution work (an execution context, parameter and result bookkeeping, events) costs about 70 µs a
    statement, more than psycopg's own; a check-in runs three. What that work does for these statements is kept:
    parameters go through their types' bind processors and rows through their result processors (chosen, as
    SQLAlchemy chooses them, by the first answer's column types), the rows come back as a SQLAlchemy Result,
    and a driver error is raised as SQLAlchemy's exception, invalidating a connection that was lost."""

    def __init__(self, compiled: sa.engine.Compiled, dialect) -> None:
        self.sql, self.compiled, self.dialect = compiled.string, compiled, dialect
        self.binds = {
            name: processor
            for bind, name in compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self.column_types = [column.type.dialect_impl(dialect) for column in compiled._result_columns]
        self.shape: tuple[ResultMetaData, list] | None = None  # keys and result processors, from the first answer

    def execute(self, conn: sa.Connection, params: dict[str, Any]) -> sa.Result:
        values = self.compiled.construct_params(params)
        for name, processor in self.binds.items():
            values[name] = processor(values[name])
        raw = conn.connection.dbapi_connection
        error = self.dialect.loaded_dbapi.Error
        try:
            with raw.cursor() as cursor:
                cursor.execute(self.sql, values)
                description = cursor.description
                rows = cursor.fetchall() if description else []
        except error as exc:
            lost = self.dialect.is_disconnect(exc, raw, None)
            if lost:
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                self.sql, values, exc, error, connection_invalidated=lost, dialect=self.dialect
            ) from exc
        if not description:
            return IteratorResult(ResultMetaData([]), iter(()))
        metadata, processors = self.shape or self._shape(description)
        if any(processors):
            rows = [tuple(p(v) if p else v for p, v in zip(processors, row, strict=True)) for row in rows]
        return IteratorResult(metadata, iter(rows))

    def _shape(self, description) -> tuple[ResultMetaData, list]:
        processors = [
            kind.result_processor(self.dialect, column.type_code)
            for kind, column in zip(self.column_types, description, strict=True)
        ]
        self.shape = (ResultMetaData([column.name for column in description]), processors)
        return self.shape


_DIRECT_LIMIT = 1024
_directs: dict[tuple, _Direct | None] = {}


def _direct(statement: sa.Executable, dialect, params: dict[str, Any]) -> _Direct | None:
    """The statement's direct form, or None where SQLAlchemy's execution layer is needed: expanding (IN) or
    literal-rendered parameters, column defaults computed in Python, or anything but a plain Core SELECT,
    INSERT, UPDATE or DELETE. An INSERT or UPDATE without explicit values takes its columns from the
    parameters, so those are part of the key."""
    dml = isinstance(statement, sa.Insert | sa.Update)
    columns = tuple(sorted(params)) if dml else None
    key = (statement, dialect, columns)
    if key not in _directs:
        if len(_directs) >= _DIRECT_LIMIT:  # prebuilt statements are few: this only bounds a misuse
            _directs.clear()
        direct = None
        if dml or isinstance(statement, sa.Select | sa.Delete):
            compiled = statement.compile(dialect=dialect, column_keys=list(columns) if dml else None)
            needs_context = compiled.literal_execute_params or compiled.post_compile_params
            if not (needs_context or compiled.insert_prefetch or compiled.update_prefetch):
                direct = _Direct(compiled, dialect)
        _directs[key] = direct
    return _directs[key]


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
