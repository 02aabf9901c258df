"""The business calendar and working-time arithmetic the whole product relies on.

A calendar has an IANA timezone, weekly hours (any number of intervals per day; an
interval that ends before it starts runs past midnight into the next day), public holidays
of a country from the ``holidays`` package, China's make-up working days on weekends (the
package knows them), and extra closed and open dates. All arithmetic is done on real
instants (UTC), so nights, weekends, holidays and DST changes come out right: an interval
is "09:00-18:00 local time" on each day, however long that day is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from bot.config import WEEKDAYS, HoursSettings

SEARCH_DAYS = 800  # no opening within two years means the calendar has no working time


class CalendarError(ValueError):
    pass


def _parse_interval(text: str) -> tuple[time, time, bool]:
    """'09:00-18:00' -> (09:00, 18:00, False); '22:00-06:00' runs past midnight."""
    start_text, end_text = text.split("-")
    start = time.fromisoformat(start_text)
    end = time(0, 0) if end_text == "24:00" else time.fromisoformat(end_text)
    overnight = end <= start  # "22:00-06:00" and "18:00-24:00" end on the next day
    return start, end, overnight


@dataclass
class BusinessCalendar:
    name: str
    timezone: ZoneInfo
    weekly: dict[int, list[tuple[time, time, bool]]]  # weekday (0 = Monday) -> intervals
    country: str | None = None
    extra_closed: frozenset[date] = frozenset()
    extra_open: frozenset[date] = frozenset()
    _holidays: holidays.HolidayBase | None = field(default=None, repr=False)
    _days: dict[date, list[tuple[time, time, bool]]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: HoursSettings, name: str = "default") -> BusinessCalendar:
        weekly = {WEEKDAYS.index(day): sorted(_parse_interval(i) for i in intervals)
                  for day, intervals in settings.weekly.items()}
        country = settings.holidays_country
        try:
            table = holidays.country_holidays(country) if country else None
        except NotImplementedError:
            raise CalendarError(f"hours.holidays_country: no public holidays known for "
                                f"{country!r}") from None
        calendar = cls(name=name, timezone=ZoneInfo(settings.timezone), weekly=weekly,
                       country=country, extra_closed=frozenset(settings.extra_closed),
                       extra_open=frozenset(settings.extra_open), _holidays=table)
        if not any(calendar.weekly.values()):
            raise CalendarError("hours.weekly: the calendar has no working hours at all")
        return calendar

    # --- days -------------------------------------------------------------------------

    def _makeup_hours(self) -> list[tuple[time, time, bool]]:
        """Hours on a make-up working day: those of the first working weekday."""
        return next((self.weekly[d] for d in range(7) if self.weekly.get(d)), [])

    def hours_on(self, day: date) -> list[tuple[time, time, bool]]:
        """The intervals that start on ``day`` (local), after holidays and exceptions."""
        hours = self._days.get(day)
        if hours is None:
            hours = self._days[day] = self._hours_on(day)
        return hours

    def _hours_on(self, day: date) -> list[tuple[time, time, bool]]:
        if day in self.extra_closed:
            return []
        if day in self.extra_open:
            return self.weekly.get(day.weekday()) or self._makeup_hours()
        if self._holidays is not None:
            if day in self._holidays:  # looking it up also loads that year
                return []
            if day in getattr(self._holidays, "weekend_workdays", ()):
                return self.weekly.get(day.weekday()) or self._makeup_hours()
        return self.weekly.get(day.weekday(), [])

    def holiday_name(self, day: date) -> str | None:
        return self._holidays.get(day) if self._holidays is not None else None

    def _local(self, day: date, clock: time) -> datetime:
        return datetime.combine(day, clock, tzinfo=self.timezone).astimezone(UTC)

    def intervals(self, start_day: date, days: int) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals as UTC instants, in order, for ``days`` days from ``start_day``
        (intervals of the day before are included: a night shift may run into the first).
        Overlapping intervals (a night shift running into the next morning's hours, or a
        configuration that overlaps) are merged, so no minute counts twice."""
        current: tuple[datetime, datetime] | None = None
        for offset in range(-1, days):
            day = start_day + timedelta(days=offset)
            for begin_time, end_time, overnight in self.hours_on(day):
                end_day = day + timedelta(days=1) if overnight else day
                begin, end = self._local(day, begin_time), self._local(end_day, end_time)
                if current is not None and begin <= current[1]:
                    current = (current[0], max(current[1], end))
                    continue
                if current is not None:
                    yield current
                current = (begin, end)
        if current is not None:
            yield current

    # --- instants ---------------------------------------------------------------------

    def _around(self, instant: datetime, days: int) -> Iterator[tuple[datetime, datetime]]:
        instant = instant.astimezone(UTC)
        local_day = instant.astimezone(self.timezone).date()
        for begin, end in self.intervals(local_day, days):
            if end > instant:
                yield begin, end

    def is_open(self, instant: datetime) -> bool:
        instant = instant.astimezone(UTC)
        return any(begin <= instant < end for begin, end in self._around(instant, 2))

    def next_opening(self, instant: datetime) -> datetime:
        """``instant`` itself when open, else the start of the next working interval."""
        instant = instant.astimezone(UTC)
        for begin, _ in self._around(instant, SEARCH_DAYS):
            return max(begin, instant)
        raise CalendarError(f"calendar {self.name!r} has no working time in {SEARCH_DAYS} days")

    def add_working(self, start: datetime, amount: timedelta) -> datetime:
        """The instant when ``amount`` of working time has passed since ``start``; a start
        outside hours counts from the next opening."""
        if amount < timedelta(0):
            raise ValueError("working time to add must not be negative")
        start = start.astimezone(UTC)
        remaining = amount
        for begin, end in self._around(start, SEARCH_DAYS):
            begin = max(begin, start)
            if begin + remaining <= end:
                return begin + remaining
            remaining -= end - begin
        raise CalendarError(f"calendar {self.name!r} has no working time in {SEARCH_DAYS} days")

    def working_between(self, start: datetime, end: datetime) -> timedelta:
        """Working time in [start, end); zero when ``end`` is not after ``start``."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        total = timedelta(0)
        if end <= start:
            return total
        days = (end - start).days + 3  # local days can be shorter than 24 h (DST)
        for begin, finish in self._around(start, days):
            if begin >= end:
                break
            total += min(finish, end) - max(begin, start)
        return total


ALWAYS = "always"


def build_calendars(default: HoursSettings,
                    others: dict[str, HoursSettings] | None = None) -> dict[str, BusinessCalendar]:
    """The configured calendars, plus ``always`` (every hour of every day, in the default
    timezone) for 24 h coverage unless the configuration defines its own."""
    calendars = {"default": BusinessCalendar.from_settings(default, "default")}
    for name, settings in (others or {}).items():
        calendars[name] = BusinessCalendar.from_settings(settings, name)
    if ALWAYS not in calendars:
        around_the_clock = HoursSettings(timezone=default.timezone, holidays_country=None,
                                         weekly={day: ["00:00-24:00"] for day in WEEKDAYS})
        calendars[ALWAYS] = BusinessCalendar.from_settings(around_the_clock, ALWAYS)
    return calendars
