"""The ``serve`` loop of the outbox finds and claims its rows in batches (one statement per
batch, as many rows as free send slots) and writes the outcomes of finished sends together
(one executemany per group). Cheap, yet the same guarantees: each reply once, each chat's
replies in order, nothing lost when the database cannot take the outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Integer, bindparam, event, func, insert, or_, select
from sqlalchemy.orm import aliased

from bot.channels.base import Delivery, PermanentDeliveryError, TemporaryDeliveryError
from bot.clock import ManualClock
from bot.config import OutboxSettings, load_settings
from bot.db.models import OutboxItem
from bot.metrics import REGISTRY
from bot.outbox import DUE_HEADS, OutboxDispatcher
from bot.service import Service

SETTINGS = OutboxSettings(concurrency=4, batch_size=200, poll_seconds=0.05)


class Platform:
    """A channel that answers after a little while (in a shuffled order), remembers what
    it was given, and checks that a chat never has two replies on the way at once."""

    def __init__(self, name: str = "telegram", delay: float = 0.002,
                 log: list[Delivery] | None = None, busy: set[str] | None = None) -> None:
        self.name = name
        self.delay = delay
        self.sent: list[Delivery] = []
        self.log = log if log is not None else []  # shared by the dispatchers of a test
        self.busy = busy if busy is not None else set()
        self.failures: dict[int, Exception] = {}  # outbox id -> raised once
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = 0  # sends begun

    async def send(self, delivery: Delivery) -> str | None:
        assert delivery.chat not in self.busy, f"two replies to {delivery.chat} at once"
        self.busy.add(delivery.chat)
        self.in_flight += 1
        self.started += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            await asyncio.sleep(random.random() * self.delay)
            if (failure := self.failures.pop(delivery.outbox_id, None)) is not None:
                raise failure
            self.sent.append(delivery)
            self.log.append(delivery)
            return f"{self.name}-{delivery.outbox_id}"
        finally:
            self.in_flight -= 1
            self.busy.discard(delivery.chat)


async def queue(service: Service, chats: int, per_chat: int, channel: str = "telegram",
                **row: Any) -> list[int]:
    """Replies queued as the pipeline does, interleaved: chat 0, 1, ..., then again."""
    now = service.clock.now()
    rows = [{"channel": channel, "chat": f"c{c}", "status": "pending", "attempts": 0,
             "payload": {"text": f"reply {n} to c{c}", "kind": "text", "to": "customer"},
             "next_attempt_at": now, "created_at": now, **row}
            for n in range(per_chat) for c in range(chats)]
    async with service.db.engine.begin() as connection:
        await connection.execute(insert(OutboxItem), rows)
        return list((await connection.execute(
            select(OutboxItem.id).order_by(OutboxItem.id.desc()).limit(len(rows)))).scalars())


async def rows(service: Service) -> list[OutboxItem]:
    async with service.db.sessions() as session:
        return list((await session.execute(select(OutboxItem).order_by(OutboxItem.id))).scalars())


@contextlib.asynccontextmanager
async def serving(*dispatchers: OutboxDispatcher) -> AsyncIterator[None]:
    """The dispatchers' ``serve`` loops (``run``) until the block ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
    try:
        yield
    finally:
        stop.set()
        for dispatcher in dispatchers:
            dispatcher.wake()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def until(what: str, probe: Callable[[], Awaitable[bool] | bool],
                limit: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        result = probe()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what}: not within {limit:.0f} s"
        await asyncio.sleep(0.01)


async def all_sent(service: Service) -> bool:
    return all(row.status == "sent" for row in await rows(service))


def per_chat_in_order(log: list[Delivery]) -> dict[str, list[int]]:
    chats: dict[str, list[int]] = {}
    for delivery in log:
        chats.setdefault(delivery.chat, []).append(delivery.outbox_id)
    for chat, ids in chats.items():
        assert ids == sorted(ids), f"{chat}: replies out of order: {ids}"
    return chats


def paused(channel: str = "telegram") -> float | None:
    """The ``supportbot_outbox_paused`` gauge of the channel."""
    return REGISTRY.get_sample_value("supportbot_outbox_paused", {"channel": channel})


def count_statements(service: Service) -> list[str]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split())[:60])

    event.listen(service.db.engine.sync_engine, "before_cursor_execute", record)
    return statements


async def test_the_serve_loop_costs_well_under_one_statement_per_reply(
        service: Service, clock: ManualClock) -> None:
    """Before: a due-heads SELECT per batch plus a claim and an outcome per reply (two
    statements, two transactions per reply). Now one claim per batch of free slots and
    one executemany per group of finished sends."""
    platform = Platform()
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform},
                                  OutboxSettings(concurrency=8, poll_seconds=30))
    await queue(service, chats=16, per_chat=4)
    statements = count_statements(service)
    async with serving(dispatcher):
        await until("all sent", lambda: len(platform.sent) == 64)
    statements = statements.copy()  # the serve loop's, up to its end
    replies = 64
    assert await all_sent(service)
    per_chat_in_order(platform.sent)
    # A turn of the loop (a send finishing) writes the outcomes of the sends that have
    # finished and claims as many rows as slots are free: two statements for a few
    # replies (about 0.5 per reply here; 2.4 before).
    claims = [s for s in statements if s.startswith("WITH due_heads")]
    outcomes = [s for s in statements if s.startswith("UPDATE outbox SET")]
    looks = [s for s in statements if s.startswith("SELECT")]  # SQLite, when idle
    assert len(claims) + len(outcomes) + len(looks) == len(statements), statements
    assert len(claims) + len(outcomes) <= replies * 3 // 4, statements
    assert 8 <= len(claims) <= replies // 2 and len(outcomes) <= replies // 2
    # SQLite looks before claiming once claims come back short (the last chats' replies).
    assert len(looks) <= (len(claims) // 2 if service.db.is_sqlite else 0), statements
    assert len(statements) <= replies, statements
    assert platform.max_in_flight <= 8


async def test_an_idle_loop_on_sqlite_only_reads(service: Service, clock: ManualClock) -> None:
    """SQLite has one writer at a time: an idle loop polling with a claim (an UPDATE, which
    takes the write lock even when it changes nothing) would hold up the pipeline's
    writes. So with nothing due it only looks; PostgreSQL claims straight away."""
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": Platform()},
                                  OutboxSettings(poll_seconds=0.02))
    statements = count_statements(service)
    async with serving(dispatcher):
        await asyncio.sleep(0.2)
    assert len(statements) >= 3
    kind = "SELECT" if service.db.is_sqlite else "WITH due_heads"
    assert all(s.startswith(kind) for s in statements), statements


async def test_claims_no_more_rows_than_free_send_slots(service: Service,
                                                        clock: ManualClock) -> None:
    """Every claimed row is being sent: no lease runs while a row waits for a slot."""
    platform = Platform()
    platform.gate.clear()  # the platform does not answer for now
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform},
                                  OutboxSettings(concurrency=3, poll_seconds=0.02))
    await queue(service, chats=10, per_chat=2)
    async with serving(dispatcher):
        await until("three sends under way", lambda: platform.in_flight == 3)
        await asyncio.sleep(0.2)  # several polls: nothing more is claimed
        claimed = [r for r in await rows(service) if r.attempts > 0]
        assert len(claimed) == 3 and platform.in_flight == 3
        assert all(r.status == "pending" and r.next_attempt_at > clock.now() for r in claimed)
        assert sorted(r.chat for r in claimed) == ["c0", "c1", "c2"]  # the oldest heads
        platform.gate.set()
        await until("all sent", lambda: len(platform.sent) == 20)
    assert platform.max_in_flight == 3
    assert [r.attempts for r in await rows(service)] == [1] * 20
    per_chat_in_order(platform.sent)


async def test_each_chat_keeps_its_order_with_batched_claims_and_retries(
        service: Service, clock: ManualClock) -> None:
    platform = Platform(delay=0.005)
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform}, SETTINGS)
    ids = await queue(service, chats=6, per_chat=5)
    first_of_c0 = min(ids)
    platform.failures[first_of_c0] = TemporaryDeliveryError("502 bad gateway")
    async with serving(dispatcher):
        # Everything but chat c0, whose first reply waits for its retry, and its others too.
        await until("other chats served", lambda: len(platform.sent) == 25)
        await asyncio.sleep(0.1)
        assert not [d for d in platform.sent if d.chat == "c0"]
        clock.advance(timedelta(minutes=5))
        dispatcher.wake()
        await until("all sent", lambda: len(platform.sent) == 30)
    chats = per_chat_in_order(platform.sent)
    assert chats["c0"][0] == first_of_c0 and len(chats["c0"]) == 5
    assert await all_sent(service)
    [retried] = [r for r in await rows(service) if r.id == first_of_c0]
    assert (retried.attempts, retried.last_error) == (2, None)


async def test_a_platform_asking_to_wait_pauses_the_whole_channel(
        service: Service, clock: ManualClock) -> None:
    """A 429 with retry_after (Telegram's flood control) stops every new send on the
    channel until then, not only the refused chat's: with many sends in flight, the limit
    is met once instead of every chat using up attempts on it. The sends under way finish;
    the pause shows in /metrics."""
    platform = Platform(delay=0.005)
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform},
                                  OutboxSettings(concurrency=4, poll_seconds=0.05))
    ids = await queue(service, chats=40, per_chat=1)
    refused = min(ids)  # among the first four sends
    platform.failures[refused] = TemporaryDeliveryError("429 too many requests",
                                                        retry_after=30)

    async def refusal_written() -> bool:
        return any(r.id == refused and r.last_error for r in await rows(service))

    async with serving(dispatcher):
        await until("the 429 written", refusal_written)
        await until("the sends under way finished", lambda: platform.in_flight == 0)
        started = platform.started
        await asyncio.sleep(0.3)  # six polls: nothing new goes out, other chats' neither
        # At most the sends under way and those of a turn already claiming when the 429
        # came back: two slots' worth, not the forty.
        assert platform.started == started <= 8
        assert paused() == 1
        clock.advance(timedelta(seconds=31))
        dispatcher.wake()
        await until("all sent", lambda: len(platform.sent) == 40)
        assert paused() == 0
    [retried] = [r for r in await rows(service) if r.id == refused]
    assert (retried.status, retried.attempts) == ("sent", 2)
    assert sum(r.attempts for r in await rows(service)) == 41  # one refused attempt


async def test_dispatch_due_leaves_a_channel_alone_while_its_platform_asks_to_wait(
        service: Service, clock: ManualClock) -> None:
    """``dispatch_due`` (the web chat's request, replay) keeps the pause too: after a 429
    it sends nothing more to that platform until the pause is over, while other
    channels' replies go; and it can be kept to one channel."""
    telegram, other = Platform(), Platform(name="other")
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": telegram, "other": other},
                                  OutboxSettings())
    ids = await queue(service, chats=3, per_chat=1)
    await queue(service, chats=2, per_chat=1, channel="other")
    telegram.failures[min(ids)] = TemporaryDeliveryError("429", retry_after=30)
    assert await dispatcher.dispatch_due(channel="telegram") == 0
    assert telegram.started == 1 and other.started == 0  # kept to its channel
    assert await dispatcher.dispatch_due() == 2  # the other platform's; telegram waits
    assert (telegram.started, len(other.sent)) == (1, 2)
    assert paused() == 1
    assert await dispatcher.dispatch_due() == 0  # still waiting
    clock.advance(timedelta(seconds=31))
    assert await dispatcher.dispatch_due() == 3
    assert [d.outbox_id for d in telegram.sent] == sorted(ids)
    assert paused() == 0


async def test_dispatch_due_goes_on_with_the_other_channels_after_a_429(
        service: Service, clock: ManualClock) -> None:
    telegram, other = Platform(), Platform(name="other")
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": telegram, "other": other},
                                  OutboxSettings())
    ids = await queue(service, chats=3, per_chat=1)  # first by id: telegram's
    await queue(service, chats=2, per_chat=1, channel="other")
    telegram.failures[min(ids)] = TemporaryDeliveryError("429", retry_after=30)
    assert await dispatcher.dispatch_due() == 2
    assert (telegram.started, len(other.sent)) == (1, 2)


async def test_a_pause_is_cut_at_a_minute(service: Service, clock: ManualClock) -> None:
    """A long retry_after (one chat's flood penalty) pauses the channel a minute at most;
    the refused reply itself waits all of it."""
    platform = Platform()
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform}, OutboxSettings())
    ids = await queue(service, chats=2, per_chat=1)
    platform.failures[min(ids)] = TemporaryDeliveryError("429", retry_after=3600)
    assert await dispatcher.dispatch_due() == 0
    assert dispatcher.pause_left("telegram") == 60
    clock.advance(timedelta(seconds=61))
    assert await dispatcher.dispatch_due() == 1  # the other chat's; the refused one waits
    assert [d.outbox_id for d in platform.sent] == [max(ids)]


async def test_two_dispatchers_on_one_database_send_each_reply_once_in_order(
        service: Service, clock: ManualClock) -> None:
    log: list[Delivery] = []
    busy: set[str] = set()
    platforms = [Platform(log=log, busy=busy), Platform(log=log, busy=busy)]
    dispatchers = [OutboxDispatcher(service.db, clock, {"telegram": p}, SETTINGS)
                   for p in platforms]
    await queue(service, chats=12, per_chat=4)
    async with serving(*dispatchers):
        await until("all sent", lambda: len(log) >= 48)
        await until("all recorded", lambda: all_sent(service))
    ids = [d.outbox_id for d in log]
    assert len(ids) == 48 and len(set(ids)) == 48
    per_chat_in_order(log)
    assert all(p.sent for p in platforms)  # both took part


@pytest.mark.postgres
async def test_two_processes_serving_one_postgresql_send_each_reply_once_in_order(
        postgres_url: str, clock: ManualClock) -> None:
    """Two services (two engines and connection pools, as two processes have) claim from
    one PostgreSQL at the same time, under READ COMMITTED."""
    settings = load_settings(None, database={"url": postgres_url})
    log: list[Delivery] = []
    busy: set[str] = set()
    platforms = [Platform(log=log, busy=busy, delay=0.004) for _ in range(2)]
    services = [await Service.start(settings, clock=clock, channels={"telegram": p},
                                    migrate=True) for p in platforms]
    try:
        dispatchers = [OutboxDispatcher(s.db, clock, {"telegram": p}, SETTINGS)
                       for s, p in zip(services, platforms, strict=True)]
        await queue(services[0], chats=20, per_chat=5)
        async with serving(*dispatchers):
            await until("all sent", lambda: len(log) >= 100, limit=30)
            await until("all recorded", lambda: all_sent(services[0]))
        ids = [d.outbox_id for d in log]
        assert len(ids) == 100 and len(set(ids)) == 100
        per_chat_in_order(log)
        assert all(p.sent for p in platforms)
    finally:
        for started in services:
            await started.close()


@pytest.mark.postgres
async def test_a_claim_passes_over_rows_another_process_is_claiming(
        postgres_url: str, clock: ManualClock) -> None:
    """One process's claim, not yet committed, holds its rows: another claims the next
    chats' heads (SKIP LOCKED), never the same rows nor the next reply of their chats;
    after the commit those rows are not due (their lease), so still not taken."""
    settings = load_settings(None, database={"url": postgres_url})
    first = await Service.start(settings, clock=clock, channels={}, migrate=True)
    second = await Service.start(settings, clock=clock, channels={}, migrate=True)
    try:
        a = OutboxDispatcher(first.db, clock, {}, SETTINGS)
        b = OutboxDispatcher(second.db, clock, {}, SETTINGS)
        await queue(first, chats=6, per_chat=2)
        from bot.outbox import CLAIM_DUE

        now = clock.now()
        async with first.db.engine.connect() as held:
            await held.begin()
            taken = (await held.execute(CLAIM_DUE, {
                "now": now, "lease_end": now + timedelta(seconds=60),
                "claim_channel": "telegram", "limit": 2, "busy": []})).all()
            assert sorted(row.chat for row in taken) == ["c0", "c1"]
            claimed = await asyncio.wait_for(b._claim_due("telegram", 10), 5)
            assert sorted(item.chat for item in claimed) == ["c2", "c3", "c4", "c5"]
            await held.commit()
        assert await b._claim_due("telegram", 10) == []  # c0..c5 all in flight now
        assert await a._claim_due("telegram", 10) == []
    finally:
        await first.close()
        await second.close()


async def test_concurrent_claims_never_return_a_row_twice(service: Service,
                                                          clock: ManualClock) -> None:
    """Claims at the same moment, each for up to 7 rows: every row is claimed once. (On
    PostgreSQL a claim may get fewer rows than its limit while others are claiming: it
    passes over the rows they hold.)"""
    dispatchers = [OutboxDispatcher(service.db, clock, {}, SETTINGS) for _ in range(4)]
    await queue(service, chats=40, per_chat=1)
    results: list[list[int]] = []

    async def claim(dispatcher: OutboxDispatcher) -> None:
        for _ in range(40):
            claimed = await dispatcher._claim_due("telegram", 7)
            results.append([item.id for item in claimed])
            if sum(map(len, results)) >= 40:
                return

    await asyncio.gather(*(claim(d) for d in dispatchers))
    ids = [outbox_id for claimed in results for outbox_id in claimed]
    assert len(ids) == len(set(ids)) == 40
    assert max(map(len, results)) <= 7


async def test_a_claim_that_fails_does_not_take_the_outcomes_written_with_it(
        service: Service, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A turn writes the outcomes and claims in one transaction. When the claim fails (a
    statement timeout, say) the outcomes are written on their own: nothing goes out twice
    and the loop carries on with the next replies."""
    platform = Platform()
    platform.gate.clear()
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform}, SETTINGS)
    await queue(service, chats=2, per_chat=2)
    marked: list[str] = []
    failed_claims: list[str] = []

    def fail_claim(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE outbox SET status"):
            marked.append(statement)  # an outcome: the claim after it in this turn fails
        elif marked and not failed_claims and statement.lstrip().startswith("WITH") \
                and "due_heads" in statement:
            failed_claims.append(statement)
            raise ConnectionResetError("canceling statement due to statement timeout")

    event.listen(service.db.engine.sync_engine, "before_cursor_execute", fail_claim)
    caplog.set_level(logging.ERROR, logger="bot.outbox")
    try:
        async with serving(dispatcher):
            await until("both first replies under way", lambda: platform.in_flight == 2)
            platform.gate.set()
            await until("all four sent and recorded", lambda: all_sent(service))
    finally:
        event.remove(service.db.engine.sync_engine, "before_cursor_execute", fail_claim)
    assert failed_claims, "the claim after the first outcomes never ran"
    assert "deliveries alone" in caplog.text
    assert [r.attempts for r in await rows(service)] == [1, 1, 1, 1]  # none sent twice
    assert sorted(d.chat for d in platform.sent) == ["c0", "c0", "c1", "c1"]


async def test_an_outcome_that_cannot_be_written_is_retried_after_the_lease(
        service: Service, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """The database refuses the outcome write once: nothing is lost. The rows stay claimed
    and go out again when their lease ends (at-least-once); the loop carries on."""
    platform = Platform()
    platform.gate.clear()
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform}, SETTINGS)
    reported: list[tuple[int, str]] = []
    await queue(service, chats=2, per_chat=1)
    database_away = True
    refused: list[Any] = []

    def refuse(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if database_away and statement.startswith("UPDATE outbox SET") \
                and "RETURNING" not in statement:  # an outcome, not a claim
            refused.append(parameters)
            raise ConnectionResetError("the database went away")

    event.listen(service.db.engine.sync_engine, "before_cursor_execute", refuse)
    original_report = dispatcher._report

    async def report(outcome: Any) -> None:
        reported.append((outcome.item.id, outcome.status))
        await original_report(outcome)

    dispatcher._report = report  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="bot.outbox")
    async with serving(dispatcher):
        await until("both sends under way", lambda: platform.in_flight == 2)
        platform.gate.set()
        await until("both sent", lambda: len(platform.sent) == 2)
        await until("the write refused", lambda: bool(refused))
        await asyncio.sleep(0.2)  # a few turns: the loop carries on
        database_away = False
        await asyncio.sleep(0.2)  # and now the rows are not due: nothing to write or claim
        first_try = await rows(service)
        assert [(r.status, r.attempts) for r in first_try] == [("pending", 1)] * 2
        assert all(r.next_attempt_at == clock.now() + timedelta(seconds=60)
                   for r in first_try)
        assert reported == []  # no metrics, no failure reports for an unwritten outcome
        assert "cannot record the outcome of" in caplog.text
        clock.advance(timedelta(seconds=SETTINGS.lease_seconds))
        dispatcher.wake()
        await until("sent again and recorded", lambda: all_sent(service))
    assert [r.attempts for r in await rows(service)] == [2, 2]
    assert sorted(d.chat for d in platform.sent) == ["c0", "c0", "c1", "c1"]
    assert sorted(status for _, status in reported) == ["sent", "sent"]
    assert len(refused) in (1, 2)  # one write for both outcomes, or one each


async def test_mixed_outcomes_are_written_together_and_reported_after_the_write(
        service: Service, clock: ManualClock) -> None:
    platform = Platform()
    platform.gate.clear()
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform}, SETTINGS)
    ids = sorted(await queue(service, chats=4, per_chat=1))
    platform.failures[ids[1]] = PermanentDeliveryError("403 bot was blocked")
    platform.failures[ids[2]] = TemporaryDeliveryError("429", retry_after=120, parts_sent=1)
    seen: list[tuple[int, str, str]] = []

    async def on_failed(item: OutboxItem, status: str, error: str) -> None:
        [row] = [r for r in await rows(service) if r.id == item.id]
        seen.append((item.id, status, row.status))  # the outcome is already written

    dispatcher.on_failed = on_failed

    async def recorded() -> bool:
        return [(r.status, r.attempts) for r in await rows(service)] == [
            ("sent", 1), ("failed", 1), ("pending", 1), ("sent", 1)]

    async with serving(dispatcher):
        await until("four sends under way", lambda: platform.in_flight == 4)
        platform.gate.set()
        await until("failure reported", lambda: bool(seen))
        await until("recorded", recorded)
    by_id = {r.id: r for r in await rows(service)}
    assert by_id[ids[0]].external_id == f"telegram-{ids[0]}" and by_id[ids[0]].sent_at
    assert by_id[ids[1]].last_error == "403 bot was blocked"
    retry = by_id[ids[2]]
    assert retry.payload["parts_sent"] == 1 and retry.last_error == "429"
    assert retry.next_attempt_at >= clock.now() + timedelta(seconds=120)
    assert seen == [(ids[1], "failed", "failed")]


def reference_due_heads() -> Any:
    """The due-heads rule as first written (a correlated subquery per row), to check the
    grouped statement the dispatcher uses gives exactly the same rows."""
    older = aliased(OutboxItem)
    now = bindparam("now", type_=OutboxItem.next_attempt_at.type)
    oldest_pending = (
        select(func.min(older.id))
        .where(older.status == "pending", older.channel == OutboxItem.channel,
               older.chat == OutboxItem.chat,
               or_(older.next_attempt_at <= now, older.attempts > 0))
        .scalar_subquery())
    return (select(OutboxItem.id)
            .where(OutboxItem.status == "pending", OutboxItem.next_attempt_at <= now,
                   OutboxItem.channel.in_(bindparam("channels", expanding=True)),
                   OutboxItem.id == oldest_pending)
            .order_by(OutboxItem.id).limit(bindparam("limit", type_=Integer)))


async def test_the_due_heads_are_those_of_the_original_rule(service: Service,
                                                            clock: ManualClock) -> None:
    rng = random.Random(7)
    now = clock.now()
    generated = []
    for _ in range(400):
        status = rng.choice(["pending", "pending", "pending", "sent", "failed", "held"])
        generated.append({
            "channel": rng.choice(["telegram", "wechat", "console"]),
            "chat": f"c{rng.randrange(25)}", "status": status,
            "attempts": rng.choice([0, 0, 1, 3]),
            "next_attempt_at": now + timedelta(minutes=rng.choice([-30, -1, 0, 1, 30])),
            "created_at": now, "payload": {"text": "x", "kind": "text"}})
    async with service.db.engine.begin() as connection:
        await connection.execute(insert(OutboxItem), generated)
    reference = reference_due_heads()
    async with service.db.engine.connect() as connection:
        for channels in (["telegram"], ["telegram", "wechat", "console"], ["wechat"]):
            for limit in (1, 5, 200):
                params = {"now": now, "channels": channels, "limit": limit}
                expected = list((await connection.execute(reference, params)).scalars())
                got = list((await connection.execute(DUE_HEADS, params)).scalars())
                assert got == expected, (channels, limit)
                assert expected or limit == 0
    # And the serve loop's claim takes the same heads, oldest first, up to its limit.
    dispatcher = OutboxDispatcher(service.db, clock, {}, SETTINGS)
    async with service.db.engine.connect() as connection:
        expected = list((await connection.execute(reference, {
            "now": now, "channels": ["wechat"], "limit": 6})).scalars())
    assert [item.id for item in await dispatcher._claim_due("wechat", 6)] == expected


async def test_a_send_outliving_its_lease_is_not_claimed_again_by_its_own_loop(
        service: Service, clock: ManualClock) -> None:
    """The clock passes the lease while a send is still under way (a platform stalling):
    the loop must not claim that row again (a second copy, and the chat's next reply
    overtaking it); the chat waits until the send ends, then goes on in order."""
    platform = Platform()
    platform.gate.clear()
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform}, SETTINGS)
    first, second = sorted(await queue(service, chats=1, per_chat=2))
    async with serving(dispatcher):
        await until("the first reply under way", lambda: platform.in_flight == 1)
        clock.advance(timedelta(seconds=SETTINGS.lease_seconds + 1))
        for _ in range(5):  # several turns with the lease over
            dispatcher.wake()
            await asyncio.sleep(0.06)
        assert platform.in_flight == 1 and platform.max_in_flight == 1
        platform.gate.set()
        await until("both sent", lambda: all_sent(service))
    assert [d.outbox_id for d in platform.sent] == [first, second]
    assert [r.attempts for r in await rows(service)] == [1, 1]


async def test_an_outcome_is_not_written_over_a_later_attempt(
        service: Service, clock: ManualClock) -> None:
    """Another process claimed the row after this attempt's lease ran out, and recorded
    its own outcome: this attempt's late outcome must not overwrite it, whether the later
    attempt is to be retried (same status, more attempts) or is done."""
    platform = Platform()
    dispatcher = OutboxDispatcher(service.db, clock, {"telegram": platform}, SETTINGS)
    (outbox_id,) = await queue(service, chats=1, per_chat=1)
    stale = await dispatcher._claim(outbox_id)
    assert stale is not None
    late_success = await dispatcher._send(stale)  # sent, but its outcome arrives late
    clock.advance(timedelta(seconds=SETTINGS.lease_seconds + 1))
    platform.failures[outbox_id] = TemporaryDeliveryError("502")
    retried = await dispatcher._deliver(outbox_id)  # the later attempt: to be retried
    assert retried is not None and retried.status == "pending"
    await dispatcher._write_outcomes([late_success])
    (row,) = await rows(service)
    assert (row.status, row.attempts, row.last_error) == ("pending", 2, "502")

    clock.advance(timedelta(hours=1))
    sent = await dispatcher._deliver(outbox_id)  # the next attempt: sent
    assert sent is not None and sent.status == "sent"
    late_failure = dataclasses.replace(late_success, values={
        "status": "failed", "last_error": "late"})
    await dispatcher._write_outcomes([late_failure])
    (row,) = await rows(service)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
