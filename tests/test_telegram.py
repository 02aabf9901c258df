"""The real python-telegram-bot against a local Bot API stand-in: webhook and polling in,
replies out, secrets checked, duplicates processed once, 429 retried, long texts split."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.channels.base import split_text as split_any
from bot.channels.telegram import MESSAGE_LIMIT
from bot.clock import ManualClock
from bot.config import load_settings
from bot.db.models import Case, Conversation, Message, OutboxItem
from bot.service import Service
from bot.web.app import create_app
from tests.conftest import RecordingChannel
from tests.telegram_stub import (
    TOKEN,
    WEBHOOK_SECRET,
    TelegramStub,
    callback_update,
    message_update,
    user,
)


def split_text(text: str) -> list[str]:
    return split_any(text, MESSAGE_LIMIT)


class Telegram:
    """A bot in a test: updates posted to the webhook, replies read from the stub."""

    def __init__(self, service: Service, stub: TelegramStub, http: httpx.AsyncClient,
                 clock: ManualClock) -> None:
        self.service = service
        self.stub = stub
        self.http = http
        self.clock = clock

    async def post(self, update: dict[str, Any], secret: str | None = WEBHOOK_SECRET) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        response = await self.http.post("/webhooks/telegram", content=json.dumps(update),
                                        headers=headers)
        await self.service.outbox.dispatch_due()
        return response

    async def count(self, model: Any) -> int:
        async with self.service.db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def telegram_settings(database_url: str, base_url: str, **extra: Any) -> Any:
    return load_settings(None, database={"url": database_url}, after_hours={"enabled": False},
                         telegram={"token": TOKEN, "webhook_secret": WEBHOOK_SECRET,
                                   "api_base_url": base_url, **extra})


@pytest.fixture
async def telegram(database_url: str, clock: ManualClock) -> AsyncIterator[Telegram]:
    stub = TelegramStub()
    base_url = await stub.start()
    service = await Service.start(telegram_settings(database_url, base_url), clock=clock,
                                  migrate=True)
    service.outbox.channels["slack"] = RecordingChannel("slack")
    app = create_app(service, background=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://supportbot") as http:
            yield Telegram(service, stub, http, clock)
    finally:
        await service.outbox.channels["telegram"].close()  # type: ignore[attr-defined]
        await service.close()
        await stub.stop()


async def test_an_update_in_gives_a_reply_out(telegram: Telegram) -> None:
    response = await telegram.post(message_update("Здравствуйте!", chat_id=7001))
    assert response.status_code == 200
    texts = telegram.stub.sent_texts(7001)
    assert len(texts) == 1 and "Здравствуйте" in texts[0]


@pytest.mark.parametrize("secret", [None, "wrong-secret", WEBHOOK_SECRET + "x"])
async def test_a_wrong_or_missing_secret_gets_403_and_stores_nothing(
        telegram: Telegram, secret: str | None) -> None:
    response = await telegram.post(message_update("hello"), secret=secret)
    assert response.status_code == 403
    assert await telegram.count(Message) == 0 and telegram.stub.calls_to("sendMessage") == []


async def test_unreadable_bodies_are_refused(telegram: Telegram) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET,
               "Content-Type": "application/json"}
    for body in (b"not json", b"[1, 2]", b'{"update_id": "x"}', b"\xff\xfe"):
        response = await telegram.http.post("/webhooks/telegram", content=body, headers=headers)
        assert response.status_code == 400, body
    response = await telegram.http.post("/webhooks/telegram", content=b"x" * 2_000_000,
                                        headers=headers)
    assert response.status_code == 413
    assert await telegram.count(Message) == 0


async def test_a_redelivered_update_is_processed_once(telegram: Telegram) -> None:
    update = message_update("Where is my order?", chat_id=7002, update_id=900_001)
    for _ in range(3):
        assert (await telegram.post(update)).status_code == 200
    assert len(telegram.stub.sent_texts(7002)) == 1
    assert await telegram.count(Message) == 2  # the message and its one reply


async def test_429_is_retried_after_retry_after(telegram: Telegram) -> None:
    telegram.stub.fail("sendMessage", 429, "Too Many Requests: retry after 7", retry_after=7)
    await telegram.post(message_update("hello", chat_id=7003))
    async with telegram.service.db.sessions() as session:
        item = (await session.execute(select(OutboxItem).where(
            OutboxItem.channel == "telegram"))).scalar_one()
    assert item.status == "pending" and item.attempts == 1
    assert item.next_attempt_at - telegram.clock.now() >= timedelta(seconds=7)
    telegram.clock.advance(timedelta(seconds=6))
    await telegram.service.outbox.dispatch_due()
    assert telegram.stub.sent_texts(7003) == []  # not before retry_after
    telegram.clock.advance(timedelta(seconds=2))
    await telegram.service.outbox.dispatch_due()
    assert len(telegram.stub.sent_texts(7003)) == 1


def test_long_texts_are_split_cleanly() -> None:
    paragraph = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30).strip()
    text = "\n\n".join([paragraph] * 6)
    parts = split_text(text)
    assert len(parts) >= 2 and all(len(p) <= MESSAGE_LIMIT for p in parts)
    assert all(p == p.strip() and p.endswith(".") for p in parts)  # whole paragraphs
    assert "".join("".join(parts).split()) == "".join(text.split())  # nothing lost
    unbroken = "x" * 9000
    assert [len(p) for p in split_text(unbroken)] == [4096, 4096, 808]
    assert split_text("short") == ["short"]


async def test_a_long_reply_is_split_and_a_retry_sends_only_the_rest(
        telegram: Telegram) -> None:
    from bot.channels.base import Delivery, TemporaryDeliveryError

    channel = telegram.service.outbox.channels["telegram"]
    text = "\n".join(f"Line {n}: " + "details " * 40 for n in range(20))
    parts = split_text(text)
    assert len(parts) == 2
    telegram.stub.fail("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1,
                       after=1)  # the first part goes out, the second is refused
    with pytest.raises(TemporaryDeliveryError) as failure:
        await channel.send(Delivery(0, "7004", text, "reply", "customer"))
    assert failure.value.parts_sent == 1 and failure.value.retry_after == 1
    await channel.send(Delivery(0, "7004", text, "reply", "customer", parts_sent=1))
    assert telegram.stub.sent_texts(7004) == [parts[0], parts[1]]  # each part once


async def test_the_outbox_keeps_the_count_of_parts_sent(telegram: Telegram) -> None:
    from bot.types import Reply

    await telegram.post(message_update("hello", chat_id=7011))
    text = "\n".join(f"Line {n}: " + "details " * 40 for n in range(20))
    async with telegram.service.db.sessions.begin() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        await telegram.service.pipeline.queue_replies(session, conversation, [Reply(text)],
                                                      telegram.clock.now())
    telegram.stub.fail("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1,
                       after=1)
    await telegram.service.outbox.dispatch_due()
    telegram.clock.advance(timedelta(seconds=5))
    await telegram.service.outbox.dispatch_due()
    assert telegram.stub.sent_texts(7011)[1:] == split_text(text)  # after the greeting


async def test_buttons_become_an_inline_keyboard_and_presses_are_answered(
        telegram: Telegram) -> None:
    await telegram.post(message_update("/start", chat_id=7005))
    keyboard = telegram.stub.calls_to("sendMessage")[-1]["reply_markup"]["inline_keyboard"]
    payloads = [row[0]["callback_data"] for row in keyboard]
    assert payloads and all(len(p.encode()) <= 64 for p in payloads)
    await telegram.post(callback_update(payloads[0], chat_id=7005))
    assert telegram.stub.calls_to("answerCallbackQuery")
    assert len(telegram.stub.sent_texts(7005)) == 2  # the button was understood and answered


async def test_start_welcomes_in_the_users_language(telegram: Telegram) -> None:
    await telegram.post(message_update("/start", chat_id=7006,
                                       sender=user(7006, "Jonas", "Meyer", "de")))
    assert "Willkommen" in telegram.stub.sent_texts(7006)[0]


async def test_photo_evidence_is_stored_with_the_complaint(telegram: Telegram) -> None:
    await telegram.post(message_update(
        "The planks arrived cracked, I want to make a complaint", chat_id=7007,
        sender=user(7007, "Anna", "Berg", "en")))
    photo = [{"file_id": "small-id", "file_unique_id": "u1", "width": 90, "height": 90},
             {"file_id": "large-id", "file_unique_id": "u2", "width": 1280, "height": 960}]
    await telegram.post(message_update(None, chat_id=7007, sender=user(7007, "Anna", "Berg", "en"),
                                       photo=photo, caption="Here is a photo"))
    async with telegram.service.db.sessions() as session:
        stored = (await session.execute(select(Message.attachments).where(
            Message.direction == "in"))).scalars().all()
        cases = (await session.execute(select(Case))).scalars().all()
    assert [a["file_id"] for batch in stored for a in batch] == ["large-id"]
    evidence = json.dumps([c.evidence for c in cases])
    assert "large-id" in evidence


async def test_an_edited_message_is_taken_as_what_the_customer_now_says(
        telegram: Telegram) -> None:
    await telegram.post(message_update("helo", chat_id=7008))
    await telegram.post(message_update("I want to talk to a person", chat_id=7008, edited=True))
    assert len(telegram.stub.sent_texts(7008)) == 2
    assert await telegram.count(Message) >= 4


async def test_a_buyers_group_chat_is_one_conversation(telegram: Telegram) -> None:
    group = -1001234567
    await telegram.post(message_update("Hello from the team", chat_id=group, chat_type="supergroup",
                                       sender=user(8001, "Olga", "K", "en")))
    await telegram.post(message_update("/human@evergreen_support_bot", chat_id=group,
                                       chat_type="supergroup", sender=user(8002, "Max", "L", "en")))
    async with telegram.service.db.sessions() as session:
        conversations = (await session.execute(select(Conversation))).scalars().all()
    assert len(conversations) == 1 and conversations[0].chat == str(group)
    assert conversations[0].status == "handed_off"
    assert len(telegram.stub.sent_texts(group)) == 2


async def test_a_blocked_bot_marks_the_reply_failed_and_tells_the_agents(
        telegram: Telegram) -> None:
    telegram.stub.fail("sendMessage", 403, "Forbidden: bot was blocked by the user")
    await telegram.post(message_update("/human", chat_id=7009))
    async with telegram.service.db.sessions() as session:
        failed = (await session.execute(select(OutboxItem).where(
            OutboxItem.channel == "telegram"))).scalars().all()
    assert [i.status for i in failed] == ["failed"]
    agents = telegram.service.outbox.channels["slack"].sent  # type: ignore[attr-defined]
    assert any(d.template == "escalation.delivery_failed" and "blocked" in d.text for d in agents)


async def test_polling_receives_updates_without_a_webhook(database_url: str,
                                                          clock: ManualClock) -> None:
    from bot.channels.telegram_inbound import poll

    stub = TelegramStub()
    base_url = await stub.start()
    settings = telegram_settings(database_url, base_url, mode="polling")
    service = await Service.start(settings, clock=clock, migrate=True)
    channel = service.outbox.channels["telegram"]
    stub.updates = [message_update("hello", chat_id=7010, update_id=777),
                    message_update("hello", chat_id=7010, update_id=777),  # sent twice
                    message_update("/human", chat_id=7010, update_id=778)]
    stop = asyncio.Event()
    task = asyncio.create_task(poll(service, channel, stop))  # type: ignore[arg-type]
    try:
        for _ in range(100):
            offsets = [c.get("offset") for c in stub.calls_to("getUpdates")]
            if 779 in offsets:
                break
            await asyncio.sleep(0.05)
        await service.outbox.dispatch_due()
        assert 779 in offsets  # confirmed up to the last update
        assert len(stub.sent_texts(7010)) == 2  # "hello" once, "/human" once
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()  # type: ignore[attr-defined]
        await service.close()
        await stub.stop()


async def test_serve_with_a_configured_bot_api_endpoint_works_end_to_end(tmp_path: Any) -> None:
    """``supportbot serve`` as a real process, its config naming this Bot API endpoint and a
    webhook secret: it registers the webhook there, takes an update and answers through it."""
    import signal
    import subprocess

    from tests.test_serve import clean_env, free_port, supportbot_command

    stub = TelegramStub()
    base_url = await stub.start()
    port = free_port()
    (tmp_path / "supportbot.toml").write_text(
        f'[web]\nport = {port}\n\n[telegram]\napi_base_url = "{base_url}"\n'
        f'public_url = "https://bot.example"\n\n[after_hours]\nenabled = false\n',
        encoding="utf-8")
    stderr = tmp_path / "serve.log"
    env = clean_env(SUPPORTBOT_TELEGRAM__TOKEN=TOKEN,
                    SUPPORTBOT_TELEGRAM__WEBHOOK_SECRET=WEBHOOK_SECRET)
    with stderr.open("wb") as log:
        process = subprocess.Popen([*supportbot_command(), "serve"], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(300):
                if process.poll() is not None:
                    pytest.fail(stderr.read_text(errors="replace"))
                try:
                    if (await http.get("/healthz")).status_code == 200 and \
                            stub.calls_to("setWebhook"):
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            webhook = stub.calls_to("setWebhook")[0]
            assert webhook["url"] == "https://bot.example/webhooks/telegram"
            assert webhook["secret_token"] == WEBHOOK_SECRET
            assert TOKEN not in webhook["url"]
            forged = await http.post("/webhooks/telegram",
                                     json=message_update("hi", chat_id=7100))
            assert forged.status_code == 403
            response = await http.post(
                "/webhooks/telegram", json=message_update("Guten Tag", chat_id=7101,
                                                          sender=user(7101, "Jonas", "M", "de")),
                headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET})
            assert response.status_code == 200
            for _ in range(100):
                if stub.sent_texts(7101):
                    break
                await asyncio.sleep(0.1)
            assert stub.sent_texts(7101) and "Guten Tag" in stub.sent_texts(7101)[0]
            assert stub.sent_texts(7100) == []
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        await stub.stop()
    assert process.returncode == 0, stderr.read_text(errors="replace")
