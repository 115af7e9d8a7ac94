"""The one source of 'now', so tests can move time instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_override: Callable[[], datetime] | None = None


def utcnow() -> datetime:
    return _override() if _override else datetime.now(UTC)


def set_clock(source: Callable[[], datetime] | None) -> None:
    global _override
    _override = source


def local_day(moment: datetime, tz: str) -> date:
    return moment.astimezone(ZoneInfo(tz)).date()


def local_midnight(day: date, tz: str) -> datetime:
    """The UTC instant at which the local calendar day begins."""
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(tz)).astimezone(UTC)


class FrozenClock:
    """A settable clock for tests: `clock.advance(seconds=120)`."""

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self.now = start.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime) -> datetime:
        self.now = moment.astimezone(UTC)
        return self.now
