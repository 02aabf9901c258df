"""The business calendar and working-time arithmetic (SPEC §4, bot/business_hours.py).

Example tests pin concrete answers (nights, weekends, China's National Day and make-up
working days, a lunch break, a night shift, extra dates, Europe/Berlin across both DST
changes of 2026); hypothesis then checks the invariants of the arithmetic on three
calendars: additive, monotonic, ``add_working`` and ``working_between`` inverse to each
other, zero inside a closed gap, and ``is_open`` agreeing with ``next_opening``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bot.business_hours import BusinessCalendar, CalendarError, build_calendars
from bot.config import WEEKDAYS, HoursSettings

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = timedelta(hours=1)
MIN = timedelta(minutes=1)
LUNCH = ["09:00-12:00", "13:00-18:00"]


def calendar(**values: Any) -> BusinessCalendar:
    return BusinessCalendar.from_settings(HoursSettings(**values))


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)  # type: ignore[misc]


def be(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


# One calendar per module: calendars cache their days.
DEFAULT = calendar()  # Asia/Shanghai, Mon–Fri 09:00–18:00, CN holidays
SH_LUNCH = calendar(weekly={d: LUNCH for d in WEEKDAYS[:5]})
SH_NIGHT = calendar(weekly={"fri": ["22:00-06:00"]})
BERLIN_CAL = calendar(timezone="Europe/Berlin", holidays_country="DE")
BERLIN_NIGHT_SAT = calendar(timezone="Europe/Berlin", holidays_country="DE",
                            weekly={"sat": ["22:00-06:00"]})


# --- the default calendar ----------------------------------------------------------------------

def test_default_calendar_is_shanghai_weekdays_nine_to_six() -> None:
    assert DEFAULT.timezone.key == "Asia/Shanghai" and DEFAULT.country == "CN"
    assert DEFAULT.hours_on(date(2026, 12, 7)) == [(time(9), time(18), False)]  # Monday
    assert DEFAULT.hours_on(date(2026, 12, 5)) == []  # Saturday
    assert DEFAULT.is_open(sh(2026, 12, 4, 9, 0))
    assert DEFAULT.is_open(sh(2026, 12, 4, 17, 59, 59))
    assert not DEFAULT.is_open(sh(2026, 12, 4, 18, 0))  # intervals are half-open
    assert not DEFAULT.is_open(sh(2026, 12, 4, 8, 59))


def test_friday_half_past_five_plus_two_hours_is_monday_half_past_ten() -> None:
    start = sh(2026, 12, 4, 17, 30)  # Friday
    deadline = DEFAULT.add_working(start, 2 * H)
    assert deadline == sh(2026, 12, 7, 10, 30)
    assert deadline.tzinfo is not None and deadline.utcoffset() == timedelta(0)  # UTC out
    assert DEFAULT.working_between(start, deadline) == 2 * H
    assert DEFAULT.working_between(sh(2026, 12, 7, 9), sh(2026, 12, 11, 18)) == 45 * H


def test_a_start_on_saturday_counts_from_monday_nine() -> None:
    saturday = sh(2026, 12, 5, 11, 0)
    assert not DEFAULT.is_open(saturday)
    assert DEFAULT.next_opening(saturday) == sh(2026, 12, 7, 9, 0)
    assert DEFAULT.add_working(saturday, H) == sh(2026, 12, 7, 10, 0)
    assert DEFAULT.add_working(saturday, timedelta(0)) == sh(2026, 12, 7, 9, 0)
    assert DEFAULT.working_between(saturday, sh(2026, 12, 7, 9, 0)) == timedelta(0)
    assert DEFAULT.working_between(saturday, sh(2026, 12, 7, 9, 45)) == 45 * MIN


def test_national_day_week_is_closed_and_reopens_on_the_eighth() -> None:
    for day in range(1, 8):  # 2026-10-01 .. 2026-10-07
        assert DEFAULT.hours_on(date(2026, 10, day)) == [], day
        assert not DEFAULT.is_open(sh(2026, 10, day, 10, 0)), day
    assert DEFAULT.holiday_name(date(2026, 10, 1)) == "National Day"
    assert DEFAULT.next_opening(sh(2026, 9, 30, 18, 0)) == sh(2026, 10, 8, 9, 0)
    assert DEFAULT.next_opening(sh(2026, 10, 1, 10, 0)) == sh(2026, 10, 8, 9, 0)
    assert DEFAULT.working_between(sh(2026, 9, 30, 17, 0), sh(2026, 10, 8, 10, 0)) == 2 * H
    assert DEFAULT.add_working(sh(2026, 9, 30, 17, 0), 2 * H) == sh(2026, 10, 8, 10, 0)


@pytest.mark.parametrize("day", [date(2026, 10, 10), date(2026, 2, 14), date(2026, 9, 20)])
def test_chinese_make_up_weekend_days_are_working_days(day: date) -> None:
    assert day.weekday() >= 5  # a Saturday or a Sunday
    assert DEFAULT.hours_on(day) == [(time(9), time(18), False)]
    assert DEFAULT.is_open(datetime.combine(day, time(10), tzinfo=SHANGHAI))
    assert not DEFAULT.is_open(datetime.combine(day, time(19), tzinfo=SHANGHAI))


def test_make_up_saturday_is_the_next_opening_after_friday_evening() -> None:
    assert DEFAULT.next_opening(sh(2026, 10, 9, 19, 0)) == sh(2026, 10, 10, 9, 0)
    assert DEFAULT.add_working(sh(2026, 10, 9, 17, 0), 2 * H) == sh(2026, 10, 10, 10, 0)
    assert not DEFAULT.is_open(sh(2026, 10, 17, 10, 0))  # an ordinary Saturday


def test_make_up_day_takes_the_hours_of_a_working_weekday() -> None:
    assert SH_LUNCH.hours_on(date(2026, 10, 10)) == [(time(9), time(12), False),
                                                     (time(13), time(18), False)]
    assert not SH_LUNCH.is_open(sh(2026, 10, 10, 12, 30))


# --- lunch break, night shift, 24:00 -----------------------------------------------------------

def test_lunch_break() -> None:
    monday = (2026, 12, 7)
    assert SH_LUNCH.add_working(sh(*monday, 11, 30), H) == sh(*monday, 13, 30)
    assert not SH_LUNCH.is_open(sh(*monday, 12, 30))
    assert not SH_LUNCH.is_open(sh(*monday, 12, 0))
    assert SH_LUNCH.is_open(sh(*monday, 11, 59))
    assert SH_LUNCH.is_open(sh(*monday, 13, 0))
    assert SH_LUNCH.next_opening(sh(*monday, 12, 30)) == sh(*monday, 13, 0)
    assert SH_LUNCH.working_between(sh(*monday, 9), sh(*monday, 18)) == 8 * H
    assert SH_LUNCH.working_between(sh(*monday, 11, 30), sh(*monday, 13, 30)) == H
    # The deadline that ends exactly at noon stays at noon (not at 13:00).
    assert SH_LUNCH.add_working(sh(*monday, 11), H) == sh(*monday, 12, 0)


def test_night_shift_runs_past_midnight() -> None:
    assert SH_NIGHT.is_open(sh(2026, 12, 4, 23, 0))  # Friday
    assert SH_NIGHT.is_open(sh(2026, 12, 5, 5, 0))  # Saturday morning, same shift
    assert not SH_NIGHT.is_open(sh(2026, 12, 5, 7, 0))
    assert not SH_NIGHT.is_open(sh(2026, 12, 5, 6, 0))
    assert not SH_NIGHT.is_open(sh(2026, 12, 4, 21, 59))
    assert SH_NIGHT.next_opening(sh(2026, 12, 5, 7, 0)) == sh(2026, 12, 11, 22, 0)
    assert SH_NIGHT.working_between(sh(2026, 12, 4, 21), sh(2026, 12, 5, 7)) == 8 * H
    assert SH_NIGHT.add_working(sh(2026, 12, 4, 21), 8 * H) == sh(2026, 12, 5, 6, 0)
    assert SH_NIGHT.add_working(sh(2026, 12, 5, 1), 6 * H) == sh(2026, 12, 11, 23, 0)  # 5 h + 1 h
    assert SH_NIGHT.hours_on(date(2026, 12, 4)) == [(time(22), time(6), True)]


def test_an_interval_may_end_at_midnight() -> None:
    late = calendar(weekly={"mon": ["18:00-24:00"]}, holidays_country=None)
    assert late.is_open(sh(2026, 12, 7, 23, 59))
    assert not late.is_open(sh(2026, 12, 8, 0, 0))
    assert late.working_between(sh(2026, 12, 7, 12), sh(2026, 12, 8, 12)) == 6 * H
    assert late.add_working(sh(2026, 12, 7, 20), 4 * H) == sh(2026, 12, 8, 0, 0)


# --- extra dates -------------------------------------------------------------------------------

def test_extra_closed_and_extra_open_dates() -> None:
    custom = calendar(extra_closed=[date(2026, 12, 7)],  # a Monday
                      extra_open=[date(2026, 12, 12), date(2026, 10, 2)])  # Sat; National Day
    assert custom.hours_on(date(2026, 12, 7)) == []
    assert not custom.is_open(sh(2026, 12, 7, 10))
    assert custom.next_opening(sh(2026, 12, 4, 19)) == sh(2026, 12, 8, 9, 0)
    assert custom.is_open(sh(2026, 12, 12, 10))
    assert custom.next_opening(sh(2026, 12, 11, 19)) == sh(2026, 12, 12, 9, 0)
    assert custom.is_open(sh(2026, 10, 2, 10))  # opened although a public holiday
    assert not custom.is_open(sh(2026, 10, 1, 10))
    assert custom.next_opening(sh(2026, 10, 1, 10)) == sh(2026, 10, 2, 9, 0)
    # The default calendar is not changed by another one's exceptions.
    assert DEFAULT.is_open(sh(2026, 12, 7, 10)) and not DEFAULT.is_open(sh(2026, 12, 12, 10))


def test_a_calendar_with_only_extra_open_dates_is_refused_or_works() -> None:
    try:
        only = calendar(weekly={}, holidays_country=None, extra_open=[date(2026, 12, 12)])
    except CalendarError:
        return  # refused when the settings are loaded: fine
    assert only.next_opening(sh(2026, 12, 1)).astimezone(SHANGHAI).date() == date(2026, 12, 12)


# --- Europe/Berlin across the DST changes ------------------------------------------------------

def test_berlin_weekend_with_spring_forward() -> None:
    friday, monday = be(2026, 3, 27, 12, 0), be(2026, 3, 30, 12, 0)
    assert friday.utcoffset() == H and monday.utcoffset() == 2 * H
    assert monday.astimezone(UTC) - friday.astimezone(UTC) == 71 * H  # one hour shorter
    assert BERLIN_CAL.working_between(friday, monday) == 9 * H  # 6 h Friday + 3 h Monday
    deadline = BERLIN_CAL.add_working(be(2026, 3, 27, 17, 0), 2 * H)
    assert deadline == be(2026, 3, 30, 10, 0)
    assert deadline == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)
    assert BERLIN_CAL.next_opening(be(2026, 3, 28, 22, 0)) == datetime(2026, 3, 30, 7, 0,
                                                                       tzinfo=UTC)


def test_berlin_weekend_with_fall_back() -> None:
    friday, monday = be(2026, 10, 23, 12, 0), be(2026, 10, 26, 12, 0)
    assert friday.utcoffset() == 2 * H and monday.utcoffset() == H
    assert monday.astimezone(UTC) - friday.astimezone(UTC) == 73 * H
    assert BERLIN_CAL.working_between(friday, monday) == 9 * H
    deadline = BERLIN_CAL.add_working(be(2026, 10, 23, 17, 0), 2 * H)
    assert deadline == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)  # Monday 10:00 CET
    assert deadline.astimezone(BERLIN).time() == time(10, 0)


def test_berlin_working_days_keep_their_wall_clock_hours_around_dst() -> None:
    # The Monday after each change is still exactly 9 working hours, 09:00–18:00 local.
    for day in (date(2026, 3, 30), date(2026, 10, 26)):
        start = datetime.combine(day, time(0), tzinfo=BERLIN)
        assert BERLIN_CAL.working_between(start, start + 24 * H) == 9 * H
        assert BERLIN_CAL.next_opening(start).astimezone(BERLIN).time() == time(9)


def test_a_night_shift_lasts_as_long_as_the_night_really_is() -> None:
    # Saturday 22:00 to Sunday 06:00 local: 7 h on 28/29 March, 9 h on 24/25 October.
    assert BERLIN_NIGHT_SAT.working_between(be(2026, 3, 28, 21), be(2026, 3, 29, 7)) == 7 * H
    assert BERLIN_NIGHT_SAT.working_between(be(2026, 10, 24, 21),
                                            be(2026, 10, 25, 7)) == 9 * H
    end = BERLIN_NIGHT_SAT.add_working(be(2026, 3, 28, 22), 7 * H)
    assert end.astimezone(BERLIN) == be(2026, 3, 29, 6, 0)


def test_german_public_holidays_close_the_berlin_calendar() -> None:
    assert BERLIN_CAL.holiday_name(date(2026, 4, 3)) == "Good Friday"
    assert not BERLIN_CAL.is_open(be(2026, 4, 3, 10))  # Good Friday
    assert BERLIN_CAL.next_opening(be(2026, 4, 2, 19)) == be(2026, 4, 7, 9, 0)  # after Easter


# --- configuration errors ---------------------------------------------------------------------

@pytest.mark.parametrize("weekly", [{}, {"mon": [], "tue": []}])
def test_a_calendar_with_no_hours_raises(weekly: dict[str, list[str]]) -> None:
    with pytest.raises(CalendarError, match="no working hours"):
        calendar(weekly=weekly)


def test_unknown_holidays_country_raises() -> None:
    with pytest.raises(CalendarError, match="'XX'"):
        calendar(holidays_country="XX")


def test_build_calendars_names_each_calendar() -> None:
    built = build_calendars(HoursSettings(), {"europe": HoursSettings(timezone="Europe/Berlin",
                                                                      holidays_country="DE")})
    assert list(built) == ["default", "europe", "always"]
    assert built["europe"].name == "europe" and built["europe"].timezone.key == "Europe/Berlin"
    # "always" is the around-the-clock calendar of strategic customers' SLA clocks.
    saturday_night = sh(2026, 12, 5, 23)
    assert built["always"].is_open(saturday_night)
    assert built["always"].add_working(saturday_night, 30 * MIN) == saturday_night + 30 * MIN
    assert built["default"].timezone.key == "Asia/Shanghai"
    with pytest.raises(CalendarError):
        build_calendars(HoursSettings(), {"bad": HoursSettings(holidays_country="XX")})


def test_negative_working_time_is_refused() -> None:
    with pytest.raises(ValueError):
        DEFAULT.add_working(sh(2026, 12, 7, 10), -MIN)


def test_working_between_is_zero_when_end_is_not_after_start() -> None:
    assert DEFAULT.working_between(sh(2026, 12, 7, 12), sh(2026, 12, 7, 10)) == timedelta(0)
    assert DEFAULT.working_between(sh(2026, 12, 7, 12), sh(2026, 12, 7, 12)) == timedelta(0)


# --- regressions: bugs these tests found, since fixed -----------------------------------------

def test_intervals_given_out_of_order_still_open_at_the_earliest() -> None:
    unsorted = calendar(weekly={"mon": ["13:00-18:00", "09:00-12:00"]}, holidays_country=None)
    assert unsorted.next_opening(sh(2026, 12, 7, 8, 0)) == sh(2026, 12, 7, 9, 0)


def test_intervals_given_out_of_order_count_correctly() -> None:
    unsorted = calendar(weekly={"mon": ["13:00-18:00", "09:00-12:00"]}, holidays_country=None)
    assert unsorted.working_between(sh(2026, 12, 7, 8), sh(2026, 12, 7, 12)) == 3 * H
    assert unsorted.add_working(sh(2026, 12, 7, 8), H) == sh(2026, 12, 7, 10, 0)


def test_overlapping_intervals_are_refused_or_counted_once() -> None:
    try:
        overlap = calendar(weekly={"mon": ["09:00-13:00", "12:00-18:00"]}, holidays_country=None)
    except ValueError:  # CalendarError or a settings ValidationError: refused at load
        return
    assert overlap.working_between(sh(2026, 12, 7, 9), sh(2026, 12, 7, 18)) == 9 * H
    assert overlap.add_working(sh(2026, 12, 7, 9), 9 * H) == sh(2026, 12, 7, 18, 0)


def test_working_between_sees_an_interval_at_midnight_after_spring_forward() -> None:
    midnight = calendar(timezone="Europe/Berlin", holidays_country=None,
                        weekly={"mon": ["00:00-06:00"]})
    start = be(2026, 3, 28, 23, 30)
    end = midnight.add_working(start, 10 * MIN)
    assert end == be(2026, 3, 30, 0, 10)  # add_working is right...
    assert midnight.working_between(start, end) == 10 * MIN  # ...working_between is not


# --- properties (hypothesis) ---------------------------------------------------------------------

BERLIN_LUNCH = calendar(timezone="Europe/Berlin", holidays_country="DE",
                        weekly={d: LUNCH for d in WEEKDAYS[:5]})
NY_NIGHT = calendar(timezone="America/New_York", holidays_country="US",
                    weekly={**{d: ["08:00-12:00", "22:00-06:00"] for d in WEEKDAYS[:5]},
                            "sat": ["22:00-06:00"]})
PROPERTY_CALENDARS = {"shanghai_default": DEFAULT, "berlin_lunch": BERLIN_LUNCH,
                      "new_york_night_shift": NY_NIGHT}
BOUNDARIES = {  # local wall times where something changes, to be hit often
    "shanghai_default": ["09:00", "18:00", "00:00"],
    "berlin_lunch": ["09:00", "12:00", "13:00", "18:00", "00:00", "02:30"],
    "new_york_night_shift": ["08:00", "12:00", "22:00", "06:00", "00:00", "02:30"],
}
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_MINUTES = int((datetime(2028, 1, 1, tzinfo=UTC) - EPOCH).total_seconds() // 60) - 1
WORKING_DAY_MINUTES = 9 * 60
PROPERTY_SETTINGS = hsettings(max_examples=200, deadline=None, database=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture])
calendars = pytest.mark.parametrize("name", list(PROPERTY_CALENDARS))


@st.composite
def instants(draw: st.DrawFn, name: str) -> datetime:
    """An aware UTC instant in 2026–2027: any minute (with seconds sometimes), or a local
    boundary of the calendar, a minute either side of it, or right after a DST change."""
    cal = PROPERTY_CALENDARS[name]
    if draw(st.booleans()):
        instant = EPOCH + timedelta(minutes=draw(st.integers(0, SPAN_MINUTES)))
        return instant + timedelta(seconds=draw(st.sampled_from([0, 0, 0, 1, 30, 59])))
    day = draw(st.dates(date(2026, 1, 1), date(2027, 12, 30)))
    clock = time.fromisoformat(draw(st.sampled_from(BOUNDARIES[name])))
    local = datetime.combine(day, clock, tzinfo=cal.timezone)
    nudge = timedelta(minutes=draw(st.sampled_from([0, 0, -1, 1])))
    return local.astimezone(UTC) + nudge


def durations() -> st.SearchStrategy[timedelta]:
    return st.integers(0, 5 * WORKING_DAY_MINUTES).map(lambda m: timedelta(minutes=m))


def gaps() -> st.SearchStrategy[timedelta]:
    return st.one_of(st.integers(0, 600), st.integers(0, 20 * 24 * 60)).map(
        lambda m: timedelta(minutes=m))


@calendars
@PROPERTY_SETTINGS
@given(data=st.data())
def test_working_between_is_additive(name: str, data: st.DataObject) -> None:
    cal = PROPERTY_CALENDARS[name]
    a = data.draw(instants(name), "a")
    b = a + data.draw(gaps(), "b - a")
    c = b + data.draw(gaps(), "c - b")
    ab, bc, ac = cal.working_between(a, b), cal.working_between(b, c), cal.working_between(a, c)
    assert ac == ab + bc
    assert ab <= ac and bc <= ac  # monotonic in both ends
    assert timedelta(0) <= ab <= b - a  # never more than the real time


@calendars
@PROPERTY_SETTINGS
@given(data=st.data())
def test_add_working_is_monotonic_and_inverse_of_working_between(
        name: str, data: st.DataObject) -> None:
    cal = PROPERTY_CALENDARS[name]
    a = data.draw(instants(name), "a")
    d1, d2 = sorted([data.draw(durations(), "d1"), data.draw(durations(), "d2")])
    e1, e2 = cal.add_working(a, d1), cal.add_working(a, d2)
    assert a <= e1 <= e2
    assert e1 - a >= d1
    assert cal.working_between(a, e1) == d1
    assert cal.working_between(a, e2) == d2
    assert cal.working_between(e1, e2) == d2 - d1
    if d1 > timedelta(0):
        assert cal.is_open(e1 - timedelta(seconds=1))  # the deadline ends working time
    if d2 > d1:  # adding in two steps is adding at once (unless the second step is empty)
        assert cal.add_working(e1, d2 - d1) == e2


@calendars
@PROPERTY_SETTINGS
@given(data=st.data())
def test_zero_working_time_inside_a_closed_gap(name: str, data: st.DataObject) -> None:
    cal = PROPERTY_CALENDARS[name]
    a = data.draw(instants(name), "a")
    opening = cal.next_opening(a)
    b = min(a + data.draw(gaps(), "delta"), opening)
    if not cal.is_open(a):
        assert opening > a
        assert cal.working_between(a, b) == timedelta(0)
        assert cal.working_between(a, opening) == timedelta(0)
        assert cal.add_working(a, timedelta(0)) == opening
        assert cal.add_working(a, MIN) == opening + MIN


@calendars
@PROPERTY_SETTINGS
@given(data=st.data())
def test_is_open_agrees_with_next_opening(name: str, data: st.DataObject) -> None:
    cal = PROPERTY_CALENDARS[name]
    t = data.draw(instants(name), "t")
    opening = cal.next_opening(t)
    assert cal.is_open(t) == (opening == t)
    assert opening >= t
    assert cal.is_open(opening)
    assert cal.add_working(t, timedelta(0)) == opening
    # Between t and the opening nothing is open: a point halfway is closed too.
    if opening > t:
        assert not cal.is_open(t + (opening - t) / 2)
