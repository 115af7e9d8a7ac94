"""Logins (WeChat stub and real, staff), tokens, refresh, logout, frozen accounts and login rate limits."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask_jwt_extended import create_access_token, create_refresh_token
from werkzeug.security import generate_password_hash

from app import create_app
from app.auth.models import RevokedSession
from app.clock import utcnow
from app.db import db
from app.extensions import jwt, limiter
from app.people.models import Resident, Staff
from tests.conftest import (
    FAST_HASH,
    ApiClient,
    assert_error,
    community_id,
    count,
    during_an_uncommitted,
    during_an_uncommitted_freeze,
    pg_concurrency,
    race,
)
from tests.fake_wechat import FakeWeChat, serve_fake_wechat

PASSWORD = "password-123"


def _staff_login(api, username, password=PASSWORD):
    return api.post("/auth/login", json={"username": username, "password": password})


def _make_staff(api, role="admin", **scope):
    """Creates a staff account directly and returns (username, staff id)."""
    from app.auth.guards import Actor
    from app.people import service

    username = f"{role}-{uuid.uuid4().hex[:8]}"
    data = {"username": username, "password": PASSWORD, "role": role, "store_ids": [], "collection_point_ids": []}
    staff = service.create_staff(Actor(kind="system", id=0, role="admin"), {**data, **scope})
    return username, staff.id


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- WeChat login, stub mode ----------------------------------------------------------------------------


def test_wechat_stub_login_creates_the_resident_once(api):
    first = api.post("/auth/wechat", json={"code": "stub:o-first-login"})
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert set(body) == {"access_token", "refresh_token", "resident"}
    assert body["access_token"] != body["refresh_token"]
    resident = body["resident"]
    assert {"id", "nickname", "community_id", "status"} <= set(resident)
    assert resident["status"] == "active"
    assert resident["community_id"] is None
    assert resident["nickname"].startswith("居民")
    assert "ogin" not in resident["nickname"]  # nothing of the openid, which staff and lists would otherwise show

    second = api.post("/auth/wechat", json={"code": "stub:o-first-login"})
    assert second.status_code == 200
    assert second.get_json()["resident"]["id"] == resident["id"]
    assert second.get_json()["access_token"] != body["access_token"]
    assert count(Resident, openid="o-first-login") == 1

    me = api.get("/me", headers=_bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["id"] == resident["id"]


def test_two_openids_are_two_residents(api):
    a = api.resident("o-alpha")
    b = api.resident("o-beta")
    assert a.id != b.id


@pytest.mark.parametrize("code", ["o-123", "stub:", "stub:has space", "STUB:o-123", "stub:" + "x" * 65])
def test_invalid_stub_code_is_invalid_credentials(api, code):
    before = count(Resident)
    assert_error(api.post("/auth/wechat", json={"code": code}), 401, "invalid_credentials")
    assert count(Resident) == before


# --- frozen residents -----------------------------------------------------------------------------------


def _freeze(api, admin, resident_id, status="frozen"):
    response = api.patch(f"/residents/{resident_id}", as_=admin, json={"status": status, "reason": "违规刷分调查"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == status
    return response


def test_frozen_resident_is_refused_everywhere_and_unfreezing_restores_the_account_not_old_sessions(api, clock):
    admin = api.staff("admin")
    resident = api.resident("o-frozen")
    assert api.get("/me", as_=resident).status_code == 200
    clock.advance(seconds=1)  # the freeze comes after the resident's session began

    _freeze(api, admin, resident.id)
    assert_error(api.get("/me", as_=resident), 403, "account_frozen")
    assert_error(api.post("/auth/wechat", json={"code": "stub:o-frozen"}), 403, "account_frozen")
    assert_error(api.post("/auth/refresh", headers=_bearer(resident.refresh)), 403, "account_frozen")
    assert_error(api.patch("/me", as_=resident, json={"nickname": "改名"}), 403, "account_frozen")

    clock.advance(seconds=1)
    _freeze(api, admin, resident.id, status="active")
    # A session from before the freeze stays ended (as a staff deactivation ends its sessions): whoever held it,
    # perhaps the reason for the freeze, does not get it back. The mini-program logs in again.
    assert_error(api.get("/me", as_=resident), 401, "token_revoked")
    assert_error(api.post("/auth/refresh", headers=_bearer(resident.refresh)), 401, "token_revoked")
    again = api.post("/auth/wechat", json={"code": "stub:o-frozen"})
    assert again.status_code == 200
    assert api.get("/me", headers=_bearer(again.get_json()["access_token"])).status_code == 200
    assert api.post("/auth/refresh", headers=_bearer(again.get_json()["refresh_token"])).status_code == 200


@pg_concurrency
def test_a_resident_login_waits_for_a_freeze_in_flight_and_is_refused(app, api):
    """The login reads the resident FOR SHARE, so it sees the freeze rather than slipping in before it commits with a
    session that the freeze's cut-off would not end."""
    resident = api.resident("o-racing")
    login = app.test_client()
    response = during_an_uncommitted_freeze(
        app, resident.id, lambda: login.post("/api/v1/auth/wechat", json={"code": "stub:o-racing"})
    )
    assert_error(response, 403, "account_frozen")


def test_freezing_needs_a_reason(api):
    admin = api.staff("admin")
    resident = api.resident()
    response = api.patch(f"/residents/{resident.id}", as_=admin, json={"status": "frozen"})
    assert "reason" in assert_error(response, 422, "validation_error")["details"]["fields"]
    assert api.get("/me", as_=resident).status_code == 200


def test_residents_cannot_be_closed_through_the_status_endpoint(api):
    admin = api.staff("admin")
    resident = api.resident()
    response = api.patch(f"/residents/{resident.id}", as_=admin, json={"status": "closed", "reason": "测试注销"})
    assert "status" in assert_error(response, 422, "validation_error")["details"]["fields"]


def test_a_closed_residents_tokens_stop_working(api):
    """Closing is not done through the API, but a closed account's sessions must not outlive it."""
    resident = api.resident()
    db.session.execute(sa.update(Resident).where(Resident.id == resident.id).values(status="closed"))
    db.session.commit()
    assert_error(api.get("/me", as_=resident), 401, "unauthorized")
    assert_error(api.post("/auth/refresh", headers=_bearer(resident.refresh)), 401, "unauthorized")


# --- staff login ----------------------------------------------------------------------------------------


def test_staff_login_success(api):
    username, staff_id = _make_staff(api, "admin")
    response = _staff_login(api, username)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"access_token", "refresh_token", "staff"}
    assert response.headers["Cache-Control"] == "no-store"  # tokens are never kept by a cache (RFC 6749 5.1)
    assert body["staff"]["id"] == staff_id
    assert body["staff"]["username"] == username
    assert body["staff"]["role"] == "admin"
    assert "password" not in body["staff"]
    assert "password_hash" not in body["staff"]

    me = api.get("/staff/me", headers=_bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["id"] == staff_id


def test_wrong_password_and_unknown_user_look_the_same(api):
    username, _ = _make_staff(api, "worker", community_id=community_id("hengkang"))
    wrong = assert_error(_staff_login(api, username, "not-the-password"), 401, "invalid_credentials")
    unknown = assert_error(_staff_login(api, "nobody-here", PASSWORD), 401, "invalid_credentials")
    assert wrong == unknown


def test_username_is_matched_in_any_case_but_otherwise_exactly(api):
    """Phone keyboards capitalise the first letter: Admin is admin (usernames are unique in any case)."""
    username, _ = _make_staff(api, "admin")
    assert _staff_login(api, username.upper()).status_code == 200
    for near in (f" {username}", f"{username}.", username[:-1]):
        assert_error(_staff_login(api, near), 401, "invalid_credentials")


def test_inactive_staff_cannot_log_in_and_their_tokens_stop_working(api):
    admin = api.staff("admin")
    username, staff_id = _make_staff(api, "admin")
    token = _staff_login(api, username).get_json()["access_token"]
    assert api.get("/staff/me", headers=_bearer(token)).status_code == 200

    response = api.patch(f"/staff/{staff_id}", as_=admin, json={"active": False})
    assert response.status_code == 200
    assert response.get_json()["active"] is False

    assert_error(_staff_login(api, username), 401, "invalid_credentials")
    assert_error(api.get("/staff/me", headers=_bearer(token)), 401, "unauthorized")

    api.patch(f"/staff/{staff_id}", as_=admin, json={"active": True})
    assert _staff_login(api, username).status_code == 200


# --- refresh --------------------------------------------------------------------------------------------


def test_refresh_gives_a_working_access_token(api):
    resident = api.resident()
    response = api.post("/auth/refresh", headers=_bearer(resident.refresh))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"access_token"}
    me = api.get("/me", headers=_bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["id"] == resident.id


def test_refresh_for_staff_keeps_the_role(api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    token = api.post("/auth/refresh", headers=_bearer(worker.refresh)).get_json()["access_token"]
    assert _claims(token)["role"] == "worker"
    me = api.get("/staff/me", headers=_bearer(token))
    assert me.status_code == 200
    assert me.get_json()["role"] == "worker"
    # still a worker: admin-only routes stay closed
    assert_error(api.post("/communities", headers=_bearer(token), json={"name": "x", "code": "x"}), 403, "forbidden")


def test_refresh_with_an_access_token_is_refused(api):
    resident = api.resident()
    assert_error(api.post("/auth/refresh", as_=resident), 401, "unauthorized")


def test_a_refresh_token_is_not_an_access_token(api):
    resident = api.resident()
    assert_error(api.get("/me", headers=_bearer(resident.refresh)), 401, "unauthorized")


def test_refresh_without_a_token_is_unauthorized(api):
    assert_error(api.post("/auth/refresh"), 401, "unauthorized")


# --- logout ---------------------------------------------------------------------------------------------


def test_logout_revokes_the_session_but_not_other_sessions(api):
    session_a = api.resident("o-two-phones")
    session_b = api.resident("o-two-phones")
    assert session_a.id == session_b.id

    response = api.post("/auth/logout", as_=session_a)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers  # no content, so no type

    assert_error(api.get("/me", as_=session_a), 401, "token_revoked")
    assert_error(api.post("/auth/refresh", headers=_bearer(session_a.refresh)), 401, "token_revoked")
    assert_error(api.post("/auth/logout", as_=session_a), 401, "token_revoked")

    assert api.get("/me", as_=session_b).status_code == 200
    assert api.post("/auth/refresh", headers=_bearer(session_b.refresh)).status_code == 200
    assert count(RevokedSession) == 1


def test_an_access_token_refreshed_before_logout_is_revoked_too(api):
    resident = api.resident()
    refreshed = api.post("/auth/refresh", headers=_bearer(resident.refresh)).get_json()["access_token"]
    assert api.post("/auth/logout", as_=resident).status_code == 204
    assert_error(api.get("/me", headers=_bearer(refreshed)), 401, "token_revoked")


def test_staff_logout(api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    assert api.post("/auth/logout", as_=worker).status_code == 204
    assert_error(api.get("/staff/me", as_=worker), 401, "token_revoked")
    assert_error(api.post("/auth/refresh", headers=_bearer(worker.refresh)), 401, "token_revoked")


@pytest.mark.parametrize(
    "change", [{"password": "a-brand-new-password"}, {"active": False}], ids=["password", "deactivated"]
)
def test_a_password_change_or_deactivation_ends_the_sessions_begun_before_it(api, clock, change):
    """A leaked token or refresh token does not outlive a password reset, nor a deactivation undone later."""
    admin = api.staff("admin")
    victim = api.staff("worker", community_id=community_id("hengkang"))
    refreshed = api.post("/auth/refresh", headers=_bearer(victim.refresh)).get_json()["access_token"]
    clock.advance(seconds=0.4)  # within the same second: sessions are compared to the millisecond
    assert api.patch(f"/staff/{victim.id}", as_=admin, json=change).status_code == 200
    if "active" in change:
        assert api.patch(f"/staff/{victim.id}", as_=admin, json={"active": True}).status_code == 200
    for token in (victim.token, refreshed):
        assert_error(api.get("/staff/me", headers=_bearer(token)), 401, "token_revoked")
    assert_error(api.post("/auth/refresh", headers=_bearer(victim.refresh)), 401, "token_revoked")
    # a login after the change works, and so do its refreshed tokens
    username = db.session.get(Staff, victim.id).username
    fresh = _staff_login(api, username, change.get("password", PASSWORD)).get_json()
    assert api.get("/staff/me", headers=_bearer(fresh["access_token"])).status_code == 200
    again = api.post("/auth/refresh", headers=_bearer(fresh["refresh_token"])).get_json()["access_token"]
    assert api.get("/staff/me", headers=_bearer(again)).status_code == 200
    # other staff are not affected
    assert api.get("/staff/me", as_=admin).status_code == 200


def test_changing_a_display_name_leaves_sessions_alone(api, clock):
    admin = api.staff("admin")
    clock.advance(seconds=1)
    assert api.patch(f"/staff/{admin.id}", as_=admin, json={"display_name": "新名字"}).status_code == 200
    assert api.get("/staff/me", as_=admin).status_code == 200


def test_a_frozen_resident_can_still_log_a_device_out_and_the_session_stays_ended(api):
    """Otherwise a lost phone's tokens would come back to life when the account is unfrozen."""
    admin = api.staff("admin")
    lost_phone, this_phone = api.resident("o-lost-phone"), api.resident("o-lost-phone")
    _freeze(api, admin, lost_phone.id)
    assert api.post("/auth/logout", as_=lost_phone).status_code == 204
    _freeze(api, admin, lost_phone.id, status="active")
    assert_error(api.get("/me", as_=lost_phone), 401, "token_revoked")
    assert_error(api.post("/auth/refresh", headers=_bearer(lost_phone.refresh)), 401, "token_revoked")
    assert api.get("/me", as_=this_phone).status_code == 200


def test_a_deactivated_staff_member_can_still_log_out(api):
    admin, worker = api.staff("admin"), api.staff("worker", community_id=community_id("hengkang"))
    assert api.patch(f"/staff/{worker.id}", as_=admin, json={"active": False}).status_code == 200
    assert_error(api.get("/staff/me", as_=worker), 401, "unauthorized")
    assert api.post("/auth/logout", as_=worker).status_code == 204
    assert_error(api.post("/auth/logout", as_=worker), 401, "token_revoked")


def test_logout_needs_a_token(api):
    resident = api.resident()
    assert_error(api.post("/auth/logout"), 401, "unauthorized")
    assert_error(api.post("/auth/logout", headers=_bearer("not-a-token")), 401, "unauthorized")
    assert api.get("/me", as_=resident).status_code == 200


def test_logout_with_the_refresh_token_ends_the_session(api):
    """A client whose access token has expired still ends its session, without refreshing first."""
    resident = api.resident()
    other = api.resident()
    assert api.post("/auth/logout", headers=_bearer(resident.refresh)).status_code == 204
    assert_error(api.get("/me", as_=resident), 401, "token_revoked")
    assert_error(api.post("/auth/refresh", headers=_bearer(resident.refresh)), 401, "token_revoked")
    assert_error(api.post("/auth/logout", headers=_bearer(resident.refresh)), 401, "token_revoked")
    # another session of the app is untouched
    assert api.post("/auth/refresh", headers=_bearer(other.refresh)).status_code == 200


def test_a_logout_is_remembered_as_long_as_its_refresh_token_could_be_used(api, app, clock):
    from app.auth.service import prune_revoked_sessions

    resident = api.resident()
    assert api.post("/auth/logout", as_=resident).status_code == 204
    assert prune_revoked_sessions() == 0
    clock.advance(seconds=app.config["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds())
    assert prune_revoked_sessions() == 0  # not before its refresh token would have expired
    assert_error(api.post("/auth/refresh", headers=_bearer(resident.refresh)), 401, "token_revoked")
    clock.advance(seconds=1)
    assert prune_revoked_sessions() == 1


# --- bad tokens -----------------------------------------------------------------------------------------


def _expired_access_token(app, resident) -> str:
    with app.app_context():
        return create_access_token(
            f"resident:{resident.id}",
            additional_claims={"sid": str(uuid.uuid4()), "role": "resident"},
            expires_delta=timedelta(seconds=-1),
        )


def test_expired_access_token_is_token_expired(api, app):
    token = _expired_access_token(app, api.resident())
    assert_error(api.get("/me", headers=_bearer(token)), 401, "token_expired")


def test_expired_refresh_token_is_token_expired(api, app):
    resident = api.resident()
    with app.app_context():
        token = create_refresh_token(
            f"resident:{resident.id}",
            additional_claims={"sid": str(uuid.uuid4()), "role": "resident"},
            expires_delta=timedelta(seconds=-1),
        )
    assert_error(api.post("/auth/refresh", headers=_bearer(token)), 401, "token_expired")


OTHER_KEY = "some-other-secret-0123456789abcdef-xyz"


def _app_with_another_key(app):
    return create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "JWT_SECRET_KEY": OTHER_KEY,
            "RATELIMIT_ENABLED": False,
        }
    )


def test_a_token_signed_with_another_key_is_unauthorized(api, app):
    resident = api.resident()
    other = _app_with_another_key(app)
    with other.app_context():
        token = create_access_token(f"resident:{resident.id}", additional_claims={"sid": "x", "role": "resident"})
        db.engine.dispose()
    assert_error(api.get("/me", headers=_bearer(token)), 401, "unauthorized")


def _claims(token: str) -> dict:
    import jwt as pyjwt

    return pyjwt.decode(token, options={"verify_signature": False})


def test_a_remembered_token_is_still_refused_once_it_expires(api, app):
    """Each worker remembers verified tokens; a remembered one that has since expired is checked again."""
    token = _expired_access_token(app, api.resident())
    with app.app_context():
        jwt._verified[jwt.cache_key(token)] = _claims(token)  # as if verified while it was valid
    assert_error(api.get("/me", headers=_bearer(token)), 401, "token_expired")


def test_a_token_remembered_under_another_key_is_not_trusted(api, app):
    resident = api.resident()
    other = _app_with_another_key(app)
    with other.app_context():
        token = create_access_token(f"resident:{resident.id}", additional_claims={"sid": "x", "role": "resident"})
        assert other.test_client().get("/api/v1/me", headers=_bearer(token)).status_code == 200  # remembered there
        db.engine.dispose()
    with other.app_context():
        assert jwt.cache_key(token) in jwt._verified
    assert_error(api.get("/me", headers=_bearer(token)), 401, "unauthorized")


def test_a_custom_key_loader_is_still_consulted(api, monkeypatch):
    """Remembered tokens and the one-parse path apply only to the configured key; a loader keeps the library's path."""
    resident = api.resident()
    assert api.get("/me", as_=resident).status_code == 200  # verified and remembered
    monkeypatch.setattr(jwt, "_decode_key_callback", lambda header, claims: "a-key-that-signed-nothing-0123456789")
    assert_error(api.get("/me", as_=resident), 401, "unauthorized")


def test_a_leeway_given_as_a_timedelta_works_for_remembered_tokens(api, app, monkeypatch):
    resident = api.resident()
    monkeypatch.setitem(app.config, "JWT_DECODE_LEEWAY", timedelta(seconds=5))
    assert api.get("/me", as_=resident).status_code == 200
    assert api.get("/me", as_=resident).status_code == 200  # the remembered path compares with the leeway


def test_a_remembered_token_keeps_working_and_revocation_still_applies(api, app):
    resident = api.resident()
    headers = _bearer(resident.token)
    assert api.get("/me", headers=headers).status_code == 200
    with app.app_context():
        assert jwt.cache_key(resident.token) in jwt._verified
    assert api.get("/me", headers=headers).status_code == 200
    assert api.post("/auth/logout", headers=headers).status_code == 204
    assert_error(api.get("/me", headers=headers), 401, "token_revoked")


def test_the_remembered_tokens_are_bounded(api, monkeypatch):
    """A worker's memory of verified tokens is forgotten when full, not grown without end."""
    monkeypatch.setattr(jwt, "MAX_TOKENS", 2)
    for _ in range(3):
        assert api.get("/me", as_=api.resident()).status_code == 200
        assert len(jwt._verified) <= 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Bearer a.b.c"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "garbage"},
    ],
    ids=["garbage", "three-parts", "empty", "basic", "no-scheme"],
)
def test_garbage_token_is_unauthorized(app, headers):
    api = ApiClient(app.test_client())
    assert_error(api.get("/me", headers=headers), 401, "unauthorized")


def test_missing_token_is_unauthorized(api):
    error = assert_error(api.get("/me"), 401, "unauthorized")
    assert error["details"] == {}
    assert_error(api.get("/staff/me"), 401, "unauthorized")
    assert_error(api.post("/communities", json={"name": "x", "code": "x"}), 401, "unauthorized")


@pytest.mark.parametrize("sub", ["admin:1", "resident:abc", "resident:999999", "staff:999999", "nobody"])
def test_a_validly_signed_token_for_no_one_is_unauthorized(api, app, sub):
    with app.app_context():
        token = create_access_token(sub, additional_claims={"sid": str(uuid.uuid4()), "role": "resident"})
    assert_error(api.get("/me", headers=_bearer(token)), 401, "unauthorized")


@pytest.mark.parametrize(
    ("sub", "claims"),
    [
        ("resident:²", {}),  # a digit to str.isdigit, not to int()
        ("resident:99999999999999999999", {}),  # beyond the INTEGER column
        ("staff:2147483648", {}),
        ("resident:١٢", {}),  # Arabic-Indic digits
        (None, {"sid": {"nested": 1}}),
        (None, {"sid": ["x"]}),
        (None, {"sid": "x" * 65}),
        (None, {"sid": ""}),
        (None, {"since": "abc"}),
        (None, {"since": 1.5}),
        (None, {"since": True}),
        (None, {"since": -1}),
        (None, {"since": 10**30}),
    ],
)
def test_a_validly_signed_token_with_odd_claims_is_unauthorized(api, app, sub, claims):
    """Only the signing key can mint these; still, each is a 401 in the envelope, never a 500."""
    resident = api.resident()
    with app.app_context():
        token = create_access_token(
            sub or f"resident:{resident.id}", additional_claims={"sid": str(uuid.uuid4()), "role": "resident"} | claims
        )
    for path in ("/me", "/staff/me", "/me/ledger"):
        assert_error(api.get(path, headers=_bearer(token)), 401, "unauthorized")
    assert_error(api.post("/auth/logout", headers=_bearer(token)), 401, "unauthorized")


def test_a_resident_token_never_passes_as_staff(api):
    resident = api.resident()
    assert_error(api.get("/staff/me", as_=resident), 403, "forbidden")
    assert_error(api.get("/staff", as_=resident), 403, "forbidden")


# --- WeChat login, real mode against a fake code2session --------------------------------------------------


@pytest.fixture
def fake_wechat() -> Iterator[FakeWeChat]:
    with serve_fake_wechat("wx1", "s") as fake:
        yield fake


@pytest.fixture
def real_app(app, db_session, fake_wechat):
    db_session.commit()  # the outer session must not hold SQLite's write lock
    real = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "WECHAT_MODE": "real",
            "WECHAT_API_BASE": fake_wechat.base,
            "WECHAT_APPID": "wx1",
            "WECHAT_SECRET": "s",
            "WECHAT_TIMEOUT": 2.0,  # the fake answers at once; only "slow" waits it out
            "RATELIMIT_ENABLED": False,
        }
    )
    yield real
    with real.app_context():
        db.session.remove()
        db.engine.dispose()


def _residents_with_openid(real_app, openid: str) -> list[int]:
    with real_app.app_context():
        return list(db.session.scalars(sa.select(Resident.id).filter_by(openid=openid)))


def test_real_wechat_login_creates_the_resident(real_app, fake_wechat):
    client = real_app.test_client()
    response = client.post("/api/v1/auth/wechat", json={"code": "ok-alice"})
    assert response.status_code == 200, response.get_json()
    resident_id = response.get_json()["resident"]["id"]
    assert _residents_with_openid(real_app, "wx-alice") == [resident_id]

    again = client.post("/api/v1/auth/wechat", json={"code": "ok-alice"})
    assert again.get_json()["resident"]["id"] == resident_id
    assert _residents_with_openid(real_app, "wx-alice") == [resident_id]
    assert fake_wechat.codes == ["ok-alice", "ok-alice"]

    token = response.get_json()["access_token"]
    me = client.get("/api/v1/me", headers=_bearer(token))
    assert me.status_code == 200
    assert me.get_json()["id"] == resident_id


def test_real_wechat_invalid_code_is_invalid_credentials(real_app):
    response = real_app.test_client().post("/api/v1/auth/wechat", json={"code": "bad"})
    error = assert_error(response, 401, "invalid_credentials")
    assert error["details"] == {"errcode": 40029}


def test_real_wechat_non_json_answer_is_upstream_error(real_app):
    response = real_app.test_client().post("/api/v1/auth/wechat", json={"code": "html"})
    assert_error(response, 502, "upstream_error")


def test_real_wechat_slow_answer_is_upstream_unavailable(real_app):
    response = real_app.test_client().post("/api/v1/auth/wechat", json={"code": "slow"})
    assert_error(response, 503, "upstream_unavailable")


def test_real_mode_does_not_accept_stub_codes(real_app, fake_wechat):
    response = real_app.test_client().post("/api/v1/auth/wechat", json={"code": "stub:o-sneaky"})
    assert response.status_code != 200
    assert response.get_json()["error"]["code"] in {"invalid_credentials", "upstream_error"}
    assert fake_wechat.codes == ["stub:o-sneaky"]
    assert _residents_with_openid(real_app, "o-sneaky") == []


def test_real_mode_failure_creates_no_resident(real_app):
    with real_app.app_context():
        before = count(Resident)
    for code in ("bad", "html"):
        assert real_app.test_client().post("/api/v1/auth/wechat", json={"code": code}).status_code >= 400
    with real_app.app_context():
        assert count(Resident) == before


# --- login rate limits ----------------------------------------------------------------------------------


@pytest.fixture
def limited(app, db_session):
    """An app with rate limits on (memory storage). The Limiter is one module-level object, so its
    on/off switch and storage are put back afterwards for the session app."""
    was_enabled = limiter.enabled
    db_session.commit()
    limited_app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "memory://",
        }
    )
    limiter.reset()
    yield limited_app
    limiter.reset()
    limiter.enabled = was_enabled
    with limited_app.app_context():
        db.session.remove()
        db.engine.dispose()


def _login(client, username, password=PASSWORD):
    return client.post("/api/v1/auth/login", json={"username": username, "password": password})


def _csrf_token(client, path: str) -> str:
    """The CSRF token of an admin site form, as a browser would read it from the page."""
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _limited_staff(limited_app, name: str) -> str:
    with limited_app.app_context():
        db.session.add(
            Staff(username=name, password_hash=generate_password_hash(PASSWORD, method=FAST_HASH), role="admin")
        )
        db.session.commit()
    return name


def test_five_failed_logins_lock_the_username(limited):
    client = limited.test_client()
    username = _limited_staff(limited, "locked.user")
    for _ in range(5):
        assert_error(_login(client, username, "wrong-password"), 401, "invalid_credentials")

    response = _login(client, username)
    error = assert_error(response, 429, "rate_limited")
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 15 * 60
    assert error["message"] == f"登录尝试次数过多，请 {round(retry_after / 60)} 分钟后再试"  # a person reads minutes
    assert "X-Request-Id" in response.headers

    # A different username from the same address is not locked, and its answer does not tell it to wait.
    other = _limited_staff(limited, "other.user")
    answer = _login(client, other)
    assert answer.status_code == 200
    assert "Retry-After" not in answer.headers
    assert "X-RateLimit-Remaining" in answer.headers  # the limiter's own counters still show


def _signed_in(client, username: str) -> dict:
    token = _login(client, username).get_json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _password_change(client, auth, current: str):
    body = {"current_password": current, "new_password": "a-new-password-2026"}
    return client.post("/api/v1/auth/password", json=body, headers=auth)


def test_guessing_the_current_password_stops_after_five_tries_per_session(limited, clock):
    """A stolen 15-minute session must not become the password, which lasts: five tries at the current password per
    session per 15 minutes, then 429 whatever the sixth says. The owner's own session keeps its tries."""
    client = limited.test_client()
    username = _limited_staff(limited, "guessed.user")
    stolen, owners = _signed_in(client, username), _signed_in(client, username)
    for i in range(5):
        error = assert_error(_password_change(client, stolen, f"guess-{i}-xx"), 422, "validation_error")
        assert "current_password" in error["details"]["fields"]
    response = _password_change(client, stolen, PASSWORD)
    assert_error(response, 429, "rate_limited")
    assert 0 < int(response.headers["Retry-After"]) <= 15 * 60
    # the owner, in a session of their own, changes the password a moment later, which ends the stolen one
    clock.advance(seconds=1)
    assert _password_change(client, owners, PASSWORD).status_code == 200
    assert_error(client.get("/api/v1/staff/me", headers=stolen), 401, "token_revoked")


def test_password_changes_refused_at_the_door_do_not_use_up_the_addresses_staff_logins(limited):
    """Sixty residents' (or nobody's) posts to /auth/password from one address, all refused before any check, leave
    the staff behind that address able to log in; password changes count against a limit of their own."""
    client = limited.test_client()
    username = _limited_staff(limited, "office.user")
    resident = client.post("/api/v1/auth/wechat", json={"code": "stub:same-address"}).get_json()["access_token"]
    for auth in ({"Authorization": f"Bearer {resident}"}, {}):
        statuses = {_password_change(client, auth, "whatever-xx").status_code for _ in range(30)}
        assert statuses == {403 if auth else 401}
    assert _login(client, username).status_code == 200
    refused = [_password_change(client, {}, "whatever-xx") for _ in range(2)]  # the 61st and 62nd
    error = assert_error(refused[-1], 429, "rate_limited")
    assert error["message"].startswith("修改密码尝试次数过多")


def test_parallel_guesses_at_the_current_password_are_counted_before_they_are_checked(limited):
    """Each try is counted before the slow hash runs, so tries sent together cannot all pass a test made before any
    of them was counted."""
    client = limited.test_client()
    username = _limited_staff(limited, "raced.user")
    auth = _signed_in(client, username)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda i: limited.test_client().post(
                "/api/v1/auth/password",
                json={"current_password": f"guess-{i}-xx", "new_password": "a-new-password-2026"},
                headers=auth,
            ).status_code, range(12))
        )  # fmt: skip
    assert sorted(statuses) == [422] * 5 + [429] * 7


def test_the_admin_sites_password_page_has_its_own_sessions_tries(limited):
    client = limited.test_client()
    username = _limited_staff(limited, "page.user")
    csrf = _csrf_token(client, "/admin/login")
    assert (
        client.post("/admin/login", data={"username": username, "password": PASSWORD, "csrf_token": csrf}).status_code
        == 302
    )
    csrf = _csrf_token(client, "/admin/password")
    form = {"new_password": "a-new-password-2026", "confirm_password": "a-new-password-2026", "csrf_token": csrf}
    answers = [client.post("/admin/password", data=form | {"current_password": f"guess-{i}-xx"}) for i in range(5)]
    assert [answer.status_code for answer in answers] == [422] * 5
    refused = client.post("/admin/password", data=form | {"current_password": PASSWORD})
    assert refused.status_code == 429
    assert "修改密码尝试次数过多" in refused.get_data(as_text=True)


def test_a_locked_username_is_told_the_time_left_not_the_window(limited, monkeypatch):
    """Retry-After counts down: ten minutes into the 15-minute lock, about five are left."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])  # the limiter's storage and headers read time.time()
    client = limited.test_client()
    username = _limited_staff(limited, "counting.down")
    for _ in range(5):
        assert_error(_login(client, username, "wrong-password"), 401, "invalid_credentials")

    now[0] += 10 * 60
    response = _login(client, username)
    assert_error(response, 429, "rate_limited")
    assert 5 * 60 - 1 <= int(response.headers["Retry-After"]) <= 5 * 60 + 1

    csrf = _csrf_token(client, "/admin/login")
    form = {"username": username, "password": PASSWORD, "csrf_token": csrf}
    locked = client.post("/admin/login", data=form).get_data(as_text=True)
    assert "登录尝试次数过多，请 5 分钟后再试" in locked

    now[0] += 5 * 60 + 2
    assert _login(client, username).status_code == 200


def test_a_lock_about_to_lift_says_one_minute_not_zero(limited, monkeypatch):
    now = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    client = limited.test_client()
    username = _limited_staff(limited, "nearly.free")
    for _ in range(5):
        assert_error(_login(client, username, "wrong-password"), 401, "invalid_credentials")
    now[0] += 15 * 60 - 20
    response = _login(client, username)
    error = assert_error(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 21
    assert error["message"] == "登录尝试次数过多，请 1 分钟后再试"


def test_the_api_and_the_admin_site_count_failed_logins_together(limited):
    """Five guesses per username in all: the admin site's login is not a second allowance."""
    client = limited.test_client()
    username = _limited_staff(limited, "two.doors")
    for _ in range(3):
        assert_error(_login(client, username, "wrong-password"), 401, "invalid_credentials")
    csrf = _csrf_token(client, "/admin/login")
    form = {"username": username, "password": "wrong-password", "csrf_token": csrf}
    answers = [client.post("/admin/login", data=form) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [401, 401, 429]
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 15 * 60
    locked = answers[-1].get_data(as_text=True)  # the form again, saying how long, not an error page without it
    assert "登录尝试次数过多，请 15 分钟后再试" in locked
    assert 'name="password"' in locked
    assert_error(_login(client, username), 429, "rate_limited")


def test_wrong_passwords_sent_together_are_counted_before_any_is_checked(limited):
    """A burst of guesses in parallel: a test of the count before each check, deducted after, let all of them through
    (16 at once had 12 checked, and a right one among them logged in). Each attempt is counted first."""
    username = _limited_staff(limited, "burst.user")
    responses = race(limited, lambda client, i: _login(client, username, f"wrong-{i}"), 12)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 5 + [429] * 7, statuses
    assert all(int(r.headers["Retry-After"]) > 0 for r in responses if r.status_code == 429)
    assert_error(_login(limited.test_client(), username), 429, "rate_limited")  # the right password waits too


def test_attempts_still_being_checked_hold_the_places_and_each_gives_its_own_back(limited):
    """Five attempts in flight fill the window: a sixth is refused without a promise of minutes (they may yet prove
    right) and keeps no place; each that proves right gives its place back, and never into a new window."""
    from app.auth.limits import take_login_attempt, unlock_username
    from app.errors import RateLimited

    username = _limited_staff(limited, "inflight.user")
    with limited.test_request_context():
        in_flight = [take_login_attempt(username) for _ in range(5)]
        with pytest.raises(RateLimited) as refused:
            take_login_attempt(username)
        assert refused.value.message == "登录尝试次数过多，请稍后再试"
        assert 0 < int(refused.value.headers["Retry-After"]) <= 15 * 60
        for give_back in in_flight:
            give_back()
        late = take_login_attempt(username)
        unlock_username(username)  # the window ends while its password is checked
        late()
    client = limited.test_client()
    statuses = [_login(client, username, "wrong-password").status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]  # five in the new window, not six


def test_the_admin_site_locked_by_a_burst_shows_its_form_with_the_wait(limited, monkeypatch):
    """A try that passed the limiter's early test and was then counted over the lock: the form again, not an error
    page."""
    from admin import auth_pages
    from app.errors import RateLimited

    def over_the_lock(username, password):
        raise RateLimited("登录尝试次数过多，请 15 分钟后再试", headers={"Retry-After": "900"})

    monkeypatch.setattr(auth_pages.auth, "login_staff", over_the_lock)
    client = limited.test_client()
    form = {"username": "burst.admin", "password": PASSWORD, "csrf_token": _csrf_token(client, "/admin/login")}
    response = client.post("/admin/login", data=form)
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 900
    page = response.get_data(as_text=True)
    assert "登录尝试次数过多，请 15 分钟后再试" in page
    assert 'name="password"' in page


def test_the_lock_ignores_username_case(limited):
    client = limited.test_client()
    for _ in range(5):
        _login(client, "Case.User", "wrong-password")
    assert_error(_login(client, "case.user", "wrong-password"), 429, "rate_limited")


def test_successful_logins_do_not_count_towards_the_lock(limited):
    client = limited.test_client()
    username = _limited_staff(limited, "busy.user")
    for _ in range(4):
        assert_error(_login(client, username, "wrong-password"), 401, "invalid_credentials")
    for _ in range(3):
        assert _login(client, username).status_code == 200
    # the fifth failure still answers 401, and only then is the username locked
    assert_error(_login(client, username, "wrong-password"), 401, "invalid_credentials")
    assert_error(_login(client, username), 429, "rate_limited")


def test_validation_errors_do_not_count_towards_the_lock(limited):
    client = limited.test_client()
    username = _limited_staff(limited, "typo.user")
    for _ in range(6):
        response = client.post("/api/v1/auth/login", json={"username": username, "password": ""})
        assert_error(response, 422, "validation_error")
    assert _login(client, username).status_code == 200


def test_rate_limits_can_be_switched_off(api):
    """The session app runs with RATELIMIT_ENABLED=False: many failures never lock."""
    username, _ = _make_staff(api, "admin")
    for _ in range(6):
        assert_error(_staff_login(api, username, "wrong-password"), 401, "invalid_credentials")
    assert _staff_login(api, username).status_code == 200


def test_the_per_address_login_limit_is_shared_by_the_api_and_the_admin_site(limited):
    """60 attempts a minute from one address in all, not 60 at each door (different usernames, so no username lock)."""
    client = limited.test_client()
    for i in range(30):
        assert_error(_login(client, f"spray-{i}", "wrong-password"), 401, "invalid_credentials")
    csrf = _csrf_token(client, "/admin/login")
    door = [
        client.post("/admin/login", data={"username": f"spray-admin-{i}", "password": "x", "csrf_token": csrf})
        for i in range(31)
    ]
    assert [r.status_code for r in door] == [401] * 30 + [429]
    error = assert_error(_login(client, "spray-last", "wrong-password"), 429, "rate_limited")
    assert error["message"] == "登录尝试次数过多，请 1 分钟后再试"


@pg_concurrency
def test_a_login_during_a_password_change_waits_for_it_and_checks_the_new_password(app, api):
    """A login reads the account FOR SHARE: one that raced a change (here held open, uncommitted) cannot slip in with
    the old password and a session that begins after the change's cut-off."""
    username, staff_id = _make_staff(api, "worker", community_id=community_id("hengkang"))
    db.session.commit()
    change = (
        sa.update(Staff)
        .where(Staff.id == staff_id)
        .values(password_hash=generate_password_hash("new-password-9", method=FAST_HASH), sessions_valid_after=utcnow())
    )
    login = app.test_client()
    response = during_an_uncommitted(
        app, change, lambda: login.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    )
    assert_error(response, 401, "invalid_credentials")
    assert _staff_login(api, username, "new-password-9").status_code == 200


@pg_concurrency
def test_a_password_change_waits_for_a_login_in_flight_and_ends_its_session(app, api, monkeypatch):
    """The other way round: a login already reading the account (FOR SHARE; paused here while it checks the password)
    holds the change back, so the change's cut-off comes after that session began, and the session ends."""
    from app import clock as app_clock
    from app.auth import service as auth_service

    username, staff_id = _make_staff(api, "worker", community_id=community_id("hengkang"))
    admin = api.staff("admin")
    db.session.commit()
    ticking = app_clock.FrozenClock(utcnow())
    app_clock.set_clock(lambda: ticking.advance(milliseconds=1))  # each reading later than the last, as in real life
    checking, release, answers = threading.Event(), threading.Event(), {}
    check = auth_service.check_password_hash

    def check_when_released(*args):
        checking.set()
        release.wait(10)
        return check(*args)

    monkeypatch.setattr(auth_service, "check_password_hash", check_when_released)

    def log_in():
        body = {"username": username, "password": PASSWORD}
        answers["login"] = app.test_client().post("/api/v1/auth/login", json=body)

    def change_password():
        body = {"password": "new-password-9"}
        answers["change"] = app.test_client().patch(f"/api/v1/staff/{staff_id}", json=body, headers=admin.auth)

    logging_in, changing = threading.Thread(target=log_in), threading.Thread(target=change_password)
    logging_in.start()
    assert checking.wait(10)
    changing.start()
    changing.join(timeout=1.0)
    assert changing.is_alive()  # waiting for the login's share lock
    release.set()
    logging_in.join(10)
    changing.join(10)
    assert answers["login"].status_code == 200
    assert answers["change"].status_code == 200
    token = answers["login"].get_json()["access_token"]
    assert_error(api.get("/staff/me", headers=_bearer(token)), 401, "token_revoked")


# --- changing one's own password -----------------------------------------------------------------------------------


def _change(api, caller, current: str, new: str):
    body = {"current_password": current, "new_password": new}
    return api.post("/auth/password", json=body, headers=caller.auth)


def _username(staff_id: int) -> str:
    return db.session.get(Staff, staff_id).username


def test_a_staff_member_changes_its_own_password_and_every_earlier_session_ends(api, clock):
    from app.audit.models import AuditEvent

    member = api.staff("worker", community_id=community_id("hengkang"))
    second = api.post("/auth/login", json={"username": _username(member.id), "password": PASSWORD}).get_json()
    clock.advance(seconds=1)

    response = _change(api, member, PASSWORD, "a-new-password-9")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["staff"]["id"] == member.id
    assert "password" not in str(body["staff"])
    # this answer's session works; the one it came from and the other device's do not
    fresh = {"Authorization": f"Bearer {body['access_token']}"}
    assert api.post("/auth/refresh", headers={"Authorization": f"Bearer {body['refresh_token']}"}).status_code == 200
    assert api.get("/residents", headers=fresh).status_code == 200
    assert_error(api.get("/residents", headers=member.auth), 401, "token_revoked")
    assert_error(api.get("/residents", headers={"Authorization": f"Bearer {second['access_token']}"}), 401,
                 "token_revoked")  # fmt: skip
    # the old password is gone, the new one logs in
    username = _username(member.id)
    assert_error(api.post("/auth/login", json={"username": username, "password": PASSWORD}), 401, "invalid_credentials")
    assert api.post("/auth/login", json={"username": username, "password": "a-new-password-9"}).status_code == 200
    event = db.session.scalars(sa.select(AuditEvent).filter_by(action="staff.password_change")).one()
    assert event.details == {"password_reset": True}


def test_a_password_change_within_a_millisecond_still_starts_a_working_session(api, clock):
    """The cut-off falls inside a millisecond; the answer's session, and its refreshed tokens, begin at the next one,
    so they are not cut off with the sessions begun before."""
    member = api.staff("worker", community_id=community_id("hengkang"))
    clock.advance(microseconds=400)
    response = _change(api, member, PASSWORD, "a-new-password-9")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert api.get("/residents", headers=_bearer(body["access_token"])).status_code == 200
    refreshed = api.post("/auth/refresh", headers=_bearer(body["refresh_token"]))
    assert refreshed.status_code == 200, refreshed.get_json()
    assert api.get("/residents", headers=_bearer(refreshed.get_json()["access_token"])).status_code == 200
    assert_error(api.get("/residents", headers=member.auth), 401, "token_revoked")


@pytest.mark.parametrize(
    ("current", "new", "field"),
    [
        ("wrong-password", "a-new-password-9", "current_password"),
        (PASSWORD, "short", "new_password"),
        (PASSWORD, PASSWORD, "new_password"),
    ],
)
def test_a_password_change_needs_the_current_password_and_a_new_one(api, current, new, field):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    error = assert_error(_change(api, worker, current, new), 422, "validation_error")
    assert field in error["details"]["fields"]
    assert api.get("/residents", headers=worker.auth).status_code == 200  # the session was not ended
    login = {"username": _username(worker.id), "password": PASSWORD}
    assert api.post("/auth/login", json=login).status_code == 200


@pg_concurrency
def test_a_password_change_racing_an_admin_reset_does_not_undo_the_reset(app, api):
    """The current password is checked before the slow hash; an admin's reset committed meanwhile wins, and the
    change, which gave the old password, is refused once it has the account's lock."""
    member = api.staff("worker", community_id=community_id("hengkang"))
    db.session.commit()
    reset = (
        sa.update(Staff).where(Staff.id == member.id).values(password_hash=generate_password_hash("reset-by-admin-1"))
    )
    body = {"current_password": PASSWORD, "new_password": "a-new-password-9"}
    response = during_an_uncommitted(
        app, reset, lambda: app.test_client().post("/api/v1/auth/password", json=body, headers=member.auth)
    )
    assert "current_password" in assert_error(response, 422, "validation_error")["details"]["fields"]
    login = {"username": _username(member.id), "password": "reset-by-admin-1"}
    assert api.post("/auth/login", json=login).status_code == 200


def test_a_resident_has_no_password_to_change(api):
    resident = api.resident()
    assert_error(_change(api, resident, "x", "a-new-password-9"), 403, "forbidden")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_read_in_any_case(api, scheme):
    me = api.resident()
    response = api.get("/me", headers={"Authorization": f"{scheme} {me.token}"})
    assert response.status_code == 200, response.get_json()
    assert_error(api.get("/me", headers={"Authorization": f"Basic {me.token}"}), 401, "unauthorized")
