"""flask seed, staff create and the pruning jobs, through Click's test runner."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from werkzeug.security import check_password_hash, generate_password_hash

from app.carbon.models import Rule
from app.db import db
from app.exchange.models import Store
from app.idempotency.models import IdempotencyKey
from app.people.models import Community, Organization, Resident, Staff
from app.sorting.models import CollectionPoint, Device, DeviceSignature
from tests.conftest import ROOT, _wipe, community_id, count

SEEDS = ROOT / "seeds"
REFERENCE = (Community, Organization, Rule)
DEMO = (Store, CollectionPoint, Device, Staff, Resident)


def _counts(models) -> dict[str, int]:
    return {model.__tablename__: count(model) for model in models}


def _seed_file(name: str):
    return json.loads((SEEDS / name).read_text(encoding="utf-8"))


@pytest.fixture
def runner(app, db_session):
    return app.test_cli_runner()


def _invoke(runner, *args):
    result = runner.invoke(args=list(args))
    db.session.rollback()  # a failed command may leave the shared session mid-transaction
    return result


# --- seed -----------------------------------------------------------------------------------------------


def test_seed_creates_reference_rows_once(runner):
    _wipe()
    assert _counts(REFERENCE) == {"communities": 0, "organizations": 0, "rules": 0}

    first = _invoke(runner, "seed")
    assert first.exit_code == 0, first.output
    expected = {
        "communities": len(_seed_file("communities.json")),
        "organizations": len(_seed_file("organizations.json")),
        "rules": len(_seed_file("rules.json")["rules"]),
    }
    assert _counts(REFERENCE) == expected
    assert f"reference: {expected}" in first.output

    second = _invoke(runner, "seed")
    assert second.exit_code == 0, second.output
    assert "reference: {'communities': 0, 'organizations': 0, 'rules': 0}" in second.output
    assert _counts(REFERENCE) == expected
    assert "demo:" not in second.output
    assert _counts(DEMO)["stores"] == 0


def test_seed_links_organisations_to_their_community(runner):
    assert _invoke(runner, "seed").exit_code == 0
    for row in _seed_file("organizations.json"):
        org = db.session.scalar(sa.select(Organization).filter_by(name=row["name"]))
        assert org.kind == row["kind"]
        expected = community_id(row["community"]) if row["community"] else None
        assert org.community_id == expected, row["name"]


def test_seed_demo_is_idempotent(runner):
    first = _invoke(runner, "seed", "--demo")
    assert first.exit_code == 0, first.output
    demo = _seed_file("demo.json")
    after_first = _counts(DEMO)
    assert after_first == {
        "stores": len(demo["stores"]),
        "collection_points": len(demo["collection_points"]),
        "devices": len(demo["devices"]),
        "staff": len(demo["staff"]),
        "residents": len(demo["residents"]),
    }
    reference = _counts(REFERENCE)

    second = _invoke(runner, "seed", "--demo")
    assert second.exit_code == 0, second.output
    assert "demo: {'stores': 0, 'collection_points': 0, 'devices': 0, 'staff': 0, 'residents': 0}" in second.output
    assert _counts(DEMO) == after_first
    assert _counts(REFERENCE) == reference


def test_seed_finds_what_it_seeded_whatever_case_an_admin_gave_it_since(runner):
    """Codes and usernames are one whatever their case (unique indexes on lower()): a re-seed after an admin renamed
    hengkang to HengKang finds it rather than failing on the index."""
    assert _invoke(runner, "seed", "--demo").exit_code == 0
    counts = _counts(REFERENCE) | _counts(DEMO)
    db.session.execute(sa.update(Community).where(Community.code == "hengkang").values(code="HengKang"))
    db.session.execute(sa.update(Staff).where(Staff.username == "worker.hk").values(username="Worker.HK"))
    db.session.execute(sa.update(Device).values(code=sa.func.upper(Device.code)))
    db.session.commit()
    again = _invoke(runner, "seed", "--demo")
    assert again.exit_code == 0, again.output
    assert _counts(REFERENCE) | _counts(DEMO) == counts


def test_seed_demo_staff_have_their_scopes_and_passwords(runner):
    assert _invoke(runner, "seed", "--demo").exit_code == 0
    for row in _seed_file("demo.json")["staff"]:
        staff = db.session.scalar(sa.select(Staff).filter_by(username=row["username"]))
        assert staff.role == row["role"]
        assert check_password_hash(staff.password_hash, row["password"])
        assert len(staff.stores) == len(row.get("stores", []))
        assert len(staff.collection_points) == len(row.get("collection_points", []))
        if row.get("community"):
            assert staff.community_id == community_id(row["community"])


# --- staff create ---------------------------------------------------------------------------------------


def test_staff_create_worker(runner):
    hengkang = community_id("hengkang")
    result = _invoke(
        runner,
        *("staff", "create", "--username", "u.worker", "--password", "pppppppp"),
        *("--role", "worker", "--community-id", str(hengkang)),
    )
    assert result.exit_code == 0, result.output
    staff = db.session.scalar(sa.select(Staff).filter_by(username="u.worker"))
    assert staff is not None
    assert (staff.role, staff.community_id, staff.active) == ("worker", hengkang, True)
    assert check_password_hash(staff.password_hash, "pppppppp")
    assert f"created staff {staff.id} u.worker (worker)" in result.output


def test_staff_create_admin_needs_no_scope(runner):
    result = _invoke(runner, "staff", "create", "--username", "u.admin", "--password", "pppppppp", "--role", "admin")
    assert result.exit_code == 0, result.output
    assert count(Staff, username="u.admin", role="admin") == 1


def test_staff_create_merchant_with_stores(runner):
    org = db.session.scalar(sa.select(Organization.id).filter_by(name="科学咖啡社"))
    stores = [Store(name=f"命令行兑换点{i}", organization_id=org) for i in range(2)]
    db.session.add_all(stores)
    db.session.commit()
    store_ids = sorted(s.id for s in stores)
    result = _invoke(
        runner,
        *("staff", "create", "--username", "u.clerk", "--password", "pppppppp", "--role", "merchant"),
        *("--store-id", str(store_ids[0]), "--store-id", str(store_ids[1])),
    )
    assert result.exit_code == 0, result.output
    staff = db.session.scalar(sa.select(Staff).filter_by(username="u.clerk"))
    assert staff.store_ids == store_ids


def test_staff_create_bad_role_fails(runner):
    result = _invoke(runner, "staff", "create", "--username", "u.bad", "--password", "pppppppp", "--role", "boss")
    assert result.exit_code != 0
    assert "--role" in result.output
    assert "boss" in result.output
    assert count(Staff, username="u.bad") == 0


def test_staff_create_worker_without_community_fails(runner):
    result = _invoke(runner, "staff", "create", "--username", "u.lost", "--password", "pppppppp", "--role", "worker")
    assert result.exit_code != 0
    assert "validation_error" in result.output
    assert "\n  community_id: " in result.output
    assert "{" not in result.output
    assert count(Staff, username="u.lost") == 0


def test_staff_create_unknown_community_fails(runner):
    result = _invoke(
        runner,
        *("staff", "create", "--username", "u.nowhere", "--password", "pppppppp"),
        *("--role", "worker", "--community-id", "987654"),
    )
    assert result.exit_code != 0
    assert "community_id" in result.output
    assert count(Staff, username="u.nowhere") == 0


def test_staff_create_short_password_fails(runner):
    result = _invoke(runner, "staff", "create", "--username", "u.short", "--password", "short", "--role", "admin")
    assert result.exit_code != 0
    assert "Error: validation_error: 提交的内容有误\n  password: " in result.output  # read by a person, not a repr
    assert count(Staff, username="u.short") == 0


def test_staff_create_names_a_list_options_bad_value_by_its_place(runner):
    result = _invoke(
        runner,
        *("staff", "create", "--username", "u.points", "--password", "pppppppp", "--role", "collector"),
        *("--community-id", "1", "--collection-point-id", "0"),
    )
    assert result.exit_code != 0
    assert "\n  collection_point_ids[0]: " in result.output
    assert "{" not in result.output


def test_staff_create_duplicate_username_fails(runner):
    args = ("staff", "create", "--username", "u.twice", "--password", "pppppppp", "--role", "admin")
    assert _invoke(runner, *args).exit_code == 0
    again = _invoke(runner, *args)
    assert again.exit_code != 0
    assert "duplicate" in again.output
    assert count(Staff, username="u.twice") == 1


def test_staff_create_asks_for_a_password_left_out_and_does_not_show_it(runner):
    args = ("staff", "create", "--username", "u.asked", "--role", "admin")
    result = runner.invoke(args=list(args), input="typed-secret-1\ntyped-secret-1\n")
    db.session.rollback()
    assert result.exit_code == 0, result.output
    assert "Password: " in result.output
    assert "Repeat for confirmation: " in result.output
    assert "typed-secret-1" not in result.output
    staff = db.session.scalar(sa.select(Staff).filter_by(username="u.asked"))
    assert check_password_hash(staff.password_hash, "typed-secret-1")


def test_staff_create_with_no_password_typed_creates_nothing(runner):
    result = runner.invoke(args=["staff", "create", "--username", "u.nopw", "--role", "admin"], input="")
    db.session.rollback()
    assert result.exit_code != 0
    assert "Aborted" in result.output
    assert count(Staff, username="u.nopw") == 0


def test_seed_never_loads_the_demo_data_in_production(runner, app, monkeypatch):
    _wipe()
    monkeypatch.setitem(app.config, "APP_ENV", "production")
    result = _invoke(runner, "seed", "--demo")
    assert result.exit_code != 0
    assert "demo data is never loaded in production" in result.output
    assert "flask staff create --role admin" in result.output
    assert _counts(DEMO) == {"stores": 0, "collection_points": 0, "devices": 0, "staff": 0, "residents": 0}
    assert _counts(REFERENCE)["communities"] == 0  # refused before anything, not half done
    assert _invoke(runner, "seed").exit_code == 0  # the reference data is production's
    assert _counts(REFERENCE)["communities"] > 0


# --- staff unlock ---------------------------------------------------------------------------------------


def test_staff_unlock_says_it_cannot_reach_limits_counted_in_a_servers_memory(runner):
    result = _invoke(runner, "staff", "unlock", "someone")
    assert result.exit_code != 0
    assert "this shell has no REDIS_URL: load the server's environment first" in result.output
    assert "restarting the server forgets them" in result.output


@pytest.fixture
def limits_in_redis(app, db_session):
    """An app whose login limits count in this machine's Redis (database 15), and a username no other run uses (the
    Limiter keeps the key prefix of the first app it served)."""
    import redis

    from app import create_app
    from app.extensions import limiter

    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    db_session.commit()
    username = f"locked.{uuid.uuid4().hex[:12]}"
    was = limiter.enabled
    limited = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": url,
            "REDIS_URL": url,
        }
    )
    yield limited, username
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"*login-user:{username}/*"):
        client.delete(key)
    limiter.enabled = was
    with limited.app_context():
        db.session.remove()
        db.engine.dispose()


def test_staff_unlock_lets_a_locked_username_log_in_again_at_once(limits_in_redis, caplog):
    from tests.conftest import FAST_HASH

    limited, username = limits_in_redis
    with limited.app_context():
        password_hash = generate_password_hash("right-password", method=FAST_HASH)
        db.session.add(Staff(username=username, password_hash=password_hash, role="admin"))
        db.session.commit()
    client = limited.test_client()

    def login(password: str) -> int:
        return client.post("/api/v1/auth/login", json={"username": username, "password": password}).status_code

    assert [login("wrong-password") for _ in range(5)] == [401] * 5
    assert login("right-password") == 429
    refused = [r.getMessage() for r in caplog.records if r.name == "app.auth"]
    assert len(refused) == 1
    assert f"login-user:{username}/" in refused[0]  # the operator sees whose login is locked
    runner = limited.test_cli_runner()
    with limited.app_context():  # the command's app, not the session app the fixtures pushed
        result = runner.invoke(args=["staff", "unlock", username.upper()])  # one username whatever its case
        assert result.exit_code == 0, result.output
        assert f"unlocked {username.upper()}" in result.output
        assert login("right-password") == 200
        again = runner.invoke(args=["staff", "unlock", username])
    assert f"{username} was not locked" in again.output


# --- scheduled pruning -----------------------------------------------------------------------------------------


def test_idempotency_prune_forgets_only_answers_past_their_keeping(runner, app, clock):
    keep = app.config["IDEMPOTENCY_KEEP_DAYS"]
    for key, age in (
        ("old", timedelta(days=keep, seconds=1)),
        ("at the cutoff", timedelta(days=keep)),
        ("just inside", timedelta(days=keep, seconds=-1)),
        ("new", timedelta()),
    ):
        db.session.add(IdempotencyKey(scope="resident:1", key=key, request_hash="0" * 64, status_code=201,
                                      response_body={}, created_at=clock.now - age))  # fmt: skip
    db.session.commit()
    first = _invoke(runner, "idempotency", "prune")
    assert first.exit_code == 0, first.output
    assert "pruned 1 idempotency keys" in first.output
    assert sorted(db.session.scalars(sa.select(IdempotencyKey.key))) == ["at the cutoff", "just inside", "new"]
    assert "pruned 0 idempotency keys" in _invoke(runner, "idempotency", "prune").output


def test_device_signature_prune_forgets_only_signatures_past_the_replay_window(runner, app, clock):
    assert _invoke(runner, "seed", "--demo").exit_code == 0
    device_id = db.session.scalar(sa.select(Device.id))
    window = timedelta(seconds=2 * app.config["DEVICE_CLOCK_SKEW_SECONDS"] + 1)
    for signature, age in (("a" * 64, window + timedelta(seconds=1)), ("b" * 64, window - timedelta(seconds=1))):
        db.session.add(DeviceSignature(signature=signature, device_id=device_id, seen_at=clock.now - age))
    db.session.commit()
    result = _invoke(runner, "devices", "prune-signatures")
    assert result.exit_code == 0, result.output
    assert "pruned 1 signatures" in result.output
    assert list(db.session.scalars(sa.select(DeviceSignature.signature))) == ["b" * 64]


def test_sessions_prune_forgets_only_revocations_past_their_sessions_lifetime(runner, clock):
    from app.auth.models import RevokedSession

    db.session.add_all([
        RevokedSession(sid="expired-session", expires_at=clock.now - timedelta(seconds=1)),
        RevokedSession(sid="live-session", expires_at=clock.now + timedelta(seconds=1)),
    ])  # fmt: skip
    db.session.commit()
    result = _invoke(runner, "sessions", "prune")
    assert result.exit_code == 0, result.output
    assert "pruned 1 revoked sessions" in result.output
    assert list(db.session.scalars(sa.select(RevokedSession.sid))) == ["live-session"]
