"""The real slack-bolt app, driven with requests signed by Slack's scheme, talking to a local
stand-in of the Slack Web API: cards, ownership, relays, the tone guard, /support, the
green channel, retries and forged requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.channels.base import PermanentDeliveryError, TemporaryDeliveryError
from bot.clock import ManualClock
from bot.config import Settings, load_settings
from bot.db.models import (
    Conversation,
    Message,
    OutboxItem,
    OwnershipEvent,
    ProcessedEvent,
    SlackThread,
)
from bot.green_channel import escalate_unclaimed
from bot.importer import apply_batch, validate_records
from bot.ownership import owner_ref
from bot.service import Service
from bot.types import InboundMessage
from bot.web.app import create_app
from tests.conftest import RecordingChannel
from tests.slack_stub import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    SlackStub,
    command_body,
    event_body,
    interaction_body,
    interaction_payload,
    signed_headers,
    thread_message,
)

ALICE, BOB, CAROL, MANAGER = "UALICE", "UBOB", "UCAROL", "UMANAGER"
CUSTOMERS = [
    {"id": "C-100", "company": "Nordic Floors GmbH", "country": "DE", "language": "de",
     "strategic": True, "account_manager": "manager",
     "contacts": [{"channel": "telegram", "chat": "tg-nordic"}]},
    {"id": "C-200", "company": "PolTrade Distribution LLC", "country": "RU", "language": "ru",
     "contacts": [{"channel": "telegram", "chat": "tg-poltrade"}]},
]
ORDERS = [{"number": "PO-24117", "customer": "C-200", "product": "SPC-5-05",
           "quantity_m2": 2000, "incoterm": "CIF", "destination": "St Petersburg",
           "stage": "in_production", "eta": "2027-01-05"}]


def slack_settings(database_url: str, api_base_url: str) -> Settings:
    return load_settings(
        None, database={"url": database_url},
        slack={"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
               "api_base_url": api_base_url, "agents_channel": "#support"},
        agents={"alice": {"name": "Alice Wang", "slack_user_id": ALICE},
                "bob": {"name": "Bob Li", "slack_user_id": BOB},
                "manager": {"name": "Mia Manager", "slack_user_id": MANAGER}},
        after_hours={"enabled": False})


class Workspace:
    """A workspace in a test: customers write, agents click and reply, Slack is a stub."""

    def __init__(self, service: Service, stub: SlackStub, http: httpx.AsyncClient,
                 customers: RecordingChannel, clock: ManualClock) -> None:
        self.service = service
        self.stub = stub
        self.http = http
        self.customers = customers
        self.clock = clock
        self._ids = 0

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    async def customer_says(self, text: str, chat: str = "tg-poltrade") -> None:
        await self.service.pipeline.handle(InboundMessage(
            channel="telegram", chat=chat, text=text, external_id=self.next_id("in-")))
        await self.service.outbox.dispatch_due()

    async def post(self, body: str, content_type: str, **headers: str) -> httpx.Response:
        return await self.http.post("/webhooks/slack/events", content=body.encode(),
                                    headers={**signed_headers(body, content_type), **headers})

    async def event(self, event: dict[str, Any], event_id: str | None = None,
                    **headers: str) -> httpx.Response:
        response = await self.post(event_body(event, event_id or self.next_id("Ev")),
                                   "application/json", **headers)
        await self.service.outbox.dispatch_due()
        return response

    async def click(self, user: str, action: dict[str, Any], channel: str = "CSUPPORT",
                    message_ts: str = "") -> httpx.Response:
        response = await self.post(interaction_body(user, dict(action), channel, message_ts),
                                   "application/x-www-form-urlencoded")
        await self.service.outbox.dispatch_due()
        return response

    async def command(self, user: str, text: str) -> str:
        response = await self.post(command_body(user, text), "application/x-www-form-urlencoded")
        assert response.status_code == 200, response.text
        await self.service.outbox.dispatch_due()
        return response.text

    async def thread(self, chat: str = "tg-poltrade") -> tuple[int, str, str]:
        async with self.service.db.sessions() as session:
            conversation = (await session.execute(
                select(Conversation).where(Conversation.chat == chat)
                .order_by(Conversation.id.desc()))).scalars().first()
            assert conversation is not None and conversation.slack_thread_ts is not None
            return conversation.id, str(conversation.slack_channel), conversation.slack_thread_ts

    async def count(self, model: Any) -> int:
        async with self.service.db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    def ephemerals(self, user: str) -> list[str]:
        return [c["text"] for c in self.stub.calls_to("chat.postEphemeral") if c["user"] == user]


@pytest.fixture
async def desk(database_url: str, clock: ManualClock) -> AsyncIterator[Workspace]:
    stub = SlackStub()
    base_url = await stub.start()
    stub.users[CAROL] = "Carol"
    service = await Service.start(slack_settings(database_url, base_url), clock=clock,
                                  migrate=True)
    customers = RecordingChannel("telegram")
    service.outbox.channels["telegram"] = customers
    async with service.db.sessions.begin() as session:
        await apply_batch(session, validate_records(
            enumerate([*CUSTOMERS, *ORDERS], start=1)), clock.now())
    app = create_app(service, background=False)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://supportbot") as http:
            yield Workspace(service, stub, http, customers, clock)
    finally:
        await service.close()
        await stub.stop()


async def owner_of(service: Service, conversation_id: int) -> str | None:
    async with service.db.sessions() as session:
        return await owner_ref(session, conversation_id)


def take_button(conversation_id: int) -> dict[str, Any]:
    return {"action_id": "take", "type": "button", "value": str(conversation_id),
            "block_id": f"card-{conversation_id}"}


def button_texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [element.get("text", {}).get("text") or element["action_id"]
            for block in blocks if block["type"] == "actions" for element in block["elements"]]


async def test_handoff_posts_a_card_with_the_facts_and_a_take_button(desk: Workspace) -> None:
    await desk.customer_says("Где мой заказ PO-24117? Позовите, пожалуйста, менеджера")
    await desk.customer_says("/human")
    posts = desk.stub.calls_to("chat.postMessage")
    card = next(p for p in posts if "blocks" in p and "thread_ts" not in p)
    assert card["channel"] == "#support"
    text = json.dumps(card["blocks"], ensure_ascii=False)
    for fact in ("PolTrade Distribution LLC", "C-200", "RU", "Russian", "PO-24117",
                 "in_production", "2027-01-05", "Позовите", "telegram:tg-poltrade",
                 "First answer due"):
        assert fact in text, fact
    assert button_texts(card["blocks"]) == ["Take"]
    conversation_id, channel, thread_ts = await desk.thread()
    assert channel == "CSUPPORT"
    assert await desk.count(SlackThread) == 1
    assert sum(1 for p in posts if "blocks" in p and "thread_ts" not in p) == 1  # one card
    assert conversation_id > 0 and thread_ts


async def test_two_takes_give_one_owner_and_the_card_shows_it(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    first = await desk.click(ALICE, take_button(conversation_id), channel, ts)
    second = await desk.click(BOB, take_button(conversation_id), channel, ts)
    assert first.status_code == second.status_code == 200
    async with desk.service.db.sessions() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None and conversation.status == "owned"
        events = (await session.execute(select(OwnershipEvent.action, OwnershipEvent.ok)
                                        .order_by(OwnershipEvent.id))).all()
    assert [tuple(e) for e in events] == [("take", True), ("take", False)]
    assert any("alice" in text for text in desk.ephemerals(BOB))
    assert desk.ephemerals(ALICE) == []
    update = desk.stub.calls_to("chat.update")[-1]
    assert update["ts"] == ts and f"<@{ALICE}>" in json.dumps(update["blocks"])
    assert "Take" not in button_texts(update["blocks"])
    told = [d.text for d in desk.customers.sent if d.chat == "tg-poltrade"]
    assert any("Alice Wang" in text for text in told)  # the customer learns who helps


async def test_owner_reply_reaches_the_customer_and_others_only_add_notes(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    before = len(desk.customers.sent)
    await desk.event(thread_message(ALICE, "Добрый день! Заказ PO-24117 будет готов &lt;5 дней",
                                    channel, ts, "1.1"))
    relayed = desk.customers.sent[before:]
    assert [d.text for d in relayed] == ["Добрый день! Заказ PO-24117 будет готов <5 дней"]
    assert relayed[0].kind == "relay"

    await desk.event(thread_message(BOB, "Я бы ответил иначе", channel, ts, "1.2"))
    await desk.event(thread_message(BOB, "note: клиент важный, проверь склад", channel, ts, "1.3"))
    assert len(desk.customers.sent) == before + 1  # neither reached the customer
    assert any("only the owner" in text for text in desk.ephemerals(BOB))
    async with desk.service.db.sessions() as session:
        notes = list((await session.execute(select(Message.text).where(
            Message.kind == "note"))).scalars())
    assert notes == ["клиент важный, проверь склад"]


async def test_an_owner_reply_with_a_lone_surrogate_is_relayed_not_failed(desk: Workspace) -> None:
    # JSON may carry "\ud800", which no database stores (PostgreSQL refuses it): the
    # character is replaced, the rest of the reply goes out.
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    before = len(desk.customers.sent)
    response = await desk.event(thread_message(ALICE, "Готово \ud800 ok", channel, ts, "1.1"))
    assert response.status_code == 200
    assert [d.text for d in desk.customers.sent[before:]] == ["Готово ? ok"]


async def test_customer_messages_reach_the_thread_and_bot_messages_are_not_relayed_back(
        desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    await desk.customer_says("Спасибо, жду ответа по <b>заказу</b>")
    in_thread = [p for p in desk.stub.calls_to("chat.postMessage") if p.get("thread_ts") == ts]
    assert any("Спасибо, жду ответа" in p["text"] and "&lt;b&gt;" in p["text"] for p in in_thread)
    before = len(desk.customers.sent)
    # Slack echoes bots' thread posts as message events: they must not loop back, even
    # when a bot posts as the owner (an integration with the owner's user id).
    await desk.event(thread_message("UBOT", "💬 tg-poltrade: Спасибо", channel, ts, "2.1",
                                    bot_id="BBOT"))
    await desk.event(thread_message(ALICE, "💬 Спасибо", channel, ts, "2.2", bot_id="BOTHER"))
    await desk.event(thread_message(ALICE, "edited", channel, ts, "2.3",
                                    subtype="message_changed"))
    assert len(desk.customers.sent) == before
    assert await desk.count(ProcessedEvent) == 0 and desk.ephemerals(ALICE) == []


async def test_forbidden_phrase_is_held_back_with_an_alternative(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    before = len(desk.customers.sent)
    await desk.event(thread_message(ALICE, "Это ваши проблемы, обращайтесь к перевозчику",
                                    channel, ts, "3.1"))
    assert len(desk.customers.sent) == before
    warning = desk.ephemerals(ALICE)[-1]
    assert "ваши проблемы" in warning and "Try instead" in warning


@pytest.mark.parametrize("tamper", ["forged", "stale", "missing"])
async def test_forged_or_stale_requests_are_rejected_and_nothing_is_stored(
        desk: Workspace, tamper: str) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    counts = [await desk.count(m) for m in (Message, OwnershipEvent, ProcessedEvent, OutboxItem)]
    body = event_body(thread_message(ALICE, "Здравствуйте!", channel, ts, "4.1"), "EvForged")
    headers = signed_headers(body, "application/json")
    if tamper == "forged":
        headers = signed_headers(body, "application/json", secret="not-the-secret")
    elif tamper == "stale":
        headers = signed_headers(body, "application/json", timestamp=int(time.time()) - 6 * 60)
    else:
        del headers["X-Slack-Signature"]
    response = await desk.http.post("/webhooks/slack/events", content=body.encode(),
                                    headers=headers)
    assert response.status_code == 401
    click = interaction_body(BOB, {"action_id": "resolve", "value": str(conversation_id)},
                             channel, ts)
    response = await desk.http.post(
        "/webhooks/slack/events", content=click.encode(),
        headers=signed_headers(click, "application/x-www-form-urlencoded", secret="wrong"))
    assert response.status_code == 401
    await desk.service.outbox.dispatch_due()
    assert [await desk.count(m) for m in (Message, OwnershipEvent, ProcessedEvent,
                                          OutboxItem)] == counts


async def test_a_retried_event_is_processed_once(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    before = len(desk.customers.sent)
    event = thread_message(ALICE, "Отгрузка в пятницу.", channel, ts, "5.1")
    first = await desk.event(event, "EvRetry1")
    retries = [await desk.event(event, "EvRetry1", **{"X-Slack-Retry-Num": str(n),
                                                       "X-Slack-Retry-Reason": "http_timeout"})
               for n in (1, 2)]
    assert first.status_code == 200 and all(r.status_code == 200 for r in retries)
    assert [d.text for d in desk.customers.sent[before:]] == ["Отгрузка в пятницу."]
    assert await desk.count(ProcessedEvent) == 1


async def test_simultaneous_retries_of_one_event_relay_once(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    before = len(desk.customers.sent)
    body = event_body(thread_message(ALICE, "Мы проверим партию.", channel, ts, "5.2"), "EvRace")
    responses = await asyncio.gather(*(
        desk.http.post("/webhooks/slack/events", content=body.encode(),
                       headers={**signed_headers(body, "application/json"),
                                "X-Slack-Retry-Num": str(n)}) for n in range(4)))
    assert all(r.status_code == 200 for r in responses)
    await desk.service.outbox.dispatch_due()
    assert [d.text for d in desk.customers.sent[before:]] == ["Мы проверим партию."]


async def test_url_verification_answers_the_challenge(desk: Workspace) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "x"})
    response = await desk.post(body, "application/json")
    assert response.status_code == 200 and response.json() == {"challenge": "abc123"}


async def test_support_command(desk: Workspace) -> None:
    assert "Nobody is waiting" in await desk.command(ALICE, "queue")
    await desk.customer_says("/human")
    await desk.customer_says("Ich brauche einen Mitarbeiter", chat="tg-nordic")
    conversation_id, _, _ = await desk.thread()
    queue = await desk.command(ALICE, "queue")
    assert "Waiting for an agent (2)" in queue and "PolTrade" in queue and "Nordic" in queue
    assert queue.index("Nordic") < queue.index("PolTrade")  # strategic: higher priority first
    assert "You own no open" in await desk.command(ALICE, "mine")
    assert f"#{conversation_id}" in await desk.command(ALICE, f"take #{conversation_id}")
    assert "alice" in (await desk.command(BOB, f"take {conversation_id}")).lower()
    mine = await desk.command(ALICE, "mine")
    assert "Your open conversations (1)" in mine and "PolTrade" in mine
    assert "Waiting: 1 · owned: 1 (yours: 1)" in await desk.command(ALICE, "stats")
    assert "Not done (resolve)" in await desk.command(BOB, f"resolve {conversation_id}")
    assert "Done: resolve" in await desk.command(ALICE, f"resolve {conversation_id}")
    assert "resolved today: 1 (by you: 1)" in await desk.command(ALICE, "stats")
    assert "No conversation or case" in await desk.command(ALICE, "take CMP-nope")
    assert "Usage" in await desk.command(ALICE, "dance")


async def test_support_take_accepts_a_case_number(desk: Workspace) -> None:
    await desk.customer_says("Жалоба: доски пришли поцарапанные, заказ PO-24117")
    async with desk.service.db.sessions() as session:
        from bot.db.models import Case
        number = await session.scalar(select(Case.number))
    if number is None:  # the complaint flow may ask for details first; give them
        await desk.customer_says("Царапины на 40 коробках, фото пришлю")
        async with desk.service.db.sessions() as session:
            number = await session.scalar(select(Case.number))
    assert number is not None
    assert "Done: take" in await desk.command(BOB, f"take {number.lower()}")


async def test_transfer_needs_the_receiver_to_accept(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    await desk.click(ALICE, {"action_id": "transfer", "type": "users_select",
                             "selected_user": BOB, "block_id": f"card-{conversation_id}"},
                     channel, ts)
    offer = [p for p in desk.stub.calls_to("chat.postMessage") if p.get("thread_ts") == ts][-1]
    assert f"<@{BOB}>" in offer["text"] and button_texts(offer["blocks"]) == ["Accept transfer"]
    accept = {"action_id": "accept", "type": "button", "value": str(conversation_id)}
    await desk.click(CAROL, accept, channel, ts)  # not offered to Carol: refused
    assert await owner_of(desk.service, conversation_id) == "alice"
    assert desk.ephemerals(CAROL)
    await desk.click(BOB, accept, channel, ts)
    assert await owner_of(desk.service, conversation_id) == "bob"
    assert f"<@{BOB}>" in json.dumps(desk.stub.calls_to("chat.update")[-1]["blocks"])


async def test_release_returns_to_the_queue_and_resolve_removes_buttons(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    await desk.click(ALICE, {"action_id": "release", "type": "button",
                             "value": str(conversation_id)}, channel, ts)
    assert button_texts(desk.stub.calls_to("chat.update")[-1]["blocks"]) == ["Take"]
    await desk.click(BOB, take_button(conversation_id), channel, ts)
    await desk.click(BOB, {"action_id": "resolve", "type": "button",
                           "value": str(conversation_id)}, channel, ts)
    update = desk.stub.calls_to("chat.update")[-1]
    assert button_texts(update["blocks"]) == [] and "resolved by" in update["text"]
    await desk.event(thread_message(BOB, "И ещё одно", channel, ts, "6.1"))
    assert "resolved" in desk.ephemerals(BOB)[-1]


async def test_unlisted_slack_user_is_named_from_their_profile(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(CAROL, take_button(conversation_id), channel, ts)
    assert any("Carol" in d.text for d in desk.customers.sent)


async def test_strategic_customer_goes_to_the_account_manager_first(desk: Workspace) -> None:
    await desk.customer_says("Bitte verbinden Sie mich mit einem Mitarbeiter", chat="tg-nordic")
    assert desk.stub.calls_to("conversations.open") == [{"users": MANAGER}]
    card = next(p for p in desk.stub.calls_to("chat.postMessage") if "blocks" in p)
    assert card["channel"] == f"D{MANAGER}"
    assert "Strategic account" in json.dumps(card["blocks"])
    conversation_id, dm, dm_ts = await desk.thread("tg-nordic")
    async with desk.service.db.sessions() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None and conversation.priority in ("high", "urgent")
    # Not taken within the first-response target (wall time: 24 h coverage) -> the channel.
    desk.clock.advance(timedelta(minutes=29))
    assert await escalate_unclaimed(desk.service) == 0
    desk.clock.advance(timedelta(hours=2))
    assert await escalate_unclaimed(desk.service) == 1
    await desk.service.outbox.dispatch_due()
    assert await escalate_unclaimed(desk.service) == 0  # once
    _, channel, ts = await desk.thread("tg-nordic")
    assert channel == "CSUPPORT" and ts != dm_ts
    assert any(p.get("thread_ts") == dm_ts and "Moved to" in p["text"]
               for p in desk.stub.calls_to("chat.postMessage"))
    # The manager can still take it from the direct message; both cards show the owner.
    await desk.click(MANAGER, take_button(conversation_id), dm, dm_ts)
    updated = {c["ts"] for c in desk.stub.calls_to("chat.update")[-2:]}
    assert updated == {dm_ts, ts}


async def test_slack_errors_become_retries_or_failures(desk: Workspace) -> None:
    desk.stub.fail("chat.postMessage", status=429, retry_after=7)
    await desk.customer_says("/human")
    async with desk.service.db.sessions() as session:
        item = (await session.execute(select(OutboxItem).where(
            OutboxItem.channel == "slack"))).scalar_one()
    assert item.status == "pending" and item.attempts == 1
    assert item.next_attempt_at - desk.clock.now() >= timedelta(seconds=7)
    desk.clock.advance(timedelta(seconds=8))
    await desk.service.outbox.dispatch_due()
    _, channel, _ = await desk.thread()
    assert channel == "CSUPPORT"

    channel_obj = desk.service.outbox.channels["slack"]
    from bot.channels.base import Delivery
    desk.stub.fail("chat.postMessage", error="channel_not_found")
    conversation_id, _, _ = await desk.thread()
    with pytest.raises(PermanentDeliveryError):
        await channel_obj.send(Delivery(0, "tg-poltrade", "x", "relay", "agents",
                                        conversation_id=conversation_id))
    desk.stub.fail("chat.postMessage", status=500, error="internal_error")
    with pytest.raises(TemporaryDeliveryError):
        await channel_obj.send(Delivery(0, "tg-poltrade", "x", "relay", "agents",
                                        conversation_id=conversation_id))


async def test_fifty_simultaneous_take_clicks_give_one_owner(postgres_url: str,
                                                              clock: ManualClock) -> None:
    """Through the real Bolt app on PostgreSQL: 50 agents click Take at once."""
    stub = SlackStub()
    base_url = await stub.start()
    service = await Service.start(slack_settings(postgres_url, base_url), clock=clock,
                                  migrate=True)
    service.outbox.channels["telegram"] = RecordingChannel("telegram")
    try:
        await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-race",
                                                     text="/human", external_id="race-1"))
        await service.outbox.dispatch_due()
        async with service.db.sessions() as session:
            conversation_id = await session.scalar(select(Conversation.id))
        app = create_app(service, background=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://supportbot") as http:
            bodies = [interaction_body(f"URACE{n:02d}", take_button(int(conversation_id or 0)),
                                       "CSUPPORT", "1.0") for n in range(50)]
            responses = await asyncio.gather(*(
                http.post("/webhooks/slack/events", content=body.encode(),
                          headers=signed_headers(body, "application/x-www-form-urlencoded"))
                for body in bodies))
        assert all(r.status_code == 200 for r in responses)
        async with service.db.sessions() as session:
            oks = (await session.execute(select(OwnershipEvent.ok).where(
                OwnershipEvent.action == "take"))).scalars().all()
            conversation = await session.get(Conversation, conversation_id)
        assert sorted(oks) == [False] * 49 + [True]
        assert conversation is not None and conversation.owner_id is not None
        refused = {c["user"] for c in stub.calls_to("chat.postEphemeral")}
        assert len(refused) == 49
    finally:
        await service.close()
        await stub.stop()


async def test_socket_mode_receives_events_without_a_public_url(database_url: str,
                                                                clock: ManualClock) -> None:
    """mode = "socket": the app connects out (apps.connections.open, then a WebSocket),
    acknowledges each envelope, and handles it like an HTTP event."""
    stub = SlackStub()
    base_url = await stub.start()
    settings = load_settings(
        None, database={"url": database_url}, after_hours={"enabled": False},
        slack={"bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "mode": "socket",
               "api_base_url": base_url},
        agents={"alice": {"name": "Alice Wang", "slack_user_id": ALICE}})
    service = await Service.start(settings, clock=clock, migrate=True)
    customers = RecordingChannel("telegram")
    service.outbox.channels["telegram"] = customers
    try:
        await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-socket",
                                                     text="/human", external_id="s-1"))
        await service.outbox.dispatch_due()
        app = create_app(service)
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(stub.socket_connected.wait(), 10)
            async with service.db.sessions() as session:
                conversation = (await session.execute(select(Conversation))).scalar_one()
            payload = interaction_payload(ALICE, take_button(conversation.id), "CSUPPORT", "1.0")
            await stub.envelopes.put({"type": "interactive", "envelope_id": "env-1",
                                      "accepts_response_payload": True, "payload": payload})
            for _ in range(200):  # envelopes are handled concurrently: take first, then reply
                if await owner_of(service, conversation.id):
                    break
                await asyncio.sleep(0.05)
            event = json.loads(event_body(thread_message(
                ALICE, "Guten Tag, ich kümmere mich darum.", str(conversation.slack_channel),
                str(conversation.slack_thread_ts), "7.1"), "EvSocket"))
            await stub.envelopes.put({"type": "events_api", "envelope_id": "env-2",
                                      "accepts_response_payload": False, "payload": event,
                                      "retry_attempt": 0, "retry_reason": ""})
            for _ in range(200):
                if any(d.text == "Guten Tag, ich kümmere mich darum." for d in customers.sent):
                    break
                await asyncio.sleep(0.05)
        assert {a["envelope_id"] for a in stub.acks} >= {"env-1", "env-2"}
        assert await owner_of(service, conversation.id) == "alice"
        assert [d.text for d in customers.sent][-1] == "Guten Tag, ich kümmere mich darum."
        assert stub.calls_to("apps.connections.open")
    finally:
        await service.close()
        await stub.stop()



async def test_slack_markup_is_turned_into_plain_text_for_the_customer(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    before = len(desk.customers.sent)
    await desk.event(thread_message(
        ALICE, "См. <https://track.example/PO-24117|отслеживание> и <https://a.example>, "
               "коллега <@UBOB|bob> в курсе, R&amp;D &lt;ok&gt;", channel, ts, "8.1",
        subtype="thread_broadcast"))
    assert [d.text for d in desk.customers.sent[before:]] == [
        "См. отслеживание (https://track.example/PO-24117) и https://a.example, "
        "коллега bob в курсе, R&D <ok>"]


async def test_green_channel_retry_does_not_post_a_second_card(desk: Workspace) -> None:
    await desk.customer_says("Bitte verbinden Sie mich mit einem Mitarbeiter", chat="tg-nordic")
    desk.clock.advance(timedelta(hours=3))
    assert await escalate_unclaimed(desk.service) == 1
    # The card in the channel goes out, the "moved" note too, then Slack fails on the
    # escalation text: the retry must post only the text.
    calls_before = len(desk.stub.calls_to("chat.postMessage"))
    original = desk.stub._answer

    def fail_third(method: str, args: dict[str, Any]) -> dict[str, Any]:
        made = len(desk.stub.calls_to("chat.postMessage")) - calls_before
        if method == "chat.postMessage" and made == 3:
            return {"ok": False, "error": "internal_error"}
        return original(method, args)

    desk.stub._answer = fail_third  # type: ignore[method-assign]
    await desk.service.outbox.dispatch_due()
    desk.clock.advance(timedelta(minutes=5))
    await desk.service.outbox.dispatch_due()
    cards = [p for p in desk.stub.calls_to("chat.postMessage")
             if "blocks" in p and "thread_ts" not in p]
    assert [c["channel"] for c in cards] == [f"D{MANAGER}", "#support"]
    escalation_posts = [p for p in desk.stub.calls_to("chat.postMessage")
                        if "has not taken" in p.get("text", "")]
    assert len(escalation_posts) == 2  # the failed attempt and its retry, in the same thread
    assert len({p["thread_ts"] for p in escalation_posts}) == 1


@pytest.mark.parametrize("problem", ["no_slack_id", "dm_refused"])
async def test_unreachable_account_manager_means_the_channel_at_once(
        desk: Workspace, problem: str) -> None:
    if problem == "no_slack_id":
        async with desk.service.db.sessions.begin() as session:
            from bot.db.models import Customer
            customer = (await session.execute(select(Customer).where(
                Customer.ref == "C-100"))).scalar_one()
            customer.account_manager = "someone-without-slack"
    else:
        desk.stub.fail("conversations.open", error="user_not_found")
    await desk.customer_says("Bitte verbinden Sie mich mit einem Mitarbeiter", chat="tg-nordic")
    cards = [p for p in desk.stub.calls_to("chat.postMessage") if "blocks" in p]
    assert [c["channel"] for c in cards] == ["#support"]
    desk.clock.advance(timedelta(hours=3))
    assert await escalate_unclaimed(desk.service) == 0  # nothing to move: already there


async def test_a_transfer_offer_ends_with_release(desk: Workspace) -> None:
    await desk.customer_says("/human")
    conversation_id, channel, ts = await desk.thread()
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    await desk.click(ALICE, {"action_id": "transfer", "type": "users_select",
                             "selected_user": BOB, "block_id": f"card-{conversation_id}"},
                     channel, ts)
    await desk.click(ALICE, {"action_id": "release", "type": "button",
                             "value": str(conversation_id)}, channel, ts)
    await desk.click(ALICE, take_button(conversation_id), channel, ts)
    assert "Accept transfer" not in button_texts(desk.stub.calls_to("chat.update")[-1]["blocks"])
    await desk.click(BOB, {"action_id": "accept", "type": "button",
                           "value": str(conversation_id)}, channel, ts)
    assert await owner_of(desk.service, conversation_id) == "alice"


async def test_oversized_or_undecodable_bodies_are_refused(desk: Workspace) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 100_000

    response = await desk.http.post("/webhooks/slack/events", content=chunks(),
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    bad = b'{"type": "event_callback"}\xff'
    headers = signed_headers(bad.decode("latin-1"), "application/json")
    response = await desk.http.post("/webhooks/slack/events", content=bad, headers=headers)
    assert response.status_code == 400
