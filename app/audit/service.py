from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.audit.models import AuditEvent
from app.db import db


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
