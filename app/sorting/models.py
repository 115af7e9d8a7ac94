from __future__ import annotations

import hashlib
import secrets
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, column_property, mapped_column, relationship

from app.clock import utcnow
from app.db import Timestamped, db
from app.ledger.models import BigId

# The codes the API takes, with the names residents and staff know them by (the categories': the seeded rules' titles).
POINT_KIND_NAMES = {"station": "定时定点投放站", "smart_bin": "智能回收箱", "recycling_service_point": "惠民回收服务点"}
CATEGORY_NAMES = {
    "paper": "废纸", "cardboard": "纸板", "plastic": "塑料", "metal": "金属", "aluminium": "铝罐", "glass": "玻璃",
    "textile": "旧衣物", "ewaste": "电子废弃物",
}  # fmt: skip
POINT_KINDS, CATEGORIES = tuple(POINT_KIND_NAMES), tuple(CATEGORY_NAMES)


def new_secret() -> str:
    return secrets.token_hex(16)


class CollectionPoint(Timestamped, db.Model):
    """A 定时定点 station, smart bin or 惠民回收服务点. Its poster QR is signed with `qr_secret`."""

    __tablename__ = "collection_points"
    __table_args__ = (
        sa.CheckConstraint(sa.column("kind").in_(POINT_KINDS), name="kind"),
        sa.CheckConstraint("geofence_m IS NULL OR geofence_m > 0", name="geofence_positive"),
        # Distances need a whole position, and a geofence a position to measure from.
        sa.CheckConstraint("(lat IS NULL) = (lng IS NULL)", name="whole_position"),
        sa.CheckConstraint("geofence_m IS NULL OR lat IS NOT NULL", name="geofence_has_position"),
        # Residents and posters tell points apart by name: one name per community (a retired one is brought back).
        sa.Index("uq_collection_points_community_name", "community_id", "name", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    address: Mapped[str] = mapped_column(sa.String(256), default="")
    lat: Mapped[float | None]
    lng: Mapped[float | None]
    geofence_m: Mapped[int | None]
    categories: Mapped[list[str]] = mapped_column(sa.JSON, default=lambda: list(CATEGORIES))
    qr_secret: Mapped[str] = mapped_column(sa.String(64), default=new_secret)
    active: Mapped[bool] = mapped_column(default=True)
    # Not stored: metres from the position a list was asked near (?near=); the listing sets it.
    distance_m = None


def _point_name(point_id: sa.Column) -> sa.ScalarSelect:
    """Read with the row, for lists that show where (the point's name as it is now)."""
    return sa.select(CollectionPoint.name).where(CollectionPoint.id == point_id).scalar_subquery()


class Checkin(db.Model):
    """A sorting check-in: once per resident, point and local day, enforced by the database. Where the resident stood
    only answers the point's geofence: it is not kept (PIPL's minimum necessary)."""

    __tablename__ = "checkins"
    __table_args__ = (
        sa.UniqueConstraint("resident_id", "collection_point_id", "day"),
        # A point's check-ins newest first, a page at a time, without sorting all of them (as deposits).
        sa.Index("ix_checkins_collection_point_id_id", "collection_point_id", "id"),
        # The resident's own check-ins newest first, a page at a time (/me/checkins): the unique index finds them but
        # not in id order, and PostgreSQL would walk the whole table's primary key for a resident seen long ago.
        sa.Index("ix_checkins_resident_id_id", "resident_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    resident_id: Mapped[int] = mapped_column(sa.ForeignKey("residents.id"))
    collection_point_id: Mapped[int] = mapped_column(sa.ForeignKey("collection_points.id"))
    day: Mapped[date] = mapped_column(index=True)  # today's check-ins, on the dashboard
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    collection_point_name: Mapped[str] = column_property(_point_name(collection_point_id))


class Device(Timestamped, db.Model):
    """A smart bin. It signs each request with its secret (HMAC)."""

    __tablename__ = "devices"
    # HK-BIN-02 and hk-bin-02 are one label painted on one bin.
    __table_args__ = (sa.Index("uq_devices_code_lower", sa.func.lower(sa.column("code")), unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    collection_point_id: Mapped[int] = mapped_column(sa.ForeignKey("collection_points.id"), index=True)
    secret: Mapped[str] = mapped_column(sa.String(64), default=new_secret)
    active: Mapped[bool] = mapped_column(default=True)

    @property
    def secret_fingerprint(self) -> str:
        """Names the current secret without revealing it (a page's "replace this secret" form carries it)."""
        return hashlib.sha256(self.secret.encode()).hexdigest()[:16]


class DeviceSignature(db.Model):
    """Signatures already used, so a captured request cannot be replayed inside the clock window."""

    __tablename__ = "device_signatures"

    signature: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    device_id: Mapped[int] = mapped_column(sa.ForeignKey("devices.id"))
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Burned by a refused request: its replay says so, so that a bin does not take 409 for "recorded".
    refused: Mapped[bool] = mapped_column(default=False, server_default=sa.false())


class Deposit(db.Model):
    """Weighed recyclables credited to a resident, by a collector or a smart bin."""

    __tablename__ = "deposits"
    __table_args__ = (
        sa.CheckConstraint("(collector_id IS NULL) <> (device_id IS NULL)", name="one_recorder"),
        # A point's deposits are read newest first, a page at a time.
        sa.Index("ix_deposits_collection_point_id_id", "collection_point_id", "id"),
        # A member code pays for one deposit, as a payment code does: a double tap without an Idempotency-Key, or
        # a code passed on, cannot credit twice.
        sa.Index("uq_deposits_member_code", "resident_id", "member_code_nonce", unique=True),
        # The resident's own deposits newest first, a page at a time (/me/deposits), as a point's.
        sa.Index("ix_deposits_resident_id_id", "resident_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    resident_id: Mapped[int] = mapped_column(sa.ForeignKey("residents.id"))
    member_code_nonce: Mapped[str | None] = mapped_column(sa.String(32))
    collection_point_id: Mapped[int] = mapped_column(sa.ForeignKey("collection_points.id"))
    collector_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    device_id: Mapped[int | None] = mapped_column(sa.ForeignKey("devices.id"))
    points: Mapped[int]
    # What the daily caps left uncredited when the collector chose to record the whole load (fit_to_caps).
    points_over_cap: Mapped[int] = mapped_column(default=0, server_default="0")
    co2e_g: Mapped[int]
    weight_g: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    collection_point_name: Mapped[str] = column_property(_point_name(collection_point_id))

    items = relationship("DepositItem", lazy="selectin", order_by="DepositItem.id")
    # Not stored: the ledger entry points at its deposit (ref_type "deposit"), and a reversal at that entry;
    # services fill these in.
    entry_id = None
    reversal_entry_id = None
    corrects_id = None  # the deposit this one was recorded in place of (deposit_corrections)
    corrected_by_id = None


class DepositItem(db.Model):
    __tablename__ = "deposit_items"
    __table_args__ = (sa.CheckConstraint("weight_g > 0", name="weight_positive"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deposit_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("deposits.id"), index=True)
    category: Mapped[str] = mapped_column(sa.String(32))
    weight_g: Mapped[int]
    co2e_g: Mapped[int]
    points: Mapped[int]
    rule_id: Mapped[int] = mapped_column(sa.ForeignKey("rules.id"))


class DepositCorrection(db.Model):
    """A deposit recorded again with the right items (a mistyped weight, a wrong category): its credit reversed and a
    new deposit in its place, in one transaction. One correction per deposit is the primary key."""

    __tablename__ = "deposit_corrections"

    deposit_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("deposits.id"), primary_key=True)
    correction_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("deposits.id"), unique=True)
    reason: Mapped[str] = mapped_column(sa.String(200))
    staff_id: Mapped[int] = mapped_column(sa.ForeignKey("staff.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
