"""The error envelope, request ids, request-shape checks and the served OpenAPI document."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from unittest.mock import ANY

import flask
import pytest
import sqlalchemy as sa
from openapi_spec_validator import validate

from app import create_app
from app.db import db
from app.people.models import Community, Resident
from tests.conftest import PG, ROOT, ApiClient, assert_error, community_id, count, documented_codes

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def assert_envelope(response, status: int, code: str) -> dict:
    """The exact envelope shape: one `error` key holding code, message, details and the request's id, nothing else."""
    body = response.get_json()
    assert response.status_code == status, (response.status_code, body)
    assert response.content_type.startswith("application/json")
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details", "request_id"}, body
    assert body["error"]["request_id"] == response.headers["X-Request-Id"]
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


@pytest.fixture
def bare(app):
    """The API without a database reset, for requests that neither read nor write data."""
    return ApiClient(app.test_client())


@pytest.fixture
def fresh_app(app, db_session):
    """A second app on the same database as the session app; its engine is closed afterwards."""
    made = []

    def make(**overrides):
        config = {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "RATELIMIT_ENABLED": False,
            **overrides,
        }
        new = create_app(config)
        made.append(new)
        return new

    # The outer session must not hold SQLite's write lock while the other app writes.
    db_session.commit()
    yield make
    for new in made:
        with new.app_context():
            db.session.remove()
            db.engine.dispose()


# --- the envelope for framework errors -------------------------------------------------------------------


def test_unknown_path_is_not_found(bare):
    error = assert_envelope(bare.get("/api/v1/no-such-thing"), 404, "not_found")
    assert error["details"] == {}


@pytest.mark.parametrize("path", ["/api/v1//scans", "/api/v1/collection-points//1"])
def test_a_doubled_slash_is_not_found_rather_than_redirected(bare, path):
    """werkzeug would answer an HTML 308 to the merged path, which neither wx.request nor a signing bin follows."""
    assert_envelope(bare.post(path, json={"token": "x"}), 404, "not_found")


def test_unknown_id_is_not_found(api):
    admin = api.staff("admin")
    assert_envelope(api.get("/staff/999999", as_=admin), 404, "not_found")


def test_wrong_method_is_method_not_allowed_with_allow_header(bare):
    response = bare.delete("/communities")
    assert_envelope(response, 405, "method_not_allowed")
    allowed = {m.strip() for m in response.headers.get("Allow", "").split(",")}
    assert {"GET", "POST"} <= allowed


@pytest.mark.parametrize(("path", "methods"), [("/me", {"GET", "PATCH"}), ("/communities", {"GET", "POST"})])
def test_options_names_the_methods_with_no_content(bare, path, methods):
    response = bare.request("OPTIONS", path)
    assert response.status_code == 204
    assert methods <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert "Content-Type" not in response.headers
    assert response.get_data() == b""
    assert response.headers["X-Request-Id"]


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_body_over_64_kib_is_payload_too_large(bare, content_type):
    """Whatever it says it is: "send JSON" to a body that would be refused as JSON too sends the client astray."""
    response = bare.post("/auth/wechat", data=b'{"code": "' + b"x" * (64 * 1024) + b'"}', content_type=content_type)
    assert assert_envelope(response, 413, "payload_too_large")["message"] == "请求内容过大（上限 64 KiB）"  # as nginx's


@pytest.mark.parametrize(
    ("size", "status", "code"), [(70 * 1024, 413, "payload_too_large"), (64 * 1024, 422, "validation_error")]
)
def test_a_chunked_body_is_held_to_the_same_limit(bare, size, status, code):
    """Without a Content-Length, a body over 64 KiB is still a 413, not JSON cut short at the limit (a 400); one of
    exactly 64 KiB is allowed through to validation."""
    body = b'{"code": "' + b"x" * (size - 12) + b'"}'
    assert len(body) == size
    response = bare.client.post(
        "/api/v1/auth/wechat", input_stream=io.BytesIO(body), content_type="application/json",
        headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True},
    )  # fmt: skip
    assert_envelope(response, status, code)


def test_a_chunked_body_over_the_limit_is_413_whatever_its_type(bare):
    response = bare.client.post(
        "/api/v1/auth/wechat", input_stream=io.BytesIO(b"x" * (70 * 1024)), content_type="text/plain",
        headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True},
    )  # fmt: skip
    assert_envelope(response, 413, "payload_too_large")


def test_body_under_the_limit_is_not_rejected_for_size(bare):
    # 60 KiB is allowed through to validation (the code is too long for the schema).
    response = bare.post("/auth/wechat", json={"code": "x" * (60 * 1024)})
    error = assert_envelope(response, 422, "validation_error")
    assert "code" in error["details"]["fields"]


@pytest.mark.parametrize("raw", ['{"code": ', "not json", "{'code': 'stub:a'}", '{"code": "stub:a"}}'])
def test_malformed_json_is_bad_request(bare, raw):
    response = bare.post("/auth/wechat", data=raw, content_type="application/json")
    assert_envelope(response, 400, "bad_request")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('{"nickname": "a", "nickname": "b"}', "nickname"),
        ('{"nickname": "a", "community_id": null, "nickname": "a"}', "nickname"),  # even with the same value
        ('{"nickname": "a", "x": {"k": 1, "k": 2}}', "k"),  # in a nested object too
        ('{"nickname": "a", "\\u0000": 1, "\\u0000": 2}', "\\x00"),  # named printably
    ],
)
def test_a_name_given_twice_in_one_object_is_bad_request(api, raw, key):
    """JSON parsers keep the last of two values under one name and drop the first without a word: refused instead,
    naming it, and nothing is changed."""
    me = api.resident()
    before = api.get("/me", as_=me).get_json()
    response = api.patch("/me", as_=me, data=raw, content_type="application/json")
    assert assert_envelope(response, 400, "bad_request")["message"] == f"JSON 中的字段重复出现：{key}"
    assert api.get("/me", as_=me).get_json() == before


def test_a_body_is_parsed_once_for_every_reader(api, monkeypatch):
    """The up-front checks parse it; webargs and the idempotency layer read that parse rather than the bytes again."""
    from webargs import flaskparser

    admin, me = api.staff("admin"), api.resident()

    def parsed_again(*args, **kwargs):
        raise AssertionError("the body was parsed a second time")

    monkeypatch.setattr(flaskparser.core, "parse_json", parsed_again)
    monkeypatch.setattr(flask.Request, "get_json", parsed_again)
    body, key = {"delta": 5, "reason": "补录"}, {"Idempotency-Key": "once-1"}
    first = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=key)
    assert first.status_code == 201, first.get_json()
    again = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body, headers=key)  # the same body's hash
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()


def test_a_login_with_a_name_given_twice_logs_nobody_in(api):
    response = api.post("/auth/wechat", data='{"code": "stub:a", "code": "stub:b"}', content_type="application/json")
    assert assert_envelope(response, 400, "bad_request")["message"] == "JSON 中的字段重复出现：code"
    assert count(Resident) == 0


def nested(levels: int) -> str:
    """A body whose "code" sits inside `levels - 1` arrays: `levels` levels of nesting in all."""
    return '{"code": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


@pytest.mark.parametrize("levels", [33, 700, 1_500, 30_000])
def test_json_nested_deeper_than_any_contract_body_is_bad_request(bare, levels):
    """Under 64 KiB, but deeper than 32 levels: a 400, never a RecursionError (a 500) in some parser further down."""
    response = bare.post("/auth/wechat", data=nested(levels), content_type="application/json")
    assert "嵌套" in assert_envelope(response, 400, "bad_request")["message"]


def test_json_nested_32_levels_reaches_validation(bare):
    response = bare.post("/auth/wechat", data=nested(32), content_type="application/json")
    assert "code" in assert_envelope(response, 422, "validation_error")["details"]["fields"]


def test_deep_json_on_an_idempotent_request_is_bad_request(api):
    """The idempotency layer hashes the body deeper in the stack than the first parser: refused before either."""
    me = api.resident()
    response = api.post(
        "/scans", as_=me, data=nested(700), content_type="application/json", headers={"Idempotency-Key": "deep-1"}
    )
    assert_envelope(response, 400, "bad_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/wechat", '{"code": %s}'),
        ("/auth/login", '{"username": "admin", "password": %s}'),
        ("/auth/wechat", '{"code": "stub:x", "extra": [1, 2, -%s]}'),
    ],
)
def test_an_integer_longer_than_python_reads_is_bad_request(bare, path, body):
    """Python reads at most 4,300 digits into an int; json.loads raises a plain ValueError past that, which was a 500
    that anyone could cause without logging in."""
    response = bare.post(path, data=body % ("9" * 5000), content_type="application/json")
    assert "数字" in assert_envelope(response, 400, "bad_request")["message"]


def test_a_long_body_with_ordinary_numbers_is_not_refused_for_them(api):
    admin = api.staff("admin")
    reason = "补" * 2000  # a body over 4,300 bytes: the check parses it, finds nothing too long, and lets it through
    response = api.post("/residents/999999/adjustments", as_=admin, json={"delta": 12345678, "reason": reason})
    fields = assert_envelope(response, 422, "validation_error")["details"]["fields"]  # validation reached, not a 400
    assert set(fields) == {"delta", "reason"}


@pytest.mark.parametrize("nickname", ["a\u202eb", "\u2067居民\u2069", "a\u0007b", "两\n行"])
def test_a_nickname_with_control_characters_is_refused(api, nickname):
    me = api.resident()
    error = assert_envelope(api.patch("/me", as_=me, json={"nickname": nickname}), 422, "validation_error")
    assert error["details"]["fields"]["nickname"] == ["不能包含控制字符或文字方向控制符"]


@pytest.mark.parametrize("nickname", ["\u200b\u200b", "\u200d", " \ufeff\u3000 "])
def test_a_nickname_of_only_invisible_characters_is_empty(api, nickname):
    me = api.resident()
    error = assert_envelope(api.patch("/me", as_=me, json={"nickname": nickname}), 422, "validation_error")
    assert "nickname" in error["details"]["fields"]


def test_emoji_sequences_in_a_nickname_are_kept(api):
    me = api.resident()
    nickname = "小林👨\u200d👩\u200d👧"  # joined by ZERO WIDTH JOINER, a format character but not a direction control
    assert api.patch("/me", as_=me, json={"nickname": nickname}).get_json()["nickname"] == nickname


def test_a_reason_may_span_lines(api):
    me, admin = api.resident(), api.staff("admin")
    body = {"delta": 5, "reason": "活动补发\n见 11 月台账"}
    response = api.post(f"/residents/{me.id}/adjustments", as_=admin, json=body)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["memo"] == "人工调整：活动补发\n见 11 月台账"


def test_a_nul_character_anywhere_is_the_fields_validation_error_not_a_database_error(api):
    """PostgreSQL cannot store U+0000: found by fuzzing a point's name, and true of every text field."""
    admin, me = api.staff("admin"), api.resident()
    point = {"name": "恒康\x00站", "community_id": 1, "kind": "station"}
    error = assert_envelope(api.post("/collection-points", as_=admin, json=point), 422, "validation_error")
    assert error["details"]["fields"] == {"name": ["不能包含空字符或无效的 Unicode 字符"]}
    nested = {"member_code": "m", "collection_point_id": 1, "items": [{"category": "paper\x00", "weight_g": 1}]}
    error = assert_envelope(api.post("/deposits", as_=admin, json=nested), 422, "validation_error")
    assert list(error["details"]["fields"]) == ["items"]
    error = assert_envelope(api.patch("/me", as_=me, json={"nickname": "\x00"}), 422, "validation_error")
    assert "nickname" in error["details"]["fields"]
    login = api.post("/auth/login", json={"username": "admin\x00", "password": "x" * 12})
    assert "username" in assert_envelope(login, 422, "validation_error")["details"]["fields"]
    assert (
        "near" in assert_envelope(api.get("/collection-points?near=%00"), 422, "validation_error")["details"]["fields"]
    )
    # the escaped text \\u0000 (a backslash, then u0000) is ordinary text
    fine = api.patch("/me", as_=me, json={"nickname": "\\u0000"})
    assert fine.status_code == 200, fine.get_json()
    assert fine.get_json()["nickname"] == "\\u0000"


@pytest.mark.parametrize("escaped", ["\\ud800", "\\udfff", "a\\uD83D", "\\u0000"])
def test_text_that_cannot_be_stored_is_refused_by_field(api, escaped):
    """A lone surrogate is not Unicode text: no driver can encode it. Sent escaped, as JSON allows."""
    me = api.resident()
    body = f'{{"nickname": "x{escaped}y"}}'
    error = assert_envelope(
        api.patch("/me", as_=me, data=body, content_type="application/json"), 422, "validation_error"
    )
    assert list(error["details"]["fields"]) == ["nickname"]
    in_a_key = f'{{"nick{escaped}": "x"}}'
    error = assert_envelope(api.patch("/me", as_=me, data=in_a_key, content_type="application/json"), 422,
                            "validation_error")  # fmt: skip
    assert len(error["details"]["fields"]) == 1
    # a whole surrogate pair is an ordinary character
    pair = api.patch("/me", as_=me, data='{"nickname": "\\ud83c\\udf31"}', content_type="application/json")
    assert pair.status_code == 200, pair.get_json()
    assert pair.get_json()["nickname"] == "🌱"


@pytest.mark.parametrize(
    "raw",
    [b"\xed\xa0\x80", b"\xff", b"\xc3"],  # a surrogate encoded as bytes, a byte UTF-8 never has, a cut sequence
    ids=["surrogate-bytes", "invalid-byte", "truncated"],
)
def test_a_body_that_is_not_utf8_is_bad_request_even_with_an_idempotency_key(api, raw):
    admin, resident = api.staff("admin"), api.resident()
    body = b'{"delta": 5, "reason": "ok' + raw + b'"}'
    for headers in ({}, {"Idempotency-Key": "utf8-check"}):
        response = api.post(f"/residents/{resident.id}/adjustments", as_=admin, data=body, headers=headers,
                            content_type="application/json")  # fmt: skip
        assert_envelope(response, 400, "bad_request")
    assert api.get("/me", as_=resident).get_json()["balance"] == 0


def test_malformed_json_on_an_authenticated_patch_is_bad_request(api):
    me = api.resident()
    response = api.patch("/me", as_=me, data="{nickname:", content_type="application/json")
    assert_envelope(response, 400, "bad_request")


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", '{"code": "stub:a"}'),
        ("application/x-www-form-urlencoded", "code=stub%3Aa"),
        ("application/xml", "<code>stub:a</code>"),
    ],
)
def test_wrong_content_type_is_bad_request(bare, content_type, data):
    response = bare.post("/auth/wechat", data=data, content_type=content_type)
    error = assert_envelope(response, 400, "bad_request")
    assert "JSON" in error["message"]


def test_json_with_charset_is_accepted(api):
    response = api.post(
        "/auth/wechat", data='{"code": "stub:charset-ok"}', content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 200, response.get_json()


def test_unknown_field_is_a_validation_error(bare):
    response = bare.post("/auth/wechat", json={"code": "stub:a", "is_admin": True})
    error = assert_envelope(response, 422, "validation_error")
    assert list(error["details"]["fields"]) == ["is_admin"]
    assert error["details"]["fields"]["is_admin"]


def test_unknown_field_on_an_admin_create_is_a_validation_error_and_nothing_is_created(api):
    admin = api.staff("admin")
    response = api.post("/communities", as_=admin, json={"name": "新社区", "code": "new", "mayor": "x"})
    error = assert_envelope(response, 422, "validation_error")
    assert "mayor" in error["details"]["fields"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Community).filter_by(code="new")) == 0


def test_field_errors_are_listed_per_field(bare):
    response = bare.post("/auth/login", json={})
    error = assert_envelope(response, 422, "validation_error")
    fields = error["details"]["fields"]
    assert set(fields) == {"username", "password"}
    assert all(isinstance(messages, list) and messages for messages in fields.values())


def test_field_errors_from_values(api):
    admin = api.staff("admin")
    response = api.post("/communities", as_=admin, json={"name": "", "code": "has space"})
    fields = assert_envelope(response, 422, "validation_error")["details"]["fields"]
    assert set(fields) == {"name", "code"}


def test_query_string_errors_are_listed_per_field(api):
    admin = api.staff("admin")
    response = api.get("/residents?limit=1000", as_=admin)
    fields = assert_envelope(response, 422, "validation_error")["details"]["fields"]
    assert "limit" in fields


UNKNOWN, REPEATED = "不支持的字段", "参数不能重复出现"


@pytest.mark.parametrize(
    ("path", "query", "field", "message"),
    [
        ("/collection-points", "categories=glass", "categories", UNKNOWN),  # the filter is ?category=
        ("/collection-points", "category=glass&page=2", "page", UNKNOWN),  # lists page by cursor
        ("/me/ledger", "limit=5&since=2026-01-01", "since", UNKNOWN),
        ("/rules", "activity=sorting:paper", "activity", UNKNOWN),
        ("/collection-points", "category=paper&category=glass", "category", REPEATED),  # only the first was read
        ("/me/ledger", "limit=5&limit=6", "limit", REPEATED),
    ],
)
def test_a_query_parameter_a_list_does_not_take_or_that_is_repeated_is_refused(api, path, query, field, message):
    """A typo in a filter would otherwise give the whole, unfiltered list, and look like it worked."""
    me = api.resident()
    fields = assert_envelope(api.get(f"{path}?{query}", as_=me), 422, "validation_error")["details"]["fields"]
    assert fields == {field: [message]}


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=%D9%A3", "limit"), ("limit=%C2%852", "limit"), ("community_id=%E0%A5%A7", "community_id"),
     ("near=%D9%A3%D9%A0.8,121.5", "near")],
)  # fmt: skip
def test_a_number_in_a_query_is_ascii_digits(bare, query, field):
    """int() reads Arabic-Indic ٣ and Devanagari १ as 3 and 1; a client never means them, and a log reader would
    not recognise them."""
    path = "/collection-points" if field != "limit" else "/organizations"
    fields = assert_envelope(bare.get(f"{path}?{query}"), 422, "validation_error")["details"]["fields"]
    assert field in fields


def test_a_resident_is_found_by_id_in_ascii_digits_only(api):
    admin = api.staff("admin")
    me = api.resident()
    found = api.get(f"/residents?q={me.id}", as_=admin).get_json()["items"]
    assert [r["id"] for r in found] == [me.id]
    arabic = "".join(chr(0x0660 + int(d)) for d in str(me.id))
    assert api.get(f"/residents?q={arabic}", as_=admin).get_json()["items"] == []


def test_a_json_array_body_is_a_validation_error(bare):
    response = bare.post("/auth/wechat", json=["stub:a"])
    assert_envelope(response, 422, "validation_error")


def test_a_refused_body_says_which_field_to_fix_in_the_message_a_client_shows(api):
    """`message` is what the mini-program shows; "提交的内容有误" alone left the resident to guess."""
    resident = api.resident()
    error = assert_error(api.patch("/me", as_=resident, json={"nickname": "长" * 40}), 422, "validation_error")
    [said] = error["details"]["fields"]["nickname"]
    assert error["message"] == f"昵称：{said}"
    error = assert_error(api.patch("/me", as_=resident, json={"nickname": "", "community_id": "x"}), 422,
                         "validation_error")  # fmt: skip
    assert error["message"].startswith("昵称：")
    assert error["message"].endswith("（另有 1 处需要修改）")
    admin = api.staff("admin")
    place = {"name": "恒康一号站", "community_id": community_id("hengkang"), "kind": "station"}
    point = api.post("/collection-points", as_=admin, json=place).get_json()
    collector = api.staff("collector", collection_point_ids=[point["id"]])
    body = {"member_code": api.member_code(resident), "collection_point_id": point["id"],
            "items": [{"category": "paper", "weight_g": 1000}, {"category": "paper", "weight_g": 1.5}]}  # fmt: skip
    error = assert_error(api.post("/deposits", as_=collector, json=body), 422, "validation_error")
    [said] = error["details"]["fields"]["items"]["1"]["weight_g"]
    assert error["message"] == f"回收物第 2 项重量：{said}"
    # a field no person would know by name (the client's own mistake): the general message
    error = assert_error(api.patch("/me", as_=resident, json={"colour": "green"}), 422, "validation_error")
    assert error["message"] == "提交的内容有误"
    error = assert_error(api.get("/collection-points?limit=0", as_=resident), 422, "validation_error")
    assert error["message"] == "每页条数：必须在 1 到 100 之间"  # not 必须大于或等于 1 且小于或等于 100


def test_a_field_name_of_digits_is_no_list_item_and_no_500(app, api):
    """Only a list's item under a named field is 第 N 项; a name of 5,000 digits was int()ed, past what Python reads."""
    resident = api.resident()
    error = assert_error(api.patch("/me", as_=resident, json={"0": 1}), 422, "validation_error")
    assert error["message"] == "提交的内容有误"  # not 第 1 项：不支持的字段
    body = json.dumps({"9" * 5000: "\u0000"})  # refused before any login or schema, for the character
    response = api.client.post("/api/v1/auth/login", data=body, content_type="application/json")
    assert_error(response, 422, "validation_error")
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: a failing handler is a 500
    try:
        response = api.client.patch("/api/v1/me", headers=resident.auth, json={"9" * 5000: 1})
    finally:
        app.config["PROPAGATE_EXCEPTIONS"] = None
    assert_error(response, 422, "validation_error")


def _refusal_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]


def test_the_field_names_a_refusal_logs_are_bounded_and_cannot_forge_what_support_searches_for(api, caplog):
    """The names are the client's: 1,200 of them made a 56,000-character line, `x resident=42` a false token, and a
    position sent as a parameter's name (a client that left out near=) a position in the log."""
    resident = api.resident()
    body = {f"k{i:05d}" + "x" * 40: 1 for i in range(1200)}
    assert_error(api.patch("/me", as_=resident, json=body), 422, "validation_error")
    [line] = _refusal_lines(caplog)
    assert len(line) < 600
    assert line.endswith(",+1192")
    caplog.clear()
    assert_error(api.patch("/me", as_=resident, json={"x resident=42 point=7": 1}), 422, "validation_error")
    [line] = _refusal_lines(caplog)
    assert line == f"refused PATCH /api/v1/me 422 validation_error by=resident:{resident.id} fields=?"
    caplog.clear()
    assert_error(api.get("/collection-points?31.2304,121.4737", as_=resident), 422, "validation_error")
    [line] = _refusal_lines(caplog)
    assert "31.2304" not in line


def test_service_errors_use_the_envelope(bare):
    error = assert_envelope(bare.post("/auth/wechat", json={"code": "no-stub-prefix"}), 401, "invalid_credentials")
    assert error["details"] == {}


# --- 500: rolled back, logged with the request id -------------------------------------------------------


def test_unexpected_error_is_internal_error_and_rolls_back(fresh_app, caplog):
    boom_app = fresh_app()

    @boom_app.post("/api/v1/_test/boom")
    def boom():
        db.session.add(Community(code="halfwritten", name="写了一半的社区"))
        db.session.flush()
        raise RuntimeError("kaboom")

    response = boom_app.test_client().post("/api/v1/_test/boom", json={})
    error = assert_envelope(response, 500, "internal_error")
    assert "kaboom" not in response.get_data(as_text=True)
    request_id = response.headers["X-Request-Id"]
    assert HEX_ID.match(request_id)
    assert error["details"]["request_id"] == request_id
    assert any(r.levelname == "ERROR" and "/api/v1/_test/boom" in r.getMessage() for r in caplog.records)

    with boom_app.app_context():
        count = db.session.scalar(sa.select(sa.func.count()).select_from(Community).filter_by(code="halfwritten"))
    assert count == 0


def test_unexpected_error_echoes_the_callers_request_id(fresh_app):
    boom_app = fresh_app()

    @boom_app.get("/api/v1/_test/boom")
    def boom():
        raise RuntimeError("kaboom")

    response = boom_app.test_client().get("/api/v1/_test/boom", headers={"X-Request-Id": "trace-0001-abcd"})
    error = assert_envelope(response, 500, "internal_error")
    assert response.headers["X-Request-Id"] == "trace-0001-abcd"
    assert error["details"]["request_id"] == "trace-0001-abcd"


# --- outages of the shared services ---------------------------------------------------------------------

NOBODY_LISTENS = "127.0.0.1:1"  # connection refused at once


def _no_traceback(caplog, service: str) -> None:
    said = [r for r in caplog.records if r.name == "app.http"]
    assert [r.levelname for r in said] == ["ERROR"], [r.getMessage() for r in said]
    assert said[0].getMessage().startswith(f"{service} unreachable on ")
    assert said[0].exc_info is None  # one line per request while it lasts, not a traceback


def test_a_database_that_does_not_answer_is_503_service_unavailable_not_a_bug(fresh_app, caplog):
    gone = fresh_app(SQLALCHEMY_DATABASE_URI=f"postgresql+psycopg://postgres@{NOBODY_LISTENS}/gone")
    client = gone.test_client()
    response = client.get("/api/v1/rules")
    error = assert_envelope(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "10"
    assert error["details"]["request_id"] == response.headers["X-Request-Id"]
    _no_traceback(caplog, "database")
    assert_envelope(client.post("/api/v1/auth/login", json={"username": "a", "password": "b" * 8}), 503,
                    "service_unavailable")  # fmt: skip
    assert_envelope(client.get("/readyz"), 503, "not_ready")  # the load balancer's signal
    assert client.get("/healthz").status_code == 200  # the process itself is alive


def test_a_database_that_accepts_but_never_answers_is_a_503_after_the_connect_timeout(fresh_app, caplog):
    """A host that takes the connection and says nothing (a hung server, a half-dead proxy): without a client-side
    bound, each request waited until gunicorn killed its worker, and the client got a bare 500."""
    import socket

    from app.config import Settings

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers the startup message
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/silent"
        bounded = Settings.from_env({"DATABASE_URL": url, "DB_CONNECT_TIMEOUT_SECONDS": "2"})
        hung = fresh_app(SQLALCHEMY_DATABASE_URI=url, SQLALCHEMY_ENGINE_OPTIONS={
            "connect_args": bounded.pg_connect_args(), "pool_size": 1})  # fmt: skip
        response = hung.test_client().get("/api/v1/rules")
        assert_envelope(response, 503, "service_unavailable")
        assert response.headers["Retry-After"] == "10"
        _no_traceback(caplog, "database")
        error = assert_envelope(hung.test_client().get("/readyz"), 503, "not_ready")
        assert error["message"] == "数据库不可用"


@pytest.mark.postgres
@pytest.mark.skipif(not PG, reason="lock timeouts are PostgreSQL's")
def test_readiness_blocked_by_a_lock_says_the_database_is_unavailable_not_unmigrated(fresh_app):
    """Telling an operator to run migrations on a migrated database sends them the wrong way."""
    from app.config import Settings

    impatient = fresh_app(SQLALCHEMY_ENGINE_OPTIONS={
        "connect_args": {"options": Settings.from_env({"DB_LOCK_TIMEOUT_MS": "200"}).pg_options()}})  # fmt: skip
    with sa.create_engine(impatient.config["SQLALCHEMY_DATABASE_URI"]).connect() as locker:
        locker.execute(sa.text("LOCK TABLE alembic_version"))
        error = assert_envelope(impatient.test_client().get("/readyz"), 503, "not_ready")
        locker.rollback()
    assert error["message"] == "数据库不可用"
    assert error["details"] == {}
    assert impatient.test_client().get("/readyz").status_code == 200


def test_an_outage_on_a_rate_limited_route_says_the_outages_wait_not_the_limits(fresh_app):
    from app.extensions import limiter

    was = limiter.enabled
    try:
        gone = fresh_app(
            SQLALCHEMY_DATABASE_URI=f"postgresql+psycopg://postgres@{NOBODY_LISTENS}/gone",
            RATELIMIT_ENABLED=True,
            RATELIMIT_STORAGE_URI="memory://",
        )
        response = gone.test_client().post("/api/v1/auth/login", json={"username": "admin", "password": "b" * 8})
    finally:
        limiter.enabled = was
    assert_envelope(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "10"  # the limiter would have put its own window's figure here


@pytest.mark.parametrize(
    "error",
    [
        sa.exc.TimeoutError("QueuePool limit of size 10 overflow 40 reached"),
        sa.exc.OperationalError("SELECT 1", {}, type("TooMany", (Exception,), {"sqlstate": "53300"})("too many")),
    ],
    ids=["pool-exhausted", "too-many-connections"],
)
def test_a_database_refusing_more_connections_is_an_outage(error):
    from app.http import unreachable

    assert unreachable(error) == "database"


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"], ids=["deadlock", "serialization-failure"])
def test_a_transaction_postgresql_rolled_back_to_break_a_deadlock_is_a_503_to_retry(sqlstate):
    from app.http import _too_busy, unreachable

    error = sa.exc.OperationalError("UPDATE accounts", {}, type("Broken", (Exception,), {"sqlstate": sqlstate})())
    assert unreachable(error) == "database"
    assert _too_busy(error)


def test_a_sqlite_database_still_locked_after_its_busy_timeout_is_too_busy_not_a_bug(tmp_path):
    """`make run`'s SQLite, written by another process for longer than busy_timeout: a 503 to try again, as
    PostgreSQL's lock timeout is, not a 500."""
    import sqlite3

    from app.http import _too_busy, unreachable

    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waiter = sqlite3.connect(tmp_path / "busy.db", timeout=0)
    with pytest.raises(sqlite3.OperationalError) as locked:
        waiter.execute("CREATE TABLE t (x)")
    error = sa.exc.OperationalError("CREATE TABLE t (x)", {}, locked.value)
    assert unreachable(error) == "database"
    assert _too_busy(error)
    holder.close()
    waiter.close()
    locked_in_one_connection = type("Locked", (Exception,), {"sqlite_errorcode": 6})()  # SQLITE_LOCKED: a bug
    assert unreachable(sa.exc.OperationalError("DROP TABLE t", {}, locked_in_one_connection)) is None
    snapshot = type("BusySnapshot", (Exception,), {"sqlite_errorcode": 517})()  # SQLITE_BUSY_SNAPSHOT
    assert unreachable(sa.exc.OperationalError("UPDATE t", {}, snapshot)) == "database"
    malformed = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as bad_sql:
        malformed.execute("SELECT no_such_column FROM sqlite_master")
    assert unreachable(sa.exc.OperationalError("SELECT", {}, bad_sql.value)) is None  # a bug stays a bug


def test_an_error_of_the_database_that_is_not_an_outage_is_still_a_bug(fresh_app):
    boom_app = fresh_app()

    @boom_app.get("/api/v1/_test/bad-sql")
    def bad_sql():
        db.session.execute(sa.text("SELECT no_such_column FROM communities"))

    assert_envelope(boom_app.test_client().get("/api/v1/_test/bad-sql"), 500, "internal_error")


@pytest.mark.postgres
@pytest.mark.skipif(not PG, reason="a backend to lose is PostgreSQL's")
def test_a_connection_lost_after_the_answer_was_made_keeps_the_answer(fresh_app, caplog):
    """A read leaves its transaction open until the request ends, when the session rolls it back. A connection
    lost in between (a restart, a failover) used to turn the finished answer into gunicorn's bare 500; the answer
    stands, the connection is dropped from the pool, and the next request gets a working one."""
    lossy = fresh_app()

    @lossy.get("/api/v1/_test/read-then-lose")
    def read_then_lose():
        pid = db.session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with sa.create_engine(lossy.config["SQLALCHEMY_DATABASE_URI"]).connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return {"read": pid}

    client = lossy.test_client()
    response = client.get("/api/v1/_test/read-then-lose")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "read" in response.get_json()
    assert any("connection lost" in r.getMessage() for r in caplog.records if r.name == "app.db")
    assert client.get("/api/v1/rules").status_code == 200  # the pool hands out a live connection next


@pytest.mark.postgres
@pytest.mark.skipif(not PG, reason="lock timeouts are PostgreSQL's")
def test_a_lock_held_by_a_stuck_transaction_is_a_503_to_try_again_not_a_worker_held(fresh_app, caplog):
    """A transaction left open on an account (a host that hung mid-request) makes a request for that account wait
    the lock timeout, then answer 503 with Retry-After and write nothing, rather than wait until gunicorn kills the
    worker and answers a bare 500."""
    from app.config import Settings

    impatient = fresh_app(SQLALCHEMY_ENGINE_OPTIONS={
        "connect_args": {"options": Settings.from_env({"DB_LOCK_TIMEOUT_MS": "200"}).pg_options()}})  # fmt: skip
    api = ApiClient(impatient.test_client())
    admin, resident = api.staff("admin"), api.resident()
    body = {"delta": 5, "reason": "锁等待测试"}
    with sa.create_engine(impatient.config["SQLALCHEMY_DATABASE_URI"]).connect() as stuck:
        stuck.execute(sa.text("SELECT 1 FROM accounts WHERE resident_id = :id FOR UPDATE"), {"id": resident.id})
        response = api.post(f"/residents/{resident.id}/adjustments", as_=admin, json=body)
        error = assert_error(response, 503, "service_unavailable")
        assert response.headers["Retry-After"] == "10"
        assert error["details"]["request_id"]
        stuck.rollback()
    said = [r.getMessage() for r in caplog.records if r.name == "app.http"]
    assert len(said) == 1
    assert said[0].startswith(f"database too busy on POST /api/v1/residents/{resident.id}/")
    assert "lock timeout" in said[0]  # PostgreSQL's own reason follows
    assert api.get("/me", as_=resident).get_json()["balance"] == 0  # nothing was written
    assert api.post(f"/residents/{resident.id}/adjustments", as_=admin, json=body).status_code == 201


def test_the_server_bounds_statements_and_idle_transactions_and_the_command_line_does_not():
    from app.config import Settings

    assert "-c lock_timeout=5000 " in Settings.from_env({}).pg_options()
    assert "statement_timeout=0 " in Settings.from_env({}).pg_options()
    config = (ROOT / "gunicorn.conf.py").read_text()
    assert 'setdefault("DB_STATEMENT_TIMEOUT_MS", "25000")' in config
    assert "timeout = 30\n" in config  # a statement gives up before the worker is killed
    bounded = Settings.from_env({"DB_STATEMENT_TIMEOUT_MS": "25000", "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "60000"})
    assert bounded.pg_options().endswith("statement_timeout=25000 -c idle_in_transaction_session_timeout=60000")
    assert bounded.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"].get("connect_args") is None  # SQLite: none


def test_a_value_the_driver_cannot_send_is_a_bug_not_an_outage(fresh_app, caplog):
    """psycopg refuses to adapt it with no SQLSTATE, as it does when PostgreSQL never answered; only the latter is
    an outage."""
    boom_app = fresh_app()

    @boom_app.get("/api/v1/_test/unadaptable")
    def unadaptable():
        db.session.execute(sa.text("SELECT :x"), {"x": object()})

    assert_envelope(boom_app.test_client().get("/api/v1/_test/unadaptable"), 500, "internal_error")
    assert any(r.exc_info for r in caplog.records if r.name == "app.http")  # with its traceback


def test_the_admin_site_answers_an_outage_with_a_page_saying_to_come_back(app, caplog):
    import psycopg

    from admin.views import _unexpected

    class SignedInStaff:  # expired by the rollback: reading it would go to the database that is away
        @property
        def role(self):
            raise never_answered

    never_answered = sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))
    with app.test_request_context("/admin/"):
        flask.g.admin_staff = SignedInStaff()
        body, status, headers = _unexpected(never_answered)
    assert (status, headers) == (503, {"Retry-After": "10"})
    assert "服务暂时不可用" in body
    said = [r for r in caplog.records if r.name == "app.admin"]
    assert [r.getMessage().split(":")[0] for r in said] == ["admin"]
    assert said[0].getMessage().startswith("admin: database unreachable on GET /admin/")
    assert said[0].exc_info is None  # one line, not a traceback per page while it lasts


@pytest.fixture
def limits_in_a_redis_that_is_down(fresh_app):
    from app.extensions import limiter

    was = limiter.enabled
    url = f"redis://{NOBODY_LISTENS}/0"
    yield fresh_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI=url, REDIS_URL=url)
    limiter.enabled = was


def test_while_the_rate_limits_redis_is_down_staff_logins_wait_and_the_rest_carries_on(
    limits_in_a_redis_that_is_down, caplog
):
    client = limits_in_a_redis_that_is_down.test_client()
    # Five wrong passwords lock a username; uncounted, guesses would be unlimited, so logins wait for Redis.
    response = client.post("/api/v1/auth/login", json={"username": "admin", "password": "guess-1234"})
    assert_envelope(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "10"
    _no_traceback(caplog, "redis")
    assert client.post("/api/v1/auth/wechat", json={"code": "stub:redis-down-resident"}).status_code == 200
    assert client.get("/api/v1/rules").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200  # every instance shares this Redis: pulling them all would stop scans too
    assert ready.get_json() == {"status": "ok", "database": "ok", "rate_limits": "unavailable"}


# --- request ids ----------------------------------------------------------------------------------------


def _requests(api, admin, resident):
    return {
        "healthz": api.get("/healthz"),
        "list": api.get("/communities"),
        "created": api.post("/communities", as_=admin, json={"name": "请求编号社区", "code": "rid"}),
        "not_found": api.get("/api/v1/nope"),
        "method": api.delete("/communities"),
        "too_large": api.post("/auth/wechat", data=b"x" * (65 * 1024), content_type="application/json"),
        "bad_json": api.post("/auth/wechat", data="{", content_type="application/json"),
        "unauthorized": api.get("/me"),
        "forbidden": api.post("/communities", as_=resident, json={"name": "x", "code": "x"}),
        "docs": api.get("/api/v1/docs"),
        "logout": api.post("/auth/logout", as_=resident),
    }


def test_every_response_carries_a_request_id(api):
    admin, resident = api.staff("admin"), api.resident()
    responses = _requests(api, admin, resident)
    assert {name: r.status_code for name, r in responses.items()} == {
        "healthz": 200,
        "list": 200,
        "created": 201,
        "not_found": 404,
        "method": 405,
        "too_large": 413,
        "bad_json": 400,
        "unauthorized": 401,
        "forbidden": 403,
        "docs": 200,
        "logout": 204,
    }
    ids = [r.headers.get("X-Request-Id", "") for r in responses.values()]
    assert all(HEX_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("incoming", ["abcdefgh", "req-2026.06.15_0001", "A" * 64])
def test_a_sane_incoming_request_id_is_echoed(bare, incoming):
    response = bare.get("/communities", headers={"X-Request-Id": incoming})
    assert response.headers["X-Request-Id"] == incoming
    response = bare.get("/api/v1/nope", headers={"X-Request-Id": incoming})
    assert response.headers["X-Request-Id"] == incoming


@pytest.mark.parametrize("incoming", ["short", "has spaces in it", "<script>alert(1)</script>", "A" * 65, "x;y=z12345"])
def test_an_insane_incoming_request_id_is_replaced(bare, incoming):
    response = bare.get("/communities", headers={"X-Request-Id": incoming})
    assert HEX_ID.match(response.headers["X-Request-Id"])


# --- OpenAPI and docs -----------------------------------------------------------------------------------

FOUNDATION_PATHS = [
    "/api/v1/auth/wechat",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/auth/logout",
    "/api/v1/me",
    "/api/v1/communities",
    "/api/v1/organizations",
    "/api/v1/staff",
    "/api/v1/staff/me",
    "/api/v1/staff/{staff_id}",
    "/api/v1/residents",
    "/api/v1/residents/{resident_id}",
]

PROTECTED = [
    ("/api/v1/auth/refresh", "post"),
    ("/api/v1/auth/logout", "post"),
    ("/api/v1/me", "get"),
    ("/api/v1/me", "patch"),
    ("/api/v1/communities", "post"),
    ("/api/v1/organizations", "post"),
    ("/api/v1/staff", "get"),
    ("/api/v1/staff", "post"),
    ("/api/v1/staff/me", "get"),
    ("/api/v1/staff/{staff_id}", "get"),
    ("/api/v1/staff/{staff_id}", "patch"),
    ("/api/v1/residents", "get"),
    ("/api/v1/residents/{resident_id}", "patch"),
]

PUBLIC = [
    ("/api/v1/auth/wechat", "post"),
    ("/api/v1/auth/login", "post"),
    ("/api/v1/communities", "get"),
    ("/api/v1/organizations", "get"),
]


@pytest.fixture(scope="module")
def spec(app):
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def _resolve(spec, node):
    while "$ref" in node:
        section, _, name = node["$ref"].removeprefix("#/").partition("/")
        kind, _, name = name.partition("/")
        node = spec[section][kind][name]
    return node


def _error_codes(spec, path, method, status) -> set[str]:
    return documented_codes(_resolve(spec, spec["paths"][path][method]["responses"][str(status)]))


def test_the_openapi_document_is_valid_openapi(spec):
    """Clients generate code from it: a bound rendered as a string (as apispec does for a Decimal) breaks them."""
    validate(spec)


def test_openapi_lists_the_foundation_paths(spec):
    assert spec["openapi"].startswith("3.")
    missing = [p for p in FOUNDATION_PATHS if p not in spec["paths"]]
    assert missing == []
    assert set(spec["paths"]["/api/v1/communities"]) >= {"get", "post"}
    assert set(spec["paths"]["/api/v1/me"]) >= {"get", "patch"}


def _patterns(spec) -> list[tuple[str, str]]:
    """(field or parameter name, pattern) for every pattern the document publishes."""
    found = [(name, prop["pattern"]) for schema in spec["components"]["schemas"].values()
             for name, prop in schema.get("properties", {}).items() if "pattern" in prop]  # fmt: skip
    for operations in spec["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else operation:
                if "pattern" in parameter.get("schema", {}):
                    found.append((parameter["name"], parameter["schema"]["pattern"]))
    return found


# A value each published pattern must accept, as a JavaScript client's validator reads it.
PATTERN_SAMPLES = {"near": "30.87,121.58", "code": "HK-BIN-02", "username": "worker.hk", "activity": "sorting:paper",
                   "Idempotency-Key": "重试-1"}  # fmt: skip


def test_openapi_patterns_are_ecmascript_regular_expressions(spec):
    patterns = _patterns(spec)
    assert {name for name, _ in patterns} >= set(PATTERN_SAMPLES)
    for name, pattern in patterns:
        # Python-only syntax is an invalid escape or group in ECMA-262, the dialect OpenAPI 3.0 names
        assert not re.search(r"\\[AZ]|\(\?P|\(\?[aiLmsux]", pattern), (name, pattern)
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js to compile the patterns with")
    checks = [(pattern, PATTERN_SAMPLES[name]) for name, pattern in patterns if name in PATTERN_SAMPLES]
    script = "const c = JSON.parse(process.argv[1]);" \
             "console.log(JSON.stringify(c.map(([p, s]) => new RegExp(p, 'u').test(s))))"  # fmt: skip
    done = subprocess.run([node, "-e", script, json.dumps(checks)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [True] * len(checks), checks


def test_openapi_documents_changing_ones_own_password(spec):
    operation = spec["paths"]["/api/v1/auth/password"]["post"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert {"200", "401", "403", "422", "429"} <= set(operation["responses"])
    assert "rate_limited" in _error_codes(spec, "/api/v1/auth/password", "post", 429)
    body = _resolve(spec, operation["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["required"]) == {"current_password", "new_password"}
    answer = _resolve(spec, operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert {"access_token", "refresh_token", "staff"} <= set(answer["properties"])
    residents = spec["paths"]["/api/v1/residents"]["get"]["parameters"]
    assert "q" in {parameter["name"] for parameter in residents}
    deposit = _resolve(spec, spec["components"]["schemas"]["Deposit"])
    assert "reversal_entry_id" in deposit["properties"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/collection-points/{point_id}", "delete"),
        ("/api/v1/collection-points/{point_id}/qr/rotate", "post"),
        ("/api/v1/devices/{device_id}/secret/rotate", "post"),
    ],
)
def test_openapi_documents_what_a_bodyless_post_refuses(spec, path, method):
    assert "requestBody" not in spec["paths"][path][method]
    assert "bad_request" in _error_codes(spec, path, method, 400)
    assert "validation_error" in _error_codes(spec, path, method, 422)
    assert "payload_too_large" in _error_codes(spec, path, method, 413)


def test_openapi_documents_the_roles_of_bin_keys_and_deposit_reads(spec):
    """Registering and re-keying bins are admin-only, reading a deposit is refused to merchants and alliance
    members: each documents 403 forbidden."""
    for path, method in (
        ("/api/v1/devices", "post"),
        ("/api/v1/devices/{device_id}/secret/rotate", "post"),
        ("/api/v1/deposits/{deposit_id}", "get"),
    ):
        assert "forbidden" in _error_codes(spec, path, method, 403), path
    assert "validation_error" in _error_codes(spec, "/api/v1/devices", "post", 422)
    signature = next(
        p for p in spec["paths"]["/api/v1/devices/deposits"]["post"]["parameters"] if p["name"] == "X-Signature"
    )
    assert "查询字符串" in signature["description"]


def _operations(spec):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, operation


def _components(spec, nodes) -> set[str]:
    """The names of the component schemas these schema nodes use, nested ones included."""
    found: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                name = ref.rpartition("/")[2]
                if name not in found:
                    found.add(name)
                    stack.append(spec["components"]["schemas"][name])
            elif ref:
                stack.append(_resolve(spec, node))
            stack.extend(value for key, value in node.items() if key != "$ref")
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _answer_components(spec) -> set[str]:
    return _components(spec, [answer for _, _, op in _operations(spec) for answer in op["responses"].values()])


def _request_components(spec) -> set[str]:
    return _components(spec, [op["requestBody"] for _, _, op in _operations(spec) if "requestBody" in op])


# Fields an answer may leave out: the probes' extra checks, and where a scan checked in (event check-ins to come).
SOMETIMES_ABSENT = {("Health", "database"), ("Health", "rate_limits"), ("ScanResult", "collection_point_id"),
                    ("ScanResult", "collection_point_name"), ("ScanResult", "day")}  # fmt: skip


def test_openapi_marks_every_field_an_answer_always_has_required(spec):
    """Generated client types make a field that is not required optional, and every use of it a check for absence.
    The suite checks every answer it receives against these lists (tests.conftest.assert_documented)."""
    answers = _answer_components(spec)
    assert {"Me", "Entry", "CollectionPoint", "Deposit", "DepositItem", "ScanResult", "Staff", "ErrorBody"} <= answers
    optional = set()
    for name in answers - {"ErrorDetails"}:  # each of its properties comes with the codes it names
        schema = spec["components"]["schemas"][name]
        optional |= {(name, field) for field in schema.get("properties", {}) if field not in schema.get("required", [])}
    assert optional == SOMETIMES_ABSENT


def test_openapi_names_every_error_code_and_types_each_detail(spec):
    """A typed client switches on `error.code` and reads `details` without casts: the codes are an enum of every code
    the server answers with, and each detail a refusal carries has its type. An undeclared detail is refused too, so
    the suite's check of every answer against the document (tests.conftest.assert_documented) finds one left out."""
    from app import errors

    body = spec["components"]["schemas"]["ErrorBody"]
    every_code = {code for code, _ in errors.HTTP_CODES.values()} | {
        error.code for error in vars(errors).values() if isinstance(error, type) and issubclass(error, errors.AppError)
    }
    assert set(body["properties"]["code"]["enum"]) == every_code
    details = _resolve(spec, body["properties"]["details"])
    assert details is spec["components"]["schemas"]["ErrorDetails"]
    assert details["additionalProperties"] is False
    assert "required" not in details
    properties = details["properties"]
    for name in ("distance_m", "geofence_m", "cap", "used", "remaining", "points", "balance", "required", "deposit_id",
                 "server_time", "year", "http_status", "errcode"):  # fmt: skip
        assert properties[name]["type"] == "integer", name
    assert properties["fields"]["type"] == "object"
    assert properties["headers"] == {"type": "array", "items": {"type": "string"}, "description": ANY}
    assert properties["reason"]["type"] == "string"  # a bin's refusal, or gunicorn's diagnosis (app/serving.py)
    assert {"type": "boolean"} in properties["refused"]["oneOf"]  # a bin's replayed request: was it refused
    assert {"type": "array", "items": {"type": "string"}} in properties["refused"]["oneOf"]  # the counters at cap
    assert properties["database_revision"]["nullable"] is True  # /readyz before any migration
    for name, schema in properties.items():
        assert schema["description"], name  # which codes carry it, and what it means


def test_openapi_request_types_hold_no_read_only_fields(spec):
    """A request body's type offers only what the server takes: ids and computed fields are answers' alone."""
    requests = _request_components(spec)
    assert {"CollectionPointCreate", "CollectionPointUpdate", "CommunityCreate", "OrganizationCreate"} <= requests
    assert not requests & _answer_components(spec)
    for name in requests:
        properties = spec["components"]["schemas"][name].get("properties", {})
        assert not {"id", "distance_m", "created_at"} & set(properties), name
        assert not [field for field, value in properties.items() if value.get("readOnly")], name


def test_openapi_gives_no_null_defaults_and_no_null_query_values(spec):
    """`default: null` makes an optional field required in generated types, and a query string cannot carry null:
    `?kind=null` is the text "null"."""
    text = json.dumps(spec)
    assert '"default": null' not in text
    for path, method, operation in _operations(spec):
        for parameter in operation.get("parameters", []):
            schema = parameter.get("schema", {})
            assert not schema.get("nullable"), (path, method, parameter)
            assert None not in schema.get("enum", []), (path, method, parameter)


def test_openapi_documents_outages_and_server_errors_on_every_operation(spec):
    for path, method, operation in _operations(spec):
        responses = operation["responses"]
        assert "service_unavailable" in _error_codes(spec, path, method, 503), (path, method)
        assert "Retry-After" in _resolve(spec, responses["503"]).get("headers", {}), (path, method)
        assert "internal_error" in _error_codes(spec, path, method, 500), (path, method)


def test_openapi_names_every_operation_once(spec):
    """Client generators name their functions after operationId."""
    ids = [operation.get("operationId") for _, _, operation in _operations(spec)]
    assert None not in ids
    assert len(ids) == len(set(ids))
    assert spec["paths"]["/api/v1/scans"]["post"]["operationId"] == "scan"


def test_openapi_documents_the_replay_header_of_idempotent_operations(spec):
    keyed = [(path, method, operation) for path, method, operation in _operations(spec)
             if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))]  # fmt: skip
    assert {("/api/v1/scans", "post"), ("/api/v1/deposits", "post"), ("/api/v1/devices/deposits", "post")} <= {
        (path, method) for path, method, _ in keyed
    }
    for path, method, operation in keyed:
        for status, answer in operation["responses"].items():
            if status not in {"401", "429", "500", "503", "default"}:  # never kept under a key
                assert "Idempotent-Replayed" in _resolve(spec, answer).get("headers", {}), (path, method, status)


def test_openapi_states_the_conventions_every_operation_shares(spec):
    conventions = spec["info"]["description"]
    for term in ("X-Request-Id", "Idempotency-Key", "Idempotent-Replayed", "Retry-After", "cursor", "UTC", "error"):
        assert term in conventions, term


def test_every_summary_is_one_line_and_the_rest_a_description(spec):
    """Client generators make the summary a one-line comment; Swagger UI shows it in the collapsed row."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                summary = operation["summary"]
                assert "\n" not in summary, (path, method, summary)
                assert len(summary) <= 120, (path, method, summary)


def test_every_operation_documents_the_request_id_both_ways(spec):
    """A client may send its own X-Request-Id and reads the one every answer carries, to quote in a report."""
    for path, operations in spec["paths"].items():
        assert "X-Request-Id" in {p["name"] for p in operations.get("parameters", [])}, path
        for method, operation in operations.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status != "default":
                    assert "X-Request-Id" in response.get("headers", {}), (path, method, status)


def test_openapi_declares_bearer_auth(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["refreshToken"] | {"description": ""} == schemes["bearerAuth"] | {"description": ""}


# Which token a client's auth sends: the refresh token to refresh, either one to log out.
BEARERS = {
    ("/api/v1/auth/refresh", "post"): ["refreshToken"],
    ("/api/v1/auth/logout", "post"): ["bearerAuth", "refreshToken"],
}


@pytest.mark.parametrize(("path", "method"), PROTECTED)
def test_protected_operations_use_bearer_auth_and_document_401(spec, path, method):
    operation = spec["paths"][path][method]
    assert operation.get("security") == [{scheme: []} for scheme in BEARERS.get((path, method), ["bearerAuth"])]
    assert {"unauthorized", "token_expired", "token_revoked"} <= _error_codes(spec, path, method, 401)


@pytest.mark.parametrize(("path", "method"), PUBLIC)
def test_public_operations_need_no_bearer(spec, path, method):
    assert not spec["paths"][path][method].get("security")


@pytest.mark.parametrize(
    ("path", "method", "status", "code"),
    [
        ("/api/v1/auth/wechat", "post", 401, "invalid_credentials"),
        ("/api/v1/auth/wechat", "post", 403, "account_frozen"),
        ("/api/v1/auth/wechat", "post", 502, "upstream_error"),
        ("/api/v1/auth/wechat", "post", 503, "upstream_unavailable"),
        ("/api/v1/auth/login", "post", 401, "invalid_credentials"),
        ("/api/v1/auth/login", "post", 429, "rate_limited"),
        ("/api/v1/communities", "post", 403, "forbidden"),
        ("/api/v1/communities", "post", 409, "duplicate"),
        ("/api/v1/organizations", "post", 409, "duplicate"),
        ("/api/v1/staff", "post", 409, "duplicate"),
        ("/api/v1/me", "get", 403, "account_frozen"),
        ("/api/v1/staff/{staff_id}", "get", 404, "not_found"),
        ("/api/v1/scans", "post", 422, "validation_error"),
        ("/api/v1/scans", "post", 400, "bad_request"),
        ("/api/v1/deposits", "post", 413, "payload_too_large"),
        ("/api/v1/deposits/{deposit_id}", "get", 403, "forbidden"),
        ("/api/v1/devices/deposits", "post", 403, "forbidden"),
        ("/api/v1/collection-points", "get", 422, "validation_error"),
        ("/api/v1/collection-points/{point_id}/deposits", "get", 403, "forbidden"),
        ("/api/v1/collection-points/{point_id}/deposits", "get", 404, "not_found"),
        ("/api/v1/collection-points/{point_id}/deposits", "get", 422, "validation_error"),
        ("/api/v1/me/deposits", "get", 403, "forbidden"),
        ("/api/v1/devices/{device_id}", "patch", 403, "forbidden"),
        ("/api/v1/devices/{device_id}", "patch", 404, "not_found"),
        ("/api/v1/devices/{device_id}", "patch", 422, "validation_error"),
        ("/api/v1/devices/{device_id}/secret/rotate", "post", 404, "not_found"),
        ("/api/v1/devices/{device_id}/secret/rotate", "post", 409, "idempotency_conflict"),
        ("/api/v1/residents/{resident_id}/adjustments", "post", 409, "duplicate"),
        ("/api/v1/staff/{staff_id}", "patch", 409, "invalid_state"),
        ("/api/v1/rules", "post", 409, "invalid_state"),
        ("/api/v1/collection-points/{point_id}/qr", "get", 409, "invalid_state"),
        ("/api/v1/collection-points/{point_id}/qr.png", "get", 409, "invalid_state"),
        ("/api/v1/collection-points/{point_id}/qr.svg", "get", 409, "invalid_state"),
        ("/api/v1/ledger/entries/{entry_id}/reverse", "post", 409, "invalid_state"),
        ("/api/v1/auth/logout", "post", 401, "token_revoked"),
    ],
)
def test_error_responses_are_documented_with_the_envelope(spec, path, method, status, code):
    response = _resolve(spec, spec["paths"][path][method]["responses"][str(status)])
    assert code in documented_codes(response)
    schema = _resolve(spec, response["content"]["application/json"]["schema"])
    assert schema is spec["components"]["schemas"]["ErrorEnvelope"]
    body = _resolve(spec, schema["properties"]["error"])
    assert {"code", "message", "details"} <= set(body["properties"])


def test_logout_documents_no_account_state_refusal(spec):
    """Any valid token of an open session may end it, a frozen or deactivated account's too: no 403 to document."""
    assert "403" not in spec["paths"]["/api/v1/auth/logout"]["post"]["responses"]


def test_request_bodies_are_documented(spec):
    login = spec["paths"]["/api/v1/auth/login"]["post"]
    schema = _resolve(spec, login["requestBody"]["content"]["application/json"]["schema"])
    assert set(schema["required"]) == {"username", "password"}
    staff = _resolve(
        spec, spec["paths"]["/api/v1/staff"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )
    assert {"username", "password", "role", "community_id", "organization_id", "store_ids"} <= set(staff["properties"])


def test_validation_and_default_error_responses_use_the_envelope(spec):
    operation = spec["paths"]["/api/v1/auth/login"]["post"]
    for status in ("422", "default"):
        response = _resolve(spec, operation["responses"][status])
        schema = _resolve(spec, response["content"]["application/json"]["schema"])
        assert schema is spec["components"]["schemas"]["ErrorEnvelope"], status


def test_docs_page_and_its_assets_are_served(bare):
    page = bare.get("/api/v1/docs")
    assert page.status_code == 200
    assert page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assert "/api/v1/openapi.json" in html
    assert "/api/v1/docs/static/swagger-ui-bundle.js" in html

    asset = bare.get("/api/v1/docs/static/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.get_data()) > 10_000
    assert "javascript" in asset.content_type


def test_unknown_docs_asset_is_not_found(bare):
    assert_error(bare.get("/api/v1/docs/static/no-such-file.js"), 404, "not_found")


def test_a_second_app_leaves_the_session_app_working(fresh_app, api):
    """A second app (as the WeChat and rate-limit tests build) leaves the session app's routes working."""
    other = fresh_app()
    assert other.test_client().get("/api/v1/communities").status_code == 200
    assert api.get("/communities").status_code == 200
    assert api.get("/api/v1/openapi.json").status_code == 200


def test_every_route_with_an_id_documents_its_404_and_the_ids_bounds(spec):
    """Any id in a path can name nothing (or be too big to be a key): each such operation says so."""
    undocumented, unbounded = [], []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "post", "patch", "put", "delete"} or "{" not in path:
                continue
            if "not_found" not in _error_codes(spec, path, method, 404):
                undocumented.append((method, path))
            for parameter in operation.get("parameters", []) + operations.get("parameters", []):
                schema = _resolve(spec, parameter).get("schema", {})
                if parameter.get("in") == "path" and schema.get("type") == "integer" and "maximum" not in schema:
                    unbounded.append((method, path, parameter.get("name")))
    assert undocumented == []
    assert unbounded == []


def test_every_list_is_a_page_of_items_and_a_next_cursor(spec):
    """API.md: lists are {"items": [...], "next": …} and take ?cursor and ?limit. No GET answers a bare array."""
    bare_arrays, unpaged = [], []
    for path, operations in spec["paths"].items():
        ok = operations.get("get", {}).get("responses", {}).get("200", {})
        schema = _resolve(spec, ok.get("content", {}).get("application/json", {}).get("schema", {}))
        if schema.get("type") == "array":
            bare_arrays.append(path)
        if {"items", "next"} <= set(schema.get("properties", {})):
            names = {_resolve(spec, p).get("name") for p in operations["get"].get("parameters", [])}
            if not {"cursor", "limit"} <= names:
                unpaged.append(path)
    assert bare_arrays == []
    assert unpaged == []


def test_every_bearer_operation_refuses_a_caller_without_a_token(spec, bare):
    """Whatever the operation, its path ids or its body: no token is a 401 in the envelope, before anything else."""
    checked = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or operation.get("security") != [{"bearerAuth": []}]:
                continue
            url = re.sub(r"\{[^}]+\}", "1", path).removeprefix("/api/v1")
            response = bare.request(method.upper(), url, json={})
            assert_envelope(response, 401, "unauthorized")
            checked.append((method, path))
    assert len(checked) >= 30
    assert ("get", "/api/v1/collection-points/{point_id}/devices") in checked


def test_every_operation_that_takes_arguments_documents_their_validation_error(spec):
    """A client generated from the document must know that a bad body or query answers 422 validation_error, and
    a body that is not JSON 400 bad_request."""
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue  # the path's own parameters
            takes_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
            takes_body = "requestBody" in operation
            if takes_query or takes_body:
                codes = _error_codes(spec, path, method, 422) if "422" in operation["responses"] else set()
                if "validation_error" not in codes:
                    missing.append((method, path))
            if takes_body and "400" not in operation["responses"]:
                missing.append((method, path, 400))
    assert missing == []


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/api/v1/collection-points/{point_id}/qr.png", "image/png"),
        ("/api/v1/collection-points/{point_id}/qr.svg", "image/svg+xml"),
        ("/api/v1/me/member-code.png", "image/png"),
    ],
)
def test_image_operations_document_their_media_type(spec, path, media_type):
    content = spec["paths"][path]["get"]["responses"]["200"]["content"]
    assert content == {media_type: {"schema": {"type": "string", "format": "binary"}}}


def test_the_member_code_image_documents_its_expiry_headers(spec):
    headers = spec["paths"]["/api/v1/me/member-code.png"]["get"]["responses"]["200"]["headers"]
    assert set(headers) == {"X-Expires-At", "X-Expires-In", "X-Request-Id"}


@pytest.mark.parametrize(
    ("path", "method", "status", "fields"),
    [
        ("/api/v1/devices/{device_id}/secret/rotate", "post", "200", {"id", "code", "active", "secret"}),
        ("/api/v1/devices/{device_id}", "patch", "200", {"id", "code", "active"}),
        ("/api/v1/me/deposits", "get", "200", {"items", "next"}),
        ("/api/v1/collection-points/{point_id}/deposits", "get", "200", {"items", "next"}),
    ],
)
def test_the_sorting_additions_document_their_answers(spec, path, method, status, fields):
    content = spec["paths"][path][method]["responses"][status]["content"]["application/json"]
    assert fields <= set(_resolve(spec, content["schema"])["properties"])


def test_rotating_a_poster_documents_no_state_conflict(spec):
    """Rotating works on a retired point too (a leaked poster is revoked before it returns): the one 409 to document
    is an Idempotency-Key's sent with another request."""
    response = _resolve(
        spec, spec["paths"]["/api/v1/collection-points/{point_id}/qr/rotate"]["post"]["responses"]["409"]
    )
    assert documented_codes(response) == {"idempotency_conflict"}


# --- numbers are numbers in a JSON body, and digits in a query string ------------------------------------------


def test_a_number_sent_as_a_string_in_a_body_is_refused(api):
    """The OpenAPI document says integer or number: "5" is text, and a points delta least of all may be guessed."""
    admin, me = api.staff("admin"), api.resident()
    point = {"name": "甲", "community_id": 1, "kind": "station", "geofence_m": "50"}
    refused = [
        (api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": "5", "reason": "类型测试"}), "delta"),
        (api.patch("/me", as_=me, json={"community_id": "1"}), "community_id"),
        (api.post("/scans", as_=me, json={"token": "x", "lat": "30.87", "lng": 121.3}), "lat"),
        (api.post("/collection-points", as_=admin, json=point), "geofence_m"),
    ]
    for response, field in refused:
        assert field in assert_error(response, 422, "validation_error")["details"]["fields"], field
    assert api.get("/me", as_=me).get_json()["balance"] == 0
    # a whole JSON number is still whole, and query strings still carry digits
    assert (
        api.post(f"/residents/{me.id}/adjustments", as_=admin, json={"delta": 5.0, "reason": "整数"}).status_code == 201
    )
    assert api.get("/collection-points?community_id=1&limit=5").status_code == 200


def test_a_day_is_written_yyyy_mm_dd(api):
    admin = api.staff("admin")
    point = api.post("/collection-points", as_=admin, json={"name": "日期站", "community_id": 1, "kind": "station"})
    path = f"/collection-points/{point.get_json()['id']}/deposits"
    assert api.get(f"{path}?day=2026-06-15", as_=admin).status_code == 200
    assert (
        "day" in assert_error(api.get(f"{path}?day=20260615", as_=admin), 422, "validation_error")["details"]["fields"]
    )


# --- POSTs that take no body -------------------------------------------------------------------------------------


def _bodyless_requests(api):
    """Each POST or DELETE that takes no body, with a caller allowed to send it."""
    from app.sorting.models import CollectionPoint

    admin = api.staff("admin")
    resident = api.resident()
    point = CollectionPoint(name="无正文测试点", community_id=community_id("hengkang"), kind="station", categories=[])
    db.session.add(point)
    db.session.commit()
    device = api.post("/devices", as_=admin, json={"code": "NOBODY-BIN", "collection_point_id": point.id}).get_json()
    refresh = {"Authorization": f"Bearer {resident.refresh}"}
    return [
        ("POST", f"/collection-points/{point.id}/qr/rotate", admin.auth),
        ("POST", f"/devices/{device['id']}/secret/rotate", admin.auth),
        ("POST", "/auth/refresh", refresh),
        ("DELETE", f"/collection-points/{point.id}", admin.auth),
        ("POST", "/auth/logout", refresh),  # last: it ends the resident's session
    ]


def test_a_post_that_takes_no_body_refuses_one_that_says_something(api):
    """An unknown field is an error everywhere, never silently ignored: also where the body should be empty."""
    requests = _bodyless_requests(api)
    from app.sorting.models import CollectionPoint, Device

    secrets = {
        "point": db.session.scalar(sa.select(CollectionPoint.qr_secret).filter_by(name="无正文测试点")),
        "device": db.session.scalar(sa.select(Device.secret).filter_by(code="NOBODY-BIN")),
    }
    for method, path, auth in requests:
        fields = assert_envelope(api.request(method, path, headers=auth, json={"x": 1}), 422, "validation_error")
        assert fields["details"]["fields"] == {"x": ["不支持的字段"]}, path
        listed = api.request(method, path, headers=auth, json=[1])
        assert assert_envelope(listed, 422, "validation_error")["details"]["fields"] == {
            "_schema": ["该请求不需要请求体"]
        }
        broken = api.request(method, path, headers=auth, data='{"x":', content_type="application/json")
        assert_envelope(broken, 400, "bad_request")
    # the refused requests did nothing: no secret changed, the point is still active, the session still refreshes
    from app.sorting.models import CollectionPoint, Device

    db.session.expire_all()
    point = db.session.scalar(sa.select(CollectionPoint).filter_by(name="无正文测试点"))
    assert (point.qr_secret, point.active) == (secrets["point"], True)
    assert db.session.scalar(sa.select(Device.secret).filter_by(code="NOBODY-BIN")) == secrets["device"]
    # an empty body, {} or null is no body, and each works
    for (method, path, auth), body in zip(requests, [None, {}, None, {}, None], strict=True):
        response = api.request(method, path, headers=auth, json=body)
        assert response.status_code in (200, 204), (path, response.get_json())
    empty = api.post("/auth/wechat", json={"code": "stub:nobody-empty"}).get_json()
    response = api.post("/auth/logout", headers={"Authorization": f"Bearer {empty['access_token']}"}, data=b"")
    assert response.status_code == 204


def test_a_delete_body_gets_the_same_checks_as_any_other(api):
    """Nesting too deep, a body that is not JSON or not UTF-8: the same 400s as on a POST, never a 500."""
    admin = api.staff("admin")
    path = "/collection-points/1"
    deep = "[" * 30_000 + "]" * 30_000
    assert_envelope(api.delete(path, as_=admin, data=deep, content_type="application/json"), 400, "bad_request")
    assert_envelope(api.delete(path, as_=admin, data="x=1", content_type="text/plain"), 400, "bad_request")
    assert_envelope(api.delete(path, as_=admin, data=b'"\xff"', content_type="application/json"), 400, "bad_request")


@pytest.mark.parametrize("schema", ["CollectionPoint", "CollectionPointUpdate", "Scan"])
def test_every_position_field_names_its_datum(spec, schema):
    """Positions are compared as given: the mini-program and the points must both use GCJ-02."""
    properties = spec["components"]["schemas"][schema]["properties"]
    assert all("GCJ-02" in properties[name]["description"] for name in ("lat", "lng"))


def test_the_near_filter_names_its_datum(spec):
    parameters = spec["paths"]["/api/v1/collection-points"]["get"]["parameters"]
    assert "GCJ-02" in next(p for p in parameters if p["name"] == "near")["description"]


def test_the_admin_cookie_is_secure_in_production_whatever_the_address_says(fresh_app):
    # production only starts with an https:// PUBLIC_BASE_URL; the cookie does not depend on how it is spelled
    production = fresh_app(APP_ENV="production", PUBLIC_BASE_URL="HTTPS://green.example.cn")
    assert production.config["SESSION_COOKIE_SECURE"] is True
    assert fresh_app().config.get("SESSION_COOKIE_SECURE") is not True  # `make run` serves plain http
