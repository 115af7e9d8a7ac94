from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db import Timestamped, db

ORG_KINDS = ("party_unit", "new_sector_group", "shop", "enterprise", "social_org", "government")
STAFF_ROLES = ("collector", "merchant", "alliance", "worker", "admin")
RESIDENT_STATUSES = ("active", "frozen", "closed")


class Community(Timestamped, db.Model):
    __tablename__ = "communities"
    __table_args__ = (sa.Index("uq_communities_code_lower", sa.func.lower(sa.column("code")), unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)


class Organization(Timestamped, db.Model):
    __tablename__ = "organizations"
    __table_args__ = (sa.CheckConstraint(sa.column("kind").in_(ORG_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    community_id: Mapped[int | None] = mapped_column(sa.ForeignKey("communities.id"), index=True)


class Resident(Timestamped, db.Model):
    __tablename__ = "residents"
    __table_args__ = (sa.CheckConstraint(sa.column("status").in_(RESIDENT_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    openid: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    unionid: Mapped[str | None] = mapped_column(sa.String(64))
    nickname: Mapped[str] = mapped_column(sa.String(32), default="")
    community_id: Mapped[int | None] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    # Tokens issued before this moment no longer work: set by a freeze, so a session the freeze was meant to stop
    # does not come back with a thaw.
    sessions_valid_after: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


staff_stores = sa.Table(
    "staff_stores",
    db.metadata,
    sa.Column("staff_id", sa.ForeignKey("staff.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("store_id", sa.ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True),
)

staff_collection_points = sa.Table(
    "staff_collection_points",
    db.metadata,
    sa.Column("staff_id", sa.ForeignKey("staff.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("collection_point_id", sa.ForeignKey("collection_points.id", ondelete="CASCADE"), primary_key=True),
)


class Staff(Timestamped, db.Model):
    __tablename__ = "staff"
    __table_args__ = (
        sa.CheckConstraint(sa.column("role").in_(STAFF_ROLES), name="role"),
        # Admin and admin are one name: a look-alike account cannot be made, and logins match any case.
        sa.Index("uq_staff_username_lower", sa.func.lower(sa.column("username")), unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(256))
    display_name: Mapped[str] = mapped_column(sa.String(64), default="")
    role: Mapped[str] = mapped_column(sa.String(16))
    community_id: Mapped[int | None] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    organization_id: Mapped[int | None] = mapped_column(sa.ForeignKey("organizations.id"), index=True)
    active: Mapped[bool] = mapped_column(default=True)
    # Tokens and admin sessions issued before this moment no longer work: set by a password change and by
    # deactivation, so a leaked token or cookie does not outlive either.
    sessions_valid_after: Mapped[datetime | None]

    stores = relationship("Store", secondary=staff_stores)
    collection_points = relationship("CollectionPoint", secondary=staff_collection_points)

    @property
    def store_ids(self) -> list[int]:
        return sorted(s.id for s in self.stores)

    @property
    def collection_point_ids(self) -> list[int]:
        return [p.id for p in self.collection_points_by_id]

    @property
    def collection_points_by_id(self) -> list:
        return sorted(self.collection_points, key=lambda p: p.id)
