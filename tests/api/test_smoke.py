import json
from types import SimpleNamespace

import sqlalchemy as sa
from flask import Response

from app.db import db
from tests.conftest import assert_documented, assert_error


def test_health(api):
    assert api.get("/healthz").get_json() == {"status": "ok"}
    assert api.get("/readyz").get_json() == {"status": "ok", "database": "ok"}


def test_not_ready_when_the_database_does_not_answer(api, monkeypatch):
    def down(*args, **kwargs):
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(db.session, "connection", down)
    error = assert_error(api.get("/readyz"), 503, "not_ready")
    assert error["message"] == "数据库不可用"
    assert api.get("/healthz").status_code == 200


def test_not_ready_until_the_database_is_migrated_to_this_codes_schema(api, db_session):
    head = db.session.scalar(sa.text("SELECT version_num FROM alembic_version"))
    db.session.execute(sa.text("UPDATE alembic_version SET version_num = '0011'"))
    db_session.commit()
    try:
        error = assert_error(api.get("/readyz"), 503, "not_ready")
        assert error["message"] == "数据库结构不是最新版本，请先运行 flask db upgrade"
        assert error["details"] == {"database_revision": "0011", "code_revision": head}
        db.session.execute(sa.text("DELETE FROM alembic_version"))
        db_session.commit()
        error = assert_error(api.get("/readyz"), 503, "not_ready")  # never migrated
        assert error["details"]["database_revision"] is None
        db.session.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('0099_next_release')"))
        db_session.commit()
        # a newer release migrated first and this host restarts next: it stays in (migrations add to the schema)
        assert api.get("/readyz").status_code == 200
    finally:
        db.session.execute(sa.text("DELETE FROM alembic_version"))
        db.session.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": head})
        db_session.commit()
    assert api.get("/readyz").status_code == 200


def test_operational_endpoints_are_documented(api):
    spec = api.get("/api/v1/openapi.json").get_json()
    paths = spec["paths"]
    not_ready = paths["/readyz"]["get"]["responses"]["503"]
    assert not_ready["description"].split(", ")[0] == "not_ready"
    assert not_ready["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorEnvelope"}
    assert "200" in paths["/healthz"]["get"]["responses"]
    assert "PaginationMetadata" not in spec["components"]["schemas"]  # lists page by cursor, not page number
    login = paths["/api/v1/auth/login"]["post"]["responses"]["429"]
    assert login["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert "forbidden" in paths["/api/v1/auth/wechat"]["post"]["responses"]["403"]["description"]
    for path in ("/api/v1/me", "/api/v1/collection-points/{point_id}", "/api/v1/staff/{staff_id}"):
        assert not paths[path]["patch"]["requestBody"].get("required")  # no body answers the resource unchanged
    assert paths["/api/v1/residents/{resident_id}"]["patch"]["requestBody"]["required"] is True  # status is required
    for method in ("post", "patch"):  # a name the community already has
        point = paths["/api/v1/collection-points" + ("" if method == "post" else "/{point_id}")][method]
        assert "duplicate" in point["responses"]["409"]["description"]


def test_resident_login_and_me(api):
    me = api.resident("alice")
    body = api.get("/me", as_=me).get_json()
    assert body["balance"] == 0
    assert body["expiring_at"] is None


def test_poster_url_opened_outside_the_mini_program_lands_on_a_page(api):
    response = api.get("/q/p1.1.whatever")
    assert response.status_code == 200
    assert "「湾区绿色积分」小程序" in response.get_data(as_text=True)  # where to scan it from


def test_unknown_path(api):
    assert_error(api.get("/nope"), 404, "not_found")


def test_decorators_document_their_headers_security_and_errors(api):
    paths = api.get("/api/v1/openapi.json").get_json()["paths"]
    device = paths["/api/v1/devices/deposits"]["post"]
    assert {p["name"] for p in device["parameters"]} >= {"Idempotency-Key", "X-Device-Id", "X-Timestamp", "X-Signature"}
    assert "security" not in device
    assert {"duplicate", "idempotency_conflict", "cap_reached"} <= set(
        device["responses"]["409"]["description"].split(", ")
    )
    scan = paths["/api/v1/scans"]["post"]
    assert scan["security"] == [{"bearerAuth": []}]
    assert "token_revoked" in scan["responses"]["401"]["description"]
    assert "too_far" in scan["responses"]["403"]["description"]


def test_the_suites_answer_check_refuses_what_the_document_does_not_describe(api, app):
    """Every answer the suite receives goes through assert_documented; it must be able to fail."""
    resident = api.resident()
    me = api.get("/me", as_=resident)
    body = me.get_json()

    def answer(status: int, data, path: str = "/api/v1/me") -> Response:
        response = Response(json.dumps(data), status=status, mimetype="application/json")
        response.request = me.request if path == "/api/v1/me" else SimpleNamespace(method="GET", path=path)
        return response

    def error(code: str, **extra) -> dict:
        return {"error": {"code": code, "message": "x", "details": {}, "request_id": "r" * 32, **extra}}

    assert_documented(app, answer(200, body))
    assert_documented(app, answer(401, error("token_expired")))
    assert_documented(app, answer(200, {"anything": 1}, "/api/v1/no-such-thing"))  # no operation, nothing to check
    required = next(iter(body))
    refused = {
        "a required field missing": answer(200, {k: v for k, v in body.items() if k != required}),
        "a wrong type": answer(200, {**body, "id": "one"}),
        "a status the operation does not answer with this body": answer(201, body),
        "an undeclared field": answer(401, error("unauthorized", stray=1)),
        "a code outside the enum": answer(401, error("not-a-code")),
        "a status only `default` covers": answer(409, error("voucher_used")),
        "a code its status does not list": answer(401, error("invalid_credentials")),
    }
    accepted = []
    for why, bad in refused.items():
        try:
            assert_documented(app, bad)
        except AssertionError:
            continue
        accepted.append(why)
    assert accepted == []


def test_the_answer_check_follows_flasks_routing(api):
    """PATCH /devices/deposits matches the template /devices/{device_id}, whose PATCH is documented; Flask answers
    405 (no such route), which no operation describes: not checked, rather than read as that operation's answer."""
    assert_error(api.patch("/devices/deposits", json={}), 405, "method_not_allowed")
    assert api.get("/staff/me").status_code == 401  # /staff/me, not /staff/{staff_id}
