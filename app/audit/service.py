from __future__ import annotations

from typing import Any

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
