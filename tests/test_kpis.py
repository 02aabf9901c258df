"""KPIs from stored facts (bot/kpis.py) and ``supportbot report``: exact figures from a
hand-built history with known timestamps — hand-offs on a Friday evening answered on
Monday morning, nights and weekends — so working time and wall time differ."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.business_hours import BusinessCalendar, build_calendars
from bot.cli import main
from bot.config import HoursSettings
from bot.db.database import Database
from bot.db.models import Agent, Case, Contact, Conversation, Customer, Order, SlaClock
from bot.kpis import CLOCK_KINDS, WorkingTime, compute_kpis, percentile, working_day_minutes
from bot.reporting import csv_rows, parse_period
from tests.helpers import query

SH = ZoneInfo("Asia/Shanghai")  # the default calendar: Mon-Fri 09:00-18:00, CN holidays
START = datetime(2026, 11, 30, tzinfo=SH)  # Monday
END = datetime(2026, 12, 14, tzinfo=SH)  # Monday two weeks later


def at(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """Company time (Shanghai) in 2026. 12-04 is a Friday, 12-05/06 the weekend."""
    return datetime(2026, month, day, hour, minute, tzinfo=SH)


@pytest.fixture(scope="module")
def calendar() -> BusinessCalendar:
    return build_calendars(HoursSettings())["default"]


# --- the history ---------------------------------------------------------------------------------

async def build_history(url: str) -> None:
    """Conversations (created in the period unless said otherwise):

    c1 telegram en alice: hand-off Fri 17:30, answered Mon 09:30, resolved Mon 11:00, rated 5
    c2 webchat zh bob: hand-off Tue 10:00, answered 10:45, resolved 15:00, rated 4
    c3 telegram ru alice: hand-off Wed 20:00 (night), answered Thu 11:00 (late), resolved
       Thu 17:00, rated 2
    c4 webchat en bob: hand-off Sat 10:00, not answered yet (its clock already breached),
       owned now
    c5 telegram en: bot only
    c8 wechat, no language: created exactly at the start, waiting for an agent
    c6 (before the period), c7 (exactly at the end): outside; c9 (before): owned by alice now
    """
    db = Database(url)
    await db.upgrade()
    past = at(11, 1)
    try:
        async with db.sessions.begin() as session:
            alice = Agent(ref="alice", name="Alice", created_at=past)
            bob = Agent(ref="bob", name="Bob", created_at=past)
            customer = Customer(ref="C-1", company="Nordic Floors", created_at=past,
                                updated_at=past)
            session.add_all([alice, bob, customer])
            await session.flush()

            conversations: dict[str, Conversation] = {}

            def conversation(name: str, channel: str, language: str | None, created: datetime,
                             *, owner: Agent | None = None, status: str = "open",
                             handed_off: datetime | None = None,
                             resolved: datetime | None = None,
                             rating: int | None = None) -> None:
                contact = Contact(channel=channel, chat=name, created_at=created)
                session.add(contact)
                conversations[name] = Conversation(
                    contact=contact, channel=channel, chat=name, language=language,
                    status=status, owner_id=owner.id if owner else None, created_at=created,
                    updated_at=created, handed_off_at=handed_off, resolved_at=resolved,
                    satisfaction=rating)
                session.add(conversations[name])

            conversation("c1", "telegram", "en", at(12, 4, 17), owner=alice, status="resolved",
                         handed_off=at(12, 4, 17, 30), resolved=at(12, 7, 11), rating=5)
            conversation("c2", "webchat", "zh", at(12, 1, 10), owner=bob, status="resolved",
                         handed_off=at(12, 1, 10), resolved=at(12, 1, 15), rating=4)
            conversation("c3", "telegram", "ru", at(12, 2, 20), owner=alice, status="resolved",
                         handed_off=at(12, 2, 20), resolved=at(12, 3, 17), rating=2)
            conversation("c4", "webchat", "en", at(12, 5, 10), owner=bob, status="owned",
                         handed_off=at(12, 5, 10))
            conversation("c5", "telegram", "en", at(12, 7, 9))
            conversation("c8", "wechat", None, START, status="handed_off", handed_off=START)
            conversation("c6", "telegram", "en", at(11, 20, 10), owner=bob, status="resolved",
                         handed_off=at(11, 20, 10), resolved=at(11, 20, 11), rating=1)
            conversation("c7", "wechat", "en", END, status="handed_off", handed_off=END)
            conversation("c9", "telegram", "en", at(11, 25, 10), owner=alice, status="owned",
                         handed_off=at(11, 25, 10))
            await session.flush()

            def clock(name: str, kind: str, status: str, started: datetime, *,
                      stopped: datetime | None = None, working: int | None = None,
                      breached: datetime | None = None) -> None:
                session.add(SlaClock(
                    conversation_id=conversations[name].id, kind=kind, status=status,
                    target_minutes=120 if kind != "unclaimed_handoff" else 30,
                    started_at=started, segment_started_at=started, stopped_at=stopped,
                    working_minutes=working, breached_at=breached))

            # first_response: c1 met after 60 working minutes over a weekend (3,840 wall),
            # c2 met in 45, c3 breached at 120 (900 wall: a night), c4 still open, breached.
            clock("c1", "first_response", "met", at(12, 4, 17, 30), stopped=at(12, 7, 9, 30),
                  working=60)
            clock("c2", "first_response", "met", at(12, 1, 10), stopped=at(12, 1, 10, 45),
                  working=45)
            clock("c3", "first_response", "breached", at(12, 2, 20), stopped=at(12, 3, 11),
                  working=120, breached=at(12, 3, 11))
            clock("c4", "first_response", "running", at(12, 5, 10), breached=at(12, 7, 11))
            clock("c1", "unclaimed_handoff", "breached", at(12, 4, 17, 30),
                  stopped=at(12, 7, 9, 10), working=40, breached=at(12, 4, 18))
            clock("c2", "unclaimed_handoff", "met", at(12, 1, 10), stopped=at(12, 1, 10, 5),
                  working=5)
            clock("c8", "unclaimed_handoff", "running", START)
            clock("c3", "complaint_solution", "met", at(12, 2, 20), stopped=at(12, 3, 17),
                  working=480)
            clock("c8", "complaint_solution", "paused", START)
            clock("c6", "first_response", "breached", at(11, 20, 10), stopped=at(11, 21, 10),
                  working=540, breached=at(11, 20, 12))

            def case(number: str, kind: str, category: str | None, opened: datetime,
                     resolved: datetime | None = None, name: str | None = None) -> None:
                session.add(Case(
                    number=number, kind=kind, category=category,
                    conversation_id=conversations[name].id if name else None,
                    status="resolved" if resolved else "open", opened_at=opened,
                    resolved_at=resolved))

            # Complaints: working days of 540 minutes (09:00-18:00).
            case("K1", "complaint", "transit_damage", at(12, 2, 20), at(12, 4, 12), "c3")  # 720
            case("K2", "complaint", "quality", at(12, 4, 17), at(12, 8, 18), "c1")  # 1,140
            case("K3", "complaint", "transit_damage", at(12, 1, 10), None, "c2")
            case("K4", "complaint", "quality", at(12, 10, 9), at(12, 10, 18))  # 540
            case("K5", "complaint", "transit_damage", at(12, 5, 10), at(12, 7, 9), "c4")  # 0
            case("K6", "complaint", "packaging", at(12, 1, 11), None, "c2")
            case("K9", "complaint", None, at(12, 9, 9))
            case("R1", "return", "return_refund", at(12, 2, 9), at(12, 2, 10), "c3")
            case("K0", "complaint", "quality", at(11, 20, 9), at(11, 20, 10), "c6")

            def order(number: str, eta: date | None, delivered: datetime | None) -> None:
                session.add(Order(number=number, customer_id=customer.id, stage="delivered",
                                  eta=eta, delivered_at=delivered, created_at=past,
                                  updated_at=past))

            order("O1", date(2026, 12, 3), at(12, 3, 23, 30))  # on time, last half hour
            order("O2", date(2026, 12, 3), at(12, 4, 7))  # late (still Dec 3 in UTC)
            order("O3", date(2026, 12, 10), at(12, 8, 15))  # early
            order("O4", None, at(12, 9, 12))  # no ETA: not judged
            order("O7", date(2026, 12, 5), at(12, 6))  # midnight after the ETA day: late
            order("O5", date(2026, 12, 1), at(11, 25, 12))  # before the period
            order("O6", date(2026, 12, 20), None)  # not delivered
    finally:
        await db.dispose()


async def kpis_of(url: str, calendar: BusinessCalendar, **filters: Any) -> dict[str, Any]:
    db = Database(url)
    try:
        async with db.sessions() as session:
            return await compute_kpis(session, start=START, end=END, calendar=calendar,
                                      **filters)
    finally:
        await db.dispose()


@pytest.fixture
async def history(database_url: str) -> str:
    await build_history(database_url)
    return database_url


# --- the figures ---------------------------------------------------------------------------------

async def test_kpis_of_the_hand_built_history(history: str, calendar: BusinessCalendar) -> None:
    k = await kpis_of(history, calendar)
    json.dumps(k)  # JSON-serialisable as it is

    assert k["conversations"] == {
        "total": 6, "resolved": 3,
        "by_channel": {"telegram": 3, "webchat": 2, "wechat": 1},
        "by_language": {"en": 3, "ru": 1, "unknown": 1, "zh": 1}}

    # Working 45, 60, 120; wall 45, 900, 3,840 (the weekend and a night).
    assert k["first_response"] == {
        "count": 3, "waiting": 1,
        "working_minutes": {"median": 60.0, "p90": 108.0},
        "wall_minutes": {"median": 900.0, "p90": 3252.0}}
    # From the hand-off: c1 Fri 17:30 -> Mon 11:00 is 30 + 120 working minutes, 3,930 wall;
    # c2 300 / 300; c3 Wed 20:00 -> Thu 17:00 is 480 working, 1,260 wall.
    assert k["resolution"] == {
        "count": 3,
        "working_minutes": {"median": 300.0, "p90": 444.0},
        "wall_minutes": {"median": 1260.0, "p90": 3396.0}}

    assert k["sla"] == {
        "first_response": {"met": 2, "breached": 2, "running": 0, "paused": 0,
                           "breach_rate": 0.5},
        "unclaimed_handoff": {"met": 1, "breached": 1, "running": 1, "paused": 0,
                              "breach_rate": 0.5},
        "complaint_solution": {"met": 1, "breached": 0, "running": 0, "paused": 1,
                               "breach_rate": 0.0},
        "all": {"met": 4, "breached": 3, "running": 1, "paused": 1, "breach_rate": 0.4286}}

    assert k["satisfaction"] == {"ratings": 3, "satisfied": 2, "share": 0.6667,
                                 "average": 3.67, "target": 0.95}
    # (720 + 1,140 + 540 + 0) / 540 / 4 working days; (40 + 97 + 9 + 47) h / 24 / 4 wall.
    assert k["disputes"] == {"opened": 7, "resolved": 4, "open": 3,
                             "average_working_days": 1.111, "average_wall_days": 2.01,
                             "working_day_minutes": 540.0, "target": 3.0}
    assert k["delivery"] == {"delivered": 5, "judged": 4, "without_eta": 1, "on_time": 2,
                             "share": 0.5, "target": 0.98, "filtered": False}
    assert k["complaints"] == {"total": 7, "top_categories": [
        {"category": "transit_damage", "count": 3}, {"category": "quality", "count": 2},
        {"category": "packaging", "count": 1}]}

    assert k["owners"] == {
        "alice": {"name": "Alice", "open_owned": 1, "resolved": 2, "first_responses": 2,
                  "first_response_median_working_minutes": 90.0,
                  "first_response_median_wall_minutes": 2370.0},
        "bob": {"name": "Bob", "open_owned": 1, "resolved": 1, "first_responses": 1,
                "first_response_median_working_minutes": 45.0,
                "first_response_median_wall_minutes": 45.0}}

    assert k["targets"] == {
        "satisfaction_share": {"value": 0.6667, "target": 0.95, "rule": "at least",
                               "met": False},
        "on_time_delivery_share": {"value": 0.5, "target": 0.98, "rule": "at least",
                                   "met": False},
        "dispute_resolution_working_days": {"value": 1.111, "target": 3.0, "rule": "at most",
                                            "met": True}}


async def test_filters(history: str, calendar: BusinessCalendar) -> None:
    alice = await kpis_of(history, calendar, owner="alice")
    assert alice["conversations"]["total"] == 2
    assert alice["first_response"]["working_minutes"] == {"median": 90.0, "p90": 114.0}
    assert alice["satisfaction"]["share"] == 0.5
    assert alice["sla"]["all"] == {"met": 2, "breached": 2, "running": 0, "paused": 0,
                                   "breach_rate": 0.5}
    assert list(alice["owners"]) == ["alice"]

    telegram = await kpis_of(history, calendar, channel="telegram")
    assert telegram["conversations"]["by_channel"] == {"telegram": 3}
    # Only complaints whose conversation is on Telegram: K1 (c3) and K2 (c1).
    assert telegram["complaints"]["top_categories"] == [
        {"category": "quality", "count": 1}, {"category": "transit_damage", "count": 1}]
    assert telegram["disputes"]["average_working_days"] == round(1860 / 540 / 2, 3)
    assert telegram["delivery"]["delivered"] == 5  # orders are not filtered (documented)

    chinese = await kpis_of(history, calendar, language="zh", channel="webchat")
    assert chinese["conversations"]["total"] == 1
    assert chinese["resolution"]["working_minutes"] == {"median": 300.0, "p90": 300.0}

    nobody = await kpis_of(history, calendar, owner="nobody")
    assert nobody["conversations"]["total"] == 0
    assert nobody["first_response"]["working_minutes"] == {"median": None, "p90": None}
    assert nobody["satisfaction"]["share"] is None
    assert nobody["sla"]["all"]["breach_rate"] is None
    assert nobody["targets"]["satisfaction_share"]["met"] is None
    assert nobody["owners"] == {}


async def test_an_empty_database_has_no_figures(database_url: str,
                                                calendar: BusinessCalendar) -> None:
    db = Database(database_url)
    await db.upgrade()
    await db.dispose()
    k = await kpis_of(database_url, calendar)
    assert k["conversations"]["total"] == 0
    assert k["resolution"]["wall_minutes"] == {"median": None, "p90": None}
    assert k["disputes"]["average_working_days"] is None
    assert k["delivery"]["share"] is None
    assert k["complaints"]["top_categories"] == []


async def test_naive_times_are_refused(database_url: str, calendar: BusinessCalendar) -> None:
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            with pytest.raises(ValueError, match="aware"):
                await compute_kpis(session, start=datetime(2026, 12, 1), end=END,
                                   calendar=calendar)
    finally:
        await db.dispose()


# --- the arithmetic ---------------------------------------------------------------------------------

def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([3.0, 1.0, 2.0, 10.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 10.0], 0.9) == pytest.approx(7.9)


def test_a_working_day_is_a_normal_day_of_the_week(calendar: BusinessCalendar) -> None:
    assert working_day_minutes(calendar) == 540
    lunch = HoursSettings(weekly={d: ["09:00-12:00", "13:00-18:00"] for d in
                                  ("mon", "tue", "wed", "thu", "fri")} | {"sat": ["09:00-12:00"]})
    assert working_day_minutes(build_calendars(lunch)["default"]) == 480
    nights = HoursSettings(weekly={"mon": ["22:00-06:00"], "tue": ["22:00-06:00"]})
    assert working_day_minutes(build_calendars(nights)["default"]) == 480


@pytest.mark.parametrize("hours", [
    HoursSettings(),
    HoursSettings(timezone="Europe/Berlin", holidays_country="DE",
                  weekly={d: ["08:00-12:00", "13:00-17:30"] for d in
                          ("mon", "tue", "wed", "thu", "fri")} | {"sat": ["22:00-04:00"]}),
])
def test_the_working_time_index_agrees_with_the_calendar(hours: HoursSettings) -> None:
    calendar = build_calendars(hours)["default"]
    low = datetime(2026, 3, 20, tzinfo=UTC)  # across Europe's DST change and Qingming
    index = WorkingTime(calendar, low, low + timedelta(days=60))
    rng = random.Random(7)
    for _ in range(500):
        a = low + timedelta(minutes=rng.randrange(0, 60 * 24 * 60))
        b = a + timedelta(minutes=rng.randrange(-600, 60 * 24 * 12))
        b = min(b, low + timedelta(days=60))
        expected = calendar.working_between(a, b).total_seconds() / 60
        assert index.minutes(a, b) == pytest.approx(expected), (a, b)
    outside = (low - timedelta(days=3), low + timedelta(days=2))  # falls back to the calendar
    assert index.minutes(*outside) == calendar.working_between(*outside).total_seconds() / 60


def test_every_clock_kind_is_reported() -> None:
    """The SLA query names the kinds (for its index): none that the code starts is missed."""
    import re

    import bot

    started: set[str] = set()
    for path in Path(bot.__file__).parent.rglob("*.py"):
        started |= set(re.findall(r"\.start\(session, conversation, \"(\w+)\"",
                                  path.read_text(encoding="utf-8")))
    assert started and started <= set(CLOCK_KINDS)


def test_report_period_parsing() -> None:
    now = datetime(2026, 12, 14, 3, 0, tzinfo=UTC)
    assert parse_period(None, None, SH, now) == (now - timedelta(days=30), now)
    start, end = parse_period("2026-12-01", "2026-12-31", SH, now)
    assert start == datetime(2026, 12, 1, tzinfo=SH) and end == datetime(2027, 1, 1, tzinfo=SH)
    start, end = parse_period("2026-12-01T09:00", "2026-12-02T10:00+00:00", SH, now)
    assert start == datetime(2026, 12, 1, 1, tzinfo=UTC)
    assert end == datetime(2026, 12, 2, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="--from"):
        parse_period("1st of May", None, SH, now)
    with pytest.raises(ValueError, match="end after"):
        parse_period("2026-12-05", "2026-12-01", SH, now)


# --- resolving a conversation resolves its cases -------------------------------------------------

def test_resolving_a_conversation_resolves_its_open_cases(tmp_path: Path, database_url: str) -> None:
    from tests.test_sla import agent, replay, says

    replay(tmp_path,
           says("2026-12-07T10:00:00+08:00", "several cartons arrived crushed, order PO-1"),
           agent("2026-12-07T10:05:00+08:00", "alice", "take"),
           agent("2026-12-07T10:10:00+08:00", "alice", "reply", text="We will replace them."),
           agent("2026-12-08T15:00:00+08:00", "alice", "resolve"),
           database=database_url)
    cases = query(database_url, select(Case))
    assert cases and all(c.status == "resolved" for c in cases)
    assert {c.resolved_at for c in cases} == {datetime(2026, 12, 8, 7, tzinfo=UTC)}


# --- supportbot report ------------------------------------------------------------------------------

@pytest.fixture
def report_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> str:
    asyncio.run(build_history(database_url))
    monkeypatch.setenv("SUPPORTBOT_DATABASE__URL", database_url)
    return database_url


PERIOD = ["--from", "2026-11-30", "--to", "2026-12-13"]  # --to's day is included


def run(*args: str) -> Any:
    result = CliRunner().invoke(main, ["report", *PERIOD, *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def test_report_json(report_env: str) -> None:
    figures = json.loads(run("--json").stdout)
    assert figures["period"]["start"] == START.astimezone(UTC).isoformat()
    assert figures["period"]["end"] == END.astimezone(UTC).isoformat()
    assert figures["first_response"]["working_minutes"] == {"median": 60.0, "p90": 108.0}
    assert figures["targets"]["dispute_resolution_working_days"]["met"] is True
    bob = json.loads(run("--json", "--owner", "bob").stdout)
    assert bob["conversations"]["total"] == 2 and list(bob["owners"]) == ["bob"]
    assert json.loads(run("--json", "--channel", "wechat", "--language", "xx").stdout)[
        "conversations"]["total"] == 0


def test_report_csv_has_one_row_per_metric(report_env: str) -> None:
    rows = list(csv.reader(io.StringIO(run("--csv").stdout)))
    assert rows[0] == ["section", "metric", "value"]
    values = {(section, metric): value for section, metric, value in rows[1:]}
    assert len(values) == len(rows) - 1  # no metric twice
    assert values[("first_response", "working_minutes.median")] == "60.0"
    assert values[("sla", "all.breach_rate")] == "0.4286"
    assert values[("satisfaction", "share")] == "0.6667"
    assert values[("delivery", "share")] == "0.5"
    assert values[("complaints", "top_categories.1.category")] == "transit_damage"
    assert values[("owners", "alice.open_owned")] == "1"
    assert values[("targets", "on_time_delivery_share.met")] == "false"
    assert values[("filters", "owner")] == ""
    assert csv_rows({"a": {"b": [{"c": None}]}}) == [("a", "b.1.c", "")]


def test_report_table(report_env: str) -> None:
    text = run().stdout
    for expected in ("Targets", "customer satisfaction", "66.7 %", "missed", "met",
                     "first response", "1 h 00 min", "1 h 48 min", "15 h 00 min",
                     "SLA clocks", "42.9 %", "transit_damage", "alice", "Owners", "telegram",
                     "2026-11-30 00:00"):
        assert expected in text, expected


def test_report_refuses_a_bad_period(report_env: str) -> None:
    result = CliRunner().invoke(main, ["report", "--from", "yesterday"])
    assert result.exit_code == 2 and "--from" in result.stderr
    both = CliRunner().invoke(main, ["report", "--json", "--csv"])
    assert both.exit_code == 2
