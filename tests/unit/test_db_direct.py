"""`db.run` on PostgreSQL: prebuilt statements go straight to psycopg, and answer exactly as SQLAlchemy would."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app import db as db_module
from app.auth.guards import _STATE
from app.carbon.methodology import CapCharge
from app.db import db, run
from app.errors import CapReached
from app.idempotency.models import IdempotencyKey
from app.idempotency.service import _RECORD, _STORED
from app.ledger import service as ledger
from app.ledger.models import Account
from app.people.models import Resident
from app.sorting import service as sorting
from app.sorting.models import Checkin, CollectionPoint
from tests.conftest import PG, SHANGHAI

pytestmark = pytest.mark.skipif(not PG, reason="the direct path is PostgreSQL's")


@pytest.fixture
def resident(db_session):
    person = Resident(openid="direct-test", status="active", community_id=None)
    db.session.add(person)
    db.session.flush()
    ledger.open_account(person.id)
    point = CollectionPoint(name="直连测试点", community_id=1, kind="station", categories=["paper", "glass"])
    db.session.add(point)
    db.session.flush()
    return person, point


def both_ways(statement, params):
    """The rows from SQLAlchemy's own execution and from the direct one, each in a savepoint rolled back."""
    answers = []
    for direct in (False, True):
        with db.session.begin_nested() as savepoint:
            conn = db.session.connection()
            result = run(statement, params) if direct else conn.execute(statement, params)
            answers.append([tuple(row) for row in result])
            savepoint.rollback()
    return answers


def test_reads_answer_the_same_rows_and_types(resident):
    person, point = resident
    for statement, params in [
        (_STATE["resident"], {"id": person.id, "sid": "no-such-session"}),
        (ledger._LOCK_ACCOUNT, {"lock_resident_id": person.id}),
        (sorting._POINT_ROW, {"id": point.id}),  # categories is JSON: decoded the same way
        (sorting._ALL_POINTS, {}),
    ]:
        assert db_module._direct(statement, db.session.get_bind().dialect, params) is not None
        through_sqlalchemy, direct = both_ways(statement, params)
        assert direct == through_sqlalchemy
        assert [[type(v) for v in row] for row in direct] == [[type(v) for v in row] for row in through_sqlalchemy]
    [row] = run(sorting._POINT_ROW, {"id": point.id}).all()
    assert (row.name, row.categories) == ("直连测试点", ["paper", "glass"])


def test_bind_processors_apply_to_direct_writes(resident):
    """A local time goes in as its UTC instant (UTCDateTime), and JSON goes in encoded."""
    person, point = resident
    local = datetime(2026, 6, 15, 18, 30, tzinfo=SHANGHAI)
    slot = {"resident_id": person.id, "collection_point_id": point.id, "day": local.date(), "lat": None, "lng": None}
    claim = {f"claim_{name}": value for name, value in (slot | {"created_at": local}).items()}
    claimed = run(sorting._checkin_claim("postgresql"), claim).scalar()
    stored = db.session.get(Checkin, claimed)
    db.session.refresh(stored)
    assert stored.created_at == local
    assert stored.created_at.tzinfo is UTC
    assert run(sorting._checkin_claim("postgresql"), claim).scalar() is None  # ON CONFLICT DO NOTHING: no row

    key = IdempotencyKey(scope="test", key="k1", request_hash="h", status_code=0, response_body={})
    db.session.add(key)
    db.session.flush()
    run(_RECORD, {"key_id": key.id, "status": 201, "body": {"积分": 5, "items": [1, None]}})
    row = run(_STORED, {"scope": "test", "key": "k1"}).one()
    assert (row.status_code, row.response_body) == (201, {"积分": 5, "items": [1, None]})


def test_result_processors_apply_to_direct_answers(resident):
    """The posting answers the counters that accepted as an ARRAY, through its result processor, and a refusal
    names the counter that refused."""
    person, _ = resident
    charges = [CapCharge("test:a", 5, 10, "测试甲"), CapCharge("test:b", 5, None, "测试乙")]

    def earn(ref: str):
        return ledger.post(person.id, 5, kind="earn", source="test", ref_type="test", ref_id=ref,
                           actor_type="system", actor_id=None, caps=charges)  # fmt: skip

    earn("direct-1")
    direct = db_module._direct(ledger._postgresql_posting(True, True), db.session.get_bind().dialect, {})
    metadata, processors = direct.shape
    assert list(metadata.keys) == ["entry_id", "counted"]
    assert processors[1] is not None
    earn("direct-2")
    with pytest.raises(CapReached) as refused:
        earn("direct-3")
    assert refused.value.details["activity"] == "test:a"
    assert db.session.get(Account, ledger.account_of(person.id).id).balance == 10


def test_a_driver_error_is_raised_as_sqlalchemys_and_the_session_recovers(resident):
    _, point = resident
    slot = {"resident_id": 10**6, "collection_point_id": point.id, "day": datetime(2026, 6, 15).date(), "lat": None}
    claim = {f"claim_{name}": value for name, value in (slot | {"lng": None, "created_at": datetime.now(UTC)}).items()}
    with pytest.raises(sa.exc.IntegrityError) as caught:  # no such resident: a foreign key violation
        run(sorting._checkin_claim("postgresql"), claim)
    assert "fk_checkins_resident_id_residents" in str(caught.value.orig)
    assert not caught.value.connection_invalidated
    db.session.rollback()
    assert run(sa.select(sa.literal(1))).scalar() == 1


def test_a_lost_connection_is_invalidated_and_replaced(resident, database_uri):
    person, _ = resident
    db.session.commit()
    assert run(ledger._LOCK_ACCOUNT, {"lock_resident_id": person.id}).first() is not None
    backend = db.session.connection().connection.dbapi_connection.info.backend_pid
    killer = sa.create_engine(database_uri, poolclass=sa.NullPool)
    with killer.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
    killer.dispose()
    with pytest.raises(sa.exc.DBAPIError) as caught:
        run(ledger._LOCK_ACCOUNT, {"lock_resident_id": person.id})
    assert caught.value.connection_invalidated
    db.session.rollback()
    assert run(ledger._LOCK_ACCOUNT, {"lock_resident_id": person.id}).first().id is not None
    assert db.session.connection().connection.dbapi_connection.info.backend_pid != backend


def test_statements_that_need_sqlalchemys_execution_are_left_to_it(resident):
    person, _ = resident
    dialect = db.session.get_bind().dialect
    expanding = sa.select(Resident.id).where(Resident.id.in_(sa.bindparam("ids", expanding=True)))
    with_python_default = sa.insert(IdempotencyKey.__table__)  # created_at comes from utcnow() in Python
    text = sa.text("SELECT 1")
    values = {"scope": "t", "key": "k2", "request_hash": "h", "status_code": 0, "response_body": {}}
    assert db_module._direct(expanding, dialect, {"ids": [person.id]}) is None
    assert db_module._direct(with_python_default, dialect, values) is None
    assert db_module._direct(text, dialect, {}) is None
    assert run(expanding, {"ids": [person.id]}).scalars().all() == [person.id]  # and they still work
    run(with_python_default, values)
    assert db.session.scalar(sa.select(IdempotencyKey.created_at).filter_by(key="k2")) is not None
    assert run(text).scalar() == 1
