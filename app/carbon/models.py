from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Timestamped, db

UNITS = ("kg", "item", "visit", "day", "person_km")
DAILY_TOTAL = "daily:total"


class Rule(Timestamped, db.Model):
    """One version of a methodology rule. A new version closes the old one; entries keep the rule id they used."""

    __tablename__ = "rules"
    __table_args__ = (
        sa.UniqueConstraint("activity", "version"),
        sa.CheckConstraint(sa.column("unit").in_(UNITS), name="unit"),
        sa.CheckConstraint("co2e_g_per_unit >= 0", name="co2e_non_negative"),
        sa.CheckConstraint("points IS NULL OR points >= 0", name="points_non_negative"),
        sa.CheckConstraint("daily_cap_points IS NULL OR daily_cap_points >= 0", name="cap_non_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    activity: Mapped[str] = mapped_column(sa.String(64), index=True)
    version: Mapped[int]
    title: Mapped[str] = mapped_column(sa.String(64), default="")
    unit: Mapped[str] = mapped_column(sa.String(16))
    co2e_g_per_unit: Mapped[Decimal] = mapped_column(sa.Numeric(14, 3), default=Decimal(0))
    points: Mapped[int | None]
    daily_cap_points: Mapped[int | None]
    daily_total_exempt: Mapped[bool] = mapped_column(default=False)
    source: Mapped[str] = mapped_column(sa.Text, default="")
    valid_from: Mapped[datetime]
    valid_to: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)
