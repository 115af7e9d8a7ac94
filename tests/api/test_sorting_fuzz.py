"""Whatever a client sends to the sorting endpoints, the answer is a 2xx or a 4xx envelope, never a 500."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import community_id

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
ID = st.integers(min_value=-5, max_value=2**64) | st.just(1)
VALID_LINE = st.fixed_dictionaries(
    {"category": st.sampled_from(["paper", "plastic", "glass", "metal"]), "weight_g": st.integers(1, 20_000)}
)
LINE = st.fixed_dictionaries(
    {"category": st.sampled_from(["paper", "plastic", "glass", "nope", ""]) | SCALARS, "weight_g": ID | SCALARS}
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def callers(api):
    admin = api.staff("admin")
    body = {"name": "恒康模糊测试站", "community_id": community_id("hengkang"), "kind": "station"}
    point = api.post("/collection-points", as_=admin, json=body).get_json()["id"]
    resident = api.resident()
    device = api.post("/devices", as_=admin, json={"code": "FUZZ-BIN-01", "collection_point_id": point}).get_json()
    return {
        "admin": admin,
        "device": device["id"],
        "resident": resident,
        "collector": api.staff("collector", collection_point_ids=[point]),
        "point": point,
        "member_code": api.member_code(resident),
        "poster": api.get(f"/collection-points/{point}/qr", as_=admin).get_json()["url"],
    }


def _clean(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert set(response.get_json()["error"]) >= {"code", "message"}


@FUZZ
@given(data=st.data())
def test_any_scan_body_is_answered_cleanly(api, callers, data):
    """The real poster as often as not, so that check-ins reach the claim and the ledger (then already_claimed)."""
    real = st.just(callers["poster"])
    scan = st.fixed_dictionaries(
        {"token": st.one_of(real, real, st.text(max_size=60) | SCALARS)},
        optional={"lat": SCALARS | st.floats(-100, 100), "lng": SCALARS | st.floats(-200, 200)},
    )
    _clean(api.post("/scans", as_=callers["resident"], json=data.draw(st.one_of(scan, scan, scan, JSON))))


@FUZZ
@given(data=st.data())
def test_any_deposit_body_is_answered_cleanly(api, callers, data):
    """Real member codes and points as often as not, so that the lines reach the methodology and the ledger."""
    real_code, real_point = st.just(callers["member_code"]), st.just(callers["point"])
    deposit = st.fixed_dictionaries(
        {
            "member_code": st.one_of(real_code, real_code, st.text(max_size=40) | SCALARS),
            "collection_point_id": st.one_of(real_point, real_point, ID),
            "items": st.one_of(st.lists(VALID_LINE, min_size=1, max_size=3), st.lists(LINE, max_size=3)),
        }
    )
    _clean(api.post("/deposits", as_=callers["collector"], json=data.draw(st.one_of(deposit, deposit, deposit, JSON))))


@FUZZ
@given(data=st.data())
def test_any_point_change_is_answered_cleanly_and_keeps_the_point_usable(api, callers, data):
    """Whatever a PATCH stores, listing by distance and a positioned scan at the point still answer cleanly. The
    values are mostly plausible ones, so that changes get past the schema and reach what is stored."""
    coordinate = st.none() | st.floats(-90, 90)
    change = st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(min_size=1, max_size=20),
            "lat": coordinate,
            "lng": coordinate,
            "geofence_m": st.none() | st.integers(10, 5000),
            "categories": st.lists(st.sampled_from(["paper", "glass", "metal"]), min_size=1, max_size=3),
            "active": st.booleans(),
            "address": st.text(max_size=20),
            "community_id": st.sampled_from([1, 2, 999_999, 2**31 - 1]),
        },
    )
    admin = callers["admin"]
    body = data.draw(st.one_of(change, change, change, JSON))
    _clean(api.patch(f"/collection-points/{callers['point']}", as_=admin, json=body))
    _clean(api.get("/collection-points?near=31.0,121.0"))
    _clean(api.post("/scans", as_=api.resident(), json={"token": callers["poster"], "lat": 31.0, "lng": 121.0}))


QUERY_VALUE = st.text(max_size=12) | st.integers(-5, 2**64).map(str) | st.dates().map(str)


@FUZZ
@given(data=st.data())
def test_any_list_query_is_answered_cleanly(api, callers, data):
    names = st.sampled_from(["day", "cursor", "limit", "near", "community_id", "kind", "category"])
    query = data.draw(st.dictionaries(names, QUERY_VALUE, max_size=3))
    _clean(api.get(f"/collection-points/{callers['point']}/deposits", as_=callers["collector"], query_string=query))
    _clean(api.get("/collection-points", query_string=query))


@FUZZ
@given(body=st.one_of(st.fixed_dictionaries({"active": st.booleans() | SCALARS}), JSON), device=ID)
def test_any_device_change_is_answered_cleanly(api, callers, body, device):
    _clean(api.patch(f"/devices/{device}", as_=callers["admin"], json=body))
    _clean(api.patch(f"/devices/{callers['device']}", as_=callers["admin"], json=body))
