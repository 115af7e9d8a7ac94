"""`flask seed`: reference data and demo data from the files in seeds/, idempotently."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from werkzeug.security import generate_password_hash

from app.carbon import service as carbon
from app.carbon.models import Rule
from app.db import db
from app.exchange.models import Store
from app.people.models import Community, Organization, Resident, Staff
from app.people.service import resident_for_openid
from app.sorting.models import CollectionPoint, Device

SEEDS = Path(__file__).resolve().parent.parent / "seeds"


def _load(name: str) -> Any:
    return json.loads((SEEDS / name).read_text(encoding="utf-8"))


# One whatever their case (unique indexes on lower()), so found whatever case an admin has given them since.
_ANY_CASE = {(Community, "code"), (Staff, "username"), (Device, "code")}


def _one(model, **where):
    conditions = [
        sa.func.lower(getattr(model, name)) == value.lower()
        if (model, name) in _ANY_CASE
        else getattr(model, name) == value
        for name, value in where.items()
    ]
    return db.session.scalar(sa.select(model).where(*conditions))


def _community_id(code: str | None) -> int | None:
    return _one(Community, code=code).id if code else None


def _ensure(model, key: dict[str, Any], values: dict[str, Any]) -> tuple[Any, bool]:
    obj = _one(model, **key)
    if obj is not None:
        return obj, False
    obj = model(**key, **values)
    db.session.add(obj)
    db.session.flush()
    return obj, True


def seed_reference() -> dict[str, int]:
    created = {"communities": 0, "organizations": 0, "rules": 0}
    for row in _load("communities.json"):
        created["communities"] += _ensure(Community, {"code": row["code"]}, {"name": row["name"]})[1]
    for row in _load("organizations.json"):
        values = {"kind": row["kind"], "community_id": _community_id(row.get("community"))}
        created["organizations"] += _ensure(Organization, {"name": row["name"]}, values)[1]
    methodology = _load("rules.json")
    valid_from = datetime.fromisoformat(methodology["valid_from"])
    for row in methodology["rules"]:
        row = dict(row)
        activity = row.pop("activity")
        row["co2e_g_per_unit"] = Decimal(row["co2e_g_per_unit"])
        created["rules"] += _ensure(Rule, {"activity": activity, "version": 1}, {"valid_from": valid_from, **row})[1]
    db.session.commit()
    carbon.clear_cache()
    return created


def seed_demo() -> dict[str, int]:
    data = _load("demo.json")
    created = {"stores": 0, "collection_points": 0, "devices": 0, "staff": 0, "residents": 0}
    for row in data["stores"]:
        values = {
            "organization_id": _one(Organization, name=row["organization"]).id,
            "community_id": _community_id(row["community"]),
            "address": row["address"],
        }
        created["stores"] += _ensure(Store, {"name": row["name"]}, values)[1]
    for row in data["collection_points"]:
        row = dict(row)
        values = {**row, "community_id": _community_id(row.pop("community"))}
        values.pop("name")
        values.pop("community", None)
        created["collection_points"] += _ensure(CollectionPoint, {"name": row["name"]}, values)[1]
    for row in data["devices"]:
        point = _one(CollectionPoint, name=row["collection_point"])
        values = {"collection_point_id": point.id, "secret": row["secret"]}
        created["devices"] += _ensure(Device, {"code": row["code"]}, values)[1]
    for row in data["staff"]:
        values = {
            "password_hash": generate_password_hash(row["password"]),
            "role": row["role"],
            "display_name": row["display_name"],
            "community_id": _community_id(row.get("community")),
            "organization_id": _one(Organization, name=row["organization"]).id if row.get("organization") else None,
        }
        staff, new = _ensure(Staff, {"username": row["username"]}, values)
        if new:
            staff.stores = [_one(Store, name=name) for name in row.get("stores", [])]
            staff.collection_points = [_one(CollectionPoint, name=name) for name in row.get("collection_points", [])]
        created["staff"] += new
    for row in data["residents"]:
        if _one(Resident, openid=row["openid"]) is None:
            resident = resident_for_openid(row["openid"], None)
            resident.nickname, resident.community_id = row["nickname"], _community_id(row["community"])
            created["residents"] += 1
    db.session.commit()
    return created


def demo_logins() -> list[dict[str, str]]:
    return [
        {"username": s["username"], "password": s["password"], "role": s["role"]} for s in _load("demo.json")["staff"]
    ]
