"""Shared helpers for the benchmarks: databases, the app, formatting, results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
ADMIN_DATABASES = ("test", "postgres", "template1")


def normalise_url(raw: str) -> str:
    from app.config import database_url

    return database_url(raw)


def default_url(name: str) -> str:
    return f"{PG_SERVER}/{name}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def recreate_database(url: str) -> str:
    """Drop and create the database named in `url` (PostgreSQL: through an AUTOCOMMIT engine on a
    maintenance database of the same server; SQLite: delete the file). Returns the normalised URL."""
    url = normalise_url(url)
    parsed = sa.engine.make_url(url)
    if is_sqlite(url):
        if parsed.database and parsed.database != ":memory:":
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(parsed.database + suffix).unlink(missing_ok=True)
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return url
    name = parsed.database
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing to drop a database named {name!r}")
    last_error: Exception | None = None
    for admin_db in ADMIN_DATABASES:
        if admin_db == name:
            continue
        admin = sa.create_engine(parsed.set(database=admin_db), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            return url
        except sa.exc.OperationalError as exc:  # that maintenance database does not exist; try the next
            last_error = exc
        finally:
            admin.dispose()
    raise SystemExit(f"could not recreate {name}: {last_error}")


def make_app(url: str, **overrides: Any):
    from app import create_app

    config = {"SQLALCHEMY_DATABASE_URI": url, "RATELIMIT_ENABLED": False}
    config.update(overrides)
    return create_app(config)


def create_schema(app, how: str = "migrate") -> None:
    """`migrate` runs the Alembic migrations (what `flask db upgrade` does); `create_all` uses the models."""
    from app.db import db

    with app.app_context():
        if how == "migrate":
            import logging

            from flask_migrate import upgrade

            upgrade()
            # Alembic's fileConfig() turns the root logger up to WARN and disables existing loggers; quiet either way.
            logging.getLogger("alembic").setLevel(logging.WARNING)
        else:
            db.create_all()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def pg_version(url: str) -> str | None:
    if is_sqlite(url):
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SHOW server_version")).scalar()
    finally:
        engine.dispose()


def n(value: float) -> str:
    """Thousands separators, no decimals."""
    return f"{value:,.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@contextmanager
def phase(label: str, log=print):
    started = time.perf_counter()
    log(f"  .. {label}", flush=True)
    box: dict[str, float] = {}
    yield box
    box["seconds"] = time.perf_counter() - started
    log(f"     {label}: {box['seconds']:.1f}s", flush=True)


def save_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = {"benchmark": name, "at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **data}
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_and_save(name: str, run: Callable[[argparse.Namespace], dict[str, Any]], args) -> dict[str, Any]:
    """Run one benchmark, keep its figures under bench/results/, and say where."""
    results = run(args)
    path = save_results(name, results)
    print(f"  (saved {path.relative_to(ROOT)})", flush=True)
    return results


def run_cli(main: Callable[[], int]) -> None:
    """The entry point of every benchmark module: Ctrl-C stops cleanly (gunicorn is stopped by the runner)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted (gunicorn, if started, has been stopped)", file=sys.stderr)
        sys.exit(130)
