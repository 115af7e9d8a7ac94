"""Where a scan and a deposit spend their time: single process, Flask test client, same config as the server.

    .venv/bin/python -m bench.profile_http                  # SQL per request, phase timings, cProfile top
    .venv/bin/python -m bench.profile_http --requests 500 --sort cumulative --top 40

Prepares its own small database (`bench_profile`, dropped and recreated) the way bench.http_scans does, builds the
app exactly as wsgi.py does (create_app() with DATABASE_URL in the environment, so the engine options are the
server's), then for each endpoint: lists the SQL statements one request issues, times N requests through the
test client, and profiles them with cProfile. Also times the bare /healthz through the same client for scale.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import sys
import time
from collections import Counter
from datetime import timedelta
from functools import partial

import sqlalchemy as sa

from bench.common import default_url, normalise_url
from bench.http_scans import DEPOSIT_ITEMS, TOKEN_HOURS, prepare


def _mint(identity: str, role: str) -> str:
    import uuid

    from flask_jwt_extended import create_access_token

    return create_access_token(
        identity, additional_claims={"sid": str(uuid.uuid4()), "role": role}, expires_delta=timedelta(hours=TOKEN_HOURS)
    )


class SqlCounter:
    """Statements and their time in the driver: SQLAlchemy's cursor events, and the prebuilt statements that
    `app.db.run` sends straight to psycopg, which those events do not see."""

    def __init__(self, engine):
        from app.db import _Direct

        self.statements: list[tuple[str, float]] = []
        self.active = False
        self._started: float | None = None
        sa.event.listen(engine, "before_cursor_execute", self.before)
        sa.event.listen(engine, "after_cursor_execute", self.after)
        direct_execute, counter = _Direct.execute, self

        def execute(direct, conn, params):
            started = time.perf_counter()
            try:
                return direct_execute(direct, conn, params)
            finally:
                if counter.active:
                    counter.statements.append((direct.sql, time.perf_counter() - started))

        _Direct.execute = execute

    def before(self, conn, cursor, statement, parameters, context, executemany):
        self._started = time.perf_counter()

    def after(self, conn, cursor, statement, parameters, context, executemany):
        if self.active:
            self.statements.append((statement, time.perf_counter() - (self._started or time.perf_counter())))


class RoundTrips:
    """Every wait on the server's answer: statements, and also BEGIN, COMMIT, the pool's pre-ping SELECT 1,
    ROLLBACK... which the SQLAlchemy cursor events do not see. Counted by psycopg generator name."""

    def __init__(self):
        import psycopg

        self.counts: Counter = Counter()
        self.active = False
        original = psycopg.Connection.wait
        tracker = self

        def wait(conn, gen, *args, **kwargs):
            if tracker.active:
                tracker.counts[getattr(gen, "__qualname__", type(gen).__name__)] += 1
            return original(conn, gen, *args, **kwargs)

        psycopg.Connection.wait = wait


class Sampler:
    """A statistical profiler on SIGPROF (process CPU time): cheap enough not to distort the picture the way
    cProfile does. Counts, per function, the samples where it is on the stack (inclusive) or on top (self)."""

    def __init__(self, interval_s: float = 0.0002):
        self.interval = interval_s
        self.samples = 0
        self.inclusive: Counter = Counter()
        self.own: Counter = Counter()

    def _on_sample(self, signum, frame) -> None:
        self.samples += 1
        seen = set()
        first = True
        depth = 0
        while frame is not None and depth < 400:
            code = frame.f_code
            key = (code.co_filename, code.co_firstlineno, code.co_name)
            if first:
                self.own[key] += 1
                first = False
            if key not in seen:
                seen.add(key)
                self.inclusive[key] += 1
            frame = frame.f_back
            depth += 1

    def __enter__(self):
        import signal

        self._previous = signal.signal(signal.SIGPROF, self._on_sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def __exit__(self, *exc):
        import signal

        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._previous)


# (label, file fragment, function name): inclusive CPU share of each step of a request.
STEPS = (
    ("whole WSGI request (test client)", "flask/app.py", "wsgi_app"),
    ("  pool checkout incl. pre-ping", "sqlalchemy/pool/base.py", "_checkout"),
    ("  JWT decode+verify (flask_jwt_extended)", "flask_jwt_extended/view_decorators.py", "verify_jwt_in_request"),
    ("  load_actor (resident/staff + revoked)", "app/auth/guards.py", "load_actor"),
    ("  body parsing+validation (webargs)", "webargs/core.py", "parse"),
    ("  scan() use case", "app/sorting/service.py", "scan"),
    ("  _record_deposit() use case", "app/sorting/service.py", "_record_deposit"),
    ("    _point_from_poster", "app/sorting/service.py", "_point_from_poster"),
    ("    _shown_member_code", "app/sorting/service.py", "_shown_member_code"),
    ("    carbon.require_rule", "app/carbon/service.py", "require_rule"),
    ("    carbon.cap_charges", "app/carbon/service.py", "cap_charges"),
    ("    ORM flush (checkin/deposit insert)", "sqlalchemy/orm/session.py", "flush"),
    ("    ledger.post", "app/ledger/service.py", "post"),
    ("      _lock_account", "app/ledger/service.py", "_lock_account"),
    ("      _charge_caps", "app/ledger/service.py", "_charge_caps"),
    ("      _upsert (caps + point lots)", "app/ledger/service.py", "_upsert"),
    ("      link/canonical (hash)", "app/ledger/chain.py", "link"),
    ("    commit", "sqlalchemy/orm/session.py", "commit"),
    ("  response: marshmallow dump", "marshmallow/schema.py", "dump"),
    ("  response: JSON encoding", "flask/json/provider.py", "response"),
    ("  teardown (session.remove)", "sqlalchemy/orm/scoping.py", "remove"),
    ("SQLAlchemy statement compile/cache key", "sqlalchemy/sql/cache_key.py", "_generate_cache_key"),
    ("SQLAlchemy Connection.execute (all)", "sqlalchemy/engine/base.py", "_execute_context"),
    ("psycopg cursor.execute (all)", "psycopg/cursor.py", "execute"),
)


def _report_sampler(sampler: Sampler, cpu_s: float, requests: int) -> None:
    if not sampler.samples:
        return
    per_sample = cpu_s / sampler.samples
    print(
        f"  sampled CPU profile: {sampler.samples} samples, {cpu_s / requests * 1000:.2f} ms CPU/request; "
        f"inclusive ms/request (share):"
    )
    for label, fragment, name in STEPS:
        hits = sum(c for (f, _l, fn), c in sampler.inclusive.items() if fn == name and fragment in f)
        if hits:
            print(f"     {hits * per_sample / requests * 1000:6.2f}  ({hits / sampler.samples:5.1%})  {label}")
    areas: Counter = Counter()
    for (filename, _line, _func), count in sampler.own.items():
        areas[_area(filename, "other (stdlib, C code called from it)")] += count
    print("  own (self) CPU by area, ms/request:")
    for area, count in areas.most_common():
        print(f"     {count * per_sample / requests * 1000:6.2f}  ({count / sampler.samples:5.1%})  {area}")


def _short(statement: str) -> str:
    text = re.sub(r"\s+", " ", statement).strip()
    text = re.sub(r"SELECT .{80,}? FROM", lambda m: m[0][:60] + " … FROM", text)
    return text[:150]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_http", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=None, help="default: bench_profile on 127.0.0.1:5432")
    parser.add_argument("--requests", type=int, default=300, help="requests per endpoint, default 300")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"))
    parser.add_argument("--endpoints", default="scans,deposits")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="only time: R interleaved rounds of /healthz and each endpoint, CPU per request, best of the rounds "
        "(a steadier figure on a noisy machine than one long run); no SQL listing and no profiles",
    )
    parser.add_argument(
        "--timer",
        default="cpu",
        choices=("cpu", "wall"),
        help="cProfile clock: process CPU time (default; waiting on PostgreSQL is excluded) or wall",
    )
    args = parser.parse_args(argv)

    url = normalise_url(args.database_url or default_url("bench_profile"))
    # scans use 3N + 11 (resident, point) pairs, two per resident; --rounds uses N per round
    residents = max(2 * args.requests + 20, args.rounds * args.requests + 50, 100)
    _bench_app, prepared = prepare(url, residents, 20, 5, log=print)

    # The server's app: wsgi.py calls create_app() with DATABASE_URL set, which also picks the engine options.
    os.environ["DATABASE_URL"] = url
    os.environ["RATELIMIT_ENABLED"] = "false"
    for key, value in prepared.secrets.items():
        os.environ[key] = value
    from app import create_app, qr
    from app.clock import utcnow
    from app.db import db

    app = create_app()
    print(f"  engine options: {app.config['SQLALCHEMY_ENGINE_OPTIONS']}")
    client = app.test_client()
    with app.app_context():
        counter = SqlCounter(db.engine)
        trips = RoundTrips()
        resident_tokens = {rid: _mint(f"resident:{rid}", "resident") for rid in prepared.resident_ids}
        collector_tokens = {cid: _mint(f"staff:{cid}", "collector") for cid, _ in prepared.collectors}

    def scan_request(i: int):
        rid = prepared.resident_ids[i // 2]
        return "/api/v1/scans", resident_tokens[rid], {"token": prepared.poster_urls[i % len(prepared.poster_urls)]}

    member_key = qr.derive_key(prepared.secrets["QR_SECRET"], "member")

    def deposit_request(i: int):
        rid = prepared.resident_ids[i % len(prepared.resident_ids)]
        code, _ = qr.member_code(rid, member_key, utcnow(), ttl_s=600)
        collector, point = prepared.collectors[i % len(prepared.collectors)]
        return (
            "/api/v1/deposits",
            collector_tokens[collector],
            {"member_code": code, "collection_point_id": point, "items": DEPOSIT_ITEMS},
        )

    # Scale: the bare endpoint through the same client.
    for _ in range(50):
        client.get("/healthz")
    started, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(args.requests):
        client.get("/healthz")
    bare, bare_cpu = (time.perf_counter() - started) / args.requests, (time.process_time() - cpu0) / args.requests
    print(f"\n  GET /healthz via test client: {bare * 1000:.3f} ms/request wall, {bare_cpu * 1000:.3f} ms CPU")

    builders = {"scans": scan_request, "deposits": deposit_request}
    offsets = {"scans": 0, "deposits": 0}
    if args.rounds:
        return _rounds(client, builders, args)
    for name in [e.strip() for e in args.endpoints.split(",") if e.strip()]:
        build = builders[name]

        def call(i: int, build=build) -> int:
            path, token, body = build(i)
            response = client.post(
                path,
                data=json.dumps(body),
                content_type="application/json",
                headers={"Authorization": f"Bearer {token}"},
            )
            return response.status_code

        base = offsets[name]
        # Warm up (first request loads the rules cache, compiles statements...), then one request's SQL.
        for i in range(base, base + 10):
            call(i)
        counter.statements.clear()
        trips.counts.clear()
        counter.active = trips.active = True
        status = call(base + 10)
        counter.active = trips.active = False
        one = list(counter.statements)
        print(
            f"\n== POST /api/v1/{name}: {len(one)} SQL statements in one request (status {status}); "
            f"{sum(t for _, t in one) * 1000:.2f} ms inside the driver"
        )
        for statement, seconds in one:
            print(f"     {seconds * 1000:6.2f} ms  {_short(statement)}")
        print(
            f"     round trips to PostgreSQL: {sum(trips.counts.values())} "
            f"({', '.join(f'{k.rsplit(chr(46), 1)[-1]}: {v}' for k, v in trips.counts.most_common())})"
        )

        start = base + 11
        statuses: Counter = Counter()
        counter.statements.clear()
        counter.active = True
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(start, start + args.requests):
            statuses[call(i)] += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        counter.active = False
        sql_s = sum(t for _, t in counter.statements)
        print(
            f"  {args.requests} requests: {wall / args.requests * 1000:.2f} ms/request wall, "
            f"{cpu / args.requests * 1000:.2f} ms/request CPU in this process, "
            f"{len(counter.statements) / args.requests:.1f} statements/request, "
            f"{sql_s / args.requests * 1000:.2f} ms/request in the driver (round trips), statuses {dict(statuses)}"
        )

        start += args.requests
        sampler = Sampler()
        cpu0 = time.process_time()
        with sampler:
            for i in range(start, start + args.requests):
                call(i)
        _report_sampler(sampler, time.process_time() - cpu0, args.requests)

        start += args.requests
        profiler = cProfile.Profile(time.process_time) if args.timer == "cpu" else cProfile.Profile()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        profiler.enable()
        for i in range(start, start + args.requests):
            call(i)
        profiler.disable()
        prof_wall = time.perf_counter() - t0
        prof_cpu = time.process_time() - cpu0
        offsets[name] = start + args.requests
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(args.sort).print_stats(args.top)
        wall_ms, cpu_ms = prof_wall / args.requests * 1000, prof_cpu / args.requests * 1000
        print(f"  cProfile, {args.timer} clock, {args.requests} requests, sorted by {args.sort}")
        print(f"  (under the profiler: {wall_ms:.2f} ms wall and {cpu_ms:.2f} ms CPU per request)")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:12000])
        _by_area(stats, args.requests)
    return 0


def _rounds(client, builders, args) -> int:
    """Best CPU per request over interleaved rounds, and each endpoint's multiple of /healthz."""
    names = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    served = dict.fromkeys(names, 0)

    def post(name: str) -> int:
        path, token, body = builders[name](served[name])
        served[name] += 1
        headers = {"Authorization": f"Bearer {token}"}
        return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers).status_code

    calls = {"healthz": lambda: client.get("/healthz").status_code} | {name: partial(post, name) for name in names}
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(10):
        for call in calls.values():
            call()
    for _ in range(args.rounds):
        for name, call in calls.items():
            count = args.requests if name != "healthz" else 5 * args.requests
            cpu0 = time.process_time()
            statuses = Counter(call() for _ in range(count))
            best[name] = min(best[name], (time.process_time() - cpu0) / count)
            if set(statuses) - {200, 201}:
                raise SystemExit(f"{name}: unexpected statuses {dict(statuses)}")
    print(f"\n  CPU per request, best of {args.rounds} rounds of {args.requests} (/healthz: 5x as many):")
    for name, seconds in best.items():
        multiple = "" if name == "healthz" else f"  ({seconds / best['healthz']:.1f}x /healthz)"
        print(f"    {name:<10}{seconds * 1000:8.3f} ms{multiple}")
    return 0


AREAS = (
    ("werkzeug.security / hashlib.scrypt / pbkdf2", ("werkzeug/security", "_hashlib")),
    ("flask_jwt_extended + PyJWT", ("flask_jwt_extended", "/jwt/")),
    ("marshmallow / webargs / flask_smorest", ("marshmallow", "webargs", "flask_smorest", "apispec")),
    ("SQLAlchemy ORM", ("sqlalchemy/orm",)),
    ("SQLAlchemy engine/sql", ("sqlalchemy/engine", "sqlalchemy/sql", "sqlalchemy/pool", "sqlalchemy/dialects")),
    ("psycopg", ("psycopg",)),
    ("flask / werkzeug", ("flask/", "werkzeug/")),
    ("app code", ("/work/main/app/",)),
    ("logging", ("logging/",)),
)


def _area(filename: str, other: str) -> str:
    """The library a source file belongs to (AREAS), or `other`."""
    for area, needles in AREAS:
        if any(needle in filename for needle in needles):
            return area
    return other


def _by_area(stats: pstats.Stats, requests: int) -> None:
    """Own time (tottime) grouped by library, per request."""
    totals: Counter = Counter()
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        totals[_area(filename, "other (stdlib, builtins)")] += tottime
    print("  own time by area, ms/request (under the profiler, so inflated):")
    for area, seconds in totals.most_common():
        print(f"     {seconds / requests * 1000:7.3f}  {area}")


if __name__ == "__main__":
    sys.exit(main())
