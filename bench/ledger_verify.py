"""Ledger verification throughput: `flask ledger verify` against a bare streamed SELECT of the same rows.

    .venv/bin/python -m bench.ledger_verify                 # 2,000 residents, 100,000 entries, PostgreSQL
    .venv/bin/python -m bench.ledger_verify --entries 20000 --database-url sqlite:////tmp/bench_ledger.db

Steps: a fresh database (`bench_ledger`, dropped and recreated), the schema (migrations by default), reference
data, N residents with accounts (people.service.resident_for_openid), then E entries posted one by one through
ledger.service.post (mixed earns, spends and adjustments, committed every --batch entries). Then, in the same
session and connection, the bare `SELECT <verify's columns> FROM ledger_entries ORDER BY account_id, seq`
(streamed the same way, no hashing) and app.ledger.verify.verify_ledger(), alternated --repeat times, best of
each; finally the CLI `flask --app wsgi ledger verify` as a subprocess, whose own figure is parsed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import time
import uuid
from typing import Any

import sqlalchemy as sa

from bench.common import (
    ROOT,
    VENV_BIN,
    create_schema,
    default_url,
    make_app,
    make_parser,
    n,
    normalise_url,
    pg_version,
    recreate_database,
    run_and_save,
    run_cli,
)

TARGET_PER_S = 100_000
CLI_LINE = re.compile(r"checked (\d+) entries in (\d+) accounts in ([0-9.]+)s \(([0-9,]+)/s\)")

EARN_KINDS = (
    # (source, activity rule, ref_type, actor_type, memo, points range, co2e per point)
    ("checkin", "checkin:sorting", "checkin", "resident", "恒康社区3号楼定时定点投放点 分类打卡", (5, 5), 0),
    ("sorting", "sorting:paper", "deposit", "staff", "恒康社区惠民回收服务点 回收投递", (3, 60), 100),
    ("sorting", "sorting:plastic", "deposit", "device", "鑫海湾智能回收箱 回收投递", (1, 40), 100),
    ("event", "event:checkin", "event", "resident", None, (20, 20), 0),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ledger verify")
    group.add_argument(
        "--database-url",
        dest="ledger_url",
        default=None,
        help="target database, dropped and recreated (default: bench_ledger on 127.0.0.1:5432; "
        "sqlite:////path works too)",
    )
    group.add_argument("--residents", type=int, default=2000, help="residents (accounts), default 2,000")
    group.add_argument("--entries", type=int, default=100_000, help="ledger entries to post, default 100,000")
    group.add_argument("--batch", type=int, default=500, help="entries per commit while posting, default 500")
    group.add_argument("--repeat", type=int, default=3, help="alternate baseline/verify this many times, best kept")
    group.add_argument("--schema", choices=("migrate", "create_all"), default="migrate")
    group.add_argument("--seed", type=int, default=20251125, help="random seed for the entry mix")
    group.add_argument("--profile", action="store_true", help="also run verify_ledger() once under cProfile")
    group.add_argument("--skip-cli", action="store_true", help="do not time the `flask ledger verify` subprocess")


# Preparation


def _create_residents(count: int, batch: int) -> list[int]:
    from app.db import db
    from app.people.service import resident_for_openid

    ids = []
    for i in range(count):
        ids.append(resident_for_openid(f"bench-ledger-{i:06d}", None).id)
        if (i + 1) % batch == 0:
            db.session.commit()
    db.session.commit()
    return ids


def _rules() -> dict[str, int]:
    from app.carbon.models import Rule
    from app.db import db

    return dict(db.session.execute(sa.select(Rule.activity, Rule.id)).all())


def _post_entries(resident_ids: list[int], total: int, batch: int, seed: int, log) -> dict[str, Any]:
    """Post `total` entries through ledger.service.post: about 60% earns, 25% spends, 15% adjustments
    (a third of them negative). A spend or a negative adjustment only when the balance allows it, so
    every posting succeeds; the mix actually posted is returned."""
    from app.db import db
    from app.ledger.service import post

    rng = random.Random(seed)
    rules = _rules()
    balances = dict.fromkeys(resident_ids, 0)
    mix = {"earn": 0, "spend": 0, "adjust+": 0, "adjust-": 0}
    started = time.perf_counter()
    for i in range(total):
        resident = rng.choice(resident_ids)
        roll = rng.random()
        balance = balances[resident]
        if roll < 0.25 and balance >= 10:
            delta = -rng.randint(5, min(balance, 300))
            post(
                resident,
                delta,
                kind="spend",
                source="exchange",
                ref_type="redemption",
                ref_id=i,
                actor_type="resident",
                actor_id=resident,
                memo="恒康社区绿色兑换超市 兑换",
            )
            mix["spend"] += 1
        elif roll < 0.40:
            negative = rng.random() < 1 / 3 and balance >= 2
            delta = -rng.randint(1, min(balance, 50)) if negative else rng.randint(1, 100)
            post(
                resident,
                delta,
                kind="adjust",
                source="admin",
                ref_type="adjustment",
                ref_id=uuid.uuid4().hex,
                actor_type="staff",
                actor_id=1,
                memo="补录线下活动积分" if delta > 0 else "更正重复记录",
            )
            mix["adjust-" if negative else "adjust+"] += 1
        else:
            source, activity, ref_type, actor_type, memo, (low, high), co2e_per_point = rng.choice(EARN_KINDS)
            delta = rng.randint(low, high)
            post(
                resident,
                delta,
                kind="earn",
                source=source,
                activity=activity,
                rule_id=rules.get(activity),
                co2e_g=delta * co2e_per_point,
                ref_type=ref_type,
                ref_id=i,
                actor_type=actor_type,
                actor_id=resident if actor_type == "resident" else 1,
                memo=memo,
            )
            mix["earn"] += 1
        balances[resident] = balance + delta
        if (i + 1) % batch == 0:
            db.session.commit()
        if (i + 1) % 20_000 == 0:
            elapsed = time.perf_counter() - started
            log(f"     posted {n(i + 1)} entries, {n((i + 1) / elapsed)}/s", flush=True)
    db.session.commit()
    seconds = time.perf_counter() - started
    return {"entries": total, "seconds": seconds, "per_s": total / seconds, "mix": mix}


# Measurement


def _baseline_select(chunk: int = 20000) -> tuple[int, float]:
    """verify_ledger's own statement (same text, same column typing, same yield_per), through the session's
    connection, with the rows only unpacked: what streaming costs without any checking."""
    from app.db import db
    from app.ledger.verify import ENTRY_COLUMNS

    connection = db.session.connection()
    started = time.perf_counter()
    statement = (
        sa.text(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY account_id, seq")
        .columns(created_at=db.metadata.tables["ledger_entries"].c.created_at.type)
        .execution_options(yield_per=chunk)
    )
    count = 0
    for row in connection.execute(statement):
        (
            _id,
            _account,
            _seq,
            _delta,
            _after,
            _kind,
            _source,
            _activity,
            _rule,
            _co2e,
            _ref_type,
            _ref_id,
            _actor_type,
            _actor_id,
            _reverses,
            _created_at,
            _memo,
            _hash,
            _reason_digest,
        ) = row
        count += 1
    return count, time.perf_counter() - started


def _driver_select() -> tuple[int, float]:
    """The same SELECT through the DBAPI cursor, no SQLAlchemy result processing: the floor."""
    from app.db import db
    from app.ledger.verify import ENTRY_COLUMNS

    connection = db.session.connection()
    started = time.perf_counter()
    cursor = connection.connection.dbapi_connection.cursor(
        **({"name": "bench_floor"} if connection.dialect.name == "postgresql" else {})
    )
    cursor.execute(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY account_id, seq")
    count = 0
    while rows := cursor.fetchmany(20000):
        count += len(rows)
    cursor.close()
    return count, time.perf_counter() - started


def _verify() -> tuple[Any, float]:
    from app.ledger.verify import verify_ledger

    started = time.perf_counter()
    report = verify_ledger()
    return report, time.perf_counter() - started


def _profile_verify(log, top: int = 18) -> str:
    import cProfile
    import io
    import pstats

    from app.ledger.verify import verify_ledger

    profiler = cProfile.Profile()
    profiler.enable()
    verify_ledger()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    log(text)
    return text


def _cli(url: str, timeout: float = 600) -> dict[str, Any]:
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", "ledger", "verify"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - started
    match = CLI_LINE.search(proc.stdout)
    result: dict[str, Any] = {"exit_code": proc.returncode, "wall_s": wall, "stdout": proc.stdout.strip()}
    if proc.returncode != 0 or match is None:
        result["stderr"] = proc.stderr.strip()[-2000:]
        return result
    entries, accounts, seconds = int(match[1]), int(match[2]), float(match[3])
    result |= {"entries": entries, "accounts": accounts, "seconds": seconds, "per_s": int(match[4].replace(",", ""))}
    return result


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    from app.db import db
    from app.seeding import seed_reference

    url = recreate_database(normalise_url(args.ledger_url or default_url("bench_ledger")))
    app = make_app(url)
    log(f"== ledger verify: {n(args.residents)} residents, {n(args.entries)} entries on {sa.engine.make_url(url)!r}")
    t0 = time.perf_counter()
    create_schema(app, args.schema)
    results: dict[str, Any] = {
        "database": pg_version(url),
        "url": str(sa.engine.make_url(url)),
        "residents": args.residents,
        "entries_requested": args.entries,
    }
    with app.app_context():
        seed_reference()
        resident_ids = _create_residents(args.residents, args.batch)
        log(f"     schema, reference data and {n(len(resident_ids))} residents: {time.perf_counter() - t0:.1f}s")
        posting = _post_entries(resident_ids, args.entries, args.batch, args.seed, log)
        results["posting"] = posting
        log(
            f"     posted {n(posting['entries'])} entries in {posting['seconds']:.1f}s "
            f"= {n(posting['per_s'])} entries/s via ledger.service.post ({posting['mix']})"
        )
        if not url.startswith("sqlite"):
            db.session.execute(sa.text("ANALYZE"))
            db.session.commit()
        db.session.remove()

        baselines, floors, verifies = [], [], []
        report = None
        for _ in range(max(1, args.repeat)):
            count, seconds = _baseline_select()
            baselines.append(seconds)
            floors.append(_driver_select()[1])
            report, seconds = _verify()
            verifies.append(seconds)
            db.session.rollback()
            if count != report.entries:
                raise SystemExit(f"baseline saw {count} rows, verify {report.entries}")
        if not report.ok:
            raise SystemExit(f"verify_ledger() failed: {report.problems[:5]}")
        entries = report.entries
        best_base, best_verify, best_floor = min(baselines), min(verifies), min(floors)
        results |= {
            "entries": entries,
            "accounts": report.accounts,
            "baseline_select": {
                "best_s": best_base,
                "median_s": statistics.median(baselines),
                "per_s": entries / best_base,
                "runs_s": baselines,
            },
            "driver_fetch": {"best_s": best_floor, "per_s": entries / best_floor, "runs_s": floors},
            "verify_ledger": {
                "best_s": best_verify,
                "median_s": statistics.median(verifies),
                "per_s": entries / best_verify,
                "runs_s": verifies,
                "ok": report.ok,
            },
            "ratio_to_baseline": best_base / best_verify,
        }
        if args.profile:
            results["profile"] = _profile_verify(log)
            db.session.rollback()
        db.session.remove()
        db.engine.dispose()

    if not args.skip_cli:
        results["cli"] = _cli(url)

    verify_rate = results["verify_ledger"]["per_s"]
    base_rate = results["baseline_select"]["per_s"]
    floor_rate = results["driver_fetch"]["per_s"]
    runs = ", ".join(f"{s:.2f}" for s in verifies)
    ratio = results["ratio_to_baseline"]
    log(f"  bare SELECT (same statement, column typing and yield_per; rows unpacked): {n(base_rate)} rows/s")
    log(f"  verify_ledger(): {n(verify_rate)} entries/s ({ratio:.2f}x the bare SELECT; best of {runs}s)")
    log(f"  driver fetch only (psycopg cursor, no SQLAlchemy result processing): {n(floor_rate)} rows/s")
    cli = results.get("cli")
    if cli:
        if "per_s" in cli:
            log(
                f"  flask --app wsgi ledger verify (subprocess): {n(cli['entries'])} entries in {cli['seconds']:.2f}s "
                f"= {n(cli['per_s'])}/s as it reports; {cli['wall_s']:.1f}s wall including start-up, "
                f"exit {cli['exit_code']}"
            )
        else:
            log(f"  flask ledger verify FAILED (exit {cli['exit_code']}): {cli.get('stdout')} {cli.get('stderr')}")
    verdict = "PASS" if verify_rate > TARGET_PER_S else "BELOW TARGET"
    cli_rate = f"{n(cli['per_s'])}/s" if cli and "per_s" in cli else "n/a"
    results["summary"] = (
        f"ledger verify: {n(verify_rate)} entries/s ({ratio:.2f}x bare SELECT {n(base_rate)} rows/s), "
        f"CLI {cli_rate}, posting {n(posting['per_s'])} entries/s; target > {n(TARGET_PER_S)}/s {verdict}"
    )
    results["target_met"] = verify_rate > TARGET_PER_S
    return results


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("python -m bench.ledger_verify", __doc__)
    add_arguments(parser)
    results = run_and_save("ledger_verify", run, parser.parse_args(argv))
    print(results["summary"])
    return 0


if __name__ == "__main__":
    run_cli(main)
