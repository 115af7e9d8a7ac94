"""Smart bins: registration, HMAC-signed deposits, the clock window and replay protection."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.audit.models import AuditEvent
from app.auth.guards import Actor
from app.clock import utcnow
from app.db import db
from app.errors import Forbidden, InvalidState
from app.ledger.models import LedgerEntry
from app.sorting import service as sorting
from app.sorting.models import Deposit, Device, DeviceSignature
from app.sorting.service import device_signature
from tests.conftest import ROOT, SHANGHAI, assert_error, community_id, count, make_point, pg_concurrency, race

PATH = "/api/v1/devices/deposits"


def register(api, caller, point_id: int, code: str) -> dict:
    response = api.post("/devices", as_=caller, json={"code": code, "collection_point_id": point_id})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def balance(api, resident) -> int:
    response = api.get("/me", as_=resident)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["balance"]


def signed(
    device: dict,
    body: dict | bytes,
    *,
    timestamp: int | None = None,
    secret: str | None = None,
    path: str = PATH,
    method: str = "POST",
) -> dict:
    """Keyword arguments for client.post: the raw body and the three signature headers."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = str(int(utcnow().timestamp()) if timestamp is None else timestamp)
    signature = device_signature(secret or device["secret"], method, path, ts, raw)
    headers = {"X-Device-Id": str(device["id"]), "X-Timestamp": ts, "X-Signature": signature}
    return {"data": raw, "headers": headers, "content_type": "application/json"}


@pytest.fixture
def world(api):
    admin = api.staff("admin")
    a = make_point(api, admin, "恒康智能箱", kind="smart_bin")
    b = make_point(api, admin, "恒康乙箱", kind="smart_bin")
    worker = api.staff("worker", community_id=community_id("hengkang"))
    return {
        "admin": admin,
        "worker": worker,
        "a": a,
        "b": b,
        "device": register(api, admin, a, "BIN-A-001"),
        "resident": api.resident(),
    }


def body_for(api, world, items=None, point=None) -> dict:
    return {
        "member_code": api.member_code(world["resident"]),
        "collection_point_id": point or world["a"],
        "items": items or [{"category": "plastic", "weight_g": 730}],  # 1000.1 g → 10 points
    }


# --- registration ----------------------------------------------------------------------------------------------


def test_register_returns_the_secret_once(api, world):
    device = world["device"]
    assert isinstance(device["id"], int)
    assert device["code"] == "BIN-A-001"
    assert device["collection_point_id"] == world["a"]
    assert device["active"] is True
    assert len(device["secret"]) >= 32
    second = register(api, world["admin"], world["a"], "BIN-A-002")
    assert second["secret"] != device["secret"]

    for caller in (world["admin"], world["worker"]):
        response = api.get(f"/collection-points/{world['a']}/devices", as_=caller)
        assert response.status_code == 200, response.get_json()
        listed = response.get_json()["items"]
        assert [d["id"] for d in listed] == [device["id"], second["id"]]
        assert all("secret" not in d for d in listed)
        assert device["secret"] not in response.get_data(as_text=True)
    assert api.get(f"/collection-points/{world['b']}/devices", as_=world["admin"]).get_json() == {
        "items": [],
        "next": None,
    }
    first = api.get(f"/collection-points/{world['a']}/devices?limit=1", as_=world["admin"]).get_json()
    assert [d["id"] for d in first["items"]] == [device["id"]]
    rest = api.get(f"/collection-points/{world['a']}/devices?limit=1&cursor={first['next']}", as_=world["admin"])
    assert [d["id"] for d in rest.get_json()["items"]] == [second["id"]]
    assert rest.get_json()["next"] is None


def test_a_code_registered_already_names_its_bin_for_re_keying(api, world):
    """The secret is shown once: an admin whose answer was lost learns which bin to re-key, whatever the code's case."""
    device = world["device"]
    response = api.post("/devices", as_=world["admin"], json={"code": "bin-a-001", "collection_point_id": world["b"]})
    error = assert_error(response, 409, "duplicate")
    assert error["details"] == {"device_id": device["id"], "collection_point_id": world["a"]}
    assert error["message"] == f"设备编号已存在（设备 {device['id']}）：如密钥遗失，请为该设备更换密钥"
    assert device["secret"] not in response.get_data(as_text=True)
    assert count(Device) == 1


@pg_concurrency
def test_a_double_tap_registering_a_bin_names_it_in_every_refusal(api, app, world):
    """Requests that pass the check together: the index refuses all but one, and each refusal still names the bin."""
    admin = world["admin"]
    body = {"code": "HK-BIN-RACE", "collection_point_id": world["a"]}
    responses = race(app, lambda client, _: client.post("/api/v1/devices", json=body, headers=admin.auth), 8)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 7, [r.get_json() for r in responses]
    made = next(r.get_json() for r in responses if r.status_code == 201)
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.get_json()["error"]["details"] == {"device_id": made["id"], "collection_point_id": world["a"]}


def test_only_admins_hold_bin_secrets(api, world):
    """A bin's secret signs deposits, and so credits points: a community worker, who cannot record deposits, must not
    get one by registering a bin of its own or re-keying one, even at its own community's point."""
    worker, device = world["worker"], world["device"]
    body = {"code": "WORKER-OWN-BIN", "collection_point_id": world["a"]}
    assert_error(api.post("/devices", as_=worker, json=body), 403, "forbidden")
    response = api.post(f"/devices/{device['id']}/secret/rotate", as_=worker)
    assert_error(response, 403, "forbidden")
    assert "secret" not in response.get_data(as_text=True)
    assert count(Device) == 1
    assert db.session.get(Device, device["id"]).secret == device["secret"]
    assert [action for action, _ in device_audit(device["id"])] == ["device.register"]


def test_registration_is_scoped(api, world):
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    body = {"code": "BIN-X", "collection_point_id": world["a"]}
    assert_error(api.post("/devices", as_=outsider, json=body), 403, "forbidden")
    assert_error(api.post("/devices", as_=collector, json=body), 403, "forbidden")
    assert_error(api.post("/devices", as_=world["resident"], json=body), 403, "forbidden")
    assert_error(api.post("/devices", json=body), 401, "unauthorized")
    assert_error(api.get(f"/collection-points/{world['a']}/devices", as_=outsider), 403, "forbidden")
    assert_error(api.get(f"/collection-points/{world['a']}/devices", as_=collector), 403, "forbidden")
    assert count(Device) == 1


def test_registration_is_validated(api, world):
    assert_error(
        api.post("/devices", as_=world["admin"], json={"code": "BIN-A-001", "collection_point_id": world["b"]}),
        409,
        "duplicate",
    )
    # the label painted on the bin is one code whatever its case
    same_label = {"code": "bin-a-001", "collection_point_id": world["b"]}
    assert_error(api.post("/devices", as_=world["admin"], json=same_label), 409, "duplicate")
    for code in ("ab", "有空格 的", "x" * 65):
        body = {"code": code, "collection_point_id": world["a"]}
        error = assert_error(api.post("/devices", as_=world["admin"], json=body), 422, "validation_error")
        assert "code" in error["details"]["fields"]
    body = {"code": "BIN-NOWHERE", "collection_point_id": 999999}
    # a retired point takes no bins: every deposit there would be refused
    retired = make_point(api, world["admin"], "已停用站", kind="smart_bin")
    assert api.delete(f"/collection-points/{retired}", as_=world["admin"]).status_code == 204
    body_retired = {"code": "BIN-RETIRED", "collection_point_id": retired}
    error = assert_error(api.post("/devices", as_=world["admin"], json=body_retired), 422, "validation_error")
    assert error["details"]["fields"] == {"collection_point_id": ["该回收点已停用，请先重新启用"]}
    # a body naming a point that is not there is that field's error, as on POST /deposits
    error = assert_error(api.post("/devices", as_=world["admin"], json=body), 422, "validation_error")
    assert error["details"]["fields"] == {"collection_point_id": ["回收点不存在"]}
    assert count(Device) == 1
    # the refused duplicate left the session usable
    assert register(api, world["admin"], world["b"], "BIN-B-001")["collection_point_id"] == world["b"]


# --- retiring bins and rotating secrets ---------------------------------------------------------------------------


def device_audit(device_id: int) -> list[tuple[str, dict]]:
    rows = db.session.execute(
        sa.select(AuditEvent.action, AuditEvent.details)
        .where(AuditEvent.target_type == "device", AuditEvent.target_id == str(device_id))
        .order_by(AuditEvent.id)
    )
    return [tuple(row) for row in rows]


def test_a_retired_bin_is_refused_until_it_is_brought_back(api, world):
    device, worker = world["device"], world["worker"]
    response = api.patch(f"/devices/{device['id']}", as_=worker, json={"active": False})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["active"] is False
    assert "secret" not in response.get_json()
    retired = assert_error(api.post(PATH, **signed(device, body_for(api, world))), 401, "unauthorized")
    assert (retired["details"]["reason"], retired["message"]) == (
        "device_retired",
        "该设备已停用，请联系社区工作者重新启用",
    )
    # Only the key's holder learns that: a wrong signature for a retired bin reads as for no bin at all.
    forged = assert_error(api.post(PATH, **signed(device, body_for(api, world), secret="0" * 32)), 401, "unauthorized")
    assert forged["details"] == {"reason": "unknown_device"}
    listed = api.get(f"/collection-points/{world['a']}/devices", as_=worker).get_json()["items"]
    assert [d["active"] for d in listed] == [False]
    # retiring it again changes nothing and records nothing
    assert api.patch(f"/devices/{device['id']}", as_=worker, json={"active": False}).status_code == 200

    assert api.patch(f"/devices/{device['id']}", as_=world["admin"], json={"active": True}).get_json()["active"]
    assert api.post(PATH, **signed(device, body_for(api, world))).status_code == 201
    assert [action for action, _ in device_audit(device["id"])] == ["device.register", "device.deactivate",
                                                                    "device.reactivate"]  # fmt: skip


def test_a_bin_at_a_retired_point_hears_why_and_is_not_brought_back_there(api, world):
    """The point was retired with its bin still on: the bin's deposits say so in a reason firmware keys on (a
    validation_error alone reads as "my payload is wrong"), and the bin cannot be re-enabled there."""
    device, worker = world["device"], world["worker"]
    assert api.delete(f"/collection-points/{world['a']}", as_=world["admin"]).status_code == 204
    error = assert_error(api.post(PATH, **signed(device, body_for(api, world))), 422, "validation_error")
    assert error["details"]["reason"] == "point_retired"
    assert error["message"] == "该回收点已停用，不能记录投递：请联系社区工作者"
    assert count(Deposit) == 0
    assert api.patch(f"/devices/{device['id']}", as_=worker, json={"active": False}).status_code == 200
    error = assert_error(api.patch(f"/devices/{device['id']}", as_=worker, json={"active": True}), 422,
                         "validation_error")  # fmt: skip
    assert error["details"]["fields"] == {"active": ["该设备所在的回收点已停用，请先重新启用回收点"]}
    assert db.session.get(Device, device["id"]).active is False
    # retiring the bin still works, and once the point is back so does the bin
    assert api.patch(f"/collection-points/{world['a']}", as_=world["admin"], json={"active": True}).status_code == 200
    assert api.patch(f"/devices/{device['id']}", as_=worker, json={"active": True}).status_code == 200
    assert api.post(PATH, **signed(device, body_for(api, world))).status_code == 201


def test_a_bin_an_admin_retired_is_brought_back_by_an_admin_only(api, world):
    """An admin retires a bin whose secret may have leaked (it was stolen, say); the community's worker, who retires
    and reactivates its own bins, must not bring that key back to life."""
    device, worker, admin = world["device"], world["worker"], world["admin"]
    assert api.patch(f"/devices/{device['id']}", as_=admin, json={"active": False}).status_code == 200
    error = assert_error(api.patch(f"/devices/{device['id']}", as_=worker, json={"active": True}), 403, "forbidden")
    assert error["message"] == "该设备由平台管理员停用，请联系经发办重新启用"
    assert_error(api.post(PATH, **signed(device, body_for(api, world))), 401, "unauthorized")
    assert api.patch(f"/devices/{device['id']}", as_=admin, json={"active": True}).status_code == 200
    # one the worker retired, the worker brings back
    assert api.patch(f"/devices/{device['id']}", as_=worker, json={"active": False}).status_code == 200
    assert api.patch(f"/devices/{device['id']}", as_=worker, json={"active": True}).get_json()["active"] is True


def test_an_admin_retiring_a_bin_a_worker_retired_first_makes_the_retirement_the_admins(api, world):
    """A theft reported at the community first: the worker retires the bin, then 经发办 does too. The admin's answer
    must mean what it says, so the worker cannot bring the bin back after it."""
    device, worker, admin = world["device"], world["worker"], world["admin"]
    assert api.patch(f"/devices/{device['id']}", as_=worker, json={"active": False}).status_code == 200
    assert api.patch(f"/devices/{device['id']}", as_=admin, json={"active": False}).status_code == 200
    assert_error(api.patch(f"/devices/{device['id']}", as_=worker, json={"active": True}), 403, "forbidden")
    assert api.patch(f"/devices/{device['id']}", as_=admin, json={"active": False}).status_code == 200  # a retry
    assert [action for action, _ in device_audit(device["id"])] == ["device.register", "device.deactivate",
                                                                    "device.deactivate"]  # fmt: skip


def test_a_bin_retired_by_the_system_as_an_admin_stays_retired_for_workers(api, world):
    device = world["device"]
    sorting.set_device_active(Actor(kind="system", id=0, role="admin"), device["id"], False)
    assert_error(api.patch(f"/devices/{device['id']}", as_=world["worker"], json={"active": True}), 403, "forbidden")


def test_a_rotated_secret_replaces_the_old_one_at_once(api, world):
    device = world["device"]
    response = api.post(f"/devices/{device['id']}/secret/rotate", as_=world["admin"])
    assert response.status_code == 200, response.get_json()
    rotated = response.get_json()
    assert (rotated["id"], rotated["code"], rotated["active"]) == (device["id"], device["code"], True)
    assert len(rotated["secret"]) >= 32
    assert rotated["secret"] != device["secret"]
    assert_error(api.post(PATH, **signed(device, body_for(api, world))), 401, "unauthorized")
    assert api.post(PATH, **signed(rotated, body_for(api, world))).status_code == 201
    listing = api.get(f"/collection-points/{world['a']}/devices", as_=world["worker"]).get_data(as_text=True)
    assert rotated["secret"] not in listing
    assert device_audit(device["id"])[-1] == ("device.rotate_secret", {"code": device["code"]})


def test_a_rotation_retried_with_its_idempotency_key_answers_the_same_secret(api, world):
    device, admin = world["device"], world["admin"]
    path = f"/devices/{device['id']}/secret/rotate"
    first = api.post(path, as_=admin, headers={"Idempotency-Key": "rotate-bin-a-1"})
    again = api.post(path, as_=admin, headers={"Idempotency-Key": "rotate-bin-a-1"})
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert db.session.get(Device, device["id"]).secret == first.get_json()["secret"]
    assert [action for action, _ in device_audit(device["id"])].count("device.rotate_secret") == 1
    other = api.post(path, as_=admin, headers={"Idempotency-Key": "rotate-bin-a-2"}).get_json()
    assert other["secret"] != first.get_json()["secret"]


def test_only_the_points_managers_retire_bins_or_rotate_their_secrets(api, world):
    device = world["device"]
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    for caller in (outsider, collector, world["resident"]):
        assert_error(api.patch(f"/devices/{device['id']}", as_=caller, json={"active": False}), 403, "forbidden")
        assert_error(api.post(f"/devices/{device['id']}/secret/rotate", as_=caller), 403, "forbidden")
    assert_error(api.patch(f"/devices/{device['id']}", json={"active": False}), 401, "unauthorized")
    assert_error(api.post(f"/devices/{device['id']}/secret/rotate"), 401, "unauthorized")
    for missing in (999999, 2**31):
        assert_error(api.patch(f"/devices/{missing}", as_=world["admin"], json={"active": False}), 404, "not_found")
        assert_error(api.post(f"/devices/{missing}/secret/rotate", as_=world["admin"]), 404, "not_found")
    # nothing changed: the bin still signs with its first secret
    assert api.post(PATH, **signed(device, body_for(api, world))).status_code == 201
    assert [action for action, _ in device_audit(device["id"])] == ["device.register"]


@pytest.mark.parametrize(
    "body",
    [{}, {"active": None}, {"active": False, "code": "BIN-Z"}, {"active": [False]}, {"active": 0}, {"active": "false"}],
)
def test_retiring_a_bin_is_validated(api, world, body):
    device = world["device"]
    error = assert_error(api.patch(f"/devices/{device['id']}", as_=world["admin"], json=body), 422, "validation_error")
    assert error["details"]["fields"]
    assert db.session.get(Device, device["id"]).active is True


# --- signed deposits ---------------------------------------------------------------------------------------------


def test_signed_deposit_is_credited(api, world):
    response = api.post(PATH, **signed(world["device"], body_for(api, world)))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["device_id"] == world["device"]["id"]
    assert body["collector_id"] is None
    assert body["resident_id"] == world["resident"].id
    assert (body["points"], body["co2e_g"], body["weight_g"]) == (10, 1000, 730)
    assert balance(api, world["resident"]) == 10
    entry = api.get("/me/ledger", as_=world["resident"]).get_json()["items"][0]
    assert (entry["ref_type"], entry["ref_id"], entry["source"]) == ("deposit", str(body["id"]), "sorting")


def test_a_bin_resending_after_the_codes_two_minutes_hears_its_deposit_went_through(api, clock, world):
    """A bin whose answer was lost signs the same body again later (a new timestamp, so no replay): its code has
    expired, but it paid for this deposit, which is what the bin must hear, or it would count the load again."""
    body = body_for(api, world)
    made = api.post(PATH, **signed(world["device"], body)).get_json()
    clock.advance(seconds=127)
    late = api.post(PATH, **signed(world["device"], body))
    assert assert_error(late, 409, "duplicate")["details"] == {"deposit_id": made["id"], "points": made["points"]}
    assert balance(api, world["resident"]) == made["points"]


def test_a_bin_told_to_try_again_resends_the_very_same_request(api, clock, world):
    """A 503 is "try again", not a refusal: the signature is not spent, so the bin resends its bytes as they are.
    Here the deposit counted its day before midnight, and the resident's account had passed it meanwhile."""
    midnight = datetime(2026, 6, 16, tzinfo=SHANGHAI)
    clock.set(midnight - timedelta(seconds=40))
    kwargs = signed(world["device"], body_for(api, world))
    clock.set(midnight + timedelta(seconds=1))
    adjusted = api.post(f"/residents/{world['resident'].id}/adjustments", as_=world["admin"],
                        json={"delta": 1, "reason": "补发积分"})  # fmt: skip
    assert adjusted.status_code == 201, adjusted.get_json()
    clock.set(midnight - timedelta(seconds=30))
    response = api.post(PATH, **kwargs)
    assert_error(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "1"
    assert (count(Deposit), count(DeviceSignature)) == (0, 0)
    clock.set(midnight + timedelta(seconds=2))
    assert api.post(PATH, **kwargs).status_code == 201
    assert balance(api, world["resident"]) == 11


def test_bad_signature_is_unauthorized_and_logged(api, world, caplog):
    body = body_for(api, world)
    kwargs = signed(world["device"], body, secret="0" * 32)
    with caplog.at_level(logging.WARNING, logger="app.sorting.service"):
        assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    assert any(
        r.name == "app.sorting.service" and r.levelno == logging.WARNING and "signature" in r.getMessage()
        for r in caplog.records
    ), caplog.records
    assert count(Deposit) == 0
    assert balance(api, world["resident"]) == 0


def test_a_bad_signature_shows_the_bin_what_the_server_signed(api, world, clock):
    """The one thing a bin cannot work out from a refusal is which of its inputs the server saw differently (the path's
    /api/v1 prefix, the body hash's case, a trailing newline): the answer carries the string the server would have
    signed. It holds nothing secret; the bin sent each part."""
    raw = json.dumps(body_for(api, world)).encode()
    kwargs = signed(world["device"], raw, path="/devices/deposits")  # the prefix left out, as a first try might
    details = assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]
    ts = kwargs["headers"]["X-Timestamp"]
    assert details == {
        "reason": "bad_signature",
        "string_to_sign": f"POST\n/api/v1/devices/deposits\n{ts}\n{hashlib.sha256(raw).hexdigest()}",
    }
    secret = world["device"]["secret"].encode()
    fixed = hmac.new(secret, details["string_to_sign"].encode(), hashlib.sha256).hexdigest()
    again = {**kwargs, "headers": {**kwargs["headers"], "X-Signature": fixed}}
    assert api.post(PATH, **again).status_code == 201  # signing what the answer showed is right


def test_a_timestamp_in_milliseconds_is_named_with_the_servers_clock(api, world):
    kwargs = signed(world["device"], body_for(api, world))
    kwargs["headers"]["X-Timestamp"] += "123"
    error = assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    assert error["details"]["headers"] == ["X-Timestamp"]
    assert error["details"]["server_time"] == int(utcnow().timestamp())  # to set its clock by, in seconds
    assert "秒" in error["message"]


def test_the_signature_headers_publish_their_formats(api):
    spec = api.get("/api/v1/openapi.json").get_json()
    parameters = {p["name"]: p for p in spec["paths"]["/api/v1/devices/deposits"]["post"]["parameters"]}
    patterns = {name: parameters[name]["schema"]["pattern"] for name in ("X-Device-Id", "X-Timestamp", "X-Signature")}
    assert patterns == {"X-Device-Id": "^[1-9][0-9]{0,17}$", "X-Timestamp": "^[0-9]{1,11}$",
                        "X-Signature": "^[0-9a-fA-F]{64}$"}  # fmt: skip
    assert "小写" in parameters["X-Signature"]["description"]  # the body hash's case, which the bin must match


def _with(**changes):
    """Alter the signed headers: a value replaces a header, None drops it."""

    def alter(kwargs):
        headers = {**kwargs["headers"], **changes}
        return {**kwargs, "headers": {k: v for k, v in headers.items() if v is not None}}

    return alter


def _timestamp_minus_one(kwargs):
    return _with(**{"X-Timestamp": str(int(kwargs["headers"]["X-Timestamp"]) - 1)})(kwargs)


SIG, TS, DEV = "X-Signature", "X-Timestamp", "X-Device-Id"


@pytest.mark.parametrize(
    ("alter", "reason", "named"),
    [
        pytest.param(lambda kw: {**kw, "data": kw["data"].replace(b"730", b"930")}, "bad_signature", None,
                     id="body-changed"),
        pytest.param(_timestamp_minus_one, "bad_signature", None, id="timestamp-changed"),
        pytest.param(_with(**{SIG: "0" * 64}), "bad_signature", None, id="zero-signature"),
        pytest.param(_with(**{SIG: "abc"}), "bad_headers", [SIG], id="short-signature"),
        pytest.param(_with(**{SIG: None}), "bad_headers", [SIG], id="no-signature"),
        pytest.param(_with(**{TS: None}), "bad_headers", [TS], id="no-timestamp"),
        pytest.param(_with(**{DEV: None}), "bad_headers", [DEV], id="no-device"),
        pytest.param(_with(**{DEV: "abc"}), "bad_headers", [DEV], id="device-not-a-number"),
        pytest.param(_with(**{DEV: "\xb2"}), "bad_headers", [DEV], id="superscript-device-id"),
        pytest.param(_with(**{DEV: "9" * 30}), "bad_headers", [DEV], id="huge-device-id"),
        pytest.param(_with(**{DEV: "BIN-A-001"}), "bad_headers", [DEV], id="device-code-for-id"),
        pytest.param(_with(**{TS: "-5"}), "bad_headers", [TS], id="negative-timestamp"),
        pytest.param(_with(**{TS: "\xb2"}), "bad_headers", [TS], id="superscript-timestamp"),
        pytest.param(_with(**{TS: "9" * 30}), "bad_headers", [TS], id="huge-timestamp"),
        pytest.param(_with(**{TS: "1781488800.5"}), "bad_headers", [TS], id="fractional-timestamp"),
        pytest.param(_with(**{TS: "1781488800123"}), "bad_headers", [TS], id="milliseconds"),
        pytest.param(_with(**{SIG: "g" * 64}), "bad_headers", [SIG], id="non-hex-signature"),
        pytest.param(_with(**{SIG: "\xe9" * 64}), "bad_headers", [SIG], id="latin1-signature"),
        pytest.param(_with(**{SIG: None, TS: None}), "bad_headers", [TS, SIG], id="two-missing"),
        pytest.param(_with(**{DEV: "999999"}), "unknown_device", None, id="unknown-device"),
    ],
)  # fmt: skip
def test_altered_requests_are_unauthorized_and_say_why(api, world, alter, reason, named):
    """The code stays unauthorized; `details.reason` tells a bin's firmware what to fix (its clock, its headers, its
    key), and which headers it sent wrong."""
    kwargs = alter(signed(world["device"], body_for(api, world)))
    details = assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]
    assert details["reason"] == reason
    assert details.get("headers") == named
    assert count(Deposit) == 0


@pytest.mark.parametrize(
    ("timestamp", "hint"),
    [
        ("1781488800123", "X-Timestamp 应为 Unix 时间的整数秒，不是毫秒"),
        ("1781488800.5", "X-Timestamp 应为 Unix 时间的整数秒"),
        ("2026-06-15T02:00:00Z", "X-Timestamp 应为 Unix 时间的整数秒"),
    ],
)
def test_a_malformed_timestamp_says_what_it_should_be_and_blames_milliseconds_only_for_them(
    api, world, timestamp, hint
):
    kwargs = signed(world["device"], body_for(api, world))
    kwargs["headers"]["X-Timestamp"] = timestamp
    error = assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    assert error["message"] == f"缺少或无效的设备签名头：X-Timestamp（{hint}）"


def test_signature_binds_the_path(api, world):
    kwargs = signed(world["device"], body_for(api, world), path="/api/v1/deposits")
    assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    kwargs = signed(world["device"], body_for(api, world), method="PUT")
    assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    # nothing in the URL goes unsigned: a query string added on the way is refused, one the bin signed is not
    kwargs = signed(world["device"], body_for(api, world))
    assert_error(api.post(f"{PATH}?x=1", **kwargs), 401, "unauthorized")
    assert count(Deposit) == 0
    kwargs = signed(world["device"], body_for(api, world), path=f"{PATH}?batch=7")
    assert api.post(f"{PATH}?batch=7", **kwargs).status_code == 201


def test_the_readmes_worked_signing_example_is_what_the_recipe_gives():
    """A vendor checks their firmware against the README's figures: they must be the recipe's, computed here with
    the standard library only (not this server's code)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = re.search(r"```json\n(\{\"member_code\":\"m1\.demo\".*\})\n```", readme).group(1).encode()
    digest = hashlib.sha256(body).hexdigest()
    assert f"the body's SHA-256 is `{digest}`" in readme
    to_sign = f"POST\n/api/v1/devices/deposits\n1781488800\n{digest}".encode()
    signature = hmac.new(b"demo-device-secret-xhw-bin-01", to_sign, hashlib.sha256).hexdigest()
    assert f"`X-Signature` is\n`{signature}`" in readme


def test_signature_follows_the_documented_recipe(api, world):
    """Bins are programmed from the API docs, not from this code: hex(HMAC-SHA256(secret as UTF-8,
    METHOD\\nPATH\\nTIMESTAMP\\nhex(SHA256(body)))), computed here without device_signature."""
    device, raw = world["device"], json.dumps(body_for(api, world)).encode()
    ts = str(int(utcnow().timestamp()))
    message = f"POST\n{PATH}\n{ts}\n{hashlib.sha256(raw).hexdigest()}".encode()
    signature = hmac.new(device["secret"].encode("utf-8"), message, hashlib.sha256).hexdigest()
    assert device_signature(device["secret"], "post", PATH, ts, raw) == signature
    headers = {"X-Device-Id": str(device["id"]), "X-Timestamp": ts, "X-Signature": signature}
    response = api.post(PATH, data=raw, headers=headers, content_type="application/json")
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize("position", [0, 31, 63])
def test_every_character_of_the_signature_counts(api, world, position):
    kwargs = signed(world["device"], body_for(api, world))
    signature = kwargs["headers"]["X-Signature"]
    flipped = "0" if signature[position] != "0" else "1"
    kwargs["headers"]["X-Signature"] = signature[:position] + flipped + signature[position + 1 :]
    assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    assert (count(Deposit), count(DeviceSignature)) == (0, 0)


def test_an_upper_case_signature_is_the_same_signature(api, world):
    """Hex is hex in either case: accepted as sent, and burned once, so a re-cased copy is a replay."""
    kwargs = signed(world["device"], body_for(api, world))
    lower = kwargs["headers"]["X-Signature"]
    kwargs["headers"]["X-Signature"] = lower.upper()
    assert api.post(PATH, **kwargs).status_code == 201
    for spelling in (lower, lower.upper(), lower[:32] + lower[32:].upper()):
        kwargs["headers"]["X-Signature"] = spelling
        assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"]["refused"] is False
    assert (balance(api, world["resident"]), count(Deposit), count(DeviceSignature)) == (10, 1, 1)


def test_a_refused_request_re_cased_is_still_a_replay(api, world):
    kwargs = signed(world["device"], body_for(api, world, point=world["b"]))  # not this bin's point: 403
    assert_error(api.post(PATH, **kwargs), 403, "forbidden")
    kwargs["headers"]["X-Signature"] = kwargs["headers"]["X-Signature"].upper()
    assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"] == {"refused": True}
    assert (count(Deposit), count(DeviceSignature)) == (0, 1)


def test_an_authentic_request_dated_ahead_stays_refused_when_its_time_comes(api, clock, world):
    """Refused as too far ahead, it would pass once the server's clock reached it: anyone who saw it could send it
    then. Its signature is kept as used until it is too old anyway."""
    now = int(utcnow().timestamp())
    kwargs = signed(world["device"], body_for(api, world), timestamp=now + 600)
    assert assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]["reason"] == "stale_timestamp"
    clock.advance(seconds=600)
    assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"] == {"refused": True}
    from app.sorting.service import prune_device_signatures

    assert prune_device_signatures() == 0  # kept as seen at its own time, not the time it came
    assert count(Deposit) == 0


def test_a_request_stamped_days_ahead_is_refused_without_keeping_its_signature(api, clock, world):
    """A bin whose clock jumped years ahead retries, signing each try anew: a signature kept until its own time would
    be a row a retry until then. Its member code expires in two minutes, so sending it later could credit nothing."""
    now = int(utcnow().timestamp())
    far = int(datetime(2099, 1, 1, tzinfo=UTC).timestamp())
    for ts in (far, far + 1, now + sorting.BURN_AHEAD_S + 1):
        kwargs = signed(world["device"], body_for(api, world), timestamp=ts)
        assert assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]["reason"] == "stale_timestamp"
    assert count(DeviceSignature) == 0
    kwargs = signed(world["device"], body_for(api, world), timestamp=now + sorting.BURN_AHEAD_S)  # a day: kept
    assert assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]["reason"] == "stale_timestamp"
    assert count(DeviceSignature) == 1
    assert count(Deposit) == 0


def test_a_retired_bins_request_is_not_accepted_once_the_bin_is_back(api, world):
    device = world["device"]
    api.patch(f"/devices/{device['id']}", as_=world["worker"], json={"active": False})
    kwargs = signed(device, body_for(api, world))
    assert assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]["reason"] == "device_retired"
    assert api.patch(f"/devices/{device['id']}", as_=world["admin"], json={"active": True}).status_code == 200
    assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"] == {"refused": True}
    # a stale request of a retired bin says only that it is stale: only a fresh one learns the bin is retired
    api.patch(f"/devices/{device['id']}", as_=world["worker"], json={"active": False})
    old = signed(device, body_for(api, world), timestamp=int(utcnow().timestamp()) - 3600)
    assert assert_error(api.post(PATH, **old), 401, "unauthorized")["details"]["reason"] == "stale_timestamp"
    assert count(Deposit) == 0


def test_the_clock_window_compares_the_servers_whole_second(api, clock, world):
    """A request stamped 300 s ago is accepted for the rest of the server's second, however far into it."""
    now = int(utcnow().timestamp())
    kwargs = signed(world["device"], body_for(api, world), timestamp=now - 300)
    clock.advance(seconds=0.9)
    assert api.post(PATH, **kwargs).status_code == 201


def test_clock_window_is_five_minutes(api, clock, world):
    now = int(utcnow().timestamp())
    for skew in (301, -301):
        kwargs = signed(world["device"], body_for(api, world), timestamp=now + skew)
        stale = {"reason": "stale_timestamp", "server_time": now}
        assert assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"] == stale
    assert count(Deposit) == 0
    # a request signed 300 s ago (the device's clock lags) is still inside the window
    kwargs = signed(world["device"], body_for(api, world), timestamp=now - 300)
    assert api.post(PATH, **kwargs).status_code == 201
    # and one signed now but delivered 301 s later is outside it
    kwargs = signed(world["device"], body_for(api, world, items=[{"category": "paper", "weight_g": 1000}]))
    clock.advance(seconds=301)
    stale = {"reason": "stale_timestamp", "server_time": now + 301}
    assert assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"] == stale
    assert count(Deposit) == 1


def test_a_signature_is_kept_for_as_long_as_its_timestamp_is_accepted(api, clock, world):
    """Stamped at the window's far edge (300 s ahead), a request stays acceptable until 601 s after it was first
    seen, whole seconds being compared: pruning in between must not let its replay through."""
    now = int(utcnow().timestamp())
    kwargs = signed(world["device"], body_for(api, world), timestamp=now + 300)
    assert api.post(PATH, **kwargs).status_code == 201
    clock.advance(seconds=600.5)  # the server's second is now + 600: still within 300 s of the stamp
    sorting.prune_device_signatures()
    assert_error(api.post(PATH, **kwargs), 409, "duplicate")
    clock.advance(seconds=0.5)  # now + 601: the stamp is out of the window
    assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    clock.advance(seconds=0.5)
    assert sorting.prune_device_signatures() == 1  # and the signature may go
    assert count(Deposit) == 1


def test_replaying_a_signed_request_is_duplicate(api, world):
    kwargs = signed(world["device"], body_for(api, world))
    first = api.post(PATH, **kwargs)
    assert first.status_code == 201
    replay = assert_error(api.post(PATH, **kwargs), 409, "duplicate")
    # the first try went through, and this is what it recorded: what the bin shows the resident
    made = first.get_json()
    assert replay["details"] == {"refused": False, "deposit_id": made["id"], "points": made["points"]}
    assert replay["message"] == f"这笔投递已经记录（编号 {made['id']}，{made['points']} 积分），无需重复提交"
    assert balance(api, world["resident"]) == 10
    assert count(Deposit) == 1
    assert count(DeviceSignature) == 1
    # The same body signed again a second later is a new request, but its member code has paid already: a bin
    # that retries without an Idempotency-Key cannot credit twice.
    later = signed(world["device"], json.loads(kwargs["data"]), timestamp=int(utcnow().timestamp()) + 1)
    spent = assert_error(api.post(PATH, **later), 409, "duplicate")
    assert spent["details"]["deposit_id"] == first.get_json()["id"]  # the bin learns its first try went through
    assert (balance(api, world["resident"]), count(Deposit)) == (10, 1)
    # a fresh code from the resident is a new deposit
    fresh = signed(world["device"], body_for(api, world), timestamp=int(utcnow().timestamp()) + 1)
    assert api.post(PATH, **fresh).status_code == 201
    assert balance(api, world["resident"]) == 20


def test_device_retry_re_signed_with_the_same_idempotency_key_credits_once(api, world):
    body = body_for(api, world)
    first = signed(world["device"], body)
    first["headers"]["Idempotency-Key"] = "bin-a-0001"
    response = api.post(PATH, **first)
    assert response.status_code == 201, response.get_json()
    # the bin lost the answer and retries: a fresh timestamp and signature, the same key and body
    retry = signed(world["device"], body, timestamp=int(utcnow().timestamp()) + 2)
    retry["headers"]["Idempotency-Key"] = "bin-a-0001"
    again = api.post(PATH, **retry)
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == response.get_json()
    assert balance(api, world["resident"]) == 10
    assert count(Deposit) == 1


@pytest.mark.parametrize("key", ["nul\x00key", "k" * 65])
def test_a_replay_with_an_unusable_idempotency_key_is_refused_as_a_replay(api, world, key):
    """The replay's stored-answer lookup reads the key before any view validates it: a NUL (which PostgreSQL cannot
    compare) or an overlong key finds no answer rather than failing."""
    kwargs = signed(world["device"], body_for(api, world))
    assert api.post(PATH, **kwargs).status_code == 201
    kwargs["headers"]["Idempotency-Key"] = key
    assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"]["refused"] is False


def test_a_byte_identical_retry_with_its_idempotency_key_gets_the_first_answer(api, world):
    """The bin resends exactly the request whose answer it lost: the same key is its proof of a retry."""
    kwargs = signed(world["device"], body_for(api, world))
    kwargs["headers"]["Idempotency-Key"] = "bin-a-0002"
    response = api.post(PATH, **kwargs)
    assert response.status_code == 201
    again = api.post(PATH, **kwargs)
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == response.get_json()
    assert (balance(api, world["resident"]), count(Deposit), count(DeviceSignature)) == (10, 1, 1)
    # The same bytes under a key that answered nothing are still a replay.
    kwargs["headers"]["Idempotency-Key"] = "bin-a-0003"
    assert_error(api.post(PATH, **kwargs), 409, "duplicate")


def test_a_replayed_request_sent_under_another_requests_key_is_a_conflict_not_that_answer(api, world):
    """Headers are not signed: resending the bytes of one deposit with the key of another must not answer the other."""
    first = signed(world["device"], body_for(api, world))
    first["headers"]["Idempotency-Key"] = "bin-a-0005"
    assert api.post(PATH, **first).status_code == 201
    second = signed(world["device"], body_for(api, world), timestamp=int(utcnow().timestamp()) + 1)
    second["headers"]["Idempotency-Key"] = "bin-a-0006"
    assert api.post(PATH, **second).status_code == 201
    second["headers"]["Idempotency-Key"] = "bin-a-0005"
    assert_error(api.post(PATH, **second), 409, "idempotency_conflict")
    assert (balance(api, world["resident"]), count(Deposit)) == (20, 2)


def test_a_refused_request_burns_its_signature_and_nothing_else(api, world):
    """A refusal leaves no deposit and no points, but its signature stays used: resent, it is a replay."""
    kwargs = signed(world["device"], body_for(api, world, point=world["b"]))  # not this bin's point: 403
    assert_error(api.post(PATH, **kwargs), 403, "forbidden")
    replay = assert_error(api.post(PATH, **kwargs), 409, "duplicate")
    assert replay["details"] == {"refused": True}  # a bin that lost the 403 is not told "recorded"
    assert "重新签名" in replay["message"]
    assert (count(Deposit), count(DeviceSignature), balance(api, world["resident"])) == (0, 1, 0)


def test_a_refused_request_resent_with_its_idempotency_key_gets_the_refusal_back(api, world):
    """API.md: a retry with the same key and body returns the first status and body, a refusal's too: a bin that
    lost the 403 learns why, not only that it was refused."""
    kwargs = signed(world["device"], body_for(api, world, point=world["b"]))  # not this bin's point: 403
    kwargs["headers"]["Idempotency-Key"] = "bin-a-0004"
    first = api.post(PATH, **kwargs)
    assert_error(first, 403, "forbidden")
    again = api.post(PATH, **kwargs)
    assert (again.status_code, again.get_json()) == (403, first.get_json())
    assert again.headers["Idempotent-Replayed"] == "true"
    resigned = signed(world["device"], json.loads(kwargs["data"]), timestamp=int(utcnow().timestamp()) + 1)
    resigned["headers"]["Idempotency-Key"] = "bin-a-0004"
    assert api.post(PATH, **resigned).status_code == 403  # the same request signed again: still its first answer
    assert (count(Deposit), count(DeviceSignature), balance(api, world["resident"])) == (0, 2, 0)


def test_a_refusal_kept_under_a_key_still_burns_every_signature_that_asked(api, world):
    """The refusal kept under the key commits its signature as used; it must say refused, and a bin's re-signed retry
    answered from the key is spent as refused too: neither's captured bytes pass once the cause is gone."""
    resident = world["resident"]
    first = signed(world["device"], body_for(api, world))
    first["headers"]["Idempotency-Key"] = "bin-a-frozen"
    status = {"status": "frozen", "reason": "核查异常投放"}
    assert api.patch(f"/residents/{resident.id}", as_=world["admin"], json=status).status_code == 200
    assert_error(api.post(PATH, **first), 403, "account_frozen")
    bare_first = {**first, "headers": {k: v for k, v in first["headers"].items() if k != "Idempotency-Key"}}
    assert assert_error(api.post(PATH, **bare_first), 409, "duplicate")["details"] == {"refused": True}
    second = signed(world["device"], json.loads(first["data"]), timestamp=int(utcnow().timestamp()) + 1)
    second["headers"]["Idempotency-Key"] = "bin-a-frozen"
    assert_error(api.post(PATH, **second), 403, "account_frozen")  # the key's first answer
    status = {"status": "active", "reason": "核查完毕"}
    assert api.patch(f"/residents/{resident.id}", as_=world["admin"], json=status).status_code == 200
    del second["headers"]["Idempotency-Key"]
    assert assert_error(api.post(PATH, **second), 409, "duplicate")["details"] == {"refused": True}
    assert (count(Deposit), balance(api, resident)) == (0, 0)


def test_a_refusal_kept_under_a_key_is_marked_refused_in_the_commit_that_keeps_it(api, world):
    """Marked in a second transaction, a connection lost between the two (found by a chaos run) left the signature
    "accepted" for good, and the same bytes without the key were told the deposit was recorded. Every commit that
    keeps an answer under the key must already say the signature was refused."""
    from app.idempotency.models import IdempotencyKey

    seen: list[tuple[int, bool]] = []

    def check(session):
        kept = session.execute(sa.select(IdempotencyKey.status_code).filter_by(key="bin-a-lost")).scalar()
        refused = session.execute(sa.select(DeviceSignature.refused)).scalar()
        if kept:
            seen.append((kept, refused))

    kwargs = signed(world["device"], body_for(api, world, point=world["b"]))  # not this bin's point: 403
    kwargs["headers"]["Idempotency-Key"] = "bin-a-lost"
    sa.event.listen(db.session(), "before_commit", check)
    try:
        assert_error(api.post(PATH, **kwargs), 403, "forbidden")
    finally:
        sa.event.remove(db.session(), "before_commit", check)
    assert seen
    assert seen[0] == (403, True)


@pytest.mark.parametrize(
    ("change", "status"), [({"items": [{"category": "paper", "weight_g": 0}]}, 422), (None, 400)], ids=["422", "400"]
)
def test_a_body_the_api_refuses_burns_its_signature_as_refused(api, world, change, status):
    body = body_for(api, world)
    kwargs = signed(world["device"], {**body, **change} if change else b'{"member_code": ')
    assert api.post(PATH, **kwargs).status_code == status
    db.session.remove()  # as the server ends a request: nothing uncommitted may stand in for the burn
    assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"] == {"refused": True}
    assert count(DeviceSignature, refused=True) == 1


def test_a_re_signed_retry_answered_from_its_key_spends_its_signature(api, world):
    first = signed(world["device"], body_for(api, world))
    first["headers"]["Idempotency-Key"] = "bin-a-lost"
    assert api.post(PATH, **first).status_code == 201
    second = signed(world["device"], json.loads(first["data"]), timestamp=int(utcnow().timestamp()) + 1)
    second["headers"]["Idempotency-Key"] = "bin-a-lost"
    again = api.post(PATH, **second)
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (201, "true")
    del second["headers"]["Idempotency-Key"]
    assert assert_error(api.post(PATH, **second), 409, "duplicate")["details"]["refused"] is False
    assert (count(Deposit), count(DeviceSignature)) == (1, 2)


def test_a_request_refused_while_the_account_was_frozen_is_not_accepted_once_it_thaws(api, world):
    """Replaying the captured bytes of a refusal after its cause is gone is still a replay."""
    resident = world["resident"]
    kwargs = signed(world["device"], body_for(api, world))
    status = {"status": "frozen", "reason": "核查异常投放"}
    assert api.patch(f"/residents/{resident.id}", as_=world["admin"], json=status).status_code == 200
    assert_error(api.post(PATH, **kwargs), 403, "account_frozen")
    status = {"status": "active", "reason": "核查完毕"}
    assert api.patch(f"/residents/{resident.id}", as_=world["admin"], json=status).status_code == 200
    assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"] == {"refused": True}
    assert (count(Deposit), balance(api, resident)) == (0, 0)
    # the bin signs the same deposit again: a new request, judged afresh
    fresh = signed(world["device"], json.loads(kwargs["data"]), timestamp=int(utcnow().timestamp()) + 1)
    assert api.post(PATH, **fresh).status_code == 201
    assert balance(api, resident) == 10


def test_device_records_only_for_its_own_point(api, world):
    kwargs = signed(world["device"], body_for(api, world, point=world["b"]))
    assert_error(api.post(PATH, **kwargs), 403, "forbidden")
    assert count(Deposit) == 0
    assert balance(api, world["resident"]) == 0


def test_unknown_and_inactive_devices_are_unauthorized(api, world):
    ghost = {"id": 999999, "secret": world["device"]["secret"]}
    assert_error(api.post(PATH, **signed(ghost, body_for(api, world))), 401, "unauthorized")
    db.session.get(Device, world["device"]["id"]).active = False
    db.session.commit()
    assert_error(api.post(PATH, **signed(world["device"], body_for(api, world))), 401, "unauthorized")
    assert count(Deposit) == 0


def test_another_devices_secret_does_not_sign_for_this_one(api, world):
    other = register(api, world["admin"], world["a"], "BIN-A-002")
    kwargs = signed(world["device"], body_for(api, world), secret=other["secret"])
    assert_error(api.post(PATH, **kwargs), 401, "unauthorized")
    assert count(Deposit) == 0


def test_bearer_tokens_do_not_replace_the_signature(api, world):
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    body = body_for(api, world)
    assert_error(api.post(PATH, as_=collector, json=body), 401, "unauthorized")
    assert_error(api.post(PATH, json=body), 401, "unauthorized")
    assert count(Deposit) == 0


def test_device_deposit_body_is_validated_like_a_collectors(api, world):
    body = body_for(api, world, items=[{"category": "paper", "weight_g": 0}])
    error = assert_error(api.post(PATH, **signed(world["device"], body)), 422, "validation_error")
    assert "items" in error["details"]["fields"]
    body = body_for(api, world)
    body["member_code"] = body["member_code"][:-1] + ("A" if body["member_code"][-1] != "A" else "B")
    assert_error(api.post(PATH, **signed(world["device"], body)), 422, "invalid_qr")
    assert count(Deposit) == 0


def test_device_deposits_share_the_daily_caps(api, world):
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    by_hand = {**body_for(api, world, items=[{"category": "paper", "weight_g": 10_000}])}
    assert api.post("/deposits", as_=collector, json=by_hand).status_code == 201  # 176 points
    body = body_for(api, world, items=[{"category": "paper", "weight_g": 2000}])  # +35 → over 200
    assert_error(api.post(PATH, **signed(world["device"], body)), 409, "cap_reached")
    assert balance(api, world["resident"]) == 176
    assert count(Deposit) == 1
    # a bin that records every load whole says so, and the excess earns nothing
    body = body_for(api, world, items=[{"category": "paper", "weight_g": 2000}]) | {"fit_to_caps": True}
    response = api.post(PATH, **signed(world["device"], body))
    assert response.status_code == 201, response.get_json()
    assert (response.get_json()["points"], response.get_json()["points_over_cap"]) == (24, 11)
    assert balance(api, world["resident"]) == 200


def test_expired_member_code_through_a_device(api, clock, world):
    body = body_for(api, world)
    clock.advance(seconds=121)
    assert_error(api.post(PATH, **signed(world["device"], body)), 410, "qr_expired")
    assert count(Deposit) == 0


def test_a_bins_deposit_delayed_on_the_way_is_judged_when_the_bin_signed_it(api, clock, world):
    """A bin signs the deposit while the resident stands at it, then its 4G drops: the request arrives minutes
    later, still inside the signature's window. The code was valid when the bin signed, which the signature vouches
    for, so the load is recorded rather than lost with the resident gone."""
    body = body_for(api, world)
    kwargs = signed(world["device"], body)  # at once, as the code is shown
    clock.advance(seconds=230)  # the code's 2 minutes are gone; the grace of one more lifetime is not
    assert api.post(PATH, **kwargs).status_code == 201
    assert balance(api, world["resident"]) == 10


def test_a_bin_that_lost_its_answer_resends_the_same_bytes_and_the_deposit_counts(api, clock, world):
    """The documented retry: within the signature's 5 minutes the same bytes (the same X-Timestamp) and the same
    Idempotency-Key. The code is judged when the bin first signed, so the load is recorded; a retry re-signed later
    would be judged later."""
    kwargs = signed(world["device"], body_for(api, world))
    kwargs["headers"]["Idempotency-Key"] = "bin-retry-1"
    clock.advance(seconds=200)  # the first try never arrived
    first = api.post(PATH, **kwargs)
    assert first.status_code == 201
    again = api.post(PATH, **kwargs)  # its answer was lost too
    assert (again.status_code, again.get_json()) == (201, first.get_json())
    assert again.headers["Idempotent-Replayed"] == "true"


def test_a_bins_slow_clock_stretches_a_code_by_one_lifetime_at_most(api, clock, world):
    """Judging the code when the bin signed must not let a bin (or a clock 5 minutes slow) keep a code alive for the
    whole clock window: the grace is one more code lifetime."""
    body = body_for(api, world)
    clock.advance(seconds=250)  # expired 130 s ago: beyond the 120 s of grace
    kwargs = signed(world["device"], body, timestamp=int(utcnow().timestamp()) - 299)
    assert_error(api.post(PATH, **kwargs), 410, "qr_expired")
    body = body_for(api, world)
    clock.advance(seconds=230)  # expired 110 s ago: within the grace
    assert api.post(PATH, **signed(world["device"], body, timestamp=int(utcnow().timestamp()) - 299)).status_code == 201


def test_a_bin_whose_clock_runs_ahead_does_not_age_the_code(api, clock, world):
    """A clock a few minutes fast (inside the window) must not make a fresh code look expired: the code is judged at
    the earlier of the bin's time and the server's."""
    body = body_for(api, world)
    kwargs = signed(world["device"], body, timestamp=int(utcnow().timestamp()) + 240)
    assert api.post(PATH, **kwargs).status_code == 201


# --- concurrency (PostgreSQL) --------------------------------------------------------------------------------------


@pg_concurrency
def test_twenty_parallel_copies_of_one_signed_request_credit_once(api, app, world):
    kwargs = signed(world["device"], body_for(api, world))
    threads = 20
    responses = race(app, lambda client, _: client.post(PATH, **kwargs), threads)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (threads - 1), [r.get_json() for r in responses]
    assert {r.get_json()["error"]["code"] for r in responses if r.status_code == 409} == {"duplicate"}
    db.session.expire_all()
    assert balance(api, world["resident"]) == 10
    assert count(Deposit) == 1
    assert count(LedgerEntry) == 1
    assert count(DeviceSignature) == 1


@pg_concurrency
def test_twenty_parallel_copies_of_one_refused_request_are_judged_once_and_never_accepted(api, app, world):
    """The refused copy's signature row is kept written while it is marked refused: the others, waiting on its
    unique index, find it used, rather than slipping in between a rollback and a burn and being judged again (and
    accepted, had the account thawed in between)."""
    resident = world["resident"]
    kwargs = signed(world["device"], body_for(api, world))
    status = {"status": "frozen", "reason": "核查异常投放"}
    assert api.patch(f"/residents/{resident.id}", as_=world["admin"], json=status).status_code == 200
    threads = 20
    responses = race(app, lambda client, _: client.post(PATH, **kwargs), threads)
    codes = sorted(r.get_json()["error"]["code"] for r in responses)
    assert codes == ["account_frozen"] + ["duplicate"] * (threads - 1), codes
    assert all(r.get_json()["error"]["details"] == {"refused": True} for r in responses if r.status_code == 409)
    status = {"status": "active", "reason": "核查完毕"}
    assert api.patch(f"/residents/{resident.id}", as_=world["admin"], json=status).status_code == 200
    assert assert_error(api.post(PATH, **kwargs), 409, "duplicate")["details"] == {"refused": True}
    db.session.expire_all()
    assert (count(Deposit), balance(api, resident), count(DeviceSignature, refused=True)) == (0, 0, 1)


@pg_concurrency
def test_parallel_rotations_of_the_secret_one_page_showed_replace_it_once(api, app, world):
    """Two clicks on the admin page's 更换密钥 (or a click and a reload) name the same secret: one rotation wins, and
    the secret it shows is the one the bin must use."""
    device_id = world["device"]["id"]
    seen = db.session.get(Device, device_id).secret_fingerprint
    admin = Actor(kind="staff", id=world["admin"].id, role="admin")

    def rotate(_client, _index):
        with app.app_context():
            try:
                return sorting.rotate_device_secret(admin, device_id, replaces=seen).secret
            except InvalidState:
                return None
            finally:
                db.session.remove()

    shown = [secret for secret in race(app, rotate, 8) if secret]
    assert len(shown) == 1
    db.session.expire_all()
    assert db.session.get(Device, device_id).secret == shown[0]
    assert [action for action, _ in device_audit(device_id)].count("device.rotate_secret") == 1


def test_a_device_id_beyond_the_database_is_unauthorized(api, world):
    body = {"collection_point_id": world["a"], "member_code": "x", "items": []}
    assert_error(api.post(PATH, **signed({**world["device"], "id": 10**17}, body)), 401, "unauthorized")


def test_callers_without_the_role_are_refused_before_their_request_is_read(api, world):
    """Registering is for admins, retiring and listing for the point's managers: anyone else gets 403 whatever it
    sent, not a validation error about a request it could never make."""
    device = world["device"]
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    assert_error(api.post("/devices", as_=world["worker"], json={}), 403, "forbidden")
    assert_error(api.post("/devices", as_=world["worker"], json={"code": ""}), 403, "forbidden")
    for caller in (collector, world["resident"]):
        assert_error(api.patch(f"/devices/{device['id']}", as_=caller, json={}), 403, "forbidden")
        assert_error(api.patch(f"/devices/{device['id']}", as_=caller, json={"active": "no"}), 403, "forbidden")
        assert_error(api.get(f"/collection-points/{world['a']}/devices?limit=0", as_=caller), 403, "forbidden")
    assert count(Device) == 1
    assert db.session.get(Device, device["id"]).active is True


def test_the_bin_key_services_refuse_a_worker_whoever_calls_them(api, world):
    """The API and the admin site each let only admins register or re-key a bin; the service checks again, for any
    other caller: a worker of the point's own community gets no secret."""
    device = world["device"]
    worker = Actor(kind="staff", id=world["worker"].id, role="worker", community_id=community_id("hengkang"))
    with pytest.raises(Forbidden):
        sorting.register_device(worker, {"code": "WORKER-OWN-BIN", "collection_point_id": world["a"]})
    db.session.rollback()
    with pytest.raises(Forbidden):
        sorting.rotate_device_secret(worker, device["id"])
    db.session.rollback()
    assert count(Device) == 1
    assert db.session.get(Device, device["id"]).secret == device["secret"]
    assert [action for action, _ in device_audit(device["id"])] == ["device.register"]


def test_a_replayed_400_marks_the_new_signature_refused_too(api, world):
    """A bin that signs anew under the same Idempotency-Key gets its stored 400 back; resending that newer signature
    without the key must still hear refused (false would read as handled: a load that never counted)."""
    now = int(utcnow().timestamp())
    first = signed(world["device"], b"{not json", timestamp=now)
    first["headers"]["Idempotency-Key"] = "bin-a-bad-1"
    assert api.post(PATH, **first).status_code == 400
    again = signed(world["device"], b"{not json", timestamp=now + 1)
    again["headers"]["Idempotency-Key"] = "bin-a-bad-1"
    replayed = api.post(PATH, **again)
    assert replayed.status_code == 400
    assert replayed.headers.get("Idempotent-Replayed")
    del again["headers"]["Idempotency-Key"]
    assert assert_error(api.post(PATH, **again), 409, "duplicate")["details"] == {"refused": True}


def test_a_bad_signature_header_alone_is_named_without_the_timestamp_advice(api, world):
    """Only a wrong X-Timestamp brings the server's clock and the seconds-not-milliseconds advice."""
    kwargs = signed(world["device"], b"{}")
    kwargs["headers"]["X-Signature"] = "not-hex"
    details = assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]
    assert details == {"reason": "bad_headers", "headers": ["X-Signature"]}


def test_a_forged_request_dated_ahead_keeps_no_signature_row(api, world):
    """A request dated ahead has its signature kept (refused) only when the bin's secret signed it: anyone knowing a
    bin's id could otherwise write a row per request, kept a day, with no secret at all."""
    kwargs = signed(world["device"], b"{}", timestamp=int(utcnow().timestamp()) + 3600, secret="not-the-bins-secret")
    assert assert_error(api.post(PATH, **kwargs), 401, "unauthorized")["details"]["reason"] == "stale_timestamp"
    assert count(DeviceSignature) == 0
