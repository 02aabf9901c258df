"""``supportbot hours``: open or closed at an instant, the next opening, the working time
between two instants, on the default calendar or a named one from ``[calendars.NAME]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bot.cli import main

EUROPE_CONFIG = """
[calendars.europe]
timezone = "Europe/Berlin"
holidays_country = "DE"

[calendars.europe.weekly]
mon = ["09:00-12:00", "13:00-17:00"]
tue = ["09:00-12:00", "13:00-17:00"]
wed = ["09:00-12:00", "13:00-17:00"]
thu = ["09:00-12:00", "13:00-17:00"]
fri = ["09:00-12:00", "13:00-17:00"]
"""


def hours(*args: str, config: Path | None = None) -> Result:
    before = ["--config", str(config)] if config else []
    return CliRunner().invoke(main, [*before, "hours", *args])


def as_json(*args: str, config: Path | None = None) -> dict[str, Any]:
    result = hours(*args, "--json", config=config)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return json.loads(result.stdout)


@pytest.fixture
def europe(tmp_path: Path) -> Path:
    path = tmp_path / "europe.toml"
    path.write_text(EUROPE_CONFIG, encoding="utf-8")
    return path


# --- open, closed, next opening ------------------------------------------------------------------

def test_open_on_a_weekday_afternoon() -> None:
    assert as_json("--at", "2026-12-04T17:30:00+08:00") == {
        "calendar": "default", "timezone": "Asia/Shanghai", "at": "2026-12-04T17:30:00+08:00",
        "open": True, "next_opening": "2026-12-04T17:30:00+08:00", "holiday": None}


def test_closed_on_friday_evening_opens_monday_morning() -> None:
    result = as_json("--at", "2026-12-04T19:00:00+08:00")
    assert (result["open"], result["next_opening"], result["holiday"]) == (
        False, "2026-12-07T09:00:00+08:00", None)


def test_the_instant_is_shown_in_the_calendars_timezone() -> None:
    result = as_json("--at", "2026-12-04T11:00:00Z")  # 19:00 in Shanghai
    assert result["at"] == "2026-12-04T19:00:00+08:00" and result["open"] is False


def test_public_holiday_is_named() -> None:
    result = as_json("--at", "2026-10-01T10:00:00+08:00")
    assert (result["open"], result["holiday"], result["next_opening"]) == (
        False, "National Day", "2026-10-08T09:00:00+08:00")


def test_make_up_saturday_is_open() -> None:
    result = as_json("--at", "2026-10-10T10:00:00+08:00")
    assert (result["open"], result["holiday"]) == (True, None)


def test_plain_text_output() -> None:
    result = hours("--at", "2026-10-01T10:00:00+08:00",
                   "--between", "2026-09-30T17:00:00+08:00", "2026-10-08T10:30:00+08:00")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "calendar default (Asia/Shanghai) at 2026-10-01T10:00:00+08:00: closed — National Day",
        "next opening: 2026-10-08T09:00:00+08:00",
        "working time between: 2 h 30 min (150 minutes)",
    ]
    open_now = hours("--at", "2026-12-07T10:00:00+08:00")
    assert open_now.stdout.splitlines()[0].endswith(": open")


# --- working time between two instants -------------------------------------------------------

@pytest.mark.parametrize("start, end, minutes", [
    ("2026-12-04T17:30:00+08:00", "2026-12-07T10:30:00+08:00", 120),   # over a weekend
    ("2026-12-07T09:00:00+08:00", "2026-12-11T18:00:00+08:00", 45 * 60),
    ("2026-12-05T10:00:00+08:00", "2026-12-06T10:00:00+08:00", 0),     # all weekend
    ("2026-12-07T12:00:00+08:00", "2026-12-07T10:00:00+08:00", 0),     # end before start
    ("2026-10-09T17:00:00+08:00", "2026-10-10T10:00:00+08:00", 120),   # make-up Saturday
    ("2026-12-04T09:30:00Z", "2026-12-07T01:30:00Z", 60),              # UTC input
])
def test_working_minutes_between(start: str, end: str, minutes: int) -> None:
    result = as_json("--at", start, "--between", start, end)
    assert result["working_minutes"] == minutes


def test_no_working_minutes_key_without_between() -> None:
    assert "working_minutes" not in as_json("--at", "2026-12-07T10:00:00+08:00")


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (("--at", "tomorrow"), "--at"),
    (("--at", "2026-12-04T10:00:00"), "offset"),
    (("--at", "2026-12-04T10:00:00+08:00", "--between", "soon", "2026-12-05T10:00:00+08:00"),
     "--between"),
    (("--at", "2026-12-04T10:00:00+08:00", "--between", "2026-12-04T10:00:00+08:00",
      "2026-12-05T10:00"), "offset"),
])
def test_bad_instants_exit_2(args: tuple[str, ...], words: str) -> None:
    result = hours(*args)
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


def test_unknown_calendar_exits_2_naming_the_configured_ones(europe: Path) -> None:
    result = hours("--at", "2026-12-04T10:00:00+08:00", "--calendar", "asia", config=europe)
    assert result.exit_code == 2
    assert "'asia'" in result.stderr
    assert "configured: default, europe" in result.stderr
    alone = hours("--at", "2026-12-04T10:00:00+08:00", "--calendar", "europe")
    assert alone.exit_code == 2 and "configured: default" in alone.stderr


def test_unknown_holidays_country_in_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[hours]\nholidays_country = "XX"\n', encoding="utf-8")
    result = hours("--at", "2026-12-04T10:00:00+08:00", config=config)
    assert result.exit_code == 2
    assert "holidays_country" in result.stderr and "'XX'" in result.stderr


def test_calendar_without_hours_in_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "none.toml"
    config.write_text("[calendars.empty]\nweekly = {}\n", encoding="utf-8")
    result = hours("--at", "2026-12-04T10:00:00+08:00", config=config)
    assert result.exit_code == 2 and "no working hours" in result.stderr


def test_calendar_with_only_extra_open_dates_gives_a_clear_answer(tmp_path: Path) -> None:
    config = tmp_path / "only.toml"
    config.write_text("[hours]\nweekly = {}\nextra_open = [2026-12-12]\n", encoding="utf-8")
    result = hours("--at", "2026-12-07T10:00:00+08:00", "--json", config=config)
    if result.exit_code == 0:  # a working calendar: it opens on the extra date
        assert json.loads(result.stdout)["next_opening"] == "2026-12-12T09:00:00+08:00"
    else:
        assert result.exit_code == 2 and "Traceback" not in result.output


# --- a named calendar from the config -------------------------------------------------------------

def test_named_calendar_from_config(europe: Path) -> None:
    saturday = as_json("--at", "2026-03-28T22:00:00+01:00", "--calendar", "europe",
                       config=europe)
    assert saturday == {
        "calendar": "europe", "timezone": "Europe/Berlin", "at": "2026-03-28T22:00:00+01:00",
        "open": False, "next_opening": "2026-03-30T09:00:00+02:00", "holiday": None}
    lunch = as_json("--at", "2026-03-30T12:30:00+02:00", "--calendar", "europe",
                    "--between", "2026-03-27T12:00:00+01:00", "2026-03-30T12:00:00+02:00",
                    config=europe)
    assert (lunch["open"], lunch["next_opening"]) == (False, "2026-03-30T13:00:00+02:00")
    assert lunch["working_minutes"] == (4 + 3) * 60  # Friday 13–17, Monday 09–12
    good_friday = as_json("--at", "2026-04-03T10:00:00+02:00", "--calendar", "europe",
                          config=europe)
    assert (good_friday["open"], good_friday["holiday"]) == (False, "Good Friday")
    # The default calendar is still the Shanghai one: 04:00 in Berlin is 10:00 there.
    early = "2026-03-30T04:00:00+02:00"
    assert as_json("--at", early, config=europe)["open"] is True
    assert as_json("--at", early, "--calendar", "europe", config=europe)["open"] is False


def test_default_calendar_from_the_hours_section(tmp_path: Path) -> None:
    config = tmp_path / "berlin.toml"
    config.write_text('[hours]\ntimezone = "Europe/Berlin"\nholidays_country = "DE"\n',
                      encoding="utf-8")
    result = as_json("--at", "2026-10-24T12:00:00+02:00", "--between",
                     "2026-10-23T12:00:00+02:00", "2026-10-26T12:00:00+01:00", config=config)
    assert (result["calendar"], result["timezone"]) == ("default", "Europe/Berlin")
    assert result["next_opening"] == "2026-10-26T09:00:00+01:00"
    assert result["working_minutes"] == 9 * 60
