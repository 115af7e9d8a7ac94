"""Imports every model so the metadata (and so Alembic) sees the whole schema."""

from app.audit.models import AuditEvent
from app.auth.models import RevokedSession
from app.carbon.models import Rule
from app.exchange.models import Store
from app.idempotency.models import IdempotencyKey
from app.ledger.models import Account, DailyEarning, LedgerEntry, PointLot
from app.people.models import Community, Organization, Resident, Staff
from app.sorting.models import Checkin, CollectionPoint, Deposit, DepositItem, Device, DeviceSignature

__all__ = [
    "Account", "AuditEvent", "Checkin", "CollectionPoint", "Community", "DailyEarning", "Deposit",
    "DepositItem", "Device", "DeviceSignature", "IdempotencyKey", "LedgerEntry", "Organization",
    "PointLot", "Resident", "RevokedSession", "Rule", "Staff", "Store",
]  # fmt: skip
