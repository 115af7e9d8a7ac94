"""`flask db upgrade` on an empty database must give exactly the schema the models describe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade

from app import create_app
from app.config import database_url
from app.db import MIGRATION_LOCK_KEY, db
from tests.conftest import ROOT


@pytest.fixture
def empty_database(tmp_path, worker_id):
    raw = os.environ.get("DATABASE_URL")
    if not raw:
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    url = sa.engine.make_url(database_url(raw))
    name = f"{url.database}_migrations_{worker_id}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


EXPRESSION_INDEXES = {"uq_staff_username_lower", "uq_devices_code_lower", "uq_communities_code_lower"}


def test_upgrade_head_matches_models(empty_database):
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn, warnings.catch_warnings():
            # Reflection cannot read an index on an expression (lower(username)): it is checked by name below.
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
            opts = {"compare_type": True, "include_object": lambda obj, name, *_: name not in EXPRESSION_INDEXES}
            diff = compare_metadata(MigrationContext.configure(conn, opts=opts), db.metadata)
            indexes = set(
                conn.scalars(
                    sa.text("SELECT indexname FROM pg_indexes")
                    if conn.dialect.name == "postgresql"
                    else sa.text("SELECT name FROM sqlite_master WHERE type = 'index'")
                )
            )
        tables = set(sa.inspect(db.engine).get_table_names())
        with db.engine.connect() as conn:
            triggers = set(
                conn.scalars(
                    sa.text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
                    if conn.dialect.name == "postgresql"
                    else sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                )
            )
        db.engine.dispose()
    assert diff == []
    assert indexes >= EXPRESSION_INDEXES
    assert {"ledger_entries", "accounts", "checkins", "idempotency_keys", "alembic_version"} <= tables
    assert triggers & {"ledger_entries_append_only", "ledger_entries_no_update"}, "ledger_entries must be append-only"


@pytest.mark.parametrize(
    ("revision", "table", "before", "after"),
    [
        ("0002", "checkins", {"ix_checkins_resident_id"}, set()),
        ("0003", "deposits", {"ix_deposits_collection_point_id"}, {"ix_deposits_collection_point_id_id"}),
        ("0005", "deposits", {"ix_deposits_resident_id"}, {"uq_deposits_member_code"}),
    ],
)
def test_index_revisions_downgrade_and_upgrade_again(empty_database, revision, table, before, after):
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    indexes = lambda conn: {ix["name"] for ix in sa.inspect(conn).get_indexes(table)}  # noqa: E731
    with app.app_context():
        upgrade(revision=revision)
        downgrade(revision=f"{int(revision) - 1:04d}")
        with db.engine.connect() as conn:
            assert before <= indexes(conn)
            assert not after & indexes(conn)
        upgrade(revision=revision)
        with db.engine.connect() as conn:
            assert after <= indexes(conn)
            assert not before & indexes(conn)
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == revision
        db.engine.dispose()


def test_revision_0004_clears_half_positions_then_refuses_them(empty_database):
    """On rows that others refer to (a bin at the point), as a real database has them: SQLite rebuilds the table."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    insert = sa.text(
        "INSERT INTO collection_points (name, community_id, kind, address, lat, lng, geofence_m, categories, "
        "qr_secret, active, created_at) VALUES (:name, 1, 'station', '', :lat, :lng, :fence, '[]', 's', true, "
        "CURRENT_TIMESTAMP)"
    )
    points = sa.text("SELECT name, lat, lng, geofence_m, active FROM collection_points ORDER BY name")
    with app.app_context():
        upgrade(revision="0003")
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO communities (id, name, code, created_at) "
                    "VALUES (1, '恒康社区', 'hengkang', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(insert, {"name": "fenced half", "lat": 31.0, "lng": None, "fence": 100})
            conn.execute(insert, {"name": "half", "lat": None, "lng": 121.0, "fence": None})
            conn.execute(insert, {"name": "whole", "lat": 31.0, "lng": 121.0, "fence": 100})
            conn.execute(
                sa.text(
                    "INSERT INTO devices (code, collection_point_id, secret, active, created_at) "
                    "SELECT 'BIN-' || id, id, 's', true, CURRENT_TIMESTAMP FROM collection_points"
                )
            )
        upgrade(revision="0004")
        with db.engine.begin() as conn:
            # a fenced point that lost its position is retired rather than left open to scans from anywhere
            assert [tuple(row) for row in conn.execute(points)] == [
                ("fenced half", None, None, None, False),
                ("half", None, None, None, True),
                ("whole", 31.0, 121.0, 100, True),
            ]
            assert conn.scalar(sa.text("SELECT count(*) FROM devices")) == 3
        for lat, lng, fence in ((31.0, None, None), (None, 121.0, None), (None, None, 100)):
            with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
                conn.execute(insert, {"name": "bad", "lat": lat, "lng": lng, "fence": fence})
        downgrade(revision="0003")
        with db.engine.begin() as conn:
            conn.execute(insert, {"name": "half again", "lat": 31.0, "lng": None, "fence": None})
            assert conn.scalar(sa.text("SELECT count(*) FROM devices")) == 3
            if conn.dialect.name == "sqlite":  # the references are enforced again after migrating
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        db.engine.dispose()


def _stops_until_renamed(revision: str, before: str, clash: str, rename: str, capfd, said: str = "") -> None:
    """`upgrade(revision)` stops on the clash, naming it (`said`, by default as the case clashes are named), and
    leaves the database at `before`; once `rename` has settled it, the upgrade goes through."""
    with pytest.raises(SystemExit):  # flask-migrate logs the error and exits
        upgrade(revision=revision)
    assert (said or f"differ only in case: {clash}") in capfd.readouterr().err
    with db.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == before
    with db.engine.begin() as conn:
        conn.execute(sa.text(rename))
    upgrade(revision=revision)
    with db.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == revision


def test_revision_0008_stops_on_device_codes_that_differ_only_in_case(empty_database, capfd):
    from app.people.models import Community
    from app.sorting.models import CollectionPoint, Device

    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    with app.app_context():
        upgrade(revision="0007")  # the columns are as at head; only the index is missing
        community = Community(name="测试社区", code="case-test")
        db.session.add(community)
        db.session.flush()
        point = CollectionPoint(name="测试点", community_id=community.id, kind="smart_bin")
        db.session.add(point)
        db.session.flush()
        db.session.add_all([Device(code=code, collection_point_id=point.id) for code in ("HK-BIN-02", "hk-bin-02")])
        db.session.commit()
        db.session.remove()
        rename = "UPDATE devices SET code = 'HK-BIN-03' WHERE code = 'hk-bin-02'"
        _stops_until_renamed("0008", "0007", "hk-bin-02", rename, capfd)
        db.engine.dispose()


def test_revision_0007_stops_on_usernames_that_differ_only_in_case(empty_database, capfd):
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    insert = sa.text(
        "INSERT INTO staff (username, password_hash, display_name, role, active, created_at) "
        "VALUES (:name, 'x', '', 'admin', true, CURRENT_TIMESTAMP)"
    )
    with app.app_context():
        upgrade(revision="0006")
        with db.engine.begin() as conn:
            conn.execute(insert, [{"name": "boss"}, {"name": "Boss"}])
        rename = "UPDATE staff SET username = 'boss2' WHERE username = 'Boss'"
        _stops_until_renamed("0007", "0006", "boss", rename, capfd)
        db.engine.dispose()


def test_revision_0011_stops_on_community_codes_that_differ_only_in_case(empty_database, capfd):
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    insert = sa.text("INSERT INTO communities (code, name, created_at) VALUES (:code, :name, CURRENT_TIMESTAMP)")
    with app.app_context():
        upgrade(revision="0010")
        with db.engine.begin() as conn:
            conn.execute(insert, [{"code": "hengkang", "name": "恒康社区"}, {"code": "HengKang", "name": "恒康二"}])
        rename = "UPDATE communities SET code = 'hengkang2' WHERE code = 'HengKang'"
        _stops_until_renamed("0011", "0010", "hengkang", rename, capfd)
        db.engine.dispose()


def test_revision_0010_dates_the_cut_off_of_residents_already_frozen(empty_database):
    """A resident frozen before the upgrade must not get the sessions from before the freeze back at a thaw."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    insert = sa.text(
        "INSERT INTO residents (openid, nickname, status, created_at, updated_at) "
        "VALUES (:openid, '', :status, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    with app.app_context():
        upgrade(revision="0009")
        with db.engine.begin() as conn:
            conn.execute(
                insert, [{"openid": "o-frozen", "status": "frozen"}, {"openid": "o-active", "status": "active"}]
            )
        upgrade(revision="0010")
        with db.engine.connect() as conn:
            cut_offs = dict(conn.execute(sa.text("SELECT openid, sessions_valid_after FROM residents")).all())
        db.engine.dispose()
    assert cut_offs["o-frozen"] is not None
    assert cut_offs["o-active"] is None


def test_revision_0012_stops_on_points_of_one_community_with_the_same_name(empty_database, capfd):
    from app.people.models import Community
    from app.sorting.models import CollectionPoint

    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    with app.app_context():
        upgrade(revision="0011")
        here, there = Community(name="恒康社区", code="hengkang"), Community(name="鑫海湾", code="xinhaiwan")
        db.session.add_all([here, there])
        db.session.flush()
        db.session.add_all(
            [CollectionPoint(name="一号站", community_id=c.id, kind="station") for c in (here, here, there)]
        )
        db.session.commit()
        newer = db.session.scalar(sa.select(sa.func.max(CollectionPoint.id)).filter_by(community_id=here.id))
        db.session.remove()
        rename = f"UPDATE collection_points SET name = '一号站（东）' WHERE id = {newer}"
        said = "collection points of one community with the same name: 一号站"
        _stops_until_renamed("0012", "0011", "一号站", rename, capfd, said=said)
        db.engine.dispose()


def test_upgrades_started_together_wait_for_one_another(empty_database):
    """Hosts released together all run `flask db upgrade`: the first migrates while the others wait on the
    migration lock, then find the database at head."""
    if not empty_database.startswith("postgresql"):
        pytest.skip("SQLite has one host")
    engine = sa.create_engine(database_url(empty_database))
    flask = Path(sys.executable).with_name("flask")
    env = {**os.environ, "DATABASE_URL": empty_database}
    waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        hosts = [
            subprocess.Popen(
                [str(flask), "--app", "wsgi", "db", "upgrade"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        with engine.connect() as watcher:
            deadline = time.monotonic() + 60
            while (
                watcher.execute(waiting).scalar() < 2
                and time.monotonic() < deadline
                and not any(host.poll() is not None for host in hosts)
            ):
                watcher.rollback()
                time.sleep(0.05)  # polling the other processes' state, not waiting out a timer
        assert [host.poll() for host in hosts] == [None, None]  # both wait on the lock, before any DDL
        holder.rollback()  # releases it
    outputs = [host.communicate(timeout=120)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], outputs
    with engine.connect() as conn:
        head = ScriptDirectory(str(ROOT / "migrations")).get_current_head()
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    engine.dispose()


def test_revision_0014_dates_each_account_by_its_last_entry(empty_database, clock):
    """Accounts with entries take their newest entry's moment; those without stay empty, as verify expects."""
    from app.ledger import service as ledger
    from app.ledger.models import Account
    from app.ledger.verify import verify_ledger
    from app.people.service import resident_for_openid

    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    with app.app_context():
        upgrade()
        busy, idle = resident_for_openid("o-busy", None), resident_for_openid("o-idle", None)
        for ref in ("a", "b"):
            clock.advance(minutes=5)
            ledger.post(busy.id, 5, kind="earn", source="test", ref_type="test", ref_id=ref, actor_type="system",
                        actor_id=None)  # fmt: skip
        db.session.commit()
        busy_id, idle_id = busy.id, idle.id
        db.session.remove()
        with warnings.catch_warnings():  # SQLite's batch copy reflects the tables that accounts refers to
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            downgrade(revision="0013")
        upgrade(revision="0014")
        last = dict(db.session.execute(sa.select(Account.resident_id, Account.last_entry_at)).all())
        assert last == {busy_id: clock.now, idle_id: None}
        db.session.remove()
        upgrade()  # this release's check reads what later revisions add
        assert verify_ledger().ok
        db.session.remove()
        db.engine.dispose()


def test_revision_0019_is_not_undone_once_entries_hash_a_reason(empty_database, clock, capfd):
    """An entry's hash covers its reason's digest: a downgrade dropping the column would break the chain for good,
    so it stops, and the ledger still verifies."""
    from app.auth.guards import Actor
    from app.ledger import service as ledger
    from app.ledger.verify import verify_ledger
    from app.people.service import resident_for_openid

    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database, "TESTING": True})
    with app.app_context():
        upgrade()
        who = resident_for_openid("o-reason", None)
        db.session.commit()
        ledger.adjust(Actor(kind="staff", id=None, role="admin"), who.id, 5, "活动补发")
        db.session.remove()
        with pytest.raises(SystemExit):  # flask-migrate logs the error and exits
            downgrade(revision="0018")
        assert "downgrading past 0019 would break their chains" in capfd.readouterr().err
        with db.engine.connect() as conn:
            # PostgreSQL undoes the whole downgrade; SQLite keeps 0020's, which went first, in a transaction of its own
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) in ("0019", "0020")
        columns = {c["name"] for c in sa.inspect(db.engine).get_columns("ledger_entries")}
        assert "reason_digest" in columns
        assert verify_ledger().ok
        db.session.remove()
        db.engine.dispose()
