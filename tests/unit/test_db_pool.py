"""Pooled connections: pinged only after sitting idle, a dead one replaced; ids bounded by their key type."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.db import ping_idle_connections


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watched(database_uri):
    """An engine on the suite's database with a counted ping and a hand-moved clock."""
    engine = sa.create_engine(database_uri, pool_size=1, max_overflow=0)
    clock, pings = Clock(), []
    real_ping = engine.dialect.do_ping

    def counted_ping(dbapi_connection):
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    engine.dialect.do_ping = counted_ping
    ping_idle_connections(engine, 1.0, clock=clock)
    yield engine, clock, pings
    engine.dispose()


def _raw(engine):
    """Check a connection out, use it, give it back; the driver connection it was."""
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        return conn.connection.dbapi_connection


def test_a_fresh_or_recently_used_connection_is_not_pinged(watched):
    engine, clock, pings = watched
    first = _raw(engine)  # newly connected
    clock.now += 0.9
    again = _raw(engine)
    assert again is first
    assert pings == []


def test_a_connection_idle_past_the_window_is_pinged_once_and_kept(watched):
    engine, clock, pings = watched
    first = _raw(engine)
    clock.now += 1.5
    again = _raw(engine)
    assert again is first
    assert pings == [first]
    clock.now += 0.5
    _raw(engine)
    assert len(pings) == 1  # used again just now: no second ping


def test_a_dead_idle_connection_is_replaced_before_use(watched, database_uri):
    engine, clock, pings = watched
    first = _raw(engine)
    if engine.dialect.name == "postgresql":
        backend = first.info.backend_pid
        killer = sa.create_engine(database_uri, poolclass=sa.NullPool)
        with killer.connect() as conn:  # what a server restart or an idle-session timeout does
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
        killer.dispose()
    else:
        first.close()
    clock.now += 5
    replacement = _raw(engine)  # no error reaches the caller
    assert replacement is not first
    assert pings[0] is first


def test_fits_key_bounds_ids_by_their_column_type():
    from app.db import MAX_BIG_ID, MAX_ID, fits_key

    assert fits_key(1)
    assert fits_key(MAX_ID)
    assert not any(fits_key(v) for v in (0, -1, MAX_ID + 1, True, "1", 1.0, None))
    assert fits_key(MAX_ID + 1, sa.BigInteger())
    assert fits_key(MAX_BIG_ID, sa.BigInteger())
    assert not fits_key(MAX_BIG_ID + 1, sa.BigInteger())
