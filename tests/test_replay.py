"""``supportbot replay``: scenarios on a simulated clock, through the command line."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from bot.cli import main
from bot.config import load_settings
from bot.db.models import Conversation, Order, OrderEvent
from bot.knowledge import Knowledge
from tests.helpers import query

T0 = "2026-12-04T10:00:00+08:00"  # a Friday, within Shanghai office hours
CUSTOMER_LINE_KEYS = {"at", "to", "channel", "chat", "kind", "lang", "intent", "text"}
SETUP = {"setup": {
    "customers": [{"id": "C-100", "company": "Nordic Floors GmbH", "language": "de",
                   "contacts": [{"channel": "telegram", "chat": "tg-1"}]}],
    "orders": [{"number": "PO-1", "customer": "C-100", "stage": "in_production",
                "progress": 60, "etd": "2026-12-20", "eta": "2027-01-25"}],
}}


def say(at: str, chat: str, text: str, channel: str = "telegram", **extra: Any) -> dict[str, Any]:
    return {"at": at, "from": "customer", "channel": channel, "chat": chat,
            "user": f"u-{chat}", "text": text, **extra}


def scenario(tmp_path: Path, *events: dict[str, Any] | str, name: str = "s.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e, ensure_ascii=False))
                            + "\n" for e in events), encoding="utf-8")
    return path


def replay(path: Path, *args: str, before: tuple[str, ...] = ()) -> Result:
    return CliRunner().invoke(main, [*before, "replay", str(path), *args])


def explain(result: Result) -> str:
    """Assertion message: what the command printed and the exception it raised."""
    return f"{result.output}\n{result.exception!r}"


def output(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def greeting(lang: str) -> str:
    """The greeting template as the default configuration renders it."""
    settings = load_settings(None)
    knowledge = Knowledge.load(settings.knowledge.path, settings.languages.supported,
                               settings.languages.default)
    return knowledge.templates.render("greeting", lang, company=settings.company.name)


# --- output --------------------------------------------------------------------------------

def test_greeting_of_a_known_customer(tmp_path: Path) -> None:
    result = replay(scenario(tmp_path, SETUP, say(T0, "tg-1", "Hallo")))
    assert result.exit_code == 0, explain(result)
    (line,) = output(result)
    assert set(line) - {"buttons"} == CUSTOMER_LINE_KEYS
    assert line["at"] == T0
    assert (line["to"], line["channel"], line["chat"]) == ("customer", "telegram", "tg-1")
    assert (line["kind"], line["intent"], line["lang"]) == ("reply", "greeting", "de")
    assert line["text"] == greeting("de")
    assert result.stderr == ""


def test_chinese_greeting_on_another_chat_is_answered_in_chinese(tmp_path: Path) -> None:
    result = replay(scenario(tmp_path, SETUP, say(T0, "tg-1", "Hallo"),
                             say("2026-12-04T10:05:00+08:00", "wx-9", "你好", channel="wechat")))
    assert result.exit_code == 0, explain(result)
    first, second = output(result)
    assert first["lang"] == "de"
    assert (second["chat"], second["channel"], second["lang"], second["intent"]) == (
        "wx-9", "wechat", "zh", "greeting")
    assert second["at"] == "2026-12-04T10:05:00+08:00"
    assert second["text"] == greeting("zh")


def test_times_are_written_in_the_offset_of_the_event(tmp_path: Path) -> None:
    result = replay(scenario(tmp_path, say("2026-12-04T02:00:00+00:00", "tg-5", "hello"),
                             say("2026-12-04T03:00:00-05:00", "tg-5", "bye")))
    assert result.exit_code == 0, explain(result)
    assert [line["at"] for line in output(result)] == ["2026-12-04T02:00:00+00:00",
                                                       "2026-12-04T03:00:00-05:00"]
    assert [line["intent"] for line in output(result)] == ["greeting", "goodbye"]


def test_an_empty_message_is_rejected_and_the_run_goes_on(tmp_path: Path) -> None:
    result = replay(scenario(tmp_path, {**say(T0, "tg-1", "x"), "text": " " * 3},
                             say("2026-12-04T10:01:00+08:00", "tg-2", "hello")))
    assert result.exit_code == 0, explain(result)
    rejected, answered = output(result)
    assert rejected == {"at": T0, "event": "rejected", "channel": "telegram", "chat": "tg-1",
                        "reason": "message is empty"}
    assert (answered["chat"], answered["intent"]) == ("tg-2", "greeting")


# --- malformed scenarios ----------------------------------------------------------------------

@pytest.mark.parametrize("lines, line_no, words", [
    ([say("2026-12-04T10:05:00+08:00", "tg-1", "hello"), say(T0, "tg-1", "bye")],
     2, "time order"),
    ([say(T0, "tg-1", "hello"), '{"at": "2026-12-04T10:01:00+08:00", "from": '],
     2, "not valid JSON"),
    ([say(T0, "tg-1", "hello"), {"from": "customer", "channel": "telegram", "chat": "tg-1",
                                  "text": "no time"}], 2, "'at'"),
    ([{"at": "yesterday", "tick": True}], 1, "ISO 8601"),
    ([{"at": "2026-12-04T10:00:00", "tick": True}], 1, "offset"),
    ([say(T0, "tg-1", "hello"),
      {"at": T0, "from": "agent", "agent": "agent-1", "action": "dance", "chat": "tg-1"}],
     2, "unknown agent action 'dance'"),
    ([{"at": T0, "from": "customer", "channel": "telegram", "chat": "tg-1"}], 1, "'text'"),
    ([{"at": T0, "from": "robot", "text": "beep"}], 1, "unknown event"),
    ([["not", "an", "object"]], 1, "expected a JSON object"),
])
def test_malformed_scenario_exits_1_naming_the_line(
        tmp_path: Path, lines: list[Any], line_no: int, words: str) -> None:
    path = scenario(tmp_path, *[json.dumps(x) if isinstance(x, list) else x for x in lines])
    result = replay(path)
    assert result.exit_code == 1, explain(result)
    assert f"line {line_no}:" in result.stderr
    assert words in result.stderr
    assert result.stdout == ""  # nothing ran: the file is checked first
    assert "Traceback" not in result.output


def test_bad_setup_record_exits_1(tmp_path: Path) -> None:
    bad = {"setup": {"customers": [{"id": "C-1", "language": "klingon"}]}}
    result = replay(scenario(tmp_path, bad, say(T0, "tg-1", "hello")))
    assert result.exit_code == 1
    assert "setup" in result.stderr and "language" in result.stderr


def test_missing_scenario_file_exits_1(tmp_path: Path) -> None:
    result = replay(tmp_path / "absent.jsonl")
    assert result.exit_code == 1 and "cannot read scenario" in result.stderr


def test_agent_actions_are_part_of_the_run(tmp_path: Path) -> None:
    result = replay(scenario(
        tmp_path, SETUP, say(T0, "tg-1", "Hallo"),
        {"at": "2026-12-04T10:01:00+08:00", "from": "agent", "agent": "agent-1",
         "action": "take", "chat": "tg-1"},
        say("2026-12-04T10:02:00+08:00", "tg-2", "hello")))
    assert result.exit_code == 0, explain(result)
    assert result.stderr == ""
    lines = output(result)
    assert lines[1] == {"at": "2026-12-04T10:01:00+08:00", "event": "owner", "chat": "tg-1",
                        "agent": "agent-1", "owner": "agent-1", "action": "take", "ok": True}
    assert [(line["chat"], line.get("intent")) for line in lines if "to" in line] == [
        ("tg-1", "greeting"), ("tg-1", None), ("tg-2", "greeting")]


# --- kept database ------------------------------------------------------------------------------

def test_database_option_keeps_the_run_for_report(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = scenario(tmp_path, SETUP, say(T0, "tg-1", "Hallo"),
                    say("2026-12-04T10:01:00+08:00", "tg-2", "你好"))
    result = replay(path, "--database", database_url)
    assert result.exit_code == 0, explain(result)
    conversations = query(database_url, select(Conversation).order_by(Conversation.chat))
    assert [(c.chat, c.language) for c in conversations] == [("tg-1", "de"), ("tg-2", "zh")]
    assert conversations[0].customer_id is not None and conversations[1].customer_id is None

    monkeypatch.setenv("SUPPORTBOT_DATABASE__URL", database_url)
    report = CliRunner().invoke(main, ["report", "--json", "--from", "2026-12-01",
                                       "--to", "2026-12-31"])
    assert report.exit_code == 0, explain(report)
    figures = json.loads(report.stdout)
    assert figures["conversations"]["by_channel"] == {"telegram": 2}
    assert figures["conversations"]["by_language"] == {"de": 1, "zh": 1}
    assert figures["conversations"]["total"] == 2


def test_without_database_option_nothing_is_kept(tmp_path: Path, database_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORTBOT_DATABASE__URL", database_url)
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    result = replay(scenario(tmp_path, SETUP, say(T0, "tg-1", "Hallo")))
    assert result.exit_code == 0, explain(result)
    assert output(result)[0]["lang"] == "de"
    report = CliRunner().invoke(main, ["report", "--json", "--from", "2026-12-01",
                                       "--to", "2026-12-31"])
    assert report.exit_code == 0, explain(report)
    assert json.loads(report.stdout)["conversations"]["total"] == 0
    assert not (tmp_path / "supportbot.db").exists()


def test_config_on_the_group_applies_with_a_kept_database(tmp_path: Path,
                                                          database_url: str) -> None:
    config = tmp_path / "acme.toml"
    config.write_text('[company]\nname = "Acme Tiles"\n', encoding="utf-8")
    path = scenario(tmp_path, say(T0, "tg-1", "hello"))
    for args, before in ((("--config", str(config)), ()),
                         (("--database", database_url), ("--config", str(config)))):
        result = replay(path, *args, before=before)
        assert result.exit_code == 0, explain(result)
        assert "Acme Tiles" in output(result)[0]["text"], (args, before)


# --- order events ------------------------------------------------------------------------------

def test_order_event_updates_an_existing_order(tmp_path: Path, database_url: str) -> None:
    event = {"at": "2026-12-04T11:00:00+08:00",
             "order_event": {"number": "PO-1", "stage": "shipped", "eta": "2027-01-30",
                             "vessel": "Pacific Harmony"}}
    result = replay(scenario(tmp_path, SETUP, say(T0, "tg-1", "Hallo"), event),
                    "--database", database_url)
    assert result.exit_code == 0, explain(result)
    (po,) = query(database_url, select(Order))
    assert (po.stage, po.eta, po.vessel, po.progress) == (
        "shipped", date(2027, 1, 30), "Pacific Harmony", 60)
    events = query(database_url, select(OrderEvent).order_by(OrderEvent.id))
    assert [(e.stage, e.source) for e in events] == [("in_production", "replay"),
                                                     ("shipped", "replay")]
    assert events[-1].at == datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    assert events[-1].changes["stage"] == {"from": "in_production", "to": "shipped"}


def test_order_event_for_an_unknown_order_exits_1(tmp_path: Path) -> None:
    event = {"at": "2026-12-04T11:00:00+08:00",
             "order_event": {"number": "PO-404", "stage": "shipped"}}
    result = replay(scenario(tmp_path, SETUP, say(T0, "tg-1", "Hallo"), event))
    assert result.exit_code == 1
    assert "line 3:" in result.stderr and "'PO-404' does not exist" in result.stderr


def test_invalid_order_event_exits_1(tmp_path: Path) -> None:
    event = {"at": T0, "order_event": {"number": "PO-1", "stage": "teleported"}}
    result = replay(scenario(tmp_path, SETUP, event))
    assert result.exit_code == 1
    assert "line 2:" in result.stderr and "stage" in result.stderr


# --- determinism -------------------------------------------------------------------------------

def test_the_same_scenario_gives_the_same_output(tmp_path: Path) -> None:
    path = scenario(tmp_path, SETUP, say(T0, "tg-1", "Hallo"),
                    say("2026-12-04T10:01:00+08:00", "tg-2", "你好"),
                    say("2026-12-04T10:02:00+08:00", "tg-1", "Wie wird das Wetter morgen?"),
                    {"at": "2026-12-04T10:03:00+08:00", "tick": True},
                    say("2026-12-04T23:30:00+08:00", "tg-3", "Hola, buenos días"),
                    say("2026-12-04T23:31:00+08:00", "tg-3", "adiós"))
    first, second = replay(path), replay(path)
    assert first.exit_code == second.exit_code == 0, explain(first)
    assert first.stdout == second.stdout
    assert len(output(first)) >= 5
