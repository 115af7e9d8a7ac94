"""WeChat code2session clients against a fake jscode2session server (no Flask)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from app.auth.wechat import StubWeChatClient, WeChatClient, WeChatSession, make_client
from app.errors import (
    AppError,
    Forbidden,
    InvalidCredentials,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from tests.fake_wechat import SESSION_KEY, FakeWeChat, serve_fake_wechat

APPID = "wx-test-appid"
SECRET = "s3cr3t-never-log-me"


@pytest.fixture
def fake_wechat() -> Iterator[FakeWeChat]:
    with serve_fake_wechat(APPID, SECRET) as fake:
        yield fake


@pytest.fixture
def client(fake_wechat: FakeWeChat) -> WeChatClient:
    # Generous: the fake answers at once, and a busy CI machine must not turn an answer into a timeout.
    return WeChatClient(fake_wechat.base, APPID, SECRET, timeout=5.0)


@pytest.fixture(autouse=True)
def no_secrets_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage()
        assert SECRET not in text
        assert SESSION_KEY not in text


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.auth.wechat" and r.levelno == logging.WARNING]


# --- real client -----------------------------------------------------------------------------------------


def test_success_returns_session_and_sends_params(client: WeChatClient, fake_wechat: FakeWeChat) -> None:
    session = client.code2session("ok")

    assert session == WeChatSession(openid="o-123", unionid="u-1", session_key=SESSION_KEY)
    assert SESSION_KEY not in repr(session)
    assert fake_wechat.requests == [
        (
            "/sns/jscode2session",
            {
                "appid": [APPID],
                "secret": [SECRET],
                "js_code": ["ok"],
                "grant_type": ["authorization_code"],
            },
        )
    ]


def test_trailing_slash_in_api_base(fake_wechat: FakeWeChat) -> None:
    client = WeChatClient(fake_wechat.base + "/", APPID, SECRET, timeout=5.0)
    assert client.code2session("ok").openid == "o-123"
    assert fake_wechat.requests[0][0] == "/sns/jscode2session"


@pytest.mark.parametrize(
    ("code", "error", "errcode", "message"),
    [
        ("bad", InvalidCredentials, 40029, "微信登录凭证无效或已使用，请重新登录"),
        ("used", InvalidCredentials, 40163, "微信登录凭证无效或已使用，请重新登录"),
        ("freq", RateLimited, 45011, "微信登录太频繁，请稍后再试"),
        ("risk", Forbidden, 40226, "该微信账号存在风险，暂时无法登录"),
        ("busy", UpstreamUnavailable, -1, None),
        ("weird", UpstreamError, 99999, None),
    ],
    ids=["bad", "used", "freq", "risk", "busy", "weird"],
)
def test_errcode_mapping(
    client: WeChatClient,
    caplog: pytest.LogCaptureFixture,
    code: str,
    error: type[Exception],
    errcode: int,
    message: str | None,
) -> None:
    with pytest.raises(error) as excinfo:
        client.code2session(code)

    exc = excinfo.value
    assert type(exc) is error
    assert exc.details == {"errcode": errcode}
    if message is not None:
        assert exc.message == message
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert str(errcode) in warnings[0].getMessage()
    if error is RateLimited:  # API.md: every 429 says when to try again
        assert exc.headers == {"Retry-After": "60"}


def test_an_errcode_that_is_not_a_number_is_logged_not_passed_on(client, caplog) -> None:
    """The answer's details are typed (an integer errcode); what WeChat sent otherwise is only in the log."""
    with pytest.raises(UpstreamError) as excinfo:
        client.code2session("text-code")
    assert excinfo.value.details == {}
    assert "'40029'" in _warnings(caplog)[0].getMessage()


def test_status_codes_of_mapped_errors(client: WeChatClient) -> None:
    statuses = {}
    for code in ("bad", "freq", "risk", "busy", "weird"):
        with pytest.raises(AppError) as excinfo:
            client.code2session(code)
        statuses[code] = excinfo.value.status
    assert statuses == {"bad": 401, "freq": 429, "risk": 403, "busy": 503, "weird": 502}


def test_http_500_is_unavailable(client: WeChatClient, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UpstreamUnavailable):
        client.code2session("500")
    assert len(_warnings(caplog)) == 1


def test_non_json_body_is_upstream_error(client: WeChatClient, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UpstreamError):
        client.code2session("html")
    assert len(_warnings(caplog)) == 1


def test_json_without_errcode_or_openid_is_upstream_error(
    client: WeChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(UpstreamError):
        client.code2session("empty")
    assert len(_warnings(caplog)) == 1


def test_an_openid_that_is_not_one_is_upstream_error_not_a_database_error(
    client: WeChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    """300 characters would not fit the column: a 500 on PostgreSQL. A unionid that is not one is left out."""
    with pytest.raises(UpstreamError):
        client.code2session("long-openid")
    assert [r.getMessage() for r in _warnings(caplog)] == [
        "wechat jscode2session answered an openid that is not one (300 characters)"
    ]
    assert client.code2session("odd-unionid") == WeChatSession(openid="o-9", unionid=None)


def test_timeout_is_unavailable(fake_wechat: FakeWeChat, caplog: pytest.LogCaptureFixture) -> None:
    client = WeChatClient(fake_wechat.base, APPID, SECRET, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as excinfo:
        client.code2session("slow")
    assert time.monotonic() - started < 2
    # The cause would carry the URL with the secret in it.
    assert excinfo.value.__cause__ is None
    assert len(fake_wechat.requests) == 1
    assert len(_warnings(caplog)) == 1


def test_connection_refused_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = WeChatClient(f"http://127.0.0.1:{port}", APPID, SECRET, timeout=0.2)

    with pytest.raises(UpstreamUnavailable) as excinfo:
        client.code2session("ok")
    assert excinfo.value.__cause__ is None
    assert SECRET not in str(excinfo.value)
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize("code", ["", "x" * 129])
def test_blank_or_oversized_code_never_reaches_wechat(client: WeChatClient, fake_wechat: FakeWeChat, code: str) -> None:
    with pytest.raises(InvalidCredentials):
        client.code2session(code)
    assert fake_wechat.requests == []


def test_client_repr_hides_secret() -> None:
    assert SECRET not in repr(WeChatClient("http://wx.invalid", APPID, SECRET))


# --- stub client -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("openid", ["o-123", "A_b-9", "x" * 64])
def test_stub_accepts_valid_openids(openid: str) -> None:
    assert StubWeChatClient().code2session(f"stub:{openid}") == WeChatSession(openid=openid)


@pytest.mark.parametrize(
    "code",
    [
        "",
        "stub:",
        "o-123",
        "STUB:o-123",
        "stub:has space",
        "stub:x/y",
        "stub:" + "x" * 65,
        "stub:ö",
        "stub:a\n",
    ],
)
def test_stub_rejects_invalid_codes(code: str) -> None:
    with pytest.raises(InvalidCredentials) as excinfo:
        StubWeChatClient().code2session(code)
    assert excinfo.value.message == "微信登录凭证无效"


# --- make_client -----------------------------------------------------------------------------------------


def test_make_client_stub() -> None:
    assert isinstance(make_client("stub", "http://wx.invalid", "", "", 5.0), StubWeChatClient)


def test_make_client_real(fake_wechat: FakeWeChat) -> None:
    client = make_client("real", fake_wechat.base, APPID, SECRET, 0.2)
    assert isinstance(client, WeChatClient)
    assert client.code2session("ok").openid == "o-123"


@pytest.mark.parametrize("mode", ["", "prod", "Stub"])
def test_make_client_unknown_mode(mode: str) -> None:
    with pytest.raises(ValueError, match="WECHAT_MODE"):
        make_client(mode, "http://wx.invalid", APPID, SECRET, 5.0)
