"""Collection points: who may create, change and retire them, validation, and the public listing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.audit.models import AuditEvent
from app.db import db
from app.people.models import Staff
from app.sorting.models import CATEGORIES, CollectionPoint
from tests.conftest import assert_error, community_id, count, during_an_uncommitted, pg_concurrency, race


def point_body(name: str = "恒康一号站", community: str = "hengkang", **extra) -> dict:
    return {"name": name, "community_id": community_id(community), "kind": "station", **extra}


def make_point(api, admin, name: str = "恒康一号站", community: str = "hengkang", **extra) -> dict:
    response = api.post("/collection-points", as_=admin, json=point_body(name, community, **extra))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def listed_ids(api, query: str = "") -> list[int]:
    response = api.get(f"/collection-points{query}")
    assert response.status_code == 200, response.get_json()
    return [p["id"] for p in response.get_json()["items"]]


def poster_token(api, caller, point_id: int) -> str:
    response = api.get(f"/collection-points/{point_id}/qr", as_=caller)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["token"]


@pytest.fixture
def admin(api):
    return api.staff("admin")


@pytest.fixture
def worker(api):
    return api.staff("worker", community_id=community_id("hengkang"))


# --- create ------------------------------------------------------------------------------------------------


def test_admin_creates_a_point_with_defaults(api, admin):
    response = api.post(
        "/collection-points",
        as_=admin,
        json=point_body("鑫海湾智能箱", "xinhaiwan", kind="smart_bin", address="海湾路 8 号"),
    )
    assert response.status_code == 201, response.get_json()
    point = response.get_json()
    assert isinstance(point["id"], int)
    assert point["name"] == "鑫海湾智能箱"
    assert point["community_id"] == community_id("xinhaiwan")
    assert point["kind"] == "smart_bin"
    assert point["address"] == "海湾路 8 号"
    assert point["active"] is True
    assert (point["lat"], point["lng"], point["geofence_m"]) == (None, None, None)
    assert point["categories"] == list(CATEGORIES)
    assert "qr_secret" not in point
    assert api.get(f"/collection-points/{point['id']}").get_json()["name"] == "鑫海湾智能箱"


def test_a_communitys_points_have_different_names(api, admin):
    """Residents and posters tell points apart by name. Another community may use it; a retired point keeps its name,
    to be brought back rather than made again."""
    first = api.post("/collection-points", as_=admin, json=point_body("海湾一号站", "hengkang")).get_json()
    again = api.post("/collection-points", as_=admin, json=point_body("海湾一号站", "hengkang"))
    error = assert_error(again, 409, "duplicate")
    assert error["message"] == "本社区已有名为「海湾一号站」的回收点"
    assert error["details"] == {"collection_point_id": first["id"]}  # the point to open instead
    assert api.post("/collection-points", as_=admin, json=point_body("海湾一号站", "xinhaiwan")).status_code == 201
    other = api.post("/collection-points", as_=admin, json=point_body("海湾二号站", "hengkang")).get_json()
    assert_error(
        api.patch(f"/collection-points/{other['id']}", as_=admin, json={"name": "海湾一号站"}), 409, "duplicate"
    )
    moved = api.patch(f"/collection-points/{other['id']}", as_=admin, json={"community_id": community_id("xinhaiwan")})
    assert moved.status_code == 200  # 海湾二号站 is free there
    assert api.delete(f"/collection-points/{first['id']}", as_=admin).status_code in (200, 204)
    retired = api.post("/collection-points", as_=admin, json=point_body("海湾一号站", "hengkang"))
    error = assert_error(retired, 409, "duplicate")
    assert error["message"] == "本社区已有名为「海湾一号站」的回收点（已停用，可在已停用列表中重新启用）"
    assert error["details"] == {"collection_point_id": first["id"]}
    db.session.expire_all()
    assert db.session.get(CollectionPoint, other["id"]).name == "海湾二号站"  # the refused rename left it as it was


def test_worker_creates_points_only_in_its_own_community(api, worker):
    response = api.post(
        "/collection-points", as_=worker, json=point_body("恒康二号站", lat=31.2, lng=121.5, geofence_m=100)
    )
    assert response.status_code == 201, response.get_json()
    assert (response.get_json()["lat"], response.get_json()["lng"], response.get_json()["geofence_m"]) == (
        31.2,
        121.5,
        100,
    )
    before = count(CollectionPoint)
    assert_error(api.post("/collection-points", as_=worker, json=point_body("越界站", "xinhaiwan")), 403, "forbidden")
    assert count(CollectionPoint) == before


def test_collectors_residents_and_anonymous_cannot_create_points(api, admin):
    point = make_point(api, admin)
    collector = api.staff("collector", collection_point_ids=[point["id"]])
    resident = api.resident()
    before = count(CollectionPoint)
    assert_error(api.post("/collection-points", as_=collector, json=point_body("回收员的站")), 403, "forbidden")
    assert_error(api.post("/collection-points", as_=resident, json=point_body("居民的站")), 403, "forbidden")
    assert_error(api.post("/collection-points", json=point_body("匿名的站")), 401, "unauthorized")
    assert count(CollectionPoint) == before


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"kind": "landfill"}, "kind"),
        ({"lat": 31.2}, "lat"),
        ({"lng": 121.5}, "lat"),
        ({"geofence_m": 100}, "geofence_m"),
        ({"lat": 91, "lng": 121.5}, "lat"),
        ({"lat": 31.2, "lng": 121.5, "geofence_m": 0}, "geofence_m"),
        ({"categories": ["paper", "plutonium"]}, "categories"),
        ({"categories": []}, "categories"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "恒康\u202e站一号"}, "name"),  # a bidi override shows the name in another order
        ({"name": "恒康\n一号站"}, "name"),
        ({"address": "海湾路\x07 8 号"}, "address"),
        ({"categories": ["paper", "paper"]}, "categories"),
        ({"colour": "green"}, "colour"),
    ],
)
def test_invalid_points_are_validation_errors(api, admin, extra, field):
    before = count(CollectionPoint)
    error = assert_error(api.post("/collection-points", as_=admin, json=point_body(**extra)), 422, "validation_error")
    assert field in error["details"]["fields"], error
    assert count(CollectionPoint) == before


def test_names_are_kept_without_surrounding_spaces(api, admin):
    point = make_point(api, admin, "  恒康一号站 ", address=" 海湾路 8 号  ")
    assert (point["name"], point["address"]) == ("恒康一号站", "海湾路 8 号")
    error = assert_error(
        api.patch(f"/collection-points/{point['id']}", as_=admin, json={"name": "\u3000 "}), 422, "validation_error"
    )
    assert error["details"]["fields"] == {"name": ["不能为空"]}  # blank is not a length to fix
    assert api.get(f"/collection-points/{point['id']}").get_json()["name"] == "恒康一号站"
    body = {"name": " ", "community_id": point["community_id"], "kind": "station"}
    error = assert_error(api.post("/collection-points", as_=admin, json=body), 422, "validation_error")
    assert error["details"]["fields"] == {"name": ["必填项"]}
    assert api.patch(f"/collection-points/{point['id']}", as_=admin, json={"address": " "}).status_code == 200


def test_missing_fields_and_unknown_community(api, admin):
    error = assert_error(api.post("/collection-points", as_=admin, json={"name": "x"}), 422, "validation_error")
    assert {"community_id", "kind"} <= set(error["details"]["fields"])
    body = {"name": "无处之站", "community_id": 999999, "kind": "station"}
    error = assert_error(api.post("/collection-points", as_=admin, json=body), 422, "validation_error")
    assert "community_id" in error["details"]["fields"]


# --- list ----------------------------------------------------------------------------------------------------


def test_list_filters_by_community(api, admin):
    a = make_point(api, admin, "恒康甲")
    b = make_point(api, admin, "恒康乙")
    c = make_point(api, admin, "鑫海湾甲", "xinhaiwan")
    assert listed_ids(api) == [a["id"], b["id"], c["id"]]
    assert listed_ids(api, f"?community_id={community_id('hengkang')}") == [a["id"], b["id"]]
    assert listed_ids(api, f"?community_id={community_id('xinhaiwan')}") == [c["id"]]
    page = api.get("/collection-points?limit=2").get_json()
    assert [p["id"] for p in page["items"]] == [a["id"], b["id"]]
    assert page["next"]
    rest = api.get(f"/collection-points?limit=2&cursor={page['next']}").get_json()
    assert [p["id"] for p in rest["items"]] == [c["id"]]
    assert rest["next"] is None


def test_list_filters_by_kind_and_category(api, admin):
    paper_station = make_point(api, admin, "纸站", categories=["paper", "plastic"])
    glass_bin = make_point(api, admin, "玻璃箱", kind="smart_bin", categories=["glass"], lat=31.01, lng=121.0)
    everything = make_point(api, admin, "全品类站", lat=31.002, lng=121.0)
    assert listed_ids(api, "?category=glass") == [glass_bin["id"], everything["id"]]
    assert listed_ids(api, "?category=plastic") == [paper_station["id"], everything["id"]]
    assert listed_ids(api, "?kind=smart_bin") == [glass_bin["id"]]
    assert listed_ids(api, "?kind=station&category=glass") == [everything["id"]]
    assert listed_ids(api, "?category=textile&kind=smart_bin") == []
    nearest = api.get("/collection-points?near=31.0,121.0&category=glass").get_json()["items"]
    assert [p["id"] for p in nearest] == [everything["id"], glass_bin["id"]]
    # a point that stops taking glass drops out of the glass list
    api.patch(f"/collection-points/{everything['id']}", as_=admin, json={"categories": ["paper"]})
    assert listed_ids(api, "?category=glass") == [glass_bin["id"]]
    for query in ("?category=gold", "?kind=tower", "?category="):
        assert_error(api.get(f"/collection-points{query}"), 422, "validation_error")


def test_near_sorts_by_distance_and_reports_metres(api, admin):
    # Along one meridian the haversine distance is R × Δφ: 0.002° ≈ 222 m, 0.01° ≈ 1112 m, 0.05° ≈ 5560 m.
    far = make_point(api, admin, "远站", lat=31.05, lng=121.0)
    near = make_point(api, admin, "近站", lat=31.002, lng=121.0)
    middle = make_point(api, admin, "中站", "xinhaiwan", lat=31.01, lng=121.0)
    make_point(api, admin, "无坐标站")
    items = api.get("/collection-points?near=31.0,121.0").get_json()["items"]
    assert [(p["id"], p["distance_m"]) for p in items] == [(near["id"], 222), (middle["id"], 1112), (far["id"], 5560)]

    first = api.get("/collection-points?near=31.0,121.0&limit=2").get_json()
    assert [p["id"] for p in first["items"]] == [near["id"], middle["id"]]
    # a point opened nearer between the two pages shifts nothing: the cursor is the last (distance, id) seen
    make_point(api, admin, "新开站", "xinhaiwan", lat=31.001, lng=121.0)
    second = api.get(f"/collection-points?near=31.0,121.0&limit=2&cursor={first['next']}").get_json()
    assert [p["id"] for p in second["items"]] == [far["id"]]
    assert second["next"] is None

    hengkang = api.get(f"/collection-points?near=31.0,121.0&community_id={community_id('hengkang')}").get_json()
    assert [p["id"] for p in hengkang["items"]] == [near["id"], far["id"]]
    # without near, no distance is claimed
    assert {p["distance_m"] for p in api.get("/collection-points").get_json()["items"]} == {None}


@pytest.mark.parametrize("near", ["31.0", "abc,def", "95.0,121.0", "31.0,181.0", "31.0;121.0", "%2031.0,121.0"])
def test_bad_near_is_a_validation_error(api, near):
    error = assert_error(api.get(f"/collection-points?near={near}"), 422, "validation_error")
    assert "near" in error["details"]["fields"]


def test_a_malformed_near_says_what_it_should_look_like(api):
    error = assert_error(api.get("/collection-points?near=31.0"), 422, "validation_error")
    assert error["details"]["fields"]["near"] == ["应为“纬度,经度”，如 30.8706,121.5853（GCJ-02 坐标）"]


def test_near_takes_spaces_around_its_comma(api, admin):
    """As a client joining two numbers often writes them: `${lat}, ${lng}`."""
    point = make_point(api, admin, "有坐标站", lat=31.002, lng=121.0)
    for near in ("31.0,%20121.0", "31.0%20,121.0", "31.0%20,%20%20121.0"):
        items = api.get(f"/collection-points?near={near}").get_json()["items"]
        assert [(p["id"], p["distance_m"]) for p in items] == [(point["id"], 222)]


def test_a_cursor_measured_from_another_position_is_refused(api, admin):
    """The next page asked from where the phone is now would skip or repeat points: the cursor holds its near."""
    for i in range(3):
        make_point(api, admin, f"游标站{i}", lat=31.0 + i / 100, lng=121.0)
    first = api.get("/collection-points?near=31.0,121.0&limit=1").get_json()
    moved = api.get(f"/collection-points?near=31.01,121.0&limit=1&cursor={first['next']}")
    assert assert_error(moved, 422, "validation_error")["details"]["fields"] == {"cursor": ["分页游标无效"]}
    same_place = api.get(f"/collection-points?near=31.00000,121.0&limit=1&cursor={first['next']}")
    assert [p["name"] for p in same_place.get_json()["items"]] == ["游标站1"]


@pytest.mark.parametrize(
    "query", ["?cursor=garbage!", "?near=31.0,121.0&cursor=garbage!", "?near=31.0,121.0&cursor=LTE"]
)
def test_bad_cursor_is_a_validation_error(api, admin, query):
    make_point(api, admin, "有坐标站", lat=31.0, lng=121.0)
    error = assert_error(api.get(f"/collection-points{query}"), 422, "validation_error")
    assert "cursor" in error["details"]["fields"]


def test_a_cursor_from_the_other_order_is_refused_not_misread(api, admin):
    """By id and by distance, the cursors differ in kind: one from the other list would start a page elsewhere."""
    for i in range(3):
        make_point(api, admin, f"游标站{i}", lat=31.0 + i / 100, lng=121.0)
    by_id = api.get("/collection-points?limit=1").get_json()["next"]
    by_distance = api.get("/collection-points?near=31.0,121.0&limit=1").get_json()["next"]
    for query in (f"near=31.0,121.0&cursor={by_id}", f"cursor={by_distance}"):
        error = assert_error(api.get(f"/collection-points?{query}"), 422, "validation_error")
        assert "cursor" in error["details"]["fields"]


def test_unknown_point_is_404(api):
    assert_error(api.get("/collection-points/999999"), 404, "not_found")


# --- update --------------------------------------------------------------------------------------------------


def test_a_point_moves_community_only_without_leaving_its_collectors_behind(api, admin):
    point = make_point(api, admin)
    local = api.staff("collector", community_id=community_id("hengkang"), collection_point_ids=[point["id"]])
    api.staff("collector", collection_point_ids=[point["id"]])  # no community of its own: may serve anywhere
    move = {"community_id": community_id("xinhaiwan")}
    error = assert_error(api.patch(f"/collection-points/{point['id']}", as_=admin, json=move), 422, "validation_error")
    assert error["details"]["fields"]["community_id"] == [
        f"该回收点的回收员属于原社区，请先调整他们的回收点：{db.session.get(Staff, local.id).username}"
    ]
    assert db.session.get(CollectionPoint, point["id"]).community_id == community_id("hengkang")
    rescoped = api.patch(
        f"/staff/{local.id}", as_=admin, json={"collection_point_ids": [make_point(api, admin, "恒康二号站")["id"]]}
    )
    assert rescoped.status_code == 200, rescoped.get_json()
    moved = api.patch(f"/collection-points/{point['id']}", as_=admin, json=move)
    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json()["community_id"] == community_id("xinhaiwan")


def test_admin_and_own_worker_patch_a_point(api, admin, worker):
    point = make_point(api, admin)
    response = api.patch(f"/collection-points/{point['id']}", as_=admin, json={"name": "恒康新站"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["name"] == "恒康新站"
    response = api.patch(
        f"/collection-points/{point['id']}",
        as_=worker,
        json={"lat": 31.1, "lng": 121.2, "geofence_m": 150, "categories": ["paper", "glass"]},
    )
    assert response.status_code == 200, response.get_json()
    updated = response.get_json()
    assert (updated["lat"], updated["lng"], updated["geofence_m"]) == (31.1, 121.2, 150)
    assert updated["categories"] == ["paper", "glass"]
    assert updated["name"] == "恒康新站"
    assert api.get(f"/collection-points/{point['id']}").get_json() == updated


def test_patch_is_scoped_and_validated(api, admin, worker):
    mine = make_point(api, admin)
    theirs = make_point(api, admin, "鑫海湾站", "xinhaiwan")
    assert_error(api.patch(f"/collection-points/{theirs['id']}", as_=worker, json={"name": "抢"}), 403, "forbidden")
    moved = {"community_id": community_id("xinhaiwan")}
    assert_error(api.patch(f"/collection-points/{mine['id']}", as_=worker, json=moved), 403, "forbidden")
    resident = api.resident()
    assert_error(api.patch(f"/collection-points/{mine['id']}", as_=resident, json={"name": "x"}), 403, "forbidden")
    assert_error(api.patch(f"/collection-points/{mine['id']}", json={"name": "x"}), 401, "unauthorized")

    error = assert_error(
        api.patch(f"/collection-points/{mine['id']}", as_=admin, json={"lat": 31.0}), 422, "validation_error"
    )
    assert "lat" in error["details"]["fields"]
    error = assert_error(
        api.patch(f"/collection-points/{mine['id']}", as_=admin, json={"geofence_m": 100}), 422, "validation_error"
    )
    assert "geofence_m" in error["details"]["fields"]
    error = assert_error(
        api.patch(f"/collection-points/{mine['id']}", as_=admin, json={"kind": "x"}), 422, "validation_error"
    )
    assert error["details"]["fields"]["kind"] == [
        "必须是以下之一：station（定时定点投放站）、smart_bin（智能回收箱）、recycling_service_point（惠民回收服务点）"
    ]
    assert_error(api.patch("/collection-points/999999", as_=admin, json={"name": "x"}), 404, "not_found")
    for nowhere in (999_999, 2**31 - 2):  # found by schemathesis on PostgreSQL: a foreign key error, a 500
        error = assert_error(
            api.patch(f"/collection-points/{mine['id']}", as_=admin, json={"community_id": nowhere}),
            422,
            "validation_error",
        )
        assert "community_id" in error["details"]["fields"]

    fenced = make_point(api, admin, "围栏站", lat=31.0, lng=121.0, geofence_m=100)
    unplace = {"lat": None, "lng": None}
    error = assert_error(
        api.patch(f"/collection-points/{fenced['id']}", as_=admin, json=unplace), 422, "validation_error"
    )
    assert "清空「电子围栏半径」" in error["details"]["fields"]["lat"][0]  # what to do first
    assert api.get(f"/collection-points/{fenced['id']}").get_json()["lat"] == 31.0
    # half a position would leave distances undefined for ?near= and the geofence
    for half in ({"lat": 31.0, "lng": None}, {"lat": None, "lng": 121.0}):
        error = assert_error(
            api.patch(f"/collection-points/{mine['id']}", as_=admin, json=half), 422, "validation_error"
        )
        assert "lat" in error["details"]["fields"]
    assert_error(api.patch(f"/collection-points/{fenced['id']}", as_=admin, json={"lat": 31.0, "lng": None}), 422,
                 "validation_error")  # fmt: skip
    assert api.get("/collection-points?near=31.0,121.0").status_code == 200

    # nothing above changed the points
    assert api.get(f"/collection-points/{mine['id']}").get_json()["name"] == mine["name"]
    assert api.get(f"/collection-points/{mine['id']}").get_json()["geofence_m"] is None
    assert api.get(f"/collection-points/{theirs['id']}").get_json()["name"] == theirs["name"]


# --- retire --------------------------------------------------------------------------------------------------


def test_delete_retires_the_point_and_its_posters(api, admin, worker):
    point = make_point(api, admin)
    other = make_point(api, admin, "恒康乙")
    token = poster_token(api, admin, point["id"])
    resident = api.resident()

    assert_error(api.delete(f"/collection-points/{point['id']}", as_=resident), 403, "forbidden")
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    assert_error(api.delete(f"/collection-points/{point['id']}", as_=outsider), 403, "forbidden")
    assert_error(api.delete(f"/collection-points/{point['id']}"), 401, "unauthorized")
    assert point["id"] in listed_ids(api)

    response = api.delete(f"/collection-points/{point['id']}", as_=worker)
    assert response.status_code == 204
    assert listed_ids(api) == [other["id"]]
    assert listed_ids(api, f"?community_id={community_id('hengkang')}") == [other["id"]]
    assert api.get(f"/collection-points/{point['id']}").get_json()["active"] is False

    assert_error(api.post("/scans", as_=resident, json={"token": token}), 422, "invalid_qr")
    assert api.get("/me", as_=resident).get_json()["balance"] == 0
    # its poster can no longer be printed or changed, as it would check nobody in
    for suffix in ("", ".png", ".svg"):
        assert_error(api.get(f"/collection-points/{point['id']}/qr{suffix}", as_=worker), 409, "invalid_state")
    assert_error(api.delete("/collection-points/999999", as_=admin), 404, "not_found")
    # retiring it again is answered the same and records nothing more
    assert api.delete(f"/collection-points/{point['id']}", as_=worker).status_code == 204
    from app.audit.models import AuditEvent

    actions = db.session.scalars(
        sa.select(AuditEvent.action).filter_by(target_type="collection_point", target_id=str(point["id"]))
    ).all()
    assert actions.count("collection_point.deactivate") == 1
    # rotating stays open, so a leaked poster is revoked before the point comes back
    assert api.post(f"/collection-points/{point['id']}/qr/rotate", as_=worker).status_code == 200
    assert api.patch(f"/collection-points/{point['id']}", as_=worker, json={"active": True}).status_code == 200
    assert_error(api.post("/scans", as_=resident, json={"token": token}), 422, "invalid_qr")


def test_retired_points_are_listed_on_asking_so_they_can_be_brought_back(api, admin, worker):
    kept = make_point(api, admin, "恒康甲")
    retired = make_point(api, admin, "恒康乙")
    token = poster_token(api, admin, retired["id"])
    assert api.delete(f"/collection-points/{retired['id']}", as_=worker).status_code == 204

    assert listed_ids(api) == [kept["id"]]
    assert listed_ids(api, "?active=true") == [kept["id"]]
    assert listed_ids(api, "?active=false") == [retired["id"]]
    assert listed_ids(api, f"?active=false&community_id={community_id('xinhaiwan')}") == []
    error = assert_error(api.get("/collection-points?active=no"), 422, "validation_error")
    assert "active" in error["details"]["fields"]

    response = api.patch(f"/collection-points/{retired['id']}", as_=worker, json={"active": True})
    assert response.status_code == 200, response.get_json()
    assert listed_ids(api, "?active=false") == []
    # brought back, its old posters work again
    assert api.post("/scans", as_=api.resident(), json={"token": token}).status_code == 201


def test_patching_active_is_audited_as_retiring_or_bringing_back(api, admin):
    from app.audit.models import AuditEvent

    point = make_point(api, admin)
    path = f"/collection-points/{point['id']}"
    assert api.patch(path, as_=admin, json={"name": "恒康改名站", "active": False}).get_json()["active"] is False
    assert api.patch(path, as_=admin, json={"active": False}).status_code == 200  # already so: nothing recorded
    assert api.patch(path, as_=admin, json={"active": True}).get_json()["active"] is True
    actions = db.session.scalars(
        sa.select(AuditEvent.action)
        .filter_by(target_type="collection_point", target_id=str(point["id"]))
        .order_by(AuditEvent.id)
    ).all()
    assert actions == [
        "collection_point.create",
        "collection_point.update",
        "collection_point.deactivate",
        "collection_point.reactivate",
    ]


def test_ids_beyond_what_the_database_holds_are_not_found_or_invalid(api):
    """On PostgreSQL these would overflow INTEGER; they must be a clean 404 or 422, never a 500."""
    admin = api.staff("admin")
    huge = 99_999_999_999
    assert_error(api.get(f"/collection-points/{huge}", as_=admin), 404, "not_found")
    assert_error(api.patch(f"/collection-points/{huge}", as_=admin, json={"name": "x"}), 404, "not_found")
    assert_error(api.delete(f"/collection-points/{huge}", as_=admin), 404, "not_found")
    assert_error(api.get(f"/deposits/{2**64}", as_=admin), 404, "not_found")
    assert_error(api.get(f"/collection-points?community_id={huge}", as_=admin), 422, "validation_error")
    body = {"name": "x", "community_id": huge, "kind": "station"}
    error = assert_error(api.post("/collection-points", as_=admin, json=body), 422, "validation_error")
    assert "community_id" in error["details"]["fields"]


# --- concurrent changes (PostgreSQL) ------------------------------------------------------------------------------


@pg_concurrency
def test_a_fence_set_while_the_position_is_being_cleared_is_refused_not_a_500(api, app, admin):
    """The edit waits for the other one and checks the point as it is then: without the row lock it checked the
    position it had read, and the CHECK constraint refused the row with a 500."""
    point = make_point(api, admin, "竞速站", lat=31.0, lng=121.0)
    clear = sa.update(CollectionPoint).where(CollectionPoint.id == point["id"]).values(lat=None, lng=None)
    fence = {"geofence_m": 100}
    response = during_an_uncommitted(app, clear, lambda: api.patch(f"/collection-points/{point['id']}", as_=admin,
                                                                   json=fence))  # fmt: skip
    error = assert_error(response, 422, "validation_error")
    assert "geofence_m" in error["details"]["fields"]
    db.session.expire_all()
    assert db.session.get(CollectionPoint, point["id"]).geofence_m is None


@pg_concurrency
def test_parallel_edits_and_retirements_of_one_point_take_turns(api, app, admin):
    point = make_point(api, admin, "轮流站", lat=31.0, lng=121.0)
    path = f"/api/v1/collection-points/{point['id']}"
    bodies = [{"lat": None, "lng": None}, {"geofence_m": 200}] * 4

    def send(client, i):
        if i >= len(bodies):
            return client.delete(path, headers=admin.auth)
        return client.patch(path, json=bodies[i], headers=admin.auth)

    responses = race(app, send, len(bodies) + 4)
    assert {r.status_code for r in responses} <= {200, 204, 422}, [r.get_json() for r in responses]
    db.session.expire_all()
    stored = db.session.get(CollectionPoint, point["id"])
    assert stored.active is False
    assert stored.geofence_m is None or stored.lat is not None
    retirements = sa.select(sa.func.count()).select_from(AuditEvent).filter_by(action="collection_point.deactivate")
    assert db.session.scalar(retirements) == 1  # the others found it retired already


def test_callers_without_the_role_are_refused_before_their_point_is_read(api, admin):
    """A collector, a merchant or a resident gets 403 whatever it sends, not a validation error about a point it
    could never create."""
    point = make_point(api, admin)
    collector = api.staff("collector", collection_point_ids=[point["id"]])
    before = count(CollectionPoint)
    for caller in (collector, api.resident()):
        assert_error(api.post("/collection-points", as_=caller, json={}), 403, "forbidden")
        assert_error(api.post("/collection-points", as_=caller, json={"kind": "landfill"}), 403, "forbidden")
    assert count(CollectionPoint) == before


def test_a_collector_reads_its_points_by_name_and_state(api):
    """The collector app lists the points to record at without a request per point, the retired ones marked."""
    admin = api.staff("admin")
    kept, retired = make_point(api, admin, "恒康甲站")["id"], make_point(api, admin, "恒康乙站")["id"]
    collector = api.staff("collector", collection_point_ids=[kept, retired])
    assert api.delete(f"/collection-points/{retired}", as_=admin).status_code == 204
    me = api.get("/staff/me", as_=collector).get_json()
    assert me["collection_point_ids"] == [kept, retired]
    assert me["collection_points"] == [
        {"id": kept, "name": "恒康甲站", "active": True},
        {"id": retired, "name": "恒康乙站", "active": False},
    ]
    assert api.get("/staff/me", as_=admin).get_json()["collection_points"] == []
