"""Time as a dependency: every time-dependent decision reads a Clock.

``replay`` runs scenarios on a ``ManualClock`` and tests never sleep.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; for replay and tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = ensure_aware(start) if start else datetime(2026, 1, 5, 1, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        instant = ensure_aware(instant)
        if instant < self._now:
            raise ValueError(f"time cannot go backwards: {instant.isoformat()} < "
                             f"{self._now.isoformat()}")
        self._now = instant

    def advance(self, by: timedelta) -> None:
        self.set(self._now + by)


def ensure_aware(instant: datetime) -> datetime:
    """Reject naive datetimes: an instant without an offset is ambiguous across timezones."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"datetime {instant.isoformat()} has no timezone offset")
    return instant.astimezone(UTC)
