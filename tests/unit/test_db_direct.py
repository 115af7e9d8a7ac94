"""`db.run` on PostgreSQL: prebuilt statements go straight to psycopg, and answer exactly as SQLAlchemy would."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine.result import IteratorResult

from app import db as db_module
from app.carbon.methodology import CapCharge
from app.db import UTCDateTime, db, run
from app.errors import CapReached
from app.idempotency.models import IdempotencyKey
from app.idempotency.service import _RECORD, _STORED
from app.ledger import service as ledger
from app.people.models import Resident
from app.sorting import service as sorting
from app.sorting.models import Checkin, CollectionPoint, Deposit
from tests.conftest import PG, SHANGHAI, ApiClient

pytestmark = pytest.mark.skipif(not PG, reason="the direct path is PostgreSQL's")

# Filled from sequences: a statement run twice gets two different ones.
SEQUENCED = {"id", "claim_id", "entry_id"}


@pytest.fixture
def differential(monkeypatch):
    """Every direct execution is first run through SQLAlchemy's own `Connection.execute` in a savepoint that is
    rolled back, and the two answers are compared: keys, types and values (sequence-filled ids by type only)."""
    compared: list[str] = []
    direct_execute = db_module._Direct.execute

    def execute(self, conn, params):
        savepoint = conn.begin_nested()
        try:
            expected = conn.execute(self.compiled.statement, params).mappings().all()
        finally:
            savepoint.rollback()
        answered = direct_execute(self, conn, params)
        keys, rows = list(answered.keys()), answered.all()
        assert [list(r) for r in expected] == [keys] * len(expected)
        assert len(rows) == len(expected)
        for row, want in zip(rows, expected, strict=True):
            for key, value in zip(keys, row, strict=True):
                assert type(value) is type(want[key]), (self.sql[:60], key)
                assert key in SEQUENCED or value == want[key], (self.sql[:60], key, value, want[key])
        compared.append(self.sql.split()[0] + " " + self.sql.split()[1])
        return IteratorResult(self.shape[0], iter([tuple(row) for row in rows]))

    monkeypatch.setattr(db_module._Direct, "execute", execute)
    return compared


def test_scans_deposits_and_idempotent_replays_answer_as_sqlalchemy_does(app, db_session, differential):
    from tests.api.test_sorting_deposits import lines
    from tests.api.test_sorting_scans import make_point, poster

    api = ApiClient(app.test_client())
    admin, resident = api.staff("admin"), api.resident()
    point = make_point(api, admin, "对照站")
    collector = api.staff("collector", collection_point_ids=[point])
    keyed = {"Idempotency-Key": "direct-scan-1"}
    for _ in range(2):  # the second is a replay
        scan = api.post("/scans", as_=resident, json={"token": poster(api, admin, point)["token"]}, headers=keyed)
        assert scan.status_code == 201, scan.get_json()
    body = {"member_code": api.member_code(resident), "collection_point_id": point,
            "items": lines(("paper", 1200), ("plastic", 500))}  # fmt: skip
    deposit = api.post("/deposits", as_=collector, json=body)
    assert deposit.status_code == 201, deposit.get_json()
    assert api.get("/me", as_=resident).get_json()["balance"] == 5 + 28
    assert len(differential) >= 8  # callers, claims with locks, postings, the stored answer
    assert {"WITH counted", "WITH claimed", "WITH new_deposit", "INSERT INTO", "UPDATE idempotency_keys"} <= set(
        differential
    )


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


def test_bind_processors_apply_to_direct_writes(resident):
    """A local time goes in as its UTC instant (UTCDateTime), and JSON goes in encoded and comes back decoded."""
    person, point = resident
    local = datetime(2026, 6, 15, 18, 30, tzinfo=SHANGHAI)
    slot = {"resident_id": person.id, "collection_point_id": point.id, "day": local.date(), "lat": None, "lng": None}
    claim = {f"claim_{name}": value for name, value in (slot | {"created_at": local}).items()}
    claim["claim_point_secret"] = point.qr_secret
    claimed = run(sorting._checkin_claim("postgresql"), claim).scalar()
    stored = db.session.get(Checkin, claimed)
    db.session.refresh(stored)
    assert stored.created_at == local
    assert stored.created_at.tzinfo is UTC
    assert run(sorting._checkin_claim("postgresql"), claim).scalar() is None  # ON CONFLICT DO NOTHING: no row

    key = IdempotencyKey(scope="test", key="k1", request_hash="h", status_code=0, response_body={})
    db.session.add(key)
    db.session.flush()
    db.session.execute(_RECORD, {"key_id": key.id, "status": 201, "body": {"积分": 5, "items": [1, None]}})
    row = run(_STORED, {"scope": "test", "key": "k1"}).one()
    assert (row.status_code, row.response_body) == (201, {"积分": 5, "items": [1, None]})


def test_an_escaped_bind_name_gets_its_processor(db_session):
    """A parameter whose name PostgreSQL's driver cannot take is renamed in the SQL; its type still applies."""
    local = datetime(2026, 6, 15, 18, 30, tzinfo=SHANGHAI)
    statement = sa.select(sa.bindparam("since.local", type_=UTCDateTime).label("at"))
    assert db_module._direct(statement, db.session.get_bind().dialect, {"since.local": local}) is not None
    at = run(statement, {"since.local": local}).scalar_one()
    assert at == local
    assert at.tzinfo is UTC


def test_a_statement_that_answers_several_rows_answers_them_all(resident):
    """Each worker's copy of the points is one read of every point: all of them (the fixture's and two more), as
    SQLAlchemy answers them."""
    db.session.add_all(
        CollectionPoint(name=f"直连测试点{n}", community_id=1, kind="station", categories=["glass"]) for n in (2, 3)
    )
    db.session.flush()
    assert db_module._direct(sorting._ALL_POINTS, db.session.get_bind().dialect, {}) is not None
    expected = db.session.connection().execute(sorting._ALL_POINTS).all()
    answered = run(sorting._ALL_POINTS).all()
    assert len(expected) == 3
    assert sorted(answered, key=lambda row: row.id) == sorted(expected, key=lambda row: row.id)


def test_a_label_longer_than_postgresql_keeps_is_still_the_answers_key(db_session):
    """The server truncates an identifier to 63 bytes in its answer; the Result is keyed as SQLAlchemy keys it, by the
    compiled columns, not by the names the server answers with."""
    label = "points_credited_to_this_years_lot_by_the_posting_that_was_just_appended"
    statement = sa.select(sa.literal(5).label(label), sa.literal(7).label("seq"))
    assert db_module._direct(statement, db.session.get_bind().dialect, {}) is not None
    answered = run(statement)
    assert list(answered.keys()) == list(db.session.connection().execute(statement).keys()) == [label, "seq"]
    assert answered.mappings().one() == {label: 5, "seq": 7}


def test_result_processors_apply_to_direct_answers(resident):
    """The posting answers the counters that accepted as an ARRAY, through its result processor, and a refusal
    names the counter that refused."""
    person, _ = resident
    charges = [CapCharge("test:a", 5, 10, "测试甲"), CapCharge("test:b", 5, None, "测试乙")]

    def earn(ref: str):
        return ledger.post(person.id, 5, kind="earn", source="test", ref_type="test", ref_id=ref,
                           actor_type="system", actor_id=None, caps=charges)  # fmt: skip

    earn("direct-1")
    posting = [d for (s, _, _), d in db_module._directs.items() if s is ledger._postgresql_posting(True, True)]
    assert [d.shape[0].keys for d in posting] == [["entry_id", "counted"]]
    assert posting[0].shape[1][1] is not None  # the ARRAY column's processor
    earn("direct-2")
    with pytest.raises(CapReached) as refused:
        earn("direct-3")
    assert refused.value.details["activity"] == "test:a"
    assert ledger.account_of(person.id).balance == 10


def test_a_driver_error_is_raised_as_sqlalchemys_and_the_session_recovers(resident):
    person, point = resident
    deposit = {"resident_id": person.id, "member_code_nonce": "n-1", "collection_point_id": point.id,
               "collector_id": None, "device_id": None, "points": 0, "co2e_g": 0, "weight_g": 1,
               "created_at": datetime.now(UTC)}  # fmt: skip
    with pytest.raises(sa.exc.IntegrityError) as caught:  # recorded by no one: a CHECK violation
        run(sa.insert(Deposit.__table__).returning(Deposit.id), deposit)
    assert "ck_deposits_one_recorder" in str(caught.value.orig)
    assert not caught.value.connection_invalidated
    db.session.rollback()
    assert run(sa.select(sa.literal(1))).scalar() == 1


def test_a_lost_connection_invalidates_the_pool(resident, database_uri):
    """As SQLAlchemy does: the failing connection is replaced, and so is every other one pooled before it."""
    person, _ = resident
    db.session.commit()
    with db.engine.connect() as other:  # another pooled connection, idle meanwhile
        bystander = other.connection.dbapi_connection
    assert run(ledger._LOCK_ACCOUNT, {"lock_resident_id": person.id}).first() is not None
    backend = db.session.connection().connection.dbapi_connection.info.backend_pid
    killer = sa.create_engine(database_uri, poolclass=sa.NullPool)
    with killer.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
    killer.dispose()
    with pytest.raises(sa.exc.OperationalError) as caught:
        run(ledger._LOCK_ACCOUNT, {"lock_resident_id": person.id})
    assert caught.value.connection_invalidated
    db.session.rollback()
    assert run(ledger._LOCK_ACCOUNT, {"lock_resident_id": person.id}).first() is not None
    assert db.session.connection().connection.dbapi_connection.info.backend_pid != backend
    held = [db.engine.connect() for _ in range(db.engine.pool.checkedin() + 1)]
    assert all(c.connection.dbapi_connection is not bystander for c in held)
    for c in held:
        c.close()


def test_statements_that_need_sqlalchemys_execution_are_left_to_it(resident):
    person, _ = resident
    dialect = db.session.get_bind().dialect
    expanding = sa.select(Resident.id).where(Resident.id.in_(sa.bindparam("ids", expanding=True)))
    with_python_default = sa.insert(IdempotencyKey.__table__).returning(IdempotencyKey.id)  # created_at: utcnow()
    no_returning = sa.update(Resident.__table__).where(Resident.id == sa.bindparam("rid")).values(nickname="x")
    text = sa.text("SELECT 1")
    values = {"scope": "t", "key": "k2", "request_hash": "h", "status_code": 0, "response_body": {}}
    for statement, params in ((expanding, {"ids": [person.id]}), (with_python_default, values),
                              (no_returning, {"rid": person.id}), (text, {})):  # fmt: skip
        assert db_module._direct(statement, dialect, params) is None
    assert run(expanding, {"ids": [person.id]}).scalars().all() == [person.id]  # and they still work
    assert run(with_python_default, values).scalar_one() > 0
    assert run(no_returning, {"rid": person.id}).rowcount == 1
    with pytest.raises(sa.exc.ResourceClosedError):
        run(no_returning, {"rid": person.id}).scalar()  # no rows to answer, as SQLAlchemy says
    assert run(text).scalar() == 1
