"""Faults: a crash between storing a message and answering it, the database going away in
the middle of traffic, a platform failing for a while. Nothing lost, nothing twice,
nothing half-written, order kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import make_url

from bot.clock import ManualClock
from bot.config import load_settings
from bot.db.database import Database
from bot.db.models import Contact, Conversation, Message, OutboxItem
from bot.service import Service
from bot.types import InboundMessage
from bot.web.app import create_app
from tests.conftest import RecordingChannel
from tests.telegram_stub import TOKEN, WEBHOOK_SECRET, TelegramStub, message_update


class TcpProxy:
    """127.0.0.1 port forwarding to PostgreSQL that the test can cut and restore: the
    database "restarts" from the application's point of view, without touching the real
    server the rest of the suite uses."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a restarting server does."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.close()
        self._links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_message_stored_before_a_crash_is_answered_after_restart_once(
        database_url: str, clock: ManualClock) -> None:
    settings = load_settings(None, database={"url": database_url})
    first = await Service.start(settings, clock=clock, migrate=True,
                                channels={"telegram": RecordingChannel("telegram")})
    received = await first.pipeline.receive(InboundMessage(
        channel="telegram", chat="tg-crash", text="Where is my order PO-1?", external_id="c-1"))
    await first.close()  # the process dies here: stored, acknowledged, not yet answered

    channel = RecordingChannel("telegram")
    second = await Service.start(settings, clock=clock, migrate=True,
                                 channels={"telegram": channel})
    try:
        # A restarted server recovers the unprocessed message and sends the answer once,
        # also when the platform redelivers the message meanwhile.
        assert await second.pipeline.recover() == 1
        await second.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-crash", text="Where is my order PO-1?",
            external_id="c-1"))
        assert await second.pipeline.recover() == 0
        await second.outbox.dispatch_due()
        await second.outbox.dispatch_due()
        assert len(channel.sent) == 1 and channel.sent[0].chat == "tg-crash"
        async with second.db.sessions() as session:
            inbound = await session.scalar(select(func.count()).select_from(Message).where(
                Message.direction == "in"))
        assert inbound == 1 and received.duplicate is False
    finally:
        await second.close()


@pytest.fixture
async def proxied(postgres_url: str, clock: ManualClock) -> AsyncIterator[tuple[Any, ...]]:
    """A service on PostgreSQL through the proxy, with the Telegram webhook and a stub."""
    url = make_url(postgres_url)
    proxy = TcpProxy(url.port or 5432)
    await proxy.start()
    stub = TelegramStub()
    await stub.start()
    settings = load_settings(
        None, database={"url": url.set(port=proxy.port).render_as_string(hide_password=False)},
        after_hours={"enabled": False},
        telegram={"token": TOKEN, "webhook_secret": WEBHOOK_SECRET, "api_base_url": stub.base_url})
    service = await Service.start(settings, clock=clock, migrate=True)
    app = create_app(service, background=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://supportbot") as http:
            yield service, http, proxy, stub
    finally:
        await service.outbox.channels["telegram"].close()  # type: ignore[attr-defined]
        await service.close()
        await stub.stop()
        await proxy.stop()


async def post(http: httpx.AsyncClient, update: dict[str, Any]) -> httpx.Response:
    return await http.post("/webhooks/telegram", content=json.dumps(update),
                           headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET,
                                    "Content-Type": "application/json"})


async def test_the_database_going_away_fails_requests_cleanly_and_they_succeed_after(
        proxied: tuple[Any, ...]) -> None:
    service, http, proxy, stub = proxied
    updates = [message_update(f"hello {n}", chat_id=9000 + n, update_id=880_000 + n)
               for n in range(12)]
    for update in updates[:4]:
        assert (await post(http, update)).status_code == 200
    await proxy.stop()  # the database restarts
    during = [await post(http, update) for update in updates[4:8]]
    assert all(r.status_code == 503 for r in during), [r.status_code for r in during]
    assert all(r.json()["error"].startswith("database unavailable") for r in during)
    await proxy.start()  # back: Telegram redelivers what got no 200
    for update in updates[4:]:
        assert (await post(http, update)).status_code == 200
    for update in updates[:4]:  # and some redeliveries of what did get through
        assert (await post(http, update)).status_code == 200
    await service.outbox.dispatch_due()
    async with service.db.sessions() as session:
        inbound = await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in"))
        unprocessed = await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in", Message.processed_at.is_(None)))
        conversations = await session.scalar(select(func.count()).select_from(Conversation))
        contacts = await session.scalar(select(func.count()).select_from(Contact))
    # Every message once, each with its contact and conversation: nothing half-written.
    assert (inbound, unprocessed, conversations, contacts) == (12, 0, 12, 12)
    for n in range(12):
        assert len(stub.sent_texts(9000 + n)) == 1, n


async def test_a_database_restart_between_requests_refuses_nothing(
        proxied: tuple[Any, ...]) -> None:
    """Pooled connections are not pinged before use (three round trips per transaction);
    one the server closed is replaced at checkout, so after a restart while idle every
    request, even several at once, finds a live connection."""
    service, http, proxy, stub = proxied
    updates = [message_update(f"hello {n}", chat_id=9100 + n, update_id=881_000 + n)
               for n in range(12)]
    # Several requests at once, so the pool holds several connections to go stale.
    first = await asyncio.gather(*(post(http, update) for update in updates[:4]))
    assert [r.status_code for r in first] == [200] * 4
    await proxy.stop()
    await proxy.start()  # restarted while nothing was asked of it
    after = [await post(http, update) for update in updates[4:6]]
    after += await asyncio.gather(*(post(http, update) for update in updates[6:]))
    assert [r.status_code for r in after] == [200] * 8
    await service.outbox.dispatch_due()
    for n in range(12):
        assert len(stub.sent_texts(9100 + n)) == 1, n


async def test_outcomes_written_after_a_restart_are_not_lost_nor_sent_twice(
        proxied: tuple[Any, ...], clock: ManualClock) -> None:
    """Replies being sent while the database restarts: writing their outcomes afterwards
    is the first use of the stale connections, and it must succeed (were it dropped, the
    rows would go out again when their lease ends)."""
    service, http, proxy, stub = proxied
    updates = [message_update(f"hello {n}", chat_id=9300 + n, update_id=883_000 + n)
               for n in range(4)]
    first = await asyncio.gather(*(post(http, update) for update in updates))
    assert [r.status_code for r in first] == [200] * 4
    outbox = service.outbox
    claimed = await outbox._claim_due("telegram", 10)
    assert len(claimed) == 4
    outcomes = [await outbox._send(item) for item in claimed]
    await proxy.stop()
    await proxy.start()  # the restart happens while the sends are under way
    await outbox._record("telegram", outcomes)
    assert outcomes == []  # written, not dropped
    clock.advance(timedelta(seconds=outbox.settings.lease_seconds + 1))
    await outbox.dispatch_due()
    assert [len(stub.sent_texts(9300 + n)) for n in range(4)] == [1, 1, 1, 1]
    async with service.db.sessions() as session:
        statuses = (await session.scalars(select(OutboxItem.status))).all()
    assert statuses == ["sent"] * 4


async def test_a_connection_closed_by_an_idle_timeout_is_replaced(postgres_url: str) -> None:
    """A server or pooler closing idle connections (idle_session_timeout, PgBouncer's
    server_idle_timeout) costs nothing: the closed connection is replaced at checkout."""
    db = Database(postgres_url)
    try:
        async with db.engine.begin() as connection:
            await connection.execute(sql_text("SET idle_session_timeout = 300"))  # ms, this session
        await asyncio.sleep(0.8)  # the server closes the pooled connection meanwhile
        async with db.engine.begin() as connection:
            assert (await connection.execute(sql_text("SELECT 1"))).scalar() == 1
    finally:
        await db.dispose()


async def test_a_platform_failing_for_a_while_gets_everything_later_in_order_once(
        proxied: tuple[Any, ...], clock: ManualClock) -> None:
    service, http, _, stub = proxied
    stub.fail("sendMessage", 500, "Internal Server Error", times=3)
    stub.fail("sendMessage", 429, "Too Many Requests: retry after 2", retry_after=2, times=2)
    texts = ["first", "second", "third", "fourth", "fifth"]
    for n, text in enumerate(texts):
        assert (await post(http, message_update(text, chat_id=9100,
                                                update_id=890_000 + n))).status_code == 200
    for _ in range(30):  # time passes; the outbox retries with backoff
        clock.advance(timedelta(seconds=30))
        await service.outbox.dispatch_due()
    sent = stub.sent_texts(9100)
    assert len(sent) == len(texts)  # each reply once
    async with service.db.sessions() as session:
        order = (await session.execute(
            select(OutboxItem.id, OutboxItem.sent_at).where(OutboxItem.channel == "telegram")
            .order_by(OutboxItem.id))).all()
    sent_times = [row.sent_at for row in order]
    # Replies to one chat went out in the order they were queued, even across retries.
    assert all(t is not None for t in sent_times) and sent_times == sorted(sent_times)
    assert len(stub.calls_to("sendMessage")) == len(texts) + 5  # the 5 refused attempts
