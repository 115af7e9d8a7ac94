from __future__ import annotations

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


def done_by_an_admin(target_type: str, target_id: Any, action: str) -> bool:
    """Whether the latest `action` on this record was an admin's: what an admin did (a freeze, a bin retired) a
    community's worker is not the one to undo. The role is kept in the event's details as by_role; an event from
    before that names the staff member, whose role is read now."""
    last = history(target_type, target_id, (action,), 1)
    if not last:
        return False
    event = last[0]
    role = event.details.get("by_role")
    if role is None and event.actor_type == "staff":
        role = db.session.scalar(sa.select(Staff.role).where(Staff.id == event.actor_id))
    return role == "admin"
