from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.channels.base import PermanentDeliveryError, TemporaryDeliveryError
from bot.config import OutboxSettings
from bot.db.models import OutboxItem
from bot.outbox import backoff_delay
from bot.service import Service


async def outbox_rows(service: Service) -> list[OutboxItem]:
    async with service.db.sessions() as session:
        return list((await session.execute(select(OutboxItem).order_by(OutboxItem.id))).scalars())


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    settings = OutboxSettings(base_delay_seconds=1, max_delay_seconds=60)
    assert [backoff_delay(n, settings, lambda: 1.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert [backoff_delay(n, settings, lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1, 2]
    assert backoff_delay(30, settings, lambda: 1.0) == 60


async def test_temporary_failure_is_retried_later(service: Service, chat: Any,
                                                  channels: Any, clock: Any) -> None:
    channels["telegram"].failures.append(TemporaryDeliveryError("502 bad gateway"))
    assert await chat.say("hello") == []
    [row] = await outbox_rows(service)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "502 bad gateway")
    assert row.next_attempt_at > clock.now()
    assert await service.outbox.dispatch_due() == 0  # not due yet
    clock.set(row.next_attempt_at)
    assert await service.outbox.dispatch_due() == 1
    [row] = await outbox_rows(service)
    assert (row.status, row.attempts) == ("sent", 2)
    assert [d.intent for d in channels["telegram"].sent] == ["greeting"]


async def test_retry_after_is_honoured(service: Service, chat: Any, channels: Any,
                                       clock: Any) -> None:
    channels["telegram"].failures.append(TemporaryDeliveryError("429", retry_after=120))
    await chat.say("hello")
    [row] = await outbox_rows(service)
    assert row.next_attempt_at >= clock.now() + timedelta(seconds=120)
    clock.set(clock.now() + timedelta(seconds=119))
    assert await service.outbox.dispatch_due() == 0
    clock.set(clock.now() + timedelta(seconds=1))
    assert await service.outbox.dispatch_due() == 1


async def test_permanent_failure_marks_failed_and_nothing_is_dropped(
        service: Service, chat: Any, channels: Any) -> None:
    channels["telegram"].failures.append(PermanentDeliveryError("403 bot was blocked"))
    await chat.say("hello")
    rows = await outbox_rows(service)
    [row] = [r for r in rows if r.channel == "telegram"]
    assert (row.status, row.last_error) == ("failed", "403 bot was blocked")
    # ... and the agents are told, in the conversation's thread.
    [notice] = [r for r in rows if r.channel == "slack"]
    assert notice.payload["template"] == "escalation.delivery_failed"
    assert "403 bot was blocked" in notice.payload["text"]


async def test_gives_up_after_max_attempts(service: Service, chat: Any, channels: Any,
                                           clock: Any) -> None:
    service.outbox.settings = OutboxSettings(max_attempts=3)
    channels["telegram"].failures.extend(TemporaryDeliveryError("timeout") for _ in range(5))
    await chat.say("hello")
    for _ in range(4):
        clock.set(clock.now() + timedelta(hours=1))
        await service.outbox.dispatch_due()
    rows = await outbox_rows(service)
    [row] = [r for r in rows if r.channel == "telegram"]
    assert (row.status, row.attempts) == ("failed", 3)
    assert [r.payload["template"] for r in rows if r.channel == "slack"] == [
        "escalation.delivery_failed"]


async def test_replies_to_one_chat_keep_their_order(service: Service, make_chat: Any,
                                                    channels: Any, clock: Any) -> None:
    first, other = make_chat("tg-a"), make_chat("tg-b")
    channels["telegram"].failures.append(TemporaryDeliveryError("busy"))
    await first.say("hello")  # fails, waits for retry
    await first.say("bye")  # must wait behind the first reply
    await other.say("hola")  # another chat is not held up
    assert [(d.chat, d.intent) for d in channels["telegram"].sent] == [("tg-b", "greeting")]
    clock.set(clock.now() + timedelta(minutes=5))
    await service.outbox.dispatch_due()
    assert [(d.chat, d.intent) for d in channels["telegram"].sent] == [
        ("tg-b", "greeting"), ("tg-a", "greeting"), ("tg-a", "goodbye")]


async def test_unexpected_network_error_counts_as_temporary(service: Service, chat: Any,
                                                            channels: Any) -> None:
    channels["telegram"].failures.append(ConnectionResetError("reset by peer"))
    await chat.say("hello")
    [row] = await outbox_rows(service)
    assert row.status == "pending" and "reset by peer" in (row.last_error or "")


@pytest.mark.postgres
async def test_concurrent_dispatchers_send_each_reply_once(postgres_url: str, clock: Any) -> None:
    """Two processes' dispatchers on one PostgreSQL never send the same row twice."""
    import asyncio

    from bot.config import load_settings
    from bot.types import InboundMessage
    from tests.conftest import RecordingChannel

    settings = load_settings(None, database={"url": postgres_url})
    sent_a, sent_b = RecordingChannel("telegram"), RecordingChannel("telegram")
    a = await Service.start(settings, clock=clock, channels={"telegram": sent_a}, migrate=True)
    b = await Service.start(settings, clock=clock, channels={"telegram": sent_b}, migrate=True)
    try:
        for i in range(40):
            await a.pipeline.handle(InboundMessage(channel="telegram", chat=f"tg-{i}",
                                                   text="hello", external_id=f"u{i}"))
        await asyncio.gather(a.outbox.dispatch_due(), b.outbox.dispatch_due())
        ids = [d.outbox_id for d in sent_a.sent + sent_b.sent]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 40
    finally:
        await a.close()
        await b.close()


async def test_two_dispatchers_in_one_process_send_each_reply_once(
        service: Service, make_chat: Any, channels: Any) -> None:
    import asyncio

    from bot.types import InboundMessage

    for i in range(10):
        await service.pipeline.handle(InboundMessage(channel="telegram", chat=f"tg-{i}",
                                                     text="hello", external_id=f"m{i}"))
    await asyncio.gather(service.outbox.dispatch_due(), service.outbox.dispatch_due())
    ids = [d.outbox_id for d in channels["telegram"].sent]
    assert len(ids) == 10 and len(set(ids)) == 10


async def test_a_claimed_row_is_retried_after_its_lease(service: Service, chat: Any,
                                                        channels: Any, clock: Any) -> None:
    """A dispatcher that died while sending leaves a claim; the reply goes out later."""
    await chat.say("hello")
    [row] = await outbox_rows(service)
    channels["telegram"].sent.clear()
    async with service.db.sessions.begin() as session:  # back to pending, as before a send
        item = await session.get(OutboxItem, row.id)
        assert item is not None
        item.status, item.next_attempt_at = "pending", clock.now()
    assert await service.outbox._claim(row.id) is not None  # claimed, then the process "dies"
    assert await service.outbox.dispatch_due() == 0
    clock.set(clock.now() + timedelta(seconds=service.settings.outbox.lease_seconds))
    assert await service.outbox.dispatch_due() == 1
    assert [d.chat for d in channels["telegram"].sent] == ["tg-test"]
