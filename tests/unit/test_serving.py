"""gunicorn.conf.py: what gunicorn refuses before the app sees a request still comes in the JSON envelope."""

from __future__ import annotations

import gc
import json
import logging
import os
import runpy
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from app import register_logging
from app.errors import HTTP_CODES
from app.http import OneLineFormatter
from app.serving import error_bytes
from tests.conftest import ROOT, running_server


def _exchange(path: Path, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@contextmanager
def _gunicorn(folder: Path, threads: int) -> Iterator[Path]:
    """gunicorn from gunicorn.conf.py on a Unix socket in `folder`, with one worker of `threads` threads."""
    sock = folder / "api.sock"
    env = {
        **os.environ,
        "BIND": f"unix:{sock}",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": str(threads),
        "ACCESS_LOG": str(folder / "access.log"),
        "DATABASE_URL": f"sqlite:///{folder / 'serving.db'}",
    }
    with running_server(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        output=folder / "gunicorn.log",
        healthy=lambda: _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == 200,
        within_s=30,
    ):
        yield sock


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with _gunicorn(tmp_path_factory.mktemp("gunicorn"), threads=1) as sock:
        yield sock


@pytest.fixture(scope="module")
def threaded_server(tmp_path_factory):
    """A worker of several threads keeps connections alive, as `make run`'s does."""
    with _gunicorn(tmp_path_factory.mktemp("gthread"), threads=2) as sock:
        yield sock


def _post(length: int, *, chunked: bool = False) -> bytes:
    body = b'{"token":"' + b"a" * (length - 13) + b'"}'
    if chunked:
        return (
            b"POST /api/v1/scans HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
    return (
        b"POST /api/v1/scans HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_refused_unread_ends_the_connection_and_the_answer_says_so(threaded_server, chunked):
    """gunicorn drains at most 64 KiB of what the app left unread, then closes: a client told keep-alive would send
    its next request into a closed connection."""
    status, headers, body = _exchange(threaded_server, _post(70_000, chunked=chunked))  # read until the server closes
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert headers["connection"] == "close"


def test_the_hook_closes_from_where_gunicorn_stops_draining():
    from gunicorn.http import parser

    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["DRAINED_AT_MOST"] == parser._DRAIN_MAX_BYTES


def test_a_body_within_the_limit_keeps_the_connection(threaded_server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(threaded_server))
        sock.sendall(_post(60_000) + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 ") == 2  # the scan's 401, then the health check on the same connection
    assert b"HTTP/1.1 401 " in answer
    assert b"Connection: keep-alive" in answer.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /api/v1/collection-points?q=" + b"x" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header: 1\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "bad_request"),
    ],
    ids=["long-url", "large-header", "many-headers", "bad-version", "bad-header-name", "unknown-coding"],
)
def test_gunicorn_refusals_use_the_envelope(server, raw, status, code):
    got, headers, body = _exchange(server, raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"] == HTTP_CODES[status][1]
    assert error["details"]["reason"]  # gunicorn's own diagnosis, for whoever reads the client's logs


def test_a_status_gunicorn_may_add_later_still_gets_an_envelope():
    head, _, body = error_bytes(500, "Internal Server Error", "").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert json.loads(body)["error"] == {
        "code": "internal_error",
        "message": "服务器内部错误，请稍后再试",
        "details": {},
    }
    assert json.loads(error_bytes(418, "Teapot", "odd").partition(b"\r\n\r\n")[2])["error"]["code"] == "bad_request"


def _logged(server, mark: str) -> list[str]:
    """The access log's lines that mention `mark`, once there are any (gunicorn writes them after answering)."""
    log = server.parent / "access.log"
    for _ in range(200):
        if lines := [line for line in log.read_text().splitlines() if mark in line]:
            return lines
        time.sleep(0.05)
    pytest.fail(f"nothing in the access log mentions {mark}")


def test_a_line_break_in_a_path_cannot_forge_a_line_in_the_access_log(server):
    forged = '[01/Dec/2026:22:00:00 +0000] 203.0.113.9 "POST /api/v1/auth/login HTTP/1.1" 200 99 0.01s rid=forged'
    path = "/api/v1/forged-log%0A" + quote(forged) + "%0D%0A%09%00"
    request = f"GET {path}?near=31.23,121.47 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    assert _exchange(server, request.encode())[0] == 404
    (line,) = _logged(server, "forged-log")
    assert path in line  # as sent, still percent-encoded, on the request's own line
    assert "near=" not in line  # queries carry positions
    assert not any(entry.startswith("[01/Dec/2026:22:00:00") for entry in (server.parent / "access.log").open())


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/api/v1/logged-%E6%81%92%E5%BA%B7/a%20b", None),
        ("//logged-twice/scans", None),
        ('/api/v1/logged-quote\\"_200_-', "/api/v1/logged-quote%5C%22_200_-"),  # would end the quoted field early
    ],
)
def test_a_paths_characters_are_logged_as_sent(server, path, logged):
    assert _exchange(server, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())[0] == 404
    (line,) = _logged(server, path[:18])
    assert f'"GET {logged or path} HTTP/1.1" 404' in line


def test_the_app_still_answers_through_the_same_server(server):
    status, headers, body = _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json"


def _warned_when_ready() -> list[str]:
    """What gunicorn.conf.py's when_ready logs as warnings, read in this process's environment."""
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    said = []
    settings["when_ready"](SimpleNamespace(log=SimpleNamespace(warning=lambda *args: said.append(args[0] % args[1:]))))
    return said


def test_a_server_started_outside_production_says_it_is_unfit_to_serve_residents(monkeypatch):
    """APP_ENV left out of a server's environment: stub logins and the published secrets, which nothing else says."""
    for name in ("APP_ENV", "MAKE_RUN_BANNER", "WECHAT_MODE", "SECRET_KEY", "JWT_SECRET_KEY", "QR_SECRET"):
        monkeypatch.delenv(name, raising=False)
    (line,) = [line for line in _warned_when_ready() if line.startswith("APP_ENV=")]
    assert line == (
        "APP_ENV=development: WeChat logins are stubbed (any openid logs in); SECRET_KEY, JWT_SECRET_KEY, QR_SECRET "
        "are the development values published with the code. Not fit to serve residents: set APP_ENV=production."
    )
    monkeypatch.setenv("QR_SECRET", "q" * 40)
    monkeypatch.setenv("WECHAT_MODE", "real")
    assert "SECRET_KEY, JWT_SECRET_KEY are the" in next(w for w in _warned_when_ready() if w.startswith("APP_ENV="))
    monkeypatch.setenv("MAKE_RUN_BANNER", "1")  # make run's banner says what it is: a demo on this machine
    assert not [line for line in _warned_when_ready() if line.startswith("APP_ENV=")]


@pytest.mark.parametrize(
    ("environ", "warned"),
    [
        ({"WEB_CONCURRENCY": "4"}, True),  # four processes, each counting the limits in its own memory
        ({}, False),  # one process
        ({"WEB_CONCURRENCY": "4", "REDIS_URL": "redis://127.0.0.1:6379/0"}, False),
        ({"WEB_CONCURRENCY": "4", "RATELIMIT_ENABLED": "false"}, False),
    ],
)
def test_gunicorn_warns_when_its_processes_would_each_count_the_limits(monkeypatch, environ, warned):
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "REDIS_URL", "RATELIMIT_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    said = [line for line in _warned_when_ready() if "rate limits" in line]
    assert bool(said) is warned
    if warned:
        assert "up to 20 wrong passwords, not 5" in said[0]
        assert "REDIS_URL" in said[0]


def test_gunicorn_warning_counts_from_the_login_limit_itself(monkeypatch):
    from app.auth import limits

    for name in ("GUNICORN_THREADS", "REDIS_URL", "RATELIMIT_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setattr(limits, "FAILED_LOGINS", "4 per 15 minutes")
    assert any("up to 12 wrong passwords, not 4" in line for line in _warned_when_ready())


def test_a_worker_freezes_the_loaded_app_out_of_the_collector():
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    gc.unfreeze()
    try:
        settings["post_worker_init"](SimpleNamespace())
        assert gc.get_freeze_count() > 10_000  # the app's modules, schemas and statements, loaded before the hook
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    "command",
    [["gunicorn", "-c", "gunicorn.conf.py", "--check-config", "wsgi:app"], ["flask", "--app", "wsgi", "db", "current"]],
)
def test_a_refused_configuration_is_one_line_naming_every_problem(tmp_path, command):
    env = {
        "PATH": os.environ["PATH"],
        "APP_ENV": "production",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}",
        "SECRET_KEY": "short",
    }
    executable = Path(sys.executable).with_name(command[0])
    done = subprocess.run([str(executable), *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback, and not one per worker
    assert lines[0].startswith("refusing to start: ")
    for problem in ("at least 32 characters: SECRET_KEY", "default secrets: JWT_SECRET_KEY, QR_SECRET", "WECHAT_APPID",
                    "PUBLIC_BASE_URL", "REDIS_URL"):  # fmt: skip
        assert problem in lines[0]
    assert not (tmp_path / "never.db").exists()


def test_a_logged_message_stays_on_its_own_line():
    """A username or a path in a message may carry a line break; escaped, it cannot start a line of its own."""
    formatter = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    forged = "rvzz\n[01/Dec/2026:22:00:00 +0000] forged\r\u2028\x85end"
    record = logging.LogRecord("app.auth", logging.WARNING, __file__, 1, "login locked: %s", (forged,), None)
    assert formatter.format(record) == (
        "WARNING app.auth: login locked: rvzz\\n[01/Dec/2026:22:00:00 +0000] forged\\r\\u2028\\x85end"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("app", logging.ERROR, __file__, 1, "failed: %s", ("a\nb",), sys.exc_info())
    first, *traceback = formatter.format(failed).splitlines()
    assert first == "ERROR app: failed: a\\nb"
    assert traceback[0] == "Traceback (most recent call last):"  # a traceback keeps its lines
    assert traceback[-1] == "ValueError: boom"


def test_the_apps_log_handler_keeps_messages_on_their_own_lines(monkeypatch):
    logger = logging.getLogger("app")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    register_logging(SimpleNamespace(testing=False))
    (handler,) = logger.handlers
    assert isinstance(handler.formatter, OneLineFormatter)
