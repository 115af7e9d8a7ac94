"""The README's walkthrough, run as a newcomer runs it: `make run` on a fresh SQLite file, then every `bash` block of
the walkthrough in one shell, with curl and jq. gunicorn's access log then says what each step answered, and that
must be what the README's comments promise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.common import free_port
from tests.conftest import ROOT, running_server

TOOLS = ("bash", "curl", "jq", "openssl", "sha256sum", "make")

pytestmark = [
    pytest.mark.skipif(
        bool(os.environ.get("DATABASE_URL")), reason="the walkthrough follows `make run`, which serves SQLite"
    ),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in TOOLS), reason=f"the walkthrough needs {', '.join(TOOLS)}"
    ),
]

# What each request of the walkthrough answers, in order (method, path without the query string, status).
EXPECTED = [
    # Staff: a worker prints a poster
    ("POST", "/api/v1/auth/login", 200),
    ("GET", "/api/v1/collection-points", 200),
    ("GET", "/api/v1/collection-points/1/qr", 200),
    ("GET", "/api/v1/collection-points/1/qr.png", 200),
    ("POST", "/api/v1/collection-points", 201),
    ("GET", "/api/v1/collection-points", 200),
    # Resident: log in, check in, show a member code
    ("POST", "/api/v1/auth/wechat", 200),
    ("GET", "/api/v1/collection-points", 200),
    ("GET", "/api/v1/collection-points/1/qr", 200),
    ("POST", "/api/v1/scans", 201),  # +5 points
    ("POST", "/api/v1/scans", 409),  # already_claimed
    ("POST", "/api/v1/auth/wechat", 200),  # a neighbour
    ("POST", "/api/v1/scans", 403),  # too_far
    ("GET", "/api/v1/collection-points/1/checkins", 200),  # who checked in today, for the worker
    # Collector: record weighed recyclables
    ("POST", "/api/v1/auth/login", 200),
    ("GET", "/api/v1/me/member-code", 200),
    ("GET", "/api/v1/me/member-code.png", 200),  # the same code, drawn
    ("POST", "/api/v1/deposits", 201),
    ("GET", "/api/v1/collection-points/2/deposits", 200),
    # Resident: balance and history
    ("GET", "/api/v1/me", 200),
    ("GET", "/api/v1/me/ledger", 200),
    ("GET", "/api/v1/me/deposits", 200),
    ("GET", "/api/v1/me/checkins", 200),
    ("GET", "/api/v1/me/caps", 200),
    ("GET", "/api/v1/rules", 200),
    # Smart bin: a signed deposit, then an admin registers, retires, reactivates and re-keys a bin
    ("POST", "/api/v1/auth/wechat", 200),
    ("GET", "/api/v1/me/member-code", 200),
    ("POST", "/api/v1/devices/deposits", 201),
    ("POST", "/api/v1/auth/login", 200),
    ("POST", "/api/v1/devices", 201),
    ("PATCH", "/api/v1/devices/2", 200),
    ("PATCH", "/api/v1/devices/2", 200),
    ("POST", "/api/v1/devices/2/secret/rotate", 200),
    # Merchant: the store's account
    ("POST", "/api/v1/auth/login", 200),
    ("GET", "/api/v1/staff/me", 200),
    ("GET", "/api/v1/me/ledger", 403),  # a merchant has no resident ledger
    # Admin: adjust points, publish a rule version, freeze, log out
    ("POST", "/api/v1/auth/login", 200),
    ("POST", "/api/v1/residents/1/adjustments", 201),
    ("GET", "/api/v1/collection-points/2/deposits", 200),
    ("POST", "/api/v1/deposits/1/correction", 201),  # the collector's deposit, recorded again
    ("POST", "/api/v1/rules", 201),
    ("PATCH", "/api/v1/residents/2", 200),
    ("POST", "/api/v1/auth/logout", 204),
]
_REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>[^ ?"]+)\S* HTTP/[0-9.]+" (?P<status>\d{3}) ')


def walkthrough_script(readme: str, base: str) -> str:
    """The walkthrough's bash blocks, in order, with the README's address replaced by `base`."""
    section = readme.split("\n## Walkthrough\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)
    assert blocks, "the README's walkthrough has no bash blocks"
    return "set -euo pipefail\n" + "\n".join(blocks).replace("http://127.0.0.1:5000", base)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`make run` on a fresh SQLite file with nothing else configured, as on a fresh machine following the README;
    yields the address, the access log and the environment."""
    tmp_path = tmp_path_factory.mktemp("make-run")
    bind = f"127.0.0.1:{free_port()}"
    access_log = tmp_path / "access.log"
    left_out = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REDIS_URL", "WEB_CONCURRENCY", "GUNICORN_THREADS")
    env = {
        **{name: value for name, value in os.environ.items() if name not in left_out},
        "BIND": bind,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'walkthrough.db'}",
        "ACCESS_LOG": str(access_log),
    }

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://{bind}/healthz", timeout=2) as answer:
            return answer.status == 200

    with running_server(
        ["make", "-s", "run"], cwd=ROOT, env=env, output=tmp_path / "make-run.log", healthy=healthy, within_s=120
    ):
        yield bind, access_log, env


def answered(access_log: Path, since: int = 0) -> list[tuple[str, str, int]]:
    """The requests logged after the first `since` (the start-up's health checks left out)."""
    lines = map(_REQUEST.search, access_log.read_text().splitlines())
    return [(m["method"], m["path"], int(m["status"])) for m in lines if m and m["path"] != "/healthz"][since:]


def logged(access_log: Path, since: int, expected: int) -> list[tuple[str, str, int]]:
    """The requests logged after the first `since`, once there are `expected` of them (or after 10 s): gunicorn logs a
    request after answering it, so the last may trail the client. The tests share one server and its log."""
    deadline = time.monotonic() + 10
    while len(answered(access_log, since)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return answered(access_log, since)


def test_the_walkthrough_answers_what_the_readme_says(served):
    bind, access_log, env = served
    before = len(answered(access_log))
    script = walkthrough_script((ROOT / "README.md").read_text(encoding="utf-8"), f"http://{bind}")
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"the walkthrough stopped: {done.stderr[-3000:]}\n{done.stdout[-3000:]}"
    got = logged(access_log, before, len(EXPECTED))
    assert sorted(got) == sorted(EXPECTED)  # every step, each answered as the README says
    # `make run` serves with threads, and each logs its request after answering it: the walkthrough's next request,
    # answered by another thread, can be logged first. The order holds up to such neighbours.
    assert all(got[i] in EXPECTED[max(i - 1, 0) : i + 2] for i in range(len(got))), got

    out = done.stdout  # the answers the README's comments describe (curl prints compact JSON, jq indents)
    assert '{"kind":"checkin","points":5,' in out  # 201: +5 points
    assert '{"error":{"code":"already_claimed",' in out
    assert '{"error":{"code":"too_far",' in out
    # 3200 g CO2e -> 32 points, rounded once
    assert '"points":32,"co2e_g":3200,"points_over_cap":0,"weight_g":1980,' in out
    assert '"points":27,"co2e_g":2707,"points_over_cap":0,"weight_g":1620,' in out  # corrected: 2706.9 g
    assert '"store_ids": [\n    1\n  ]' in out  # store_ids: [1]
    assert "OK: every chain, balance and year's points verify" in out  # flask ledger verify, after every step
    by_category = re.findall(r'^\{\n  "name": "([^"]+)",\n  "distance_m": \d+\n\}$', out, flags=re.M)
    assert by_category == ["恒康社区5号楼投放点", "恒康社区惠民回收服务点"]  # those taking e-waste, nearest first


def test_the_banner_is_printed_once_the_server_listens_and_never_for_a_port_taken(served, tmp_path):
    """The banner's address is one this server answers on: printed after gunicorn bound it, and not at all when
    another process holds it (a second `make run` on a busy port had advertised the first one's address)."""
    bind, access_log, env = served
    log = (access_log.parent / "make-run.log").read_text(errors="replace")
    assert log.index(f"Listening at: http://{bind}") < log.index(f"API docs:  http://{bind}/api/v1/docs")
    taken = {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'second.db'}", "ACCESS_LOG": ""}
    second = subprocess.run(["make", "-s", "run"], cwd=ROOT, env=taken, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    assert "Connection in use" in second.stderr + second.stdout
    assert "API docs:" not in second.stdout + second.stderr


def _login(bind: str, username: str, password: str) -> int:
    request = urllib.request.Request(
        f"http://{bind}/api/v1/auth/login",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_five_wrong_passwords_lock_the_username_for_the_whole_server(served):
    """API.md's five failed logins per username hold under `make run` as it starts, not once per worker process:
    each try is a new connection, which any process of the server may take."""
    bind, access_log, _ = served
    before = len(answered(access_log))
    tries = [_login(bind, "alliance.kx", f"wrong-{n}") for n in range(6)]
    assert tries == [401] * 5 + [429]
    assert _login(bind, "alliance.kx", "alliance-demo-2025") == 429  # locked, even with the right password
    assert _login(bind, "worker.hk", "worker-demo-2025") == 200  # another username is not
    assert len(logged(access_log, before, 8)) == 8  # all in the log before the next test reads it
