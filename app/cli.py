"""flask seed | staff | points | ledger | devices | idempotency: thin commands over the services."""

from __future__ import annotations

from datetime import date, datetime

import click
import marshmallow as ma
from flask import Flask, current_app
from flask.cli import AppGroup

from app import errors
from app.clock import local_day, local_midnight, utcnow
from app.people.models import STAFF_ROLES


def register(app: Flask) -> None:
    app.cli.add_command(seed)
    app.cli.add_command(staff)
    app.cli.add_command(points)
    app.cli.add_command(ledger)
    app.cli.add_command(devices)
    app.cli.add_command(idempotency)
    app.cli.add_command(sessions)


@click.command("seed")
@click.option("--demo", is_flag=True, help="Also add demo staff, residents, points and stores.")
def seed(demo: bool) -> None:
    """Load reference data (communities, alliance members, methodology). Safe to run again."""
    from app import seeding

    if demo and current_app.config["APP_ENV"] == "production":
        raise click.ClickException(
            "demo data is never loaded in production: its staff passwords and its smart bin's secret are published "
            "in the README. Run `flask seed` for the reference data and `flask staff create --role admin` for the "
            "first admin."
        )
    click.echo(f"reference: {seeding.seed_reference()}")
    if demo:
        click.echo(f"demo: {seeding.seed_demo()}")


staff = AppGroup("staff", help="Staff accounts.")


@staff.command("create")
@click.option("--username", required=True)
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="asked for when left out, so that it stays out of the shell's history and the process list",
)
@click.option("--role", required=True, type=click.Choice(STAFF_ROLES))
@click.option("--display-name", default="")
@click.option("--community-id", type=int)
@click.option("--organization-id", type=int)
@click.option("--store-id", "store_ids", type=int, multiple=True)
@click.option("--collection-point-id", "collection_point_ids", type=int, multiple=True)
def staff_create(**options) -> None:
    """Create a staff account (as the system, with the same rules as POST /staff)."""
    from app.auth.guards import Actor
    from app.errors import AppError
    from app.people import service
    from app.people.schemas import StaffCreateSchema

    body = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if v not in (None, ())}
    try:
        created = service.create_staff(Actor(kind="system", id=0, role="admin"), StaffCreateSchema().load(body))
    except ma.ValidationError as exc:
        raise _refusal(errors.ValidationError.code, errors.ValidationError.message, exc.normalized_messages()) from exc
    except AppError as exc:
        raise _refusal(exc.code, exc.message, (exc.details or {}).get("fields")) from exc
    click.echo(f"created staff {created.id} {created.username} ({created.role})")


def _refusal(code: str, message: str, fields: dict | None) -> click.ClickException:
    """As an operator reads it: the code and message, then each field's messages on a line of its own."""
    lines = [f"{code}: {message}"]
    for name, said in (fields or {}).items():
        for where, messages in said.items() if isinstance(said, dict) else [(None, said)]:  # a list's, by index
            label = name if where is None else f"{name}[{where}]"
            lines.append(f"  {label}: {'；'.join(map(str, messages)) if isinstance(messages, list) else messages}")
    return click.ClickException("\n".join(lines))


@staff.command("unlock")
@click.argument("username")
def staff_unlock(username: str) -> None:
    """Let a username log in again at once after five wrong passwords locked it for 15 minutes."""
    from app.auth.limits import unlock_username

    if not current_app.config.get("REDIS_URL"):
        raise click.ClickException(
            "this shell has no REDIS_URL: load the server's environment first (set -a; . /etc/tanpuhui.env). A server "
            "without REDIS_URL counts failed logins in its own memory, which this command cannot reach: restarting "
            "the server forgets them"
        )
    if unlock_username(username):
        click.echo(f"unlocked {username}")
    else:
        click.echo(f"{username} was not locked")


points = AppGroup("points", help="Scheduled points jobs.")


@points.command("expire")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), help="Local date to run as (default: now).")
def points_expire(as_of: datetime | None) -> None:
    """Expire points earned in year Y at the end of year Y+1, oldest first. Running twice changes nothing.
    `--as-of` names a day up to today (a missed run caught up), never a later one."""
    from app.ledger.service import expire_points

    now, tz = utcnow(), current_app.config["TIMEZONE"]
    if as_of is None:
        moment = now
    else:
        day, today = date(as_of.year, as_of.month, as_of.day), local_day(now, tz)
        if day > today:  # points not due yet would expire, and their year could no longer be reversed
            raise click.BadParameter(f"{day} is after today ({today}): nothing was expired", param_hint="--as-of")
        moment = local_midnight(day, tz)
    click.echo(f"expired: {expire_points(moment)}")


ledger = AppGroup("ledger", help="Ledger audit.")


@ledger.command("verify")
def ledger_verify() -> None:
    """Recompute every hash chain, balance and year's points; exit 1 and name the first bad entry on failure. Notes
    what verifies but is not as this release writes it (an entry dated before the one it follows), without failing."""
    import time

    from app.ledger.verify import keep_check, verify_ledger

    started = time.perf_counter()
    report = verify_ledger()
    elapsed = time.perf_counter() - started
    rate = report.entries / elapsed if elapsed else 0
    click.echo(f"checked {report.entries} entries in {report.accounts} accounts in {elapsed:.2f}s ({rate:,.0f}/s)")
    shown = 20
    for notice in report.notices[:shown]:
        click.echo(f"note: {notice}")
    if report.notice_count > shown:
        click.echo(f"note: {report.notice_count} notes in all, the first {shown} shown")
    if not keep_check(report, "cli")[1]:  # the admin site shows the latest kept run; the verdict stands
        click.echo("warning: this run's result was not kept for the admin site (see the log)", err=True)
    if not report.ok:
        first = f": first bad entry {report.first_bad_entry}" if report.first_bad_entry is not None else ""
        click.echo(f"FAILED{first}", err=True)
        for problem in report.problems[:shown]:
            click.echo(f"  {problem}", err=True)
        raise SystemExit(1)
    click.echo("OK: every chain, balance and year's points verify")


devices = AppGroup("devices", help="Smart-bin devices.")


@devices.command("prune-signatures")
def devices_prune() -> None:
    """Forget device signatures older than the replay window."""
    from app.sorting.service import prune_device_signatures

    click.echo(f"pruned {prune_device_signatures()} signatures")


idempotency = AppGroup("idempotency", help="Stored answers to keyed requests.")


@idempotency.command("prune")
def idempotency_prune() -> None:
    """Forget Idempotency-Key answers older than IDEMPOTENCY_KEEP_DAYS."""
    from app.idempotency.service import prune_keys

    click.echo(f"pruned {prune_keys()} idempotency keys")


sessions = AppGroup("sessions", help="Logged-out sessions.")


@sessions.command("prune")
def sessions_prune() -> None:
    """Forget revoked sessions that have expired anyway."""
    from app.auth.service import prune_revoked_sessions

    click.echo(f"pruned {prune_revoked_sessions()} revoked sessions")
