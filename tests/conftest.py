from __future__ import annotations

import fcntl
import itertools
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import flask_migrate
import pytest
import sqlalchemy as sa
from hypothesis import settings
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from werkzeug.exceptions import HTTPException

from app import clock as app_clock
from app import create_app
from app.carbon import service as carbon
from app.config import database_url
from app.db import db
from app.seeding import seed_reference
from app.sorting.service import clear_point_cache

SHANGHAI = ZoneInfo("Asia/Shanghai")
ROOT = Path(__file__).resolve().parents[1]  # the repository
# The app reads its settings from the environment: a shell that loaded a server's settings (REDIS_URL, TIMEZONE…)
# would configure the suite too. Only DATABASE_URL chooses the suite's database.
for _name in set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', (ROOT / "app" / "config.py").read_text())) - {"DATABASE_URL"}:
    os.environ.pop(_name, None)
# CI draws the same examples every run and keeps none: a red CI names a change, not a lucky draw. Locally, examples
# are random and a failing one is kept (.hypothesis/) and printed to be pinned with @example.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")
PG = bool(os.environ.get("DATABASE_URL"))
# Races are only meaningful on PostgreSQL.
PG_CONCURRENCY = [pytest.mark.skipif(not PG, reason="concurrency is tested against PostgreSQL")]
RACE_LOCK = Path(tempfile.gettempdir()) / "tanpuhui-test-races.lock"


def count(model, **where) -> int:
    """Rows of `model` (that match `where`), read by the test's session."""
    from app.db import db

    return db.session.scalar(sa.select(sa.func.count()).select_from(model).filter_by(**where))


def pg_concurrency(test):
    for mark in PG_CONCURRENCY:
        test = mark(test)
    return test


def race(app, request, times: int):
    """Call `request(test_client, index)` from `times` threads released together; the responses, in order.

    One race at a time across xdist workers (a file lock), so two races never need more connections
    than PostgreSQL's default max_connections allows."""
    barrier = threading.Barrier(times)

    def run(index):
        client = app.test_client()
        barrier.wait()
        return request(client, index)

    with RACE_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with ThreadPoolExecutor(max_workers=times) as pool:
            return list(pool.map(run, range(times)))


def during_an_uncommitted(app, change: sa.Executable | list[sa.Executable], request):
    """Send `request()` while another connection holds `change` (an UPDATE, or several statements), uncommitted;
    check the request waits on that row lock, commit the change, and answer the request's response."""
    changer = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.NullPool)
    with changer.connect() as conn:
        for statement in change if isinstance(change, list) else [change]:
            conn.execute(statement)
        answer: dict = {}
        thread = threading.Thread(target=lambda: answer.update(response=request()))
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # waiting on the change's row lock
        conn.commit()
    thread.join(timeout=10)
    changer.dispose()
    return answer["response"]


def during_an_uncommitted_freeze(app, resident_id: int, request):
    from app.people.models import Resident

    return during_an_uncommitted(
        app, sa.update(Resident).where(Resident.id == resident_id).values(status="frozen"), request
    )


@contextmanager
def running_server(
    command: list[str], *, cwd: Path, env: dict[str, str], output: Path, healthy: Callable[[], bool], within_s: float
) -> Iterator[subprocess.Popen]:
    """A server process (gunicorn, `make run`) in its own process group, once `healthy()` answers; stopped with its
    children afterwards. Its output goes to `output`, which a failure to start quotes."""
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + within_s
        while not _answers(healthy):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{' '.join(command)} did not serve: {output.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _answers(healthy: Callable[[], bool]) -> bool:
    try:
        return healthy()
    except OSError:  # not listening yet
        return False


def _worker_database(tmp_path_factory, worker: str) -> str:
    raw = os.environ.get("DATABASE_URL")
    if not raw:
        return f"sqlite:///{tmp_path_factory.getbasetemp() / f'test-{worker}.db'}"
    url = sa.engine.make_url(database_url(raw))
    name = f"{url.database}_{worker}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_uri(tmp_path_factory, worker_id) -> str:
    return _worker_database(tmp_path_factory, worker_id)


@pytest.fixture(scope="session")
def app(database_uri):
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_uri,
            "RATELIMIT_ENABLED": False,
            # Few idle connections between tests and room for one 50-thread race at a time (see race()):
            # the suite stays well under PostgreSQL's default max_connections of 100.
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 5, "max_overflow": 55} if PG else {},
        }
    )
    with app.app_context():
        db.create_all()
        flask_migrate.stamp()  # the schema create_all gave is head's (test_migrations checks), as /readyz asks
    yield app
    with app.app_context():
        db.engine.dispose()


def without_append_only_guard(*statements: str, params: dict | None = None) -> None:
    """Run statements the database refuses on ledger_entries (as someone with raw DB access would), then commit."""
    from app.ledger.models import APPEND_ONLY_TRIGGERS, DROP_APPEND_ONLY_TRIGGERS

    dialect = db.engine.dialect.name
    if dialect == "postgresql":
        db.session.execute(sa.text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            db.session.execute(sa.text(statement), params or {})
    else:
        for statement in (*DROP_APPEND_ONLY_TRIGGERS[dialect], *statements, *APPEND_ONLY_TRIGGERS[dialect]):
            db.session.execute(sa.text(statement), params if statement in statements else {})
    db.session.commit()


def _restart_sequences() -> str:
    """One PostgreSQL statement that makes every id sequence give its table's next id after the highest (1 if empty),
    as RESTART IDENTITY did after TRUNCATE."""
    serial = [t.name for t in db.metadata.sorted_tables if t.autoincrement_column is not None]
    next_id = "setval(pg_get_serial_sequence('{t}', 'id'), coalesce((SELECT max(id) FROM {t}), 0) + 1, false)"
    return "SELECT " + ", ".join(next_id.format(t=t) for t in serial)


def _wipe() -> None:
    tables = [t.name for t in reversed(db.metadata.sorted_tables)]
    if db.engine.dialect.name == "postgresql":
        # One round trip. DELETE, with the append-only triggers and the foreign keys' checks off, is several times
        # quicker than TRUNCATE, which gives every table and index new files. Sequences start again at 1.
        statements = [
            "SET LOCAL session_replication_role = replica",
            *(f"DELETE FROM {name}" for name in tables),
            _restart_sequences(),
        ]
        db.session.connection().connection.driver_connection.execute(";".join(statements))  # psycopg: no params
        db.session.commit()
    else:
        without_append_only_guard(*(f"DELETE FROM {name}" for name in tables))


_REFERENCE: dict[str, dict[str, list[dict]]] = {}  # database URI -> table -> the rows seed_reference() writes


def _reseed_reference() -> None:
    """The rows `seed_reference()` writes into a wiped database: seeded once per database, then copied back in a few
    statements (the seeding itself looks up every row first, a round trip each)."""
    uri = db.engine.url.render_as_string(hide_password=False)
    if uri not in _REFERENCE:
        seed_reference()
        _REFERENCE[uri] = {
            t.name: rows
            for t in db.metadata.sorted_tables
            if (rows := [dict(row) for row in db.session.execute(sa.select(t)).mappings()])
        }
        return
    reference = _REFERENCE[uri]
    for table in db.metadata.sorted_tables:  # parents first
        if table.name in reference:
            db.session.execute(sa.insert(table), reference[table.name])
    if db.engine.dialect.name == "postgresql":
        db.session.execute(sa.text(_restart_sequences()))
    db.session.commit()


FAST_HASH = "pbkdf2:sha256:1000"


@pytest.fixture(autouse=True)
def limits_as_they_were():
    """The Limiter is one module-level object, and every create_app() sets its on/off switch from that app's config
    (on, unless RATELIMIT_ENABLED says otherwise). A test that makes an app of its own must not leave the limits on
    for the tests after it in the same worker."""
    from app.extensions import limiter

    was = limiter.enabled
    yield
    limiter.enabled = was


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    """Cheap staff password hashes keep the suite quick; checking still goes through werkzeug's verifier."""
    from werkzeug.security import generate_password_hash

    from app.auth import service as auth_service
    from app.people import service as people_service

    monkeypatch.setattr(
        people_service, "generate_password_hash", lambda password: generate_password_hash(password, method=FAST_HASH)
    )
    monkeypatch.setattr(auth_service, "_DUMMY_HASH", generate_password_hash("not-a-real-password", method=FAST_HASH))


class Ticking:
    """A clock a millisecond later at every read (from any thread), as a real one is between reads."""

    def __init__(self, start: datetime) -> None:
        self.start, self.reads = start, itertools.count()

    def __call__(self) -> datetime:
        return self.start + timedelta(milliseconds=next(self.reads))


@pytest.fixture(autouse=True)
def clock():
    frozen = app_clock.FrozenClock(datetime(2026, 6, 15, 10, 0, tzinfo=SHANGHAI))
    app_clock.set_clock(frozen)
    yield frozen
    app_clock.set_clock(None)


@pytest.fixture
def db_session(app):
    with app.app_context():
        _wipe()
        carbon.clear_cache()
        clear_point_cache()
        _reseed_reference()
        yield db.session
        db.session.remove()


@dataclass
class Caller:
    """A logged-in caller of the API in tests."""

    token: str
    id: int
    refresh: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


_documents: dict[int, tuple[OpenAPI, dict]] = {}


def _document(app) -> tuple[OpenAPI, dict]:
    if id(app) not in _documents:
        spec = app.test_client().get("/api/v1/openapi.json").get_json()
        _documents[id(app)] = OpenAPI.from_dict(spec), spec
    return _documents[id(app)]


def _operation(app, spec: dict, method: str, path: str) -> dict | None:
    """The documented operation of the route Flask chose for this request; None where routing chose none."""
    try:
        rule, _ = app.url_map.bind("localhost").match(path, method=method.upper(), return_rule=True)
    except HTTPException:  # not found, or a method the path does not serve
        return None
    template = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
    return spec["paths"].get(template, {}).get(method)


def documented_codes(response_doc: dict) -> set[str]:
    """The error codes an OpenAPI response lists, as app.apidoc writes them: its description, comma-separated."""
    return {code.strip() for code in response_doc["description"].split(",")}


def assert_documented(app, response) -> None:
    """The answer is one the OpenAPI document describes for its operation: a status the operation declares (not
    only its `default`), an error's code among those that status lists, and a body of that status's schema
    (required fields present, types, nulls, enums; no undeclared field where the schema forbids them). A request
    for an operation the document does not have (an unknown path, a method not served) is not checked."""
    document, spec = _document(app)
    method, path = response.request.method.lower(), response.request.path
    operation = _operation(app, spec, method, path)
    if operation is None:
        return
    declared = operation["responses"].get(str(response.status_code))
    assert declared is not None, (method, path, response.status_code, "status not declared")
    if response.status_code >= 400 and response.mimetype == "application/json":
        code, listed = response.get_json()["error"]["code"], documented_codes(declared)
        assert code in listed, (method, path, response.status_code, code, "code not listed", listed)
    request = MockRequest("http://localhost", method, path)
    answer = MockResponse(response.get_data(), response.status_code, headers=dict(response.headers),
                          content_type=response.mimetype)  # fmt: skip
    errors = [f"{e!r}: {[m.message for m in getattr(e.__cause__, 'schema_errors', ())]}"
              for e in document.iter_response_errors(request, answer)]  # fmt: skip
    assert not errors, (response.request.method, response.request.path, response.status_code, errors,
                        response.get_data(as_text=True)[:500])  # fmt: skip


class ApiClient:
    def __init__(self, client):
        self.client = client

    def request(self, method: str, path: str, *, as_: Caller | None = None, headers=None, **kwargs):
        headers = dict(headers or {})
        if as_ is not None:
            headers.update(as_.auth)
        url = path
        if not url.startswith(("/api", "/healthz", "/readyz", "/q/", "/admin")):
            url = "/api/v1" + url
        response = self.client.open(url, method=method, headers=headers, **kwargs)
        if not url.startswith(("/admin", "/api/v1/openapi.json", "/api/v1/docs")):
            assert_documented(self.client.application, response)
        return response

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def resident(self, openid: str | None = None, community_code: str | None = None) -> Caller:
        openid = openid or f"o-{uuid.uuid4().hex[:12]}"
        response = self.post("/auth/wechat", json={"code": f"stub:{openid}"})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        caller = Caller(body["access_token"], body["resident"]["id"], body["refresh_token"])
        if community_code:
            from app.people.models import Community

            community = db.session.scalar(sa.select(Community).filter_by(code=community_code))
            assert self.patch("/me", as_=caller, json={"community_id": community.id}).status_code == 200
        return caller

    def member_code(self, resident: Caller) -> str:
        response = self.get("/me/member-code", as_=resident)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["token"]

    def staff(self, role: str, **scope) -> Caller:
        from app.auth.guards import Actor
        from app.people import service

        username = f"{role}-{uuid.uuid4().hex[:8]}"
        data = {"username": username, "password": "password-123", "role": role, **scope}
        data.setdefault("store_ids", [])
        data.setdefault("collection_point_ids", [])
        staff = service.create_staff(Actor(kind="system", id=0, role="admin"), data)
        response = self.post("/auth/login", json={"username": username, "password": "password-123"})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        return Caller(body["access_token"], staff.id, body["refresh_token"])


@pytest.fixture
def api(app, db_session):
    return ApiClient(app.test_client())


def community_id(code: str) -> int:
    from app.people.models import Community

    return db.session.scalar(sa.select(Community.id).filter_by(code=code))


def make_point(api, caller, name: str, community: str = "hengkang", kind: str = "station", **extra) -> int:
    """A collection point created over the API by `caller`; its id."""
    body = {"name": name, "community_id": community_id(community), "kind": kind, **extra}
    response = api.post("/collection-points", as_=caller, json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def assert_error(response, status: int, code: str) -> dict:
    body = response.get_json()
    assert response.status_code == status, (response.status_code, body)
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    error = dict(body["error"])
    # Which request it was, to quote to support: the same as the header (a replayed refusal keeps its first one).
    request_id = error.pop("request_id")
    assert request_id == response.headers["X-Request-Id"] or response.headers.get("Idempotent-Replayed") == "true"
    return error
