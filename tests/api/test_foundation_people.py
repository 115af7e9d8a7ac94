"""Communities, organisations, staff and residents, and the scopes that fence every role."""

from __future__ import annotations

import base64
import threading

import pytest
import sqlalchemy as sa

from app.audit.models import AuditEvent
from app.clock import utcnow
from app.db import db
from app.exchange.models import Store
from app.people.models import Community, Organization, Staff
from tests.conftest import assert_error, community_id, count, during_an_uncommitted, make_point, pg_concurrency, race

PASSWORD = "password-123"


def org_id(name: str) -> int:
    return db.session.scalar(sa.select(Organization.id).filter_by(name=name))


def make_store(name: str, organization_id: int, community: str | None = None) -> int:
    store = Store(
        name=name, organization_id=organization_id, community_id=community_id(community) if community else None
    )
    db.session.add(store)
    db.session.commit()
    return store.id


@pytest.fixture
def world(api):
    """Two alliance organisations with one store each, and an admin."""
    cafe, shops = org_id("科学咖啡社"), org_id("鑫海湾沿街商铺联合会")
    return {
        "admin": api.staff("admin"),
        "cafe": cafe,
        "shops": shops,
        "cafe_store": make_store("咖啡社兑换点", cafe, "hengkang"),
        "shops_store": make_store("沿街兑换点", shops, "xinhaiwan"),
    }


def _staff_body(username: str, role: str, **scope):
    return {"username": username, "password": PASSWORD, "role": role, **scope}


# --- communities ----------------------------------------------------------------------------------------


def test_communities_are_public(api):
    response = api.get("/communities")
    assert response.status_code == 200
    page = response.get_json()
    assert page["next"] is None
    items = page["items"]
    assert {c["code"] for c in items} == {"hengkang", "xinhaiwan"}
    assert all(set(c) == {"id", "code", "name"} for c in items)
    assert {c["name"] for c in items} == {"恒康社区", "鑫海湾"}


def test_communities_and_organizations_come_in_pages(api):
    first = api.get("/communities?limit=1").get_json()
    second = api.get(f"/communities?limit=1&cursor={first['next']}").get_json()
    assert [c["code"] for c in first["items"] + second["items"]] == ["hengkang", "xinhaiwan"]
    assert second["next"] is None
    shops = api.get("/organizations?kind=shop&limit=100").get_json()["items"]
    walked, cursor = [], ""
    while cursor is not None:
        page = api.get(
            f"/organizations?kind=shop&limit=2&cursor={cursor}" if cursor else "/organizations?kind=shop&limit=2"
        )
        walked += page.get_json()["items"]
        cursor = page.get_json()["next"]
    assert walked == shops


def test_admin_creates_a_community(api):
    admin = api.staff("admin")
    response = api.post("/communities", as_=admin, json={"name": "新港社区", "code": "xingang"})
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["code"] == "xingang"
    assert isinstance(created["id"], int)
    assert created in api.get("/communities").get_json()["items"]


@pytest.mark.parametrize("role", ["worker", "alliance", "merchant"])
def test_only_admins_create_communities(api, role, world):
    scope = {
        "worker": {"community_id": community_id("hengkang")},
        "alliance": {"organization_id": world["cafe"]},
        "merchant": {"store_ids": [world["cafe_store"]]},
    }[role]
    caller = api.staff(role, **scope)
    assert_error(api.post("/communities", as_=caller, json={"name": "越权社区", "code": "sneaky"}), 403, "forbidden")
    assert db.session.scalar(sa.select(Community).filter_by(code="sneaky")) is None


def test_residents_and_anonymous_cannot_create_communities(api):
    resident = api.resident()
    assert_error(api.post("/communities", as_=resident, json={"name": "越权", "code": "r"}), 403, "forbidden")
    assert_error(api.post("/communities", json={"name": "匿名", "code": "anon"}), 401, "unauthorized")
    assert len(api.get("/communities").get_json()["items"]) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"name": "另一个恒康", "code": "hengkang"},
        {"name": "另一个恒康", "code": "HengKang"},  # one code whatever its case, as usernames and bin codes
        {"name": "恒康社区", "code": "hk2"},
    ],
)
def test_duplicate_community_is_409(api, body):
    admin = api.staff("admin")
    assert_error(api.post("/communities", as_=admin, json=body), 409, "duplicate")
    assert len(api.get("/communities").get_json()["items"]) == 2
    # the failed insert left the session usable
    assert api.post("/communities", as_=admin, json={"name": "后来的社区", "code": "later"}).status_code == 201


# --- organisations --------------------------------------------------------------------------------------


def test_organizations_are_public_and_filterable(api):
    everything = api.get("/organizations")
    assert everything.status_code == 200
    assert len(everything.get_json()["items"]) >= 10
    shops = api.get("/organizations?kind=shop").get_json()["items"]
    assert shops
    assert {o["kind"] for o in shops} == {"shop"}
    hengkang = api.get(f"/organizations?community_id={community_id('hengkang')}").get_json()["items"]
    assert hengkang
    assert {o["community_id"] for o in hengkang} == {community_id("hengkang")}


def test_admin_creates_an_organization(api):
    admin = api.staff("admin")
    body = {"name": "湾区绿色科技公司", "kind": "enterprise", "community_id": community_id("xinhaiwan")}
    response = api.post("/organizations", as_=admin, json=body)
    assert response.status_code == 201, response.get_json()
    assert response.get_json() == {"id": response.get_json()["id"], **body}
    assert_error(api.post("/organizations", as_=admin, json=body), 409, "duplicate")


def test_a_refused_unique_insert_keeps_the_rest_of_the_transaction(api):
    """Its own savepoint: what the use case wrote before (here an organisation, pending) survives the refusal."""
    from app.db import insert_unique
    from app.errors import Duplicate

    db.session.add(Organization(name="先写的单位", kind="enterprise"))
    with pytest.raises(Duplicate):
        insert_unique(Community(code="hengkang", name="另一个恒康"), "社区名称或编码已存在")
    assert db.session.scalar(sa.select(Organization.kind).filter_by(name="先写的单位")) == "enterprise"
    db.session.rollback()


def test_organization_without_community_is_allowed(api):
    admin = api.staff("admin")
    response = api.post("/organizations", as_=admin, json={"name": "区级单位", "kind": "government"})
    assert response.status_code == 201
    assert response.get_json()["community_id"] is None


def test_organization_bad_kind_is_422(api):
    admin = api.staff("admin")
    response = api.post("/organizations", as_=admin, json={"name": "奇怪单位", "kind": "cartel"})
    assert "kind" in assert_error(response, 422, "validation_error")["details"]["fields"]


def test_organization_unknown_community_is_422(api):
    admin = api.staff("admin")
    response = api.post("/organizations", as_=admin, json={"name": "无社区单位", "kind": "shop", "community_id": 99999})
    assert "community_id" in assert_error(response, 422, "validation_error")["details"]["fields"]
    assert db.session.scalar(sa.select(Organization).filter_by(name="无社区单位")) is None


def test_only_admins_create_organizations(api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    resident = api.resident()
    body = {"name": "越权单位", "kind": "shop"}
    assert_error(api.post("/organizations", as_=worker, json=body), 403, "forbidden")
    assert_error(api.post("/organizations", as_=resident, json=body), 403, "forbidden")
    assert_error(api.post("/organizations", json=body), 401, "unauthorized")


# --- staff: admin ---------------------------------------------------------------------------------------


def test_admin_creates_every_role_with_its_scope(api, world):
    admin = world["admin"]
    point = make_point(api, admin, "恒康测试投放点")
    bodies = {
        "admin": {},
        "worker": {"community_id": community_id("hengkang")},
        "alliance": {"organization_id": world["cafe"]},
        "merchant": {"store_ids": [world["cafe_store"]], "organization_id": world["cafe"]},
        "collector": {"collection_point_ids": [point], "community_id": community_id("hengkang")},
    }
    for role, scope in bodies.items():
        username = f"new.{role}"
        response = api.post("/staff", as_=admin, json=_staff_body(username, role, **scope))
        assert response.status_code == 201, (role, response.get_json())
        created = response.get_json()
        assert created["role"] == role
        assert created["username"] == username
        assert created["active"] is True
        assert "password" not in created
        assert created["store_ids"] == scope.get("store_ids", [])
        assert created["collection_point_ids"] == scope.get("collection_point_ids", [])
        assert created["community_id"] == scope.get("community_id")
        assert created["organization_id"] == scope.get("organization_id")

        login = api.post("/auth/login", json={"username": username, "password": PASSWORD})
        assert login.status_code == 200, (role, login.get_json())
        assert login.get_json()["staff"]["id"] == created["id"]


@pytest.mark.parametrize(
    ("role", "scope", "field"),
    [
        ("worker", {}, "community_id"),
        ("alliance", {}, "organization_id"),
        ("merchant", {}, "store_ids"),
        ("collector", {}, "collection_point_ids"),
        ("merchant", {"store_ids": [987654]}, "store_ids"),
        ("collector", {"collection_point_ids": [987654]}, "collection_point_ids"),
        ("worker", {"community_id": 987654}, "community_id"),
        ("alliance", {"organization_id": 987654}, "organization_id"),
        ("worker", {"community_id": "HENGKANG", "store_ids": "STORE"}, "store_ids"),
        ("cashier", {}, "role"),
    ],
    ids=[
        "worker-no-community",
        "alliance-no-org",
        "merchant-no-store",
        "collector-no-point",
        "unknown-store",
        "unknown-point",
        "unknown-community",
        "unknown-org",
        "store-for-worker",
        "bad-role",
    ],
)
def test_admin_staff_scope_validation(api, world, role, scope, field):
    scope = {
        key: (community_id("hengkang") if value == "HENGKANG" else [world["cafe_store"]] if value == "STORE" else value)
        for key, value in scope.items()
    }
    response = api.post("/staff", as_=world["admin"], json=_staff_body("invalid.one", role, **scope))
    fields = assert_error(response, 422, "validation_error")["details"]["fields"]
    assert field in fields, fields
    assert db.session.scalar(sa.select(Staff).filter_by(username="invalid.one")) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ab", "password": PASSWORD, "role": "admin"}, "username"),
        ({"username": "has space", "password": PASSWORD, "role": "admin"}, "username"),
        ({"username": "shortpw", "password": "1234567", "role": "admin"}, "password"),
        ({"username": "nopw", "role": "admin"}, "password"),
        ({"username": "extra", "password": PASSWORD, "role": "admin", "is_root": True}, "is_root"),
        # a look-alike of "boss": `$` alone would match before a final newline
        ({"username": "boss\n", "password": PASSWORD, "role": "admin"}, "username"),
    ],
)
def test_staff_body_validation(api, body, field):
    admin = api.staff("admin")
    fields = assert_error(api.post("/staff", as_=admin, json=body), 422, "validation_error")["details"]["fields"]
    assert field in fields


def test_duplicate_username_is_409(api):
    admin = api.staff("admin")
    assert api.post("/staff", as_=admin, json=_staff_body("same.name", "admin")).status_code == 201
    assert_error(api.post("/staff", as_=admin, json=_staff_body("same.name", "admin")), 409, "duplicate")
    assert count(Staff, username="same.name") == 1


# --- staff: alliance ------------------------------------------------------------------------------------


def test_alliance_creates_a_merchant_for_its_own_store(api, world):
    alliance = api.staff("alliance", organization_id=world["cafe"])
    response = api.post(
        "/staff", as_=alliance, json=_staff_body("cafe.clerk", "merchant", store_ids=[world["cafe_store"]])
    )
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["organization_id"] == world["cafe"]
    assert created["store_ids"] == [world["cafe_store"]]
    assert api.post("/auth/login", json={"username": "cafe.clerk", "password": PASSWORD}).status_code == 200


def test_alliance_creates_an_alliance_account_of_its_own_org(api, world):
    alliance = api.staff("alliance", organization_id=world["cafe"])
    response = api.post("/staff", as_=alliance, json=_staff_body("cafe.boss", "alliance"))
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["organization_id"] == world["cafe"]


def test_alliance_gives_its_accounts_only_its_own_community(api, world):
    """科学咖啡社's community, or none: another community on its clerk would count the clerk there."""
    from app.people.models import Organization

    cafe_community = db.session.get(Organization, world["cafe"]).community_id
    elsewhere = next(cid for cid in (community_id("hengkang"), community_id("xinhaiwan")) if cid != cafe_community)
    alliance = api.staff("alliance", organization_id=world["cafe"])
    body = _staff_body("cafe.far", "merchant", store_ids=[world["cafe_store"]], community_id=elsewhere)
    error = assert_error(api.post("/staff", as_=alliance, json=body), 422, "validation_error")
    assert error["details"]["fields"] == {"community_id": ["只能填写本单位所在的社区"]}
    assert db.session.scalar(sa.select(Staff).filter_by(username="cafe.far")) is None
    if cafe_community is not None:
        body = _staff_body("cafe.near", "merchant", store_ids=[world["cafe_store"]], community_id=cafe_community)
        assert api.post("/staff", as_=alliance, json=body).status_code == 201
    # an admin places accounts anywhere
    body = _staff_body("cafe.admin-made", "merchant", store_ids=[world["cafe_store"]], community_id=elsewhere)
    assert api.post("/staff", as_=world["admin"], json=body).status_code == 201


@pytest.mark.parametrize(
    "case", ["other-store", "admin", "worker", "collector", "other-org", "other-org-alliance", "mixed-stores"]
)
def test_alliance_cannot_grant_outside_its_organisation(api, world, case):
    alliance = api.staff("alliance", organization_id=world["cafe"])
    body = {
        "other-store": _staff_body("x.clerk", "merchant", store_ids=[world["shops_store"]]),
        "admin": _staff_body("x.admin", "admin"),
        "worker": _staff_body("x.worker", "worker", community_id=community_id("hengkang")),
        "collector": _staff_body("x.collector", "collector", collection_point_ids=[]),
        "other-org": _staff_body(
            "x.clerk", "merchant", store_ids=[world["shops_store"]], organization_id=world["shops"]
        ),
        "other-org-alliance": _staff_body("x.boss", "alliance", organization_id=world["shops"]),
        "mixed-stores": _staff_body("x.clerk", "merchant", store_ids=[world["cafe_store"], world["shops_store"]]),
    }[case]
    before = count(Staff)
    assert_error(api.post("/staff", as_=alliance, json=body), 403, "forbidden")
    assert count(Staff) == before


@pytest.mark.parametrize("role", ["merchant", "worker", "collector"])
def test_other_staff_cannot_create_staff(api, world, role):
    admin = world["admin"]
    scope = {
        "merchant": {"store_ids": [world["cafe_store"]]},
        "worker": {"community_id": community_id("hengkang")},
        "collector": {"collection_point_ids": [make_point(api, admin, "权限测试点")]},
    }[role]
    caller = api.staff(role, **scope)
    body = _staff_body("by.staff", "merchant", store_ids=[world["cafe_store"]])
    assert_error(api.post("/staff", as_=caller, json=body), 403, "forbidden")
    assert_error(api.get("/staff", as_=caller), 403, "forbidden")


def test_residents_cannot_create_staff(api, world):
    resident = api.resident()
    assert_error(api.post("/staff", as_=resident, json=_staff_body("by.res", "admin")), 403, "forbidden")


def test_alliance_lists_only_its_own_organisation(api, world):
    cafe_boss = api.staff("alliance", organization_id=world["cafe"])
    cafe_clerk = api.staff("merchant", store_ids=[world["cafe_store"]], organization_id=world["cafe"])
    shops_boss = api.staff("alliance", organization_id=world["shops"])
    worker = api.staff("worker", community_id=community_id("hengkang"))

    listed = api.get("/staff?limit=100", as_=cafe_boss)
    assert listed.status_code == 200
    ids = {s["id"] for s in listed.get_json()["items"]}
    assert ids == {cafe_boss.id, cafe_clerk.id}
    assert {s["organization_id"] for s in listed.get_json()["items"]} == {world["cafe"]}

    everyone = {s["id"] for s in api.get("/staff?limit=100", as_=world["admin"]).get_json()["items"]}
    assert {world["admin"].id, cafe_boss.id, cafe_clerk.id, shops_boss.id, worker.id} <= everyone

    assert_error(api.get(f"/staff/{shops_boss.id}", as_=cafe_boss), 404, "not_found")
    assert api.get(f"/staff/{cafe_clerk.id}", as_=cafe_boss).status_code == 200


def test_staff_list_pages(api):
    admin = api.staff("admin")
    for i in range(3):
        api.staff("admin", display_name=f"第{i}位")
    first = api.get("/staff?limit=2", as_=admin).get_json()
    assert len(first["items"]) == 2
    assert first["next"]
    second = api.get(f"/staff?limit=2&cursor={first['next']}", as_=admin).get_json()
    assert len(second["items"]) == 2
    assert second["next"] is None
    assert not {s["id"] for s in first["items"]} & {s["id"] for s in second["items"]}
    assert_error(api.get("/staff?limit=101", as_=admin), 422, "validation_error")
    assert_error(api.get("/staff?cursor=%%%", as_=admin), 422, "validation_error")
    # a cursor that was never handed out: deep JSON nesting, or just too long, is the same field error
    deep = base64.urlsafe_b64encode(b"[" * 1200).decode().rstrip("=")
    for cursor in (deep, "A" * 257):
        for path in (f"/staff?cursor={cursor}", f"/communities?cursor={cursor}", f"/me/ledger?cursor={cursor}"):
            caller = api.resident() if path.startswith("/me") else admin
            assert "cursor" in assert_error(api.get(path, as_=caller), 422, "validation_error")["details"]["fields"]


def test_alliance_cannot_reassign_a_merchant_to_another_orgs_store(api, world):
    cafe_boss = api.staff("alliance", organization_id=world["cafe"])
    clerk = api.staff("merchant", store_ids=[world["cafe_store"]], organization_id=world["cafe"])
    response = api.patch(f"/staff/{clerk.id}", as_=cafe_boss, json={"store_ids": [world["shops_store"]]})
    assert_error(response, 403, "forbidden")
    assert api.get(f"/staff/{clerk.id}", as_=cafe_boss).get_json()["store_ids"] == [world["cafe_store"]]


def test_an_admin_cannot_lock_themself_out_and_switches_take_booleans_only(api, world):
    admin, other_admin = api.staff("admin"), api.staff("admin")
    # found by schemathesis: an admin deactivated its own account mid-run
    assert_error(api.patch(f"/staff/{admin.id}", as_=admin, json={"active": False}), 409, "invalid_state")
    assert api.get("/staff/me", as_=admin).status_code == 200
    boss = api.staff("alliance", organization_id=world["cafe"])
    assert_error(api.patch(f"/staff/{boss.id}", as_=boss, json={"active": False}), 409, "invalid_state")
    for guess in (0, 1, "false", "yes", None):
        error = assert_error(api.patch(f"/staff/{other_admin.id}", as_=admin, json={"active": guess}), 422,
                             "validation_error")  # fmt: skip
        assert "active" in error["details"]["fields"]
    assert api.patch(f"/staff/{other_admin.id}", as_=admin, json={"active": False}).get_json()["active"] is False
    assert_error(api.get("/staff/me", as_=other_admin), 401, "unauthorized")


def test_a_clerk_created_without_an_organisation_belongs_to_its_stores(api, world):
    """Otherwise no alliance member would see or manage the account."""
    admin, boss = world["admin"], api.staff("alliance", organization_id=world["cafe"])
    body = {"username": "clerk.inferred", "password": PASSWORD, "role": "merchant", "store_ids": [world["cafe_store"]]}
    created = api.post("/staff", as_=admin, json=body)
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["organization_id"] == world["cafe"]
    assert "clerk.inferred" in {s["username"] for s in api.get("/staff", as_=boss).get_json()["items"]}
    both = {**body, "username": "clerk.two.owners", "store_ids": [world["cafe_store"], world["shops_store"]]}
    error = assert_error(api.post("/staff", as_=admin, json=both), 422, "validation_error")
    assert "不同单位" in error["details"]["fields"]["store_ids"][0]


def test_no_one_resets_their_own_password_without_the_current_one(api, world):
    """PATCH /staff/{id} asks for no current password: on the caller's own account it would let a borrowed session
    take the account over, around /auth/password's check and its tries."""
    for caller in (api.staff("admin"), api.staff("alliance", organization_id=world["cafe"])):
        error = assert_error(api.patch(f"/staff/{caller.id}", as_=caller, json={"password": "taken-over-2026"}), 409,
                             "invalid_state")  # fmt: skip
        assert "修改密码" in error["message"]
        assert api.get("/staff/me", as_=caller).status_code == 200  # nothing changed, the session goes on
        username = db.session.get(Staff, caller.id).username
        login = api.post("/auth/login", json={"username": username, "password": "taken-over-2026"})
        assert_error(login, 401, "invalid_credentials")


@pytest.mark.parametrize("password", [" " * 8, "\t" * 9, "\u3000" * 8])
def test_a_password_of_spaces_alone_is_refused_wherever_one_is_set(api, world, password):
    admin = api.staff("admin")
    worker = api.staff("worker", community_id=community_id("hengkang"))
    created = api.post("/staff", as_=admin, json={"username": "blank.pass", "password": password, "role": "admin"})
    for response in (
        created,
        api.patch(f"/staff/{worker.id}", as_=admin, json={"password": password}),
        api.post("/auth/password", as_=worker, json={"current_password": PASSWORD, "new_password": password}),
    ):
        error = assert_error(response, 422, "validation_error")
        assert "空格" in str(error["details"]["fields"])
    username = db.session.get(Staff, worker.id).username
    assert api.post("/auth/login", json={"username": username, "password": PASSWORD}).status_code == 200


def test_a_collector_of_a_community_serves_only_its_points(api, world):
    admin = api.staff("admin")
    here, there = make_point(api, admin, "恒康回收点"), make_point(api, admin, "鑫海湾回收点", community="xinhaiwan")
    both = [here, there]
    body = _staff_body("x.mixed", "collector", community_id=community_id("hengkang"), collection_point_ids=both)
    refused = api.post("/staff", as_=admin, json=body)
    assert assert_error(refused, 422, "validation_error")["details"]["fields"] == {
        "collection_point_ids": [f"回收点不属于该回收员所在社区：{there}"]
    }
    assert count(Staff, username="x.mixed") == 0
    # Without a community of its own, a collector may serve points in several communities.
    roaming = api.post("/staff", as_=admin, json=_staff_body("x.roaming", "collector", collection_point_ids=both))
    assert roaming.status_code == 201, roaming.get_json()
    local = api.staff("collector", community_id=community_id("hengkang"), collection_point_ids=[here])
    moved = api.patch(f"/staff/{local.id}", as_=admin, json={"collection_point_ids": [there]})
    assert "collection_point_ids" in assert_error(moved, 422, "validation_error")["details"]["fields"]
    assert [p.id for p in db.session.get(Staff, local.id).collection_points] == [here]


def test_patch_staff_rescopes_within_the_rules(api, world):
    from app.sorting.models import CollectionPoint

    admin, cafe_boss = api.staff("admin"), api.staff("alliance", organization_id=world["cafe"])
    points = [CollectionPoint(name=f"点{i}", community_id=community_id("hengkang"), kind="station") for i in (1, 2)]
    db.session.add_all(points)
    db.session.commit()
    collector = api.staff("collector", collection_point_ids=[points[0].id])
    moved = api.patch(f"/staff/{collector.id}", as_=admin, json={"collection_point_ids": [points[1].id]})
    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json()["collection_point_ids"] == [points[1].id]
    emptied = api.patch(f"/staff/{collector.id}", as_=admin, json={"collection_point_ids": []})
    assert "collection_point_ids" in assert_error(emptied, 422, "validation_error")["details"]["fields"]
    # A store for a non-merchant is refused for what it is, not for a scope field the account already has.
    other_boss = api.staff("alliance", organization_id=world["cafe"])
    wrong = api.patch(f"/staff/{other_boss.id}", as_=admin, json={"store_ids": [world["cafe_store"]]})
    assert assert_error(wrong, 422, "validation_error")["details"]["fields"] == {
        "store_ids": ["只有店员可以关联兑换点"]
    }
    clerk = api.staff("merchant", store_ids=[world["cafe_store"]], organization_id=world["cafe"])
    refused = api.patch(f"/staff/{clerk.id}", as_=cafe_boss, json={"collection_point_ids": [points[0].id]})
    assert_error(refused, 403, "forbidden")
    assert_error(api.patch(f"/staff/{clerk.id}", as_=clerk, json={"active": False}), 403, "forbidden")
    reset = api.patch(f"/staff/{clerk.id}", as_=cafe_boss, json={"password": "new-password-1"})
    assert reset.status_code == 200
    username = reset.get_json()["username"]
    login = api.post("/auth/login", json={"username": username, "password": "new-password-1"})
    assert login.status_code == 200


# --- /me and /staff/me ----------------------------------------------------------------------------------

ME_FIELDS = {
    "id",
    "nickname",
    "community_id",
    "balance",
    "co2e_g",
    "lifetime_earned",
    "expiring_points",
    "expiring_at",
}


def test_get_me_has_the_contract_fields(api):
    resident = api.resident("o-me-fields")
    me = api.get("/me", as_=resident)
    assert me.status_code == 200
    body = me.get_json()
    assert set(body) >= ME_FIELDS
    assert body["id"] == resident.id
    assert (body["balance"], body["co2e_g"], body["lifetime_earned"], body["expiring_points"]) == (0, 0, 0, 0)
    assert body["expiring_at"] is None
    assert body["expiring_on"] is None
    # the resident as the login gave it, so that a client refreshing it from here loses nothing
    login = api.post("/auth/wechat", json={"code": "stub:o-me-fields"}).get_json()["resident"]
    assert {k: body[k] for k in login} == login


def test_patch_me_changes_nickname_and_community(api):
    resident = api.resident()
    hengkang = community_id("hengkang")
    response = api.patch("/me", as_=resident, json={"nickname": "绿色小王", "community_id": hengkang})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) >= ME_FIELDS
    assert (body["nickname"], body["community_id"]) == ("绿色小王", hengkang)
    assert api.get("/me", as_=resident).get_json() == body

    only_nick = api.patch("/me", as_=resident, json={"nickname": "小王"}).get_json()
    assert (only_nick["nickname"], only_nick["community_id"]) == ("小王", hengkang)


def test_patch_me_unknown_community_is_422(api):
    resident = api.resident(community_code="hengkang")
    response = api.patch("/me", as_=resident, json={"community_id": 987654})
    assert "community_id" in assert_error(response, 422, "validation_error")["details"]["fields"]
    assert api.get("/me", as_=resident).get_json()["community_id"] == community_id("hengkang")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"balance": 1000}, "balance"),
        ({"nickname": "小王", "openid": "o-steal"}, "openid"),
        ({"nickname": ""}, "nickname"),
        ({"nickname": "长" * 33}, "nickname"),
        ({"community_id": "hengkang"}, "community_id"),
    ],
)
def test_patch_me_rejects_bad_or_unknown_fields(api, body, field):
    resident = api.resident()
    before = api.get("/me", as_=resident).get_json()
    fields = assert_error(api.patch("/me", as_=resident, json=body), 422, "validation_error")["details"]["fields"]
    assert field in fields
    assert api.get("/me", as_=resident).get_json() == before


def test_staff_calling_me_is_forbidden(api):
    admin = api.staff("admin")
    assert_error(api.get("/me", as_=admin), 403, "forbidden")
    assert_error(api.patch("/me", as_=admin, json={"nickname": "管理员"}), 403, "forbidden")


def test_staff_me_for_every_role(api, world):
    admin = world["admin"]
    callers = {
        "admin": admin,
        "worker": api.staff("worker", community_id=community_id("xinhaiwan")),
        "alliance": api.staff("alliance", organization_id=world["shops"]),
        "merchant": api.staff("merchant", store_ids=[world["shops_store"]]),
        "collector": api.staff("collector", collection_point_ids=[make_point(api, admin, "个人信息测试点")]),
    }
    for role, caller in callers.items():
        response = api.get("/staff/me", as_=caller)
        assert response.status_code == 200, (role, response.get_json())
        body = response.get_json()
        assert (body["id"], body["role"]) == (caller.id, role)
    assert api.get("/staff/me", as_=callers["merchant"]).get_json()["store_ids"] == [world["shops_store"]]
    assert api.get("/staff/me", as_=callers["worker"]).get_json()["community_id"] == community_id("xinhaiwan")


# --- residents and community scope ----------------------------------------------------------------------


def test_worker_sees_only_its_own_community(api):
    admin = api.staff("admin")
    worker = api.staff("worker", community_id=community_id("hengkang"))
    home = [api.resident(community_code="hengkang").id for _ in range(2)]
    away = api.resident(community_code="xinhaiwan").id
    nowhere = api.resident().id

    listed = api.get("/residents?limit=100", as_=worker)
    assert listed.status_code == 200
    assert {r["id"] for r in listed.get_json()["items"]} == set(home)

    assert_error(api.get(f"/residents?community_id={community_id('xinhaiwan')}", as_=worker), 403, "forbidden")
    same = api.get(f"/residents?community_id={community_id('hengkang')}", as_=worker).get_json()
    assert {r["id"] for r in same["items"]} == set(home)

    everyone = {r["id"] for r in api.get("/residents?limit=100", as_=admin).get_json()["items"]}
    assert everyone >= {*home, away, nowhere}


def test_residents_list_is_staff_only(api, world):
    resident = api.resident()
    alliance = api.staff("alliance", organization_id=world["cafe"])
    assert_error(api.get("/residents", as_=resident), 403, "forbidden")
    assert_error(api.get("/residents", as_=alliance), 403, "forbidden")
    assert_error(api.get("/residents"), 401, "unauthorized")


def test_worker_freezes_only_residents_of_its_community(api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    away = api.resident(community_code="xinhaiwan")
    home = api.resident(community_code="hengkang")
    body = {"status": "frozen", "reason": "多次违规投放"}

    assert_error(api.patch(f"/residents/{away.id}", as_=worker, json=body), 404, "not_found")
    assert api.get("/me", as_=away).status_code == 200

    response = api.patch(f"/residents/{home.id}", as_=worker, json=body)
    assert response.status_code == 200
    assert response.get_json()["status"] == "frozen"
    assert_error(api.get("/me", as_=home), 403, "account_frozen")

    frozen = api.get("/residents?status=frozen", as_=worker).get_json()["items"]
    assert [r["id"] for r in frozen] == [home.id]

    again = api.patch(f"/residents/{home.id}", as_=worker, json={"status": "frozen", "reason": "重复提交"})
    assert again.status_code == 200  # already so: the same answer, and nothing more on record
    assert again.get_json()["status"] == "frozen"
    recorded = sa.select(sa.func.count()).select_from(AuditEvent).filter_by(action="resident.frozen")
    assert db.session.scalar(recorded) == 1


def test_a_blank_optional_text_is_empty_not_missing(api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    error = assert_error(api.get("/residents?q=%20%20", as_=worker), 422, "validation_error")
    assert error["details"]["fields"] == {"q": ["不能为空"]}  # a filter is never required
    error = assert_error(api.patch("/me", as_=api.resident(), json={"nickname": " "}), 422, "validation_error")
    assert error["details"]["fields"] == {"nickname": ["不能为空"]}


def test_a_freeze_by_the_platforms_admin_is_lifted_by_an_admin_only(api):
    """经发办 freezes an account over suspected fraud across communities; the community's worker, who may freeze and
    thaw its own residents, cannot undo that. A freeze the worker made, the worker (or an admin) lifts."""
    worker = api.staff("worker", community_id=community_id("hengkang"))
    admin = api.staff("admin")
    resident = api.resident(community_code="hengkang")
    freeze, thaw = {"status": "frozen", "reason": "疑似刷分，平台核查中"}, {"status": "active", "reason": "居民申诉"}
    assert api.patch(f"/residents/{resident.id}", as_=admin, json=freeze).status_code == 200
    error = assert_error(api.patch(f"/residents/{resident.id}", as_=worker, json=thaw), 403, "forbidden")
    assert error["message"] == "该账户由平台管理员冻结，请联系经发办解冻"
    frozen = api.get("/residents?status=frozen", as_=worker).get_json()["items"]
    assert [r["id"] for r in frozen] == [resident.id]
    assert api.patch(f"/residents/{resident.id}", as_=admin, json=thaw).status_code == 200

    assert api.patch(f"/residents/{resident.id}", as_=worker, json=freeze).status_code == 200  # the worker's own
    assert api.patch(f"/residents/{resident.id}", as_=worker, json=thaw).get_json()["status"] == "active"

    # the worker froze first, then 经发办 froze too: the freeze is the admin's now
    assert api.patch(f"/residents/{resident.id}", as_=worker, json=freeze).status_code == 200
    assert api.patch(f"/residents/{resident.id}", as_=admin, json=freeze).status_code == 200
    assert_error(api.patch(f"/residents/{resident.id}", as_=worker, json=thaw), 403, "forbidden")


def test_staff_find_residents_by_nickname_or_id_within_their_scope(api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    admin = api.staff("admin")
    home = api.resident(community_code="hengkang")
    away = api.resident(community_code="xinhaiwan")
    other = api.resident(community_code="hengkang")
    for resident, nickname in ((home, "Lin 小林"), (away, "小林_2"), (other, "王阿姨")):
        assert api.patch("/me", as_=resident, json={"nickname": nickname}).status_code == 200

    def found(caller, q: str) -> list[int]:
        return [r["id"] for r in api.get("/residents", as_=caller, query_string={"q": q}).get_json()["items"]]

    assert found(worker, "小林") == [home.id]  # the other 小林 lives in another community
    assert sorted(found(admin, "小林")) == sorted([home.id, away.id])
    assert found(admin, "lin") == [home.id]  # any case
    assert found(admin, "_") == [away.id]  # a LIKE wildcard is a plain character here
    assert found(worker, str(other.id)) == [other.id]
    assert found(worker, str(away.id)) == []
    assert found(admin, "123456789012345678") == found(admin, "99999999999999999999") == []
    assert (
        "q"
        in assert_error(api.get("/residents?q=" + "长" * 33, as_=admin), 422, "validation_error")["details"]["fields"]
    )


def test_freezing_an_unknown_resident_is_404(api):
    admin = api.staff("admin")
    assert_error(
        api.patch("/residents/987654", as_=admin, json={"status": "frozen", "reason": "不存在"}), 404, "not_found"
    )


def test_worker_creates_collection_points_only_in_its_community(api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    away = {"name": "鑫海湾越权投放点", "community_id": community_id("xinhaiwan"), "kind": "station"}
    assert_error(api.post("/collection-points", as_=worker, json=away), 403, "forbidden")

    home = {"name": "恒康新投放点", "community_id": community_id("hengkang"), "kind": "station"}
    response = api.post("/collection-points", as_=worker, json=home)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["community_id"] == community_id("hengkang")
    names = {p["name"] for p in api.get("/collection-points?limit=100").get_json()["items"]}
    assert "恒康新投放点" in names
    assert "鑫海湾越权投放点" not in names


def test_a_community_code_with_a_trailing_newline_is_refused(api):
    admin = api.staff("admin")
    response = api.post("/communities", as_=admin, json={"code": "abc\n", "name": "新社区"})
    error = assert_error(response, 422, "validation_error")
    assert "code" in error["details"]["fields"]


def test_a_username_is_one_name_in_any_case(api):
    """Otherwise "Admin" could sit beside "admin" in staff lists; and a login matches whatever case is typed."""
    admin = api.staff("admin")
    body = _staff_body("case.worker", "worker", community_id=community_id("hengkang"))
    assert api.post("/staff", as_=admin, json=body).status_code == 201
    look_alike = api.post("/staff", as_=admin, json={**body, "username": "Case.Worker"})
    assert_error(look_alike, 409, "duplicate")
    assert (
        db.session.scalar(sa.select(sa.func.count()).select_from(Staff).filter(Staff.username.ilike("case.worker")))
        == 1
    )
    login = api.post("/auth/login", json={"username": "CASE.worker", "password": PASSWORD})
    assert login.status_code == 200
    assert login.get_json()["staff"]["username"] == "case.worker"


def test_a_merchants_stores_belong_to_its_organisation(api, world):
    """Otherwise another organisation's alliance account would manage, and could take over, a clerk of this store."""
    admin = world["admin"]
    body = _staff_body("cross.clerk", "merchant", organization_id=world["shops"], store_ids=[world["cafe_store"]])
    error = assert_error(api.post("/staff", as_=admin, json=body), 422, "validation_error")
    assert str(world["cafe_store"]) in error["details"]["fields"]["store_ids"][0]
    assert db.session.scalar(sa.select(Staff.id).filter_by(username="cross.clerk")) is None
    clerk = api.staff("merchant", organization_id=world["shops"], store_ids=[world["shops_store"]])
    moved = api.patch(f"/staff/{clerk.id}", as_=admin, json={"store_ids": [world["cafe_store"]]})
    assert_error(moved, 422, "validation_error")
    assert api.patch(f"/staff/{clerk.id}", as_=admin, json={"store_ids": [world["shops_store"]]}).status_code == 200


def test_a_password_reset_is_audited_without_the_password(api):
    admin, worker = api.staff("admin"), api.staff("worker", community_id=community_id("hengkang"))
    assert api.patch(f"/staff/{worker.id}", as_=admin, json={"password": "another-pass-1"}).status_code == 200
    event = db.session.scalars(sa.select(AuditEvent).filter_by(action="staff.update", target_id=str(worker.id))).one()
    assert event.details == {"password_reset": True}
    assert "another-pass-1" not in str(event.details)


@pg_concurrency
def test_two_admins_rescoping_one_merchant_at_once_take_turns(app, api, world):
    """Each replaces the links the other saw: without the account's lock the second found its rows gone (a 500)."""
    admins = [api.staff("admin"), api.staff("admin")]
    stores = [make_store(f"咖啡社兑换点{i}", world["cafe"]) for i in range(2)]
    clerk = api.staff("merchant", organization_id=world["cafe"], store_ids=[world["cafe_store"]])
    db.session.commit()  # the test's session ends the transaction its logins read the accounts in (FOR SHARE)
    path = f"/api/v1/staff/{clerk.id}"
    responses = race(app, lambda c, i: c.patch(path, json={"store_ids": [stores[i]]}, headers=admins[i].auth), 2)
    assert [r.status_code for r in responses] == [200, 200]
    db.session.expire_all()
    linked = db.session.get(Staff, clerk.id).stores
    assert len(linked) == 1
    assert linked[0].id in stores


@pg_concurrency
def test_two_admins_deactivating_each_other_at_once_leave_one_active(app, api):
    """The second change waits for the first, then finds its own account deactivated: the last admin remains."""
    first, second = api.staff("admin"), api.staff("admin")
    db.session.commit()
    first_deactivated = sa.update(Staff).where(Staff.id == first.id).values(active=False, sessions_valid_after=utcnow())
    response = during_an_uncommitted(
        app,
        first_deactivated,  # the second admin's change, in flight
        lambda: app.test_client().patch(f"/api/v1/staff/{second.id}", json={"active": False}, headers=first.auth),
    )
    assert_error(response, 401, "unauthorized")
    db.session.expire_all()
    assert db.session.get(Staff, second.id).active


@pg_concurrency
def test_two_admins_deactivating_each_other_in_a_race_leave_one_active(app, api):
    admins = [api.staff("admin"), api.staff("admin")]
    db.session.commit()
    responses = race(
        app,
        lambda c, i: c.patch(f"/api/v1/staff/{admins[1 - i].id}", json={"active": False}, headers=admins[i].auth),
        2,
    )
    assert sorted(r.status_code for r in responses) == [200, 401]
    db.session.expire_all()
    assert [db.session.get(Staff, admin.id).active for admin in admins].count(True) == 1


@pg_concurrency
def test_a_change_to_a_collectors_account_does_not_hold_up_its_deposits(app, api, monkeypatch):
    """The change locks the account FOR NO KEY UPDATE: a deposit, which only refers to the collector (a foreign key,
    FOR KEY SHARE), goes through while the change is in flight. FOR UPDATE held it until the change committed."""
    from types import SimpleNamespace

    from app.people import service as people_service

    admin = api.staff("admin")
    point = make_point(api, admin, "恒康锁测试站")
    collector, resident = api.staff("collector", collection_point_ids=[point]), api.resident()
    body = {"member_code": api.member_code(resident), "collection_point_id": point,
            "items": [{"category": "paper", "weight_g": 1000}]}  # fmt: skip
    db.session.commit()
    locked, release, answers = threading.Event(), threading.Event(), {}
    record = people_service.audit.record

    def record_when_released(*args, **kwargs):  # the change holds its lock here
        locked.set()
        release.wait(10)
        return record(*args, **kwargs)

    monkeypatch.setattr(people_service, "audit", SimpleNamespace(record=record_when_released))

    def change():
        client = app.test_client()
        answers["change"] = client.patch(
            f"/api/v1/staff/{collector.id}", json={"display_name": "王师傅"}, headers=admin.auth
        )

    def deposit():
        answers["deposit"] = app.test_client().post("/api/v1/deposits", json=body, headers=collector.auth)

    changing = threading.Thread(target=change)
    changing.start()
    assert locked.wait(10)
    depositing = threading.Thread(target=deposit)
    depositing.start()
    depositing.join(timeout=5)
    went_through = not depositing.is_alive()
    release.set()
    changing.join(10)
    depositing.join(10)
    assert went_through
    assert answers["deposit"].status_code == 201
    assert answers["change"].status_code == 200


def test_callers_without_a_role_over_residents_are_refused_before_their_request_is_read(api, world):
    """A collector, an alliance member or a resident gets 403 whatever it sends, not a validation error about a
    resident list or status change it could never ask for; nobody's status changes."""
    target = api.resident(community_code="hengkang")
    collector = api.staff("collector", collection_point_ids=[make_point(api, world["admin"], "恒康回收站")],
                          community_id=community_id("hengkang"))  # fmt: skip
    alliance = api.staff("alliance", organization_id=world["cafe"])
    for caller in (collector, alliance, api.resident(community_code="hengkang")):
        assert_error(api.get("/residents?status=bogus", as_=caller), 403, "forbidden")
        assert_error(api.get("/residents?limit=0", as_=caller), 403, "forbidden")
        assert_error(api.patch(f"/residents/{target.id}", as_=caller, json={}), 403, "forbidden")
        assert_error(api.patch(f"/residents/{target.id}", as_=caller, json={"status": "frozen"}), 403, "forbidden")
    assert api.get("/me", as_=target).status_code == 200


def test_a_page_of_staff_costs_the_same_statements_however_many_are_on_it(api, app):
    """Each staff member's stores and points are in the answer: read for the page at once, not one by one."""
    admin = api.staff("admin")

    def statements_for_a_page() -> int:
        seen = []
        listener = lambda *args: seen.append(args[2])  # noqa: E731
        sa.event.listen(db.engine, "before_cursor_execute", listener)
        try:
            assert api.get("/staff?limit=100", as_=admin).status_code == 200
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", listener)
        return len(seen)

    few = statements_for_a_page()
    point = make_point(api, admin, "恒康计数站")
    for _ in range(5):
        api.staff("worker", community_id=community_id("hengkang"))
        api.staff("collector", collection_point_ids=[point])
    assert statements_for_a_page() == few
