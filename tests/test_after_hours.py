"""The after-hours responder (SPEC §4), proved with replay scenarios through the real CLI.

Every scenario runs ``supportbot replay --database URL`` on the backend of this test run, with
a ``--config`` file when another calendar is needed. Expected notices are rendered here from
the real templates: ``after_hours.opening`` (with ``weekday.N``) inside ``after_hours.notice``,
the emergency contact from the settings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from bot.cli import main
from bot.clock import ManualClock
from bot.config import Settings, load_settings
from bot.db.models import Conversation, Message
from bot.knowledge import Knowledge
from bot.service import Service
from tests.conftest import ChatDriver, RecordingChannel

SHANGHAI = "Asia/Shanghai"
FRIDAY_EVENING = "2026-12-04T19:00:00+08:00"  # Friday; next opening Monday 2026-12-07 09:00
LINKED = {"setup": {
    "customers": [
        {"id": "C-DE", "company": "Nordic Floors GmbH", "language": "de",
         "timezone": "Europe/Berlin", "contacts": [{"channel": "telegram", "chat": "tg-de"}]},
        {"id": "C-EN", "company": "Harbour Interiors Ltd", "language": "en",
         "contacts": [{"channel": "telegram", "chat": "tg-en"}]},
    ],
    "orders": [{"number": "PO-7", "customer": "C-EN", "stage": "in_production",
                "progress": 40, "etd": "2026-12-20", "eta": "2027-01-25"}],
}}
LUNCH_CONFIG = """
[hours.weekly]
mon = ["09:00-12:00", "13:00-18:00"]
tue = ["09:00-12:00", "13:00-18:00"]
wed = ["09:00-12:00", "13:00-18:00"]
thu = ["09:00-12:00", "13:00-18:00"]
fri = ["09:00-12:00", "13:00-18:00"]
"""
BERLIN_CONFIG = """
[hours]
timezone = "Europe/Berlin"
holidays_country = "DE"
"""


# --- helpers ------------------------------------------------------------------------------------

@cache
def default_settings() -> Settings:
    return load_settings(None)


@cache
def knowledge() -> Knowledge:
    s = default_settings()
    return Knowledge.load(s.knowledge.path, s.languages.supported, s.languages.default)


def render(key: str, lang: str, **values: Any) -> str:
    values.setdefault("company", default_settings().company.name)
    return knowledge().templates.render(key, lang, **values)


def notice(lang: str, opening: str, zone: str) -> str:
    """The after-hours notice for an opening given as local ISO time in ``zone``."""
    local = datetime.fromisoformat(opening).astimezone(ZoneInfo(zone))
    when = render("after_hours.opening", lang, weekday=render(f"weekday.{local.weekday()}", lang),
                  date=local.date().isoformat(), time=local.strftime("%H:%M"), timezone=zone)
    return render("after_hours.notice", lang, opening=when,
                  emergency=default_settings().company.emergency_contact)


def say(at: str, chat: str, text: str, channel: str = "telegram") -> dict[str, Any]:
    return {"at": at, "from": "customer", "channel": channel, "chat": chat,
            "user": f"u-{chat}", "text": text}


def run(tmp_path: Path, database_url: str, *events: dict[str, Any],
        config: str | None = None) -> list[dict[str, Any]]:
    path = tmp_path / "after_hours.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events),
                    encoding="utf-8")
    args = ["replay", str(path), "--database", database_url]
    if config is not None:
        config_path = tmp_path / "supportbot-test.toml"
        config_path.write_text(config, encoding="utf-8")
        args += ["--config", str(config_path)]
    result: Result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


def notices(lines: list[dict[str, Any]], chat: str | None = None) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("kind") == "after_hours"
            and (chat is None or line["chat"] == chat)]


def escalations(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("kind") == "escalation"]


# --- the Friday-evening notice -----------------------------------------------------------------

def test_friday_evening_greeting_and_one_notice_with_monday_opening(
        tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, say(FRIDAY_EVENING, "tg-1", "hello"))
    assert [(line["kind"], line["intent"]) for line in lines] == [
        ("reply", "greeting"), ("after_hours", "greeting")]
    greeting, after = lines
    assert greeting["text"] == render("greeting", "en")
    assert (after["to"], after["channel"], after["chat"], after["lang"], after["at"]) == (
        "customer", "telegram", "tg-1", "en", FRIDAY_EVENING)
    expected = notice("en", "2026-12-07T09:00:00+08:00", SHANGHAI)
    assert after["text"] == expected
    assert "Monday 2026-12-07 at 09:00 (Asia/Shanghai)" in expected  # the template is as read
    assert "+86 519 8888 0000" in after["text"]
    assert escalations(lines) == []


def test_three_messages_in_one_night_give_one_notice_and_a_new_night_a_new_one(
        tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url,
                say("2026-12-07T19:00:00+08:00", "tg-1", "hello"),           # Monday evening
                say("2026-12-07T21:30:00+08:00", "tg-1", "are you there?"),
                say("2026-12-08T03:10:00+08:00", "tg-1", "anyone?"),
                say("2026-12-08T10:00:00+08:00", "tg-1", "good morning"),    # open: none
                say("2026-12-08T18:30:00+08:00", "tg-1", "hello again"),     # a new night
                say("2026-12-08T23:00:00+08:00", "tg-1", "still me"))
    told = notices(lines)
    assert [line["at"] for line in told] == ["2026-12-07T19:00:00+08:00",
                                             "2026-12-08T18:30:00+08:00"]
    assert told[0]["text"] == notice("en", "2026-12-08T09:00:00+08:00", SHANGHAI)
    assert told[1]["text"] == notice("en", "2026-12-09T09:00:00+08:00", SHANGHAI)
    # Every message still got its own answer.
    answered = {line["at"] for line in lines if line["kind"] != "after_hours"}
    assert len(answered) == 6


def test_a_weekend_is_one_off_hours_period(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url,
                say(FRIDAY_EVENING, "tg-1", "hello"),
                say("2026-12-05T11:00:00+08:00", "tg-1", "hello?"),          # Saturday
                say("2026-12-06T20:00:00+08:00", "tg-1", "hello??"))         # Sunday
    assert [line["at"] for line in notices(lines)] == [FRIDAY_EVENING]


def test_the_notice_is_per_conversation(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url,
                say(FRIDAY_EVENING, "tg-1", "hello"),
                say("2026-12-04T19:01:00+08:00", "tg-2", "hello"),
                say("2026-12-04T19:02:00+08:00", "tg-1", "hello?"),
                say("2026-12-04T19:03:00+08:00", "wx-1", "hello", channel="wechat"))
    assert [(line["channel"], line["chat"]) for line in notices(lines)] == [
        ("telegram", "tg-1"), ("telegram", "tg-2"), ("wechat", "wx-1")]


# --- timezone and language ----------------------------------------------------------------------

def test_the_opening_is_given_in_the_customers_timezone_when_known(
        tmp_path: Path, database_url: str) -> None:
    setup = {"setup": {"customers": [
        {"id": "C-DE", "language": "de", "timezone": "Europe/Berlin",
         "contacts": [{"channel": "telegram", "chat": "tg-de"}]},
        {"id": "C-US", "language": "en", "timezone": "America/New_York",
         "contacts": [{"channel": "telegram", "chat": "tg-us"}]},
        {"id": "C-XX", "language": "en",
         "contacts": [{"channel": "telegram", "chat": "tg-xx"}]},
    ]}}
    lines = run(tmp_path, database_url, setup,
                say(FRIDAY_EVENING, "tg-de", "Hallo"),
                say("2026-12-04T19:01:00+08:00", "tg-us", "hello"),
                say("2026-12-04T19:02:00+08:00", "tg-xx", "hello"),
                say("2026-12-04T19:03:00+08:00", "tg-none", "hello"))
    by_chat = {line["chat"]: line for line in notices(lines)}
    assert set(by_chat) == {"tg-de", "tg-us", "tg-xx", "tg-none"}
    # Monday 09:00 in Shanghai is 02:00 in Berlin (winter) and still Sunday in New York.
    assert by_chat["tg-de"]["text"] == notice("de", "2026-12-07T02:00:00+01:00", "Europe/Berlin")
    assert "am Montag, 2026-12-07, um 02:00 Uhr (Europe/Berlin)" in by_chat["tg-de"]["text"]
    assert by_chat["tg-us"]["text"] == notice("en", "2026-12-06T20:00:00-05:00",
                                              "America/New_York")
    assert "Sunday 2026-12-06 at 20:00 (America/New_York)" in by_chat["tg-us"]["text"]
    # No customer timezone (an invalid one is refused at import): the company's, named.
    for chat in ("tg-xx", "tg-none"):
        assert by_chat[chat]["text"] == notice("en", "2026-12-07T09:00:00+08:00", SHANGHAI)


@pytest.mark.parametrize("lang, text", [
    ("de", "Guten Abend, ich habe eine Frage"),
    ("zh", "你好，我有一个问题"),
    ("es", "Hola, buenas noches, tengo una pregunta"),
    ("fr", "Bonsoir, j'ai une question"),
    ("ru", "Добрый вечер, у меня есть вопрос"),
    ("pt", "Boa noite, tenho uma pergunta"),
    ("ar", "مساء الخير، لدي سؤال"),
])
def test_the_notice_is_in_the_customers_language(
        tmp_path: Path, database_url: str, lang: str, text: str) -> None:
    lines = run(tmp_path, database_url, say(FRIDAY_EVENING, f"tg-{lang}", text))
    (told,) = notices(lines)
    assert told["lang"] == lang
    assert told["text"] == notice(lang, "2026-12-07T09:00:00+08:00", SHANGHAI)
    assert told["text"] != notice("en", "2026-12-07T09:00:00+08:00", SHANGHAI)
    assert {line["lang"] for line in lines if line["to"] == "customer"} == {lang}


def test_the_notice_follows_a_language_stored_for_the_customer(
        tmp_path: Path, database_url: str) -> None:
    setup = {"setup": {"customers": [{"id": "C-ES", "language": "es",
                                      "contacts": [{"channel": "telegram", "chat": "tg-es"}]}]}}
    lines = run(tmp_path, database_url, setup, say(FRIDAY_EVENING, "tg-es", "PO-118"))
    (told,) = notices(lines)
    assert told["lang"] == "es"
    assert told["text"] == notice("es", "2026-12-07T09:00:00+08:00", SHANGHAI)


# --- which times are off hours ----------------------------------------------------------------

@pytest.mark.parametrize("at", ["2026-10-10T10:00:00+08:00", "2026-02-14T10:00:00+08:00"])
def test_a_chinese_make_up_saturday_is_working_time(
        tmp_path: Path, database_url: str, at: str) -> None:
    assert datetime.fromisoformat(at).weekday() == 5
    lines = run(tmp_path, database_url, say(at, "tg-1", "hello"))
    assert [(line["kind"], line["intent"]) for line in lines] == [("reply", "greeting")]


def test_an_ordinary_saturday_morning_is_off_hours(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, say("2026-10-17T10:00:00+08:00", "tg-1", "hello"))
    (told,) = notices(lines)
    assert told["text"] == notice("en", "2026-10-19T09:00:00+08:00", SHANGHAI)


def test_the_lunch_break_is_off_hours_until_one(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url,
                say("2026-12-07T11:50:00+08:00", "tg-1", "hello"),    # open
                say("2026-12-07T12:30:00+08:00", "tg-1", "hello?"),   # lunch
                say("2026-12-07T12:50:00+08:00", "tg-1", "anyone?"),  # same lunch break
                say("2026-12-07T13:10:00+08:00", "tg-1", "hi"),       # open again
                say("2026-12-07T18:05:00+08:00", "tg-1", "hi!"),      # evening: a new period
                config=LUNCH_CONFIG)
    told = notices(lines)
    assert [line["at"] for line in told] == ["2026-12-07T12:30:00+08:00",
                                             "2026-12-07T18:05:00+08:00"]
    assert told[0]["text"] == notice("en", "2026-12-07T13:00:00+08:00", SHANGHAI)
    assert "Monday 2026-12-07 at 13:00 (Asia/Shanghai)" in told[0]["text"]
    assert told[1]["text"] == notice("en", "2026-12-08T09:00:00+08:00", SHANGHAI)


def test_a_public_holiday_is_off_hours_until_after_national_day(
        tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url,
                say("2026-10-01T10:00:00+08:00", "tg-1", "hello"),
                say("2026-10-05T10:00:00+08:00", "tg-1", "hello?"))   # still the same period
    told = notices(lines)
    assert [line["at"] for line in told] == ["2026-10-01T10:00:00+08:00"]
    assert told[0]["text"] == notice("en", "2026-10-08T09:00:00+08:00", SHANGHAI)
    assert "Thursday 2026-10-08 at 09:00" in told[0]["text"]


def test_berlin_calendar_across_spring_forward(tmp_path: Path, database_url: str) -> None:
    setup = {"setup": {"customers": [{"id": "C-CN", "language": "en", "timezone": SHANGHAI,
                                      "contacts": [{"channel": "telegram", "chat": "tg-cn"}]}]}}
    lines = run(tmp_path, database_url, setup,
                say("2026-03-28T22:00:00+01:00", "tg-1", "hello"),     # Saturday, CET
                say("2026-03-28T22:01:00+01:00", "tg-cn", "hello"),
                say("2026-03-29T10:00:00+02:00", "tg-1", "hello?"),    # Sunday, CEST: same
                say("2026-03-30T09:30:00+02:00", "tg-1", "good morning"),  # open
                config=BERLIN_CONFIG)
    by_chat = {line["chat"]: line for line in notices(lines)}
    assert len(notices(lines)) == 2
    assert by_chat["tg-1"]["text"] == notice("en", "2026-03-30T09:00:00+02:00", "Europe/Berlin")
    assert "Monday 2026-03-30 at 09:00 (Europe/Berlin)" in by_chat["tg-1"]["text"]
    # 09:00 CEST is 07:00 UTC: 15:00 in Shanghai (it was 16:00 before the change).
    assert by_chat["tg-cn"]["text"] == notice("en", "2026-03-30T15:00:00+08:00", SHANGHAI)
    assert "Monday 2026-03-30 at 15:00 (Asia/Shanghai)" in by_chat["tg-cn"]["text"]


def test_berlin_calendar_across_fall_back(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url,
                say("2026-10-23T18:30:00+02:00", "tg-1", "hello"),     # Friday, CEST
                say("2026-10-25T02:30:00+01:00", "tg-1", "hello?"),    # the repeated hour
                say("2026-10-26T08:59:00+01:00", "tg-1", "hello!!"),   # a minute before opening
                say("2026-10-26T09:00:00+01:00", "tg-1", "hi"),        # open
                config=BERLIN_CONFIG)
    told = notices(lines)
    assert [line["at"] for line in told] == ["2026-10-23T18:30:00+02:00"]
    assert told[0]["text"] == notice("en", "2026-10-26T09:00:00+01:00", "Europe/Berlin")


def test_german_holiday_in_the_berlin_calendar(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, say("2026-04-03T10:00:00+02:00", "tg-1", "hello"),
                config=BERLIN_CONFIG)  # Good Friday; Easter Monday 6 April is closed too
    (told,) = notices(lines)
    assert told["text"] == notice("en", "2026-04-07T09:00:00+02:00", "Europe/Berlin")


# --- urgent messages, working hours, self-service ------------------------------------------------

def test_urgent_message_after_hours_pages_the_on_call_agent(
        tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, say("2026-12-04T23:00:00+08:00", "tg-9",
                                            "urgent!!! call me"))
    (page,) = escalations(lines)
    assert (page["to"], page["chat"], page["kind"]) == ("agents", "tg-9", "escalation")
    agent_texts = knowledge().agent_texts
    assert page["text"] == agent_texts["escalation.after_hours_urgent"].format(
        customer=agent_texts["unknown_customer"], channel="telegram", chat="tg-9",
        language="en", last_message="urgent!!! call me")
    (told,) = notices(lines)
    assert told["text"] == notice("en", "2026-12-07T09:00:00+08:00", SHANGHAI)
    assert [line["to"] for line in lines].count("customer") >= 2  # an answer and the notice


def test_urgent_message_of_a_known_customer_names_the_company(
        tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, LINKED,
                say("2026-12-05T02:00:00+08:00", "tg-de", "Dringend! Bitte rufen Sie an"))
    (page,) = escalations(lines)
    assert page["to"] == "agents" and "Nordic Floors GmbH" in page["text"]
    assert "· de ·" in page["text"]
    assert notices(lines)[0]["lang"] == "de"


def test_during_working_hours_no_notice_and_no_page(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url,
                say("2026-12-04T10:00:00+08:00", "tg-1", "hello"),
                say("2026-12-04T10:05:00+08:00", "tg-2", "urgent!!! call me"),
                say("2026-12-04T17:59:00+08:00", "tg-3", "hello"))
    assert notices(lines) == [] and escalations(lines) == []
    assert {line["chat"] for line in lines if line["to"] == "customer"} == {"tg-1", "tg-2",
                                                                            "tg-3"}


def test_self_service_goes_on_after_hours(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, LINKED,
                say(FRIDAY_EVENING, "tg-en", "Where is my order PO-7?"))
    assert [(line["kind"], line["intent"]) for line in lines] == [
        ("reply", "order_status"), ("after_hours", "order_status")]
    assert "PO-7" in lines[0]["text"] and "40" in lines[0]["text"]
    assert lines[1]["text"] == notice("en", "2026-12-07T09:00:00+08:00", SHANGHAI)


def test_the_human_command_after_hours_also_gets_the_notice(
        tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, say(FRIDAY_EVENING, "tg-1", "/human"))
    assert [line["kind"] for line in lines if line["to"] == "agents"] == ["handoff"]
    (told,) = notices(lines)
    assert told["text"] == notice("en", "2026-12-07T09:00:00+08:00", SHANGHAI)


def test_order_updates_alone_send_no_notice(tmp_path: Path, database_url: str) -> None:
    update = {"at": "2026-12-04T20:00:00+08:00",
              "order_event": {"number": "PO-7", "stage": "shipped", "eta": "2027-01-30"}}
    lines = run(tmp_path, database_url, LINKED, update,
                {"at": "2026-12-04T21:00:00+08:00", "tick": True})
    assert notices(lines) == []


def test_after_hours_notice_can_be_switched_off(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, say(FRIDAY_EVENING, "tg-1", "hello"),
                config="[after_hours]\nenabled = false\n")
    assert [(line["kind"], line["intent"]) for line in lines] == [("reply", "greeting")]


def test_emergency_contact_comes_from_the_config(tmp_path: Path, database_url: str) -> None:
    lines = run(tmp_path, database_url, say(FRIDAY_EVENING, "tg-1", "hello"),
                config='[company]\nemergency_contact = "+49 30 1234 5678"\n')
    (told,) = notices(lines)
    assert "+49 30 1234 5678" in told["text"]
    assert "+86 519 8888 0000" not in told["text"]


# --- an agent who answered recently (not expressible in replay yet: service-level) --------------

async def test_no_notice_when_an_agent_answered_a_few_minutes_ago(settings: Settings) -> None:
    clock = ManualClock(datetime(2026, 12, 4, 9, 50, tzinfo=UTC))  # Friday 17:50 Shanghai
    channel = RecordingChannel("telegram")
    service = await Service.start(settings, clock=clock, channels={"telegram": channel},
                                  migrate=True)
    try:
        chat = ChatDriver(service, channel, "tg-agent")
        assert [d.kind for d in await chat.say("hello")] == ["reply"]  # open
        async with service.db.sessions.begin() as session:
            conversation = (await session.execute(
                select(Conversation).where(Conversation.chat == "tg-agent"))).scalar_one()
            session.add(Message(conversation_id=conversation.id, direction="out",
                                sender="agent", channel="telegram", text="Let me check.",
                                created_at=datetime(2026, 12, 4, 9, 58, tzinfo=UTC)))
        clock.set(datetime(2026, 12, 4, 10, 5, tzinfo=UTC))  # 18:05: closed, agent 7 min ago
        assert "after_hours" not in [d.kind for d in await chat.say("thank you, waiting")]
        clock.set(datetime(2026, 12, 4, 10, 20, tzinfo=UTC))  # 22 min after the agent
        later = await chat.say("hello?")
        assert [d.kind for d in later].count("after_hours") == 1
        assert [d.text for d in later if d.kind == "after_hours"] == [
            notice("en", "2026-12-07T09:00:00+08:00", SHANGHAI)]
        clock.set(clock.now() + timedelta(minutes=5))
        assert "after_hours" not in [d.kind for d in await chat.say("anyone?")]
    finally:
        await service.close()
