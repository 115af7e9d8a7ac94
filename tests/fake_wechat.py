"""A fake WeChat code2session server on loopback, shared by the client's unit tests and the API tests.

The js_code picks the answer: "ok" (openid o-123), "ok-<name>" (openid wx-<name>), an errcode case from
ERRCODE_BODIES, "html", "empty", "500" or "slow" (held until the test ends, so the client times out)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SESSION_KEY = "sk-never-log-me"

ERRCODE_BODIES: dict[str, dict[str, object]] = {
    "bad": {"errcode": 40029, "errmsg": "invalid code"},
    "used": {"errcode": 40163, "errmsg": "code been used"},
    "busy": {"errcode": -1, "errmsg": "system error"},
    "freq": {"errcode": 45011, "errmsg": "api minute-quota reach limit"},
    "risk": {"errcode": 40226, "errmsg": "high risk user"},
    "weird": {"errcode": 99999, "errmsg": "something new"},
    "text-code": {"errcode": "40029", "errmsg": "a code that is not a number"},
}


@dataclass
class FakeWeChat:
    appid: str
    secret: str
    base: str = ""
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def codes(self) -> list[str]:
        return [query.get("js_code", [""])[0] for _, query in self.requests]

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        code = query.get("js_code", [""])[0]
        if path != "/sns/jscode2session" or query.get("appid") != [self.appid] or query.get("secret") != [self.secret]:
            return 200, b'{"errcode": 40013, "errmsg": "invalid appid"}', "application/json"
        if code == "ok" or code.startswith("ok-"):
            openid = "o-123" if code == "ok" else f"wx-{code[3:]}"
            # WeChat really does label this JSON as text/plain.
            body = {"openid": openid, "session_key": SESSION_KEY, "unionid": "u-1"}
            return 200, json.dumps(body).encode(), "text/plain"
        if code in ERRCODE_BODIES:
            return 200, json.dumps(ERRCODE_BODIES[code]).encode(), "application/json"
        if code == "slow":
            self.release.wait(5)
        canned = {
            "html": (200, b"<html><body>gateway</body></html>", "text/html"),
            "empty": (200, b"{}", "application/json"),
            "long-openid": (200, json.dumps({"openid": "o" * 300, "session_key": SESSION_KEY}).encode(), "text/plain"),
            "odd-unionid": (200, json.dumps({"openid": "o-9", "unionid": "u\n" * 40}).encode(), "text/plain"),
            "500": (500, b"oops", "text/plain"),
            "slow": (200, b"{}", "application/json"),
        }
        return canned.get(code, (404, b"unknown test code", "text/plain"))


def _handler(fake: FakeWeChat) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            fake.requests.append((url.path, query))
            status, body, content_type = fake.answer(url.path, query)
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client hung up first (the "slow" case)

    return Handler


@contextmanager
def serve_fake_wechat(appid: str, secret: str) -> Iterator[FakeWeChat]:
    fake = FakeWeChat(appid=appid, secret=secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
