"""The per-process reference-data cache: entries expire on their clock, misses are not kept, writers clear it."""

from __future__ import annotations

from app.cache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_reused_until_its_lifetime_ends():
    clock, loads = Clock(), []
    cache = TtlCache(10.0, clock=clock)

    def load():
        loads.append(clock.now)
        return {"version": len(loads)}

    assert cache.get("k", load) == {"version": 1}
    clock.now += 9.9
    assert cache.get("k", load) == {"version": 1}
    clock.now += 0.1
    assert cache.get("k", load) == {"version": 2}
    assert loads == [50.0, 60.0]


def test_a_miss_is_not_kept():
    cache, loads = TtlCache(10.0, clock=Clock()), []
    assert cache.get(1, lambda: loads.append(1)) is None
    assert cache.get(1, lambda: loads.append(2)) is None
    assert loads == [1, 2]
    assert cache._entries == {}


def test_clear_forgets_everything_at_once():
    cache = TtlCache(10.0, clock=Clock())
    cache.get("a", lambda: "old a")
    cache.get("b", lambda: "old b")
    cache.clear()
    assert cache.get("a", lambda: "new a") == "new a"
    assert cache.get("b", lambda: "new b") == "new b"
