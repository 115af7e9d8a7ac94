"""WeChat mini-program login: exchange a wx.login() code for an openid.

Kept free of Flask so it can be unit-tested on its own; the app factory passes the config in.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from app.errors import (
    AppError,
    Forbidden,
    InvalidCredentials,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

_OPENID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STUB_PREFIX = "stub:"
# Real codes are 32 chars; a generous cap keeps junk from ever reaching WeChat.
_MAX_CODE_LEN = 128

_ERR_CODE_INVALID = 40029
_ERR_CODE_USED = 40163
_ERR_FREQ_LIMIT = 45011
_ERR_RISKY_USER = 40226
_ERR_SYSTEM_BUSY = -1


@dataclass(frozen=True)
class WeChatSession:
    openid: str
    unionid: str | None = None
    # repr=False so an accidental log of the session never prints the key.
    session_key: str | None = field(default=None, repr=False)


class WeChatLoginClient(Protocol):
    def code2session(self, code: str) -> WeChatSession: ...


class StubWeChatClient:
    """WECHAT_MODE=stub: the code 'stub:<openid>' logs in as that openid."""

    def code2session(self, code: str) -> WeChatSession:
        if isinstance(code, str) and code.startswith(_STUB_PREFIX):
            openid = code[len(_STUB_PREFIX) :]
            if _OPENID_RE.fullmatch(openid):
                return WeChatSession(openid=openid)
        raise InvalidCredentials("微信登录凭证无效")


class WeChatClient:
    """WECHAT_MODE=real: jscode2session at WECHAT_API_BASE."""

    def __init__(
        self,
        api_base: str,
        appid: str,
        secret: str,
        timeout: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self._url = api_base.rstrip("/") + "/sns/jscode2session"
        self._appid = appid
        self._secret = secret
        self._timeout = (timeout, timeout)
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"WeChatClient(url={self._url!r}, appid={self._appid!r})"

    def code2session(self, code: str) -> WeChatSession:
        if not isinstance(code, str) or not code or len(code) > _MAX_CODE_LEN:
            raise InvalidCredentials("微信登录凭证无效")

        params = {
            "appid": self._appid,
            "secret": self._secret,
            "js_code": code,
            "grant_type": "authorization_code",
        }
        # requests exception messages embed the full URL (secret included), so only the class name is
        # logged and the cause is dropped with `from None` to keep it out of later tracebacks too.
        try:
            resp = self._session.get(self._url, params=params, timeout=self._timeout)
        except requests.Timeout:
            log.warning("wechat jscode2session failed: timeout")
            raise UpstreamUnavailable("微信服务响应超时，请稍后再试") from None
        except requests.RequestException as exc:
            log.warning("wechat jscode2session failed: %s", type(exc).__name__)
            raise UpstreamUnavailable("无法连接微信服务，请稍后再试") from None

        if resp.status_code >= 500:
            log.warning("wechat jscode2session failed: http %s", resp.status_code)
            raise UpstreamUnavailable(details={"http_status": resp.status_code})

        # WeChat serves this JSON as text/plain, so the content type is deliberately not checked.
        try:
            data: Any = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            log.warning("wechat jscode2session failed: non-JSON body (http %s)", resp.status_code)
            raise UpstreamError(details={"http_status": resp.status_code})

        return self._parse(data, resp.status_code)

    @staticmethod
    def _parse(data: dict[str, Any], http_status: int) -> WeChatSession:
        errcode = data.get("errcode")
        if errcode not in (None, 0):
            raise _error_for(errcode, data.get("errmsg"))

        openid = data.get("openid")
        if not isinstance(openid, str) or not openid:
            log.warning("wechat jscode2session failed: no openid and no errcode (http %s)", http_status)
            raise UpstreamError(details={"http_status": http_status})
        if not _OPENID_RE.fullmatch(openid):  # WeChat's are 28 characters; the column holds 64
            log.warning("wechat jscode2session answered an openid that is not one (%d characters)", len(openid))
            raise UpstreamError(details={"http_status": http_status})

        unionid = data.get("unionid")
        session_key = data.get("session_key")
        return WeChatSession(
            openid=openid,
            unionid=unionid if isinstance(unionid, str) and _OPENID_RE.fullmatch(unionid) else None,
            session_key=session_key if isinstance(session_key, str) and session_key else None,
        )


def _error_for(errcode: Any, errmsg: Any) -> AppError:
    # errmsg is WeChat's own text (plus a request id) and holds no secrets; truncated in case it is huge.
    log.warning("wechat jscode2session failed: errcode=%r errmsg=%.200s", errcode, errmsg)
    details = {"errcode": errcode} if type(errcode) is int else {}  # typed in the answer; anything else is logged
    if errcode in (_ERR_CODE_INVALID, _ERR_CODE_USED):
        return InvalidCredentials("微信登录凭证无效或已使用，请重新登录", details=details)
    if errcode == _ERR_FREQ_LIMIT:
        # WeChat does not say for how long; a minute is its usual window. API.md: every 429 says when to retry.
        return RateLimited("微信登录太频繁，请稍后再试", details=details, headers={"Retry-After": "60"})
    if errcode == _ERR_RISKY_USER:
        return Forbidden("该微信账号存在风险，暂时无法登录", details=details)
    if errcode == _ERR_SYSTEM_BUSY:
        return UpstreamUnavailable("微信服务繁忙，请稍后再试", details=details)
    return UpstreamError(f"微信登录失败（错误码 {errcode}），请稍后再试", details=details)


def make_client(mode: str, api_base: str, appid: str, secret: str, timeout: float) -> StubWeChatClient | WeChatClient:
    if mode == "stub":
        return StubWeChatClient()
    if mode == "real":
        return WeChatClient(api_base, appid, secret, timeout=timeout)
    raise ValueError(f"unknown WECHAT_MODE {mode!r}; expected 'stub' or 'real'")
