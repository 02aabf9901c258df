"""Response-time clocks and the scheduler's jobs, proven through ``supportbot replay``:
working-time deadlines, warnings before breaches, pauses, order alerts, follow-ups,
surveys and the monthly report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from bot.cli import main
from bot.db.models import Conversation, SlaClock
from tests.helpers import query

CUSTOMER = {"id": "C-200", "company": "PolTrade Distribution LLC", "country": "RU",
            "email": "zakupki@poltrade.example", "language": "en",
            "contacts": [{"channel": "telegram", "chat": "tg-1"}]}
ORDER = {"number": "PO-1", "customer": "C-200", "product": "SPC-5-05", "quantity_m2": 2000,
         "incoterm": "CIF", "destination": "St Petersburg", "stage": "in_production",
         "progress": 40, "etd": "2026-12-20", "eta": "2027-01-20"}
SETUP = {"setup": {"customers": [CUSTOMER], "orders": [ORDER]}}


def says(at: str, text: str, chat: str = "tg-1") -> dict[str, Any]:
    return {"at": at, "from": "customer", "channel": "telegram", "chat": chat, "text": text}


def agent(at: str, who: str, action: str, **extra: str) -> dict[str, Any]:
    return {"at": at, "from": "agent", "agent": who, "action": action, "chat": "tg-1", **extra}


def tick(at: str) -> dict[str, Any]:
    return {"at": at, "tick": True}


def replay(tmp_path: Path, *events: dict[str, Any], database: str | None = None,
           setup: dict[str, Any] = SETUP) -> list[dict[str, Any]]:
    path = tmp_path / "scenario.jsonl"
    path.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in (setup, *events)),
                    encoding="utf-8")
    args = ["replay", str(path)] + (["--database", database] if database else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return [json.loads(line) for line in result.stdout.splitlines()]


def kinds(lines: list[dict[str, Any]], *wanted: str) -> list[tuple[str, str]]:
    return [(line["at"], line["kind"]) for line in lines if line.get("kind") in wanted]


def test_friday_evening_handoff_breaches_on_monday_morning_after_a_warning(
        tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        says("2026-12-04T17:30:00+08:00", "I want to talk to a person"),   # Friday 17:30
        tick("2026-12-04T23:00:00+08:00"),                                   # Friday night
        tick("2026-12-07T11:00:00+08:00"))                                   # Monday
    handoff = kinds(lines, "handoff")
    assert handoff == [("2026-12-04T17:30:00+08:00", "handoff")]
    # 2 h of working time: 30 min on Friday, 90 min on Monday from 09:00.
    assert kinds(lines, "sla_warning", "sla_breach") == [
        ("2026-12-04T17:54:00+08:00", "sla_warning"),  # the unclaimed hand-off (30 min), 80 %
        ("2026-12-07T10:06:00+08:00", "sla_warning"),  # first response, 80 % of 2 h
        ("2026-12-07T10:30:00+08:00", "sla_breach"),
    ]
    # Nobody took it within 30 working minutes: escalated at Friday 18:00 (closing time).
    assert kinds(lines, "escalation") == [("2026-12-04T18:00:00+08:00", "escalation")]
    breach = next(line for line in lines if line.get("kind") == "sla_breach")
    assert "First human response" in breach["text"] and breach["to"] == "agents"


def test_an_urgent_message_has_a_30_minute_target(tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        says("2026-12-07T10:00:00+08:00", "URGENT: the container is leaking, I need a person now"),
        tick("2026-12-07T11:00:00+08:00"))
    assert ("2026-12-07T10:30:00+08:00", "sla_breach") in kinds(lines, "sla_breach")
    assert ("2026-12-07T10:24:00+08:00", "sla_warning") in kinds(lines, "sla_warning")


def test_an_agent_reply_in_time_meets_the_clock(tmp_path: Path, database_url: str) -> None:
    lines = replay(
        tmp_path,
        says("2026-12-07T10:00:00+08:00", "I want to talk to a person"),
        agent("2026-12-07T10:10:00+08:00", "agent-1", "take"),
        agent("2026-12-07T10:20:00+08:00", "agent-1", "reply", text="Good morning, I am here."),
        tick("2026-12-07T15:00:00+08:00"), database=database_url)
    assert kinds(lines, "sla_warning", "sla_breach", "escalation") == []
    clocks = {c.kind: c for c in query(database_url, select(SlaClock))}
    assert clocks["unclaimed_handoff"].status == "met"
    assert clocks["unclaimed_handoff"].working_minutes == 10
    assert clocks["first_response"].status == "met"
    assert clocks["first_response"].working_minutes == 20


def test_waiting_on_the_customer_pauses_the_complaint_clock(tmp_path: Path,
                                                            database_url: str) -> None:
    """24 working hours for a solution; the team waits two days for the customer's photos,
    and those days do not count."""
    lines = replay(
        tmp_path,
        says("2026-12-07T09:00:00+08:00", "The planks we received are cracked, I want to complain"),
        says("2026-12-07T09:01:00+08:00", "The order number is PO-1"),
        agent("2026-12-07T09:30:00+08:00", "agent-1", "take"),
        agent("2026-12-07T10:00:00+08:00", "agent-1", "reply",
              text="We are sorry. Could you send photos of the damaged boxes?"),
        says("2026-12-09T10:00:00+08:00", "Here are the photos"),   # two days later
        tick("2026-12-10T12:00:00+08:00"),
        tick("2026-12-14T18:00:00+08:00"), database=database_url)
    complaint = next(c for c in query(database_url, select(SlaClock))
                     if c.kind == "complaint_solution")
    # The complaint is handed off at 09:00: 1 working hour runs before the pause
    # (09:00-10:00), then 23 h from Wednesday 10:00: Wed 8 h, Thu 9 h, Fri 6 h -> Friday
    # 15:00 (without the pause it would have been Wednesday 15:00).
    breaches = [line for line in lines if line.get("kind") == "sla_breach"
                and "Complaint solution" in line["text"]]
    assert [b["at"] for b in breaches] == ["2026-12-11T15:00:00+08:00"]
    assert complaint.status == "running" and complaint.breached_at is not None


def test_eta_slip_of_three_days_alerts_once_and_one_day_does_not(tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        says("2026-12-07T10:00:00+08:00", "hello"),
        {"at": "2026-12-08T10:00:00+08:00", "order_event": {"number": "PO-1", "eta": "2027-01-21"}},
        {"at": "2026-12-09T10:00:00+08:00", "order_event": {"number": "PO-1", "eta": "2027-01-24"}},
        tick("2026-12-09T10:05:00+08:00"), tick("2026-12-09T11:00:00+08:00"))
    alerts = [line for line in lines if line.get("kind") == "alert"]
    customer_alerts = [a for a in alerts if a["to"] == "customer"]
    assert len(customer_alerts) == 1 and customer_alerts[0]["at"] == "2026-12-09T10:00:00+08:00"
    assert "2027-01-21" in customer_alerts[0]["text"] and "2027-01-24" in customer_alerts[0]["text"]
    assert [a["to"] for a in alerts] == ["customer", "agents"]  # the owner side is told too


def test_stage_change_alerts_the_customer(tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        {"at": "2026-12-08T10:00:00+08:00",
         "order_event": {"number": "PO-1", "stage": "shipped", "vessel": "MSC Aurora",
                         "bl_number": "BL-778"}},
        tick("2026-12-08T10:01:00+08:00"))
    alerts = [line for line in lines if line.get("kind") == "alert"]
    assert len(alerts) == 1 and alerts[0]["chat"] == "tg-1" and "MSC Aurora" in alerts[0]["text"]


def test_follow_up_comes_48_hours_after_delivery_once(tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        {"at": "2026-12-07T10:00:00+08:00", "order_event": {"number": "PO-1", "stage": "delivered"}},
        tick("2026-12-09T09:59:00+08:00"),
        tick("2026-12-09T10:00:00+08:00"),
        tick("2026-12-10T10:00:00+08:00"))
    assert kinds(lines, "followup") == [("2026-12-09T10:00:00+08:00", "followup")]


def test_proactive_messages_wait_for_the_end_of_quiet_hours(tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        {"at": "2026-12-07T23:30:00+08:00", "order_event": {"number": "PO-1", "stage": "delivered"}},
        tick("2026-12-09T23:30:00+08:00"),
        tick("2026-12-10T08:00:00+08:00"))
    alert_times = [at for at, _ in kinds(lines, "alert")]
    assert alert_times == ["2026-12-08T08:00:00+08:00"]  # quiet 21:00-08:00, Shanghai time
    assert kinds(lines, "followup") == [("2026-12-10T08:00:00+08:00", "followup")]


def test_survey_once_after_a_person_resolves_and_the_rating_is_stored(
        tmp_path: Path, database_url: str) -> None:
    lines = replay(
        tmp_path,
        says("2026-12-07T10:00:00+08:00", "I want to talk to a person"),
        agent("2026-12-07T10:05:00+08:00", "agent-1", "take"),
        agent("2026-12-07T10:06:00+08:00", "agent-1", "reply", text="Your order ships Friday."),
        agent("2026-12-07T10:07:00+08:00", "agent-1", "resolve"),
        agent("2026-12-07T10:08:00+08:00", "agent-1", "resolve"),
        says("2026-12-07T10:09:00+08:00", "5"),
        says("2026-12-07T10:10:00+08:00", "4"),
        database=database_url)
    surveys = [line for line in lines if line.get("kind") == "survey"]
    assert len(surveys) == 1 and surveys[0]["buttons"] == ["1", "2", "3", "4", "5"]
    conversation = query(database_url, select(Conversation).order_by(Conversation.id))[0]
    assert conversation.satisfaction == 5
    replies_after = [line for line in lines if line.get("at") == "2026-12-07T10:09:00+08:00"
                     and line.get("to") == "customer"]
    assert replies_after and "Thank you for your rating" in replies_after[0]["text"]
    # A second "4" is not a second rating: it starts a new conversation.
    conversations = query(database_url, select(Conversation).order_by(Conversation.id))
    assert len(conversations) == 2 and conversations[1].satisfaction is None


def test_a_low_rating_alerts_the_supervisors(tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        says("2026-12-07T10:00:00+08:00", "I want to talk to a person"),
        agent("2026-12-07T10:05:00+08:00", "agent-1", "take"),
        agent("2026-12-07T10:07:00+08:00", "agent-1", "resolve"),
        says("2026-12-07T10:09:00+08:00", "1"))
    low = [line for line in lines if line.get("kind") == "escalation"]
    assert len(low) == 1 and "1/5" in low[0]["text"]


def test_monthly_complaint_report_once(tmp_path: Path) -> None:
    lines = replay(
        tmp_path,
        says("2026-11-10T10:00:00+08:00", "The planks are cracked, I want to complain"),
        says("2026-11-10T10:01:00+08:00", "The order number is PO-1"),
        tick("2026-11-30T23:00:00+08:00"),
        tick("2026-12-01T08:00:00+08:00"),
        tick("2026-12-01T09:00:00+08:00"))
    reports = [line for line in lines if line.get("kind") == "report"]
    # Due at the start of the month (company time): the tick at 08:00 runs it at 00:00.
    assert len(reports) == 1 and reports[0]["at"] == "2026-12-01T00:00:00+08:00"
    assert "2026-11" in reports[0]["text"] and "(1)" in reports[0]["text"]


def test_quiet_hours_move_a_message_to_the_morning() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from bot.jobs import quiet_until

    berlin = ZoneInfo("Europe/Berlin")
    evening = datetime(2026, 12, 7, 22, 30, tzinfo=berlin)
    assert quiet_until(evening, berlin, "21:00-08:00") == datetime(2026, 12, 8, 8, 0, tzinfo=berlin)
    early = datetime(2026, 12, 8, 6, 0, tzinfo=berlin)
    assert quiet_until(early, berlin, "21:00-08:00") == datetime(2026, 12, 8, 8, 0, tzinfo=berlin)
    noon = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
    assert quiet_until(noon, berlin, "21:00-08:00") == noon
    assert quiet_until(noon, berlin, "12:00-14:00") == datetime(2026, 12, 8, 14, 0, tzinfo=berlin)
    assert quiet_until(evening, berlin, "") == evening


def test_resolving_stops_every_clock_and_next_response_waits_on_people(
        tmp_path: Path, database_url: str) -> None:
    replay(
        tmp_path,
        says("2026-12-07T10:00:00+08:00", "I want to talk to a person"),
        agent("2026-12-07T10:05:00+08:00", "agent-1", "take"),
        agent("2026-12-07T10:10:00+08:00", "agent-1", "reply", text="Hello, how can I help?"),
        says("2026-12-07T10:20:00+08:00", "Where is my shipment?"),
        says("2026-12-07T10:25:00+08:00", "Any news?"),
        agent("2026-12-07T11:00:00+08:00", "agent-1", "reply", text="It left Shanghai today."),
        says("2026-12-07T11:30:00+08:00", "Thanks, and the documents?"),
        agent("2026-12-07T12:00:00+08:00", "agent-1", "resolve"),
        database=database_url)
    clocks = sorted(((c.kind, c.status, c.working_minutes)
                     for c in query(database_url, select(SlaClock))), key=str)
    # next_response counts from the oldest unanswered message (10:20, not 10:25); the last
    # one was never answered: the resolution closes it (neither met nor breached).
    assert clocks == sorted([
        ("unclaimed_handoff", "met", 5), ("first_response", "met", 10),
        ("next_response", "met", 40), ("next_response", "closed", 30)], key=str)


def test_a_paused_clock_resolved_later_is_met_by_the_time_it_ran(
        tmp_path: Path, database_url: str) -> None:
    replay(
        tmp_path,
        says("2026-12-07T09:00:00+08:00", "The planks we received are cracked, I want to complain"),
        says("2026-12-07T09:01:00+08:00", "The order number is PO-1"),
        agent("2026-12-07T09:30:00+08:00", "agent-1", "take"),
        agent("2026-12-07T10:00:00+08:00", "agent-1", "reply", text="Could you send photos?"),
        agent("2026-12-16T10:00:00+08:00", "agent-1", "resolve"),  # a week and more later
        database=database_url)
    complaint = next(c for c in query(database_url, select(SlaClock))
                     if c.kind == "complaint_solution")
    assert (complaint.status, complaint.working_minutes) == ("met", 60)


def test_an_update_without_a_question_does_not_pause_the_complaint_clock(
        tmp_path: Path, database_url: str) -> None:
    lines = replay(
        tmp_path,
        says("2026-12-07T09:00:00+08:00", "The planks we received are cracked, I want to complain"),
        says("2026-12-07T09:01:00+08:00", "The order number is PO-1"),
        agent("2026-12-07T09:30:00+08:00", "agent-1", "take"),
        agent("2026-12-07T10:00:00+08:00", "agent-1", "reply", text="We are investigating."),
        tick("2026-12-11T18:00:00+08:00"), database=database_url)
    breaches = [line["at"] for line in lines if line.get("kind") == "sla_breach"
                and "Complaint solution" in line["text"]]
    # 24 working hours from Monday 09:00: Mon 9 + Tue 9 + Wed 6 -> Wednesday 15:00.
    assert breaches == ["2026-12-09T15:00:00+08:00"]


async def test_import_changes_alert_like_order_events(service: Any, clock: Any,
                                                     channels: Any) -> None:
    """An ETA moved or a delivery recorded by a re-import is announced like an event."""
    from datetime import timedelta

    from bot.importer import apply_batch, validate_records
    from bot.jobs import delivery_followups, order_alerts

    async def load(*records: dict[str, Any]) -> None:
        async with service.db.sessions.begin() as session:
            await apply_batch(session, validate_records(enumerate(records, start=1)),
                              clock.now())

    await load(CUSTOMER, ORDER)
    assert await order_alerts(service) == 0  # a new order is not announced
    clock.advance(timedelta(days=1))
    await load({**ORDER, "eta": "2027-01-25"})  # 5 days later than planned
    clock.advance(timedelta(days=1))
    await load({**ORDER, "eta": "2027-01-25", "stage": "delivered"})
    assert await order_alerts(service) == 2  # the delay, and the delivery
    await service.outbox.dispatch_due()
    told = [d.text for d in channels["telegram"].sent]
    assert any("2027-01-25" in t and "2027-01-20" in t for t in told)
    assert any("delivered" in t for t in told)
    clock.advance(timedelta(hours=47))
    assert await delivery_followups(service) == 0
    clock.advance(timedelta(hours=1))
    assert await delivery_followups(service) == 1


async def test_a_message_processed_after_resolution_is_not_taken_as_a_rating(
        service: Any, channels: Any) -> None:
    """Received while a person owned the conversation, processed after they resolved it:
    the question starts a new conversation and is answered; nothing is rated."""
    from bot.agent_actions import perform
    from bot.types import InboundMessage

    async def say(text: str, n: int) -> Any:
        return await service.pipeline.receive(InboundMessage(
            channel="telegram", chat="tg-9", text=text, external_id=f"m-{n}"))

    first = await say("I want to talk to a person", 1)
    await service.pipeline.process(first.message_id)
    await perform(service, "tg-9", "agent-1", "take")
    late = await say("2", 2)  # stored in the owned conversation, not processed yet
    await perform(service, "tg-9", "agent-1", "resolve")
    processed = await service.pipeline.process(late.message_id)
    async with service.db.sessions() as session:
        conversations = (await session.execute(select(Conversation).order_by(
            Conversation.id))).scalars().all()
    assert len(conversations) == 2
    assert conversations[0].satisfaction is None and conversations[0].status == "resolved"
    assert processed.conversation_id == conversations[1].id
    assert all(r.template != "survey.thanks_low" for r in processed.replies)
