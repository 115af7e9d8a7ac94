"""A small HTTP/1.1 load generator on asyncio streams (no dependencies), closed-loop or paced.

Every request is pre-encoded as bytes. C connections each send a request, read the whole response, and send the
next one (keep-alive). Paced (`rate`), the n-th request is due at start + n / rate: a connection waits for its
request's time if it is early, and its latency counts from that time, so a server that falls behind is charged
for the queue it causes (no "coordinated omission"). When the server closes the connection (gunicorn's sync
worker answers every request with `Connection: close`), the next request opens a new one, and that connect is part
of the request's latency.
The run stops at the deadline or when the requests run out, whichever comes first: bounded either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
RESPONSE_TIMEOUT_S = 30.0


class ProtocolError(Exception):
    pass


@dataclass
class LoadResult:
    label: str
    connections: int
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    samples: dict[int, str] = field(default_factory=dict)
    connects: int = 0
    retries: int = 0
    client_cpu_s: float = 0.0
    system_busy: float | None = None  # share of all cores busy during the run, 0..1

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def per_s(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index]

    def ok_share(self, status: int) -> float:
        return self.statuses.get(status, 0) / self.completed if self.completed else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "connections": self.connections,
            "completed": self.completed,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.per_s, 1),
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p90_ms": round(self.percentile(90) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "max_ms": round(max(self.latencies, default=0) * 1000, 2),
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(self.errors),
            "samples": self.samples,
            "connects": self.connects,
            "retries": self.retries,
            "client_cpu_s": round(self.client_cpu_s, 2),
            "system_busy": None if self.system_busy is None else round(self.system_busy, 3),
        }


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Status, whether the server will close the connection, and the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError("response head too large")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    close = parts[0] == b"HTTP/1.0"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            token = value.strip().lower()
            close = token == b"close" or (close and token != b"keep-alive")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        body = bytearray()
        for _ in range(100_000):  # bounded
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size + 2)
            del body[-2:]
            if len(body) > MAX_BODY_BYTES:
                raise ProtocolError("chunked body too large")
        return status, close, bytes(body)
    if length is None:
        if status in (204, 304) or 100 <= status < 200:
            return status, close, b""
        body = await reader.read(MAX_BODY_BYTES)  # until EOF
        return status, True, body
    if length > MAX_BODY_BYTES:
        raise ProtocolError("body too large")
    return status, close, await reader.readexactly(length)


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(writer.wait_closed(), 1)


async def _connection(
    host: str,
    port: int,
    requests: Sequence[bytes],
    cursor: list[int],
    limit: int,
    deadline: float,
    result: LoadResult,
    pace: tuple[float, float] | None,
) -> None:
    reader = writer = None
    latencies, statuses = result.latencies, result.statuses
    perf = time.perf_counter
    while True:
        index = cursor[0]
        due = pace[0] + index / pace[1] if pace else perf()
        if index >= limit or due >= deadline or perf() >= deadline:
            break
        cursor[0] = index + 1
        payload = requests[index % len(requests)]
        if due > perf():
            await asyncio.sleep(due - perf())
        result.sent += 1
        started = due if pace else perf()
        for attempt in (0, 1):  # one retry, only when a kept-alive connection turns out to be closed
            reused = writer is not None
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
                    result.connects += 1
                writer.write(payload)
                status, close, body = await asyncio.wait_for(_read_response(reader), RESPONSE_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:  # OSError: timeouts too
                await _close(writer)
                reader = writer = None
                empty = isinstance(exc, asyncio.IncompleteReadError) and not exc.partial
                if attempt == 0 and reused and (empty or isinstance(exc, ConnectionError)):
                    result.retries += 1
                    continue
                result.errors[type(exc).__name__] += 1
                break
            latencies.append(perf() - started)
            statuses[status] += 1
            if status >= 300 and status not in result.samples:
                result.samples[status] = body[:300].decode("utf-8", "replace")
            if close:
                await _close(writer)
                reader = writer = None
            break
    await _close(writer)


async def _run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    duration_s: float,
    limit: int,
    result: LoadResult,
    rate: float | None,
) -> None:
    cursor = [0]
    start = time.perf_counter()
    pace = (start, rate) if rate else None
    await asyncio.gather(
        *(
            _connection(host, port, requests, cursor, limit, start + duration_s, result, pace)
            for _ in range(connections)
        )
    )


def run_load(
    label: str,
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int = 32,
    duration_s: float = 10.0,
    max_requests: int | None = None,
    rate: float | None = None,
) -> LoadResult:
    """Send `requests` in order (cycled when max_requests is larger) on `connections` keep-alive connections
    until `duration_s` has passed or `max_requests` have been sent: as fast as the server answers, or `rate`
    requests a second when given."""
    if not requests:
        raise ValueError("no requests to send")
    limit = len(requests) if max_requests is None else max_requests
    result = LoadResult(label=label, connections=connections)
    cpu_before, wall_before, sys_before = time.process_time(), time.perf_counter(), _cpu_times()
    # asyncio.run cancels and awaits every connection task if the run is interrupted (Ctrl-C, SIGTERM).
    asyncio.run(_run(host, port, requests, connections, duration_s, limit, result, rate))
    result.seconds = time.perf_counter() - wall_before
    result.client_cpu_s = time.process_time() - cpu_before
    sys_after = _cpu_times()
    if sys_before and sys_after and sys_after[1] > sys_before[1]:
        result.system_busy = (sys_after[0] - sys_before[0]) / (sys_after[1] - sys_before[1])
    return result


def encode_request(
    method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def cores() -> int:
    return os.cpu_count() or 1
