from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from app.audit.models import AuditEvent
from app.db import db
from app.people.models import Staff


def record(actor, action: str, target_type: str, target_id: Any, details: dict[str, Any] | None = None) -> None:
    """Adds an audit row to the caller's transaction; it commits or rolls back with the use case."""
    db.session.add(
        AuditEvent(
            actor_type=actor.kind if actor else "system",
            actor_id=actor.id if actor else None,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            details=details or {},
        )
    )


def history(target_type: str, target_id: Any, actions: tuple[str, ...], limit: int) -> list[AuditEvent]:
    """The latest of these actions on one record, newest first."""
    stmt = (
        sa.select(AuditEvent)
        .where(AuditEvent.target_type == target_type, AuditEvent.target_id == str(target_id),
               AuditEvent.action.in_(actions))
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )  # fmt: skip
    return list(db.session.scalars(stmt))


def held_by_admins(target_type: str, action: str, target_ids: Iterable[int]) -> set[int]:
    """Which of these records an admin placed their hold on (a freeze, a bin retired): the latest `action` on each was
    an admin's. Two queries whatever the number of records: a list page asks for all its rows at once. The role is kept
    in the event's details as by_role; an event from before that names the staff member, whose role is read now."""
    ids = [str(target_id) for target_id in target_ids]
    if not ids:
        return set()
    latest = (
        sa.select(sa.func.max(AuditEvent.id))
        .where(AuditEvent.target_type == target_type, AuditEvent.action == action, AuditEvent.target_id.in_(ids))
        .group_by(AuditEvent.target_id)
    )
    events = list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.id.in_(latest))))
    unnamed = {e.actor_id for e in events if "by_role" not in e.details and e.actor_type == "staff"}
    roles = dict(db.session.execute(sa.select(Staff.id, Staff.role).where(Staff.id.in_(unnamed)))) if unnamed else {}
    return {int(e.target_id) for e in events if e.details.get("by_role", roles.get(e.actor_id)) == "admin"}


def records_hold_change(actor, *, held: bool, hold: bool, held_by_an_admin: bool, refusal: Exception) -> bool:
    """The rule for a hold a community's worker may place and lift, unless an admin placed it (经发办 freezes over
    suspected fraud across communities, and retires a bin whose key may have leaked): whether this call is recorded.
    A worker lifting an admin's hold raises `refusal`. Placing a hold already in place changes nothing and is not
    recorded, except when an admin places it over a worker's: it becomes the admin's, so the worker cannot lift it."""
    if held == hold:
        return hold and actor.is_admin and not held_by_an_admin
    if not hold and held_by_an_admin and not actor.is_admin:
        raise refusal
    return True
