"""``GET /metrics``: the process's counters move with the traffic, the database gauges show
the outbox backlog, and a slow platform neither grows the dispatcher's memory nor hides
its backlog (back-pressure)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot import metrics
from bot.channels.base import (
    Delivery,
    HeldDeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from bot.clock import ManualClock
from bot.config import OutboxSettings
from bot.db.database import Database
from bot.pipeline import InvalidMessage
from bot.service import Service
from bot.types import InboundMessage
from bot.web.app import create_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service, background=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def parse(text: str) -> Samples:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_counters_follow_the_traffic(client: httpx.AsyncClient, service: Service,
                                           chat: Any, clock: ManualClock) -> None:
    before = await scrape(client)
    await chat.say("hello")
    clock.advance(timedelta(seconds=2))
    await chat.say("where is my order?")
    # A platform redelivery is a duplicate; an empty message is refused before storage.
    await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-test",
                                                 text="hello again", external_id="tg-test-1"))
    with pytest.raises(InvalidMessage):
        await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-test",
                                                     text="   ", external_id="tg-empty"))
    after = await scrape(client)

    assert delta(before, after, "supportbot_inbound_messages_total", channel="telegram") == 2
    assert delta(before, after, "supportbot_inbound_duplicates_total", channel="telegram") == 1
    assert delta(before, after, "supportbot_inbound_rejected_total", channel="telegram") == 1
    assert delta(before, after, "supportbot_processing_seconds_count", channel="telegram") == 2
    sent = delta(before, after, "supportbot_outbox_deliveries_total", channel="telegram",
                 result="sent")
    assert sent == len(chat.channel.sent) >= 2
    assert delta(before, after, "supportbot_outbox_delivery_seconds_count",
                 channel="telegram") == sent
    # Everything went out: no backlog, read from the database.
    assert value(after, "supportbot_database_up") == 1
    assert value(after, "supportbot_outbox_pending_rows", channel="telegram") == 0
    assert value(after, "supportbot_outbox_due_rows", channel="telegram") == 0
    assert value(after, "supportbot_inbound_unprocessed_messages") == 0
    assert value(after, "process_resident_memory_bytes") > 0


async def test_backlog_gauges_follow_failures_and_retries(
        client: httpx.AsyncClient, service: Service, chat: Any, make_chat: Any,
        channels: Any, clock: ManualClock) -> None:
    before = await scrape(client)
    channels["telegram"].failures.append(TemporaryDeliveryError("502 bad gateway"))
    await chat.say("hello")
    retrying = await scrape(client)
    assert delta(before, retrying, "supportbot_outbox_deliveries_total", channel="telegram",
                 result="retry") == 1
    assert value(retrying, "supportbot_outbox_pending_rows", channel="telegram") == 1
    assert value(retrying, "supportbot_outbox_due_rows", channel="telegram") == 0  # backoff

    clock.advance(timedelta(minutes=10))  # the retry is due, and ten minutes old
    due = await scrape(client)
    assert value(due, "supportbot_outbox_due_rows", channel="telegram") == 1
    assert value(due, "supportbot_outbox_oldest_pending_age_seconds",
                 channel="telegram") == pytest.approx(600, abs=1)
    assert await service.outbox.dispatch_due() >= 1
    drained = await scrape(client)
    assert value(drained, "supportbot_outbox_pending_rows", channel="telegram") == 0
    assert value(drained, "supportbot_outbox_oldest_pending_age_seconds", channel="telegram") == 0

    channels["wechat"].failures.append(HeldDeliveryError("48-hour window"))
    await make_chat("wx-1", "wechat").say("hello")
    channels["telegram"].failures.append(PermanentDeliveryError("403 blocked"))
    await make_chat("tg-blocked").say("hello")
    # A message stored but not processed (a crash between the two transactions).
    await service.pipeline.receive(InboundMessage(channel="telegram", chat="tg-crash",
                                                  text="hello", external_id="crash-1"))
    clock.advance(timedelta(seconds=30))
    after = await scrape(client)
    assert delta(before, after, "supportbot_outbox_deliveries_total", channel="wechat",
                 result="held") == 1
    assert delta(before, after, "supportbot_outbox_deliveries_total", channel="telegram",
                 result="failed") == 1
    assert value(after, "supportbot_outbox_held_rows", channel="wechat") == 1
    assert value(after, "supportbot_outbox_failed_rows", channel="telegram") == 1
    assert value(after, "supportbot_inbound_unprocessed_messages") == 1
    assert value(after, "supportbot_inbound_unprocessed_oldest_age_seconds") == \
        pytest.approx(30, abs=1)
    # The agents were told about the failed and the held reply: their rows wait for Slack,
    # which this process does not serve, and show as a backlog of their own.
    assert value(after, "supportbot_outbox_due_rows", channel="slack") == 2

    await service.pipeline.recover()
    recovered = await scrape(client)
    assert value(recovered, "supportbot_inbound_unprocessed_messages") == 0


async def test_database_gauges_report_an_unreachable_database(tmp_path: Any,
                                                              clock: ManualClock) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")
    try:
        samples = parse((await metrics.render(db, clock.now(), ["telegram"])).decode())
    finally:
        await db.dispose()
    assert value(samples, "supportbot_database_up") == 0
    assert ("supportbot_outbox_due_rows", (("channel", "telegram"),)) not in samples
    assert value(samples, "process_resident_memory_bytes") > 0


class SlowChannel:
    """A platform that answers slowly, and not at all until ``gate`` opens."""

    name = "telegram"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.gate = asyncio.Event()
        self.sent: list[Delivery] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, delivery: Delivery) -> str:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.sent.append(delivery)
        return f"slow-{len(self.sent)}"


async def test_a_slow_platform_holds_one_batch_in_memory_and_the_backlog_drains(
        client: httpx.AsyncClient, service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = service.outbox
    slow = SlowChannel(delay=0.01)
    outbox.channels["telegram"] = slow
    outbox.settings = OutboxSettings(batch_size=5, concurrency=2, poll_seconds=0.05)
    batches: list[int] = []
    claim_due = outbox._claim_due

    async def spy(channel: str, limit: int, look_first: bool = False,
                  busy: Any = (), connection: Any = None) -> list[Any]:
        claimed = await claim_due(channel, limit, look_first, busy, connection)
        if channel == "telegram":
            batches.append(len(claimed))
        return claimed

    monkeypatch.setattr(outbox, "_claim_due", spy)
    stop = asyncio.Event()
    dispatcher = asyncio.create_task(outbox.run(stop))
    try:
        growing = []
        for i in range(30):  # 10 chats, 3 messages each, while the platform does not answer
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=f"tg-{i % 10}", text="hello", external_id=f"m-{i}"))
            if i % 10 == 9:
                await asyncio.sleep(0.05)  # the dispatcher takes what it can
                samples = await scrape(client)
                growing.append(value(samples, "supportbot_outbox_due_rows", channel="telegram"))
                assert value(samples, "supportbot_outbox_in_flight", channel="telegram") == 2
        total = value(samples, "supportbot_outbox_pending_rows", channel="telegram")
        assert total >= 30
        assert growing == sorted(growing) and growing[-1] > growing[0]
        assert growing[-1] == total - 2  # all but the two sends in flight

        slow.gate.set()
        draining = [growing[-1]]
        deadline = time.monotonic() + 30
        while draining[-1] > 0:
            assert time.monotonic() < deadline, draining
            await asyncio.sleep(0.02)
            samples = await scrape(client)
            draining.append(value(samples, "supportbot_outbox_due_rows", channel="telegram"))
        for _ in range(100):
            if value(samples, "supportbot_outbox_pending_rows", channel="telegram") == 0:
                break
            await asyncio.sleep(0.02)
            samples = await scrape(client)
    finally:
        stop.set()
        outbox.wake()
        await asyncio.wait_for(dispatcher, 10)

    assert value(samples, "supportbot_outbox_pending_rows", channel="telegram") == 0
    assert draining == sorted(draining, reverse=True) and len(draining) > 2
    assert len(slow.sent) == total
    # Bounded: never more rows claimed than free send slots, nor sends than the concurrency.
    assert max(batches) == 2 and slow.max_in_flight == 2
    # Concurrent sends, yet each chat's replies in the order they were queued.
    for i in range(10):
        ids = [d.outbox_id for d in slow.sent if d.chat == f"tg-{i}"]
        assert ids == sorted(ids) and len(ids) >= 3
