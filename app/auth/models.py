from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.clock import utcnow
from app.db import db


class RevokedSession(db.Model):
    """A logged-out session: its access and refresh tokens share the `sid` claim."""

    __tablename__ = "revoked_sessions"

    sid: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
