"""First-responder ownership through the replay contract, and 50 simultaneous Takes on
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from bot.cli import main
from bot.clock import ManualClock
from bot.config import load_settings
from bot.db.models import Agent, Conversation, OwnershipEvent
from bot.ownership import take
from bot.service import Service
from bot.types import InboundMessage
from tests.conftest import RecordingChannel

T = "2026-12-07T10:0{}:00+08:00"
SETUP = {"setup": {"customers": [{"id": "C-1", "company": "Nordic Floors GmbH", "language": "de",
                                  "contacts": [{"channel": "telegram", "chat": "tg-1"}]}]}}


def customer(minute: int, text: str) -> dict[str, Any]:
    return {"at": T.format(minute), "from": "customer", "channel": "telegram", "chat": "tg-1",
            "text": text}


def agent(minute: int, who: str, action: str, **extra: str) -> dict[str, Any]:
    return {"at": T.format(minute), "from": "agent", "agent": who, "action": action,
            "chat": "tg-1", **extra}


def replay(tmp_path: Path, *events: dict[str, Any], database: str | None = None) -> list[dict[str, Any]]:
    path = tmp_path / "scenario.jsonl"
    path.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in (SETUP, *events)),
                    encoding="utf-8")
    args = ["replay", str(path)] + (["--database", database] if database else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return [json.loads(line) for line in result.stdout.splitlines()]


def owner_events(lines: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    return [(e["agent"], e["action"], e["ok"]) for e in lines if e.get("event") == "owner"]


def test_first_responder_owns_until_resolved(tmp_path: Path, database_url: str) -> None:
    lines = replay(
        tmp_path,
        customer(0, "Ich möchte mit einem Mitarbeiter sprechen"),
        agent(1, "agent-1", "take"), agent(1, "agent-2", "take"),
        customer(2, "Hallo, sind Sie da?"),
        agent(3, "agent-2", "reply", text="Hallo!"),
        agent(3, "agent-1", "reply", text="Guten Tag, ich helfe Ihnen gern."),
        agent(4, "agent-2", "note", text="wichtiger Kunde"),
        agent(5, "agent-2", "resolve"),
        agent(5, "agent-1", "transfer", to="agent-2"),
        agent(6, "agent-2", "accept"),
        agent(7, "agent-1", "release"),
        agent(7, "agent-2", "resolve"),
        database=database_url,
    )
    assert owner_events(lines) == [
        ("agent-1", "take", True), ("agent-2", "take", False),
        ("agent-2", "reply", False), ("agent-1", "reply", True), ("agent-2", "note", True),
        ("agent-2", "resolve", False), ("agent-1", "transfer", True),
        ("agent-2", "accept", True), ("agent-1", "release", False),
        ("agent-2", "resolve", True)]
    refused = next(e for e in lines if e.get("event") == "owner" and not e["ok"])
    assert refused["owner"] == "agent-1" and "agent-1" in refused["reason"]
    # The customer is told who handles the case; the bot relays instead of answering.
    told = [e for e in lines if e.get("to") == "customer" and e["at"] == T.format(1)]
    assert len(told) == 1 and "agent-1" in told[0]["text"] and told[0]["lang"] == "de"
    at_two = [e for e in lines if e["at"] == T.format(2)]
    assert [(e["to"], e["kind"], e["text"], e["owner"]) for e in at_two] == [
        ("agents", "relay", "Hallo, sind Sie da?", "agent-1")]
    relayed = [e for e in lines if e.get("to") == "customer" and e.get("kind") == "relay"]
    assert [e["text"] for e in relayed] == ["Guten Tag, ich helfe Ihnen gern."]
    assert not any(e.get("text") == "Hallo!" for e in lines)  # a non-owner's reply is not sent

    from tests.helpers import query
    history = query(database_url, select(OwnershipEvent.action).order_by(OwnershipEvent.id))
    assert history.count("take") == 2 and "accept" in history and history[-1] == "resolve"
    [status] = query(database_url, select(Conversation.status))
    assert status == "resolved"


def test_commands_still_work_while_a_person_owns_the_conversation(tmp_path: Path) -> None:
    lines = replay(tmp_path, customer(0, "hello"), agent(1, "agent-1", "take"),
                   customer(2, "/lang en"), customer(3, "what colours do you have?"))
    at = {e["at"]: e for e in lines}
    assert at[T.format(2)]["text"].startswith("Done")  # the /lang command is answered
    assert at[T.format(3)]["to"] == "agents" and at[T.format(3)]["kind"] == "relay"


def test_take_of_an_unknown_chat_is_refused(tmp_path: Path) -> None:
    lines = replay(tmp_path, {**agent(1, "agent-1", "take"), "chat": "nobody"})
    assert lines == [{"at": T.format(1), "event": "owner", "chat": "nobody", "agent": "agent-1",
                      "action": "take", "ok": False, "reason": "no conversation with this chat"}]


async def test_fifty_simultaneous_takes_make_exactly_one_owner(postgres_url: str) -> None:
    """Fifty agents click Take at once, each on its own connection: one owner."""
    clock = ManualClock()
    settings = load_settings(None, database={"url": postgres_url})
    service = await Service.start(settings, clock=clock, migrate=True,
                                  channels={"telegram": RecordingChannel("telegram")})
    try:
        processed = await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-race", text="I want to talk to a person",
            external_id="race-1"))
        conversation_id = processed.conversation_id

        async def click(n: int) -> bool:
            async with service.db.sessions.begin() as session:
                return (await take(session, conversation_id, f"agent-{n}", clock.now())).ok

        results = await asyncio.gather(*(click(n) for n in range(50)))
        assert sum(results) == 1
        async with service.db.sessions() as session:
            events = (await session.execute(select(OwnershipEvent.ok).where(
                OwnershipEvent.conversation_id == conversation_id))).scalars().all()
            owner = await session.scalar(select(Conversation.owner_id).where(
                Conversation.id == conversation_id))
        assert len(events) == 50 and sum(events) == 1 and owner is not None
    finally:
        await service.close()


def test_a_forbidden_phrase_is_held_back_with_a_polite_alternative(tmp_path: Path) -> None:
    lines = replay(tmp_path, customer(0, "hello"), agent(1, "agent-1", "take"),
                   agent(2, "agent-1", "reply", text="Not my problem, go and find someone else"),
                   agent(3, "agent-1", "reply", text="给你讲过好几遍了，你怎么还弄不懂啊"),
                   agent(4, "agent-1", "reply", text="Thank you for waiting, the vessel left today."))
    blocked = [e for e in lines if e.get("kind") == "blocked"]
    assert len(blocked) == 2 and all(e["to"] == "agents" for e in blocked)
    assert "Not my problem" in blocked[0]["text"] and "Try instead" in blocked[0]["text"]
    sent = [e["text"] for e in lines if e.get("to") == "customer" and e.get("kind") == "relay"]
    assert sent == ["Thank you for waiting, the vessel left today."]


def test_the_tone_guard_tolerates_variants_and_spares_innocent_words() -> None:
    from bot.knowledge import Knowledge
    from bot.tone_guard import ToneGuard

    guard = ToneGuard(Knowledge.load(None, ["en", "zh", "ru", "de"], "en").phrases)
    for rude in ("not my problem!!", "NOT MY PROBLEM", "calm down please", "you idiot",
                 "Не моя проблема", "你问我,我问谁?"):
        assert guard.check(rude) is not None, rude
    for fine in ("It is not my intention to delay you.", "idiotproof click system",
                 "Vielen Dank, ich prüfe das sofort.", "您好，我来帮您查一下",
                 "The B/L will be released today."):
        assert guard.check(fine) is None, fine


def test_green_channel_escalates_an_untaken_strategic_handoff_once_in_replay(tmp_path: Path) -> None:
    """Strategic customer: the hand-off goes to the account manager first (priority high);
    untaken after the first-response target, a tick escalates it to the channel, once."""
    setup = {"setup": {"customers": [{
        "id": "C-9", "company": "Nordic Floors GmbH", "language": "de", "strategic": True,
        "account_manager": "agent-7", "contacts": [{"channel": "telegram", "chat": "tg-1"}]}]}}
    events = [setup, customer(0, "Ich möchte mit einem Mitarbeiter sprechen"),
              {"at": "2026-12-07T11:59:00+08:00", "tick": True},
              {"at": "2026-12-07T12:01:00+08:00", "tick": True},
              {"at": "2026-12-07T12:30:00+08:00", "tick": True}]
    path = tmp_path / "green.jsonl"
    path.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in events), encoding="utf-8")
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    handoff = next(line for line in lines if line.get("kind") == "handoff")
    assert handoff["text"].startswith("🟠")  # priority high
    escalations = [line for line in lines if line.get("kind") == "escalation"]
    moved = [e for e in escalations if "account manager" in e["text"]]
    assert len(moved) == 1  # once, at the end of the manager's 2 h, to the channel
    assert moved[0]["at"] == "2026-12-07T12:00:00+08:00"
    assert "agent-7" in moved[0]["text"] and moved[0]["to"] == "agents"
    # In the channel the 30-minute unclaimed clock starts; untaken, it escalates too.
    assert [e["at"] for e in escalations if e not in moved] == ["2026-12-07T12:30:00+08:00"]


async def test_release_racing_accept_leaves_one_consistent_outcome(postgres_url: str) -> None:
    """The owner releases while the offered agent accepts, at the same moment, twenty
    times: exactly one of the two succeeds each time, and the row agrees with it."""
    from bot.agent_actions import perform

    clock = ManualClock()
    settings = load_settings(None, database={"url": postgres_url})
    service = await Service.start(settings, clock=clock, migrate=True,
                                  channels={"telegram": RecordingChannel("telegram")})
    try:
        for n in range(20):
            chat = f"tg-race-{n}"
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=chat, text="/human", external_id=f"race-{n}"))
            await perform(service, chat, "alice", "take")
            await perform(service, chat, "alice", "transfer", to="bob")
            released, accepted = await asyncio.gather(
                perform(service, chat, "alice", "release"), perform(service, chat, "bob", "accept"))
            outcomes = (released.result["ok"], accepted.result["ok"])
            assert outcomes in ((True, False), (False, True)), outcomes
            async with service.db.sessions() as session:
                conversation = (await session.execute(select(Conversation).where(
                    Conversation.chat == chat))).scalar_one()
                owner = await session.scalar(select(Agent.ref).where(
                    Agent.id == conversation.owner_id))
            if outcomes[0]:
                assert (conversation.status, owner) == ("handed_off", None)
            else:
                assert (conversation.status, owner) == ("owned", "bob")
            assert "transfer_to" not in (conversation.context or {})
    finally:
        await service.close()
