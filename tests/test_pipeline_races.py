"""Pipeline.handle's one-transaction path and process(): races forced step by step."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from bot.clock import ManualClock
from bot.db.models import Contact, Conversation, Message
from bot.service import Service
from bot.types import InboundMessage, Reply
from tests.telegram_stub import message_update
from tests.test_faults import post
from tests.test_faults import proxied as proxied  # the fixture: PostgreSQL behind a proxy


def _inbound(chat: str, text: str, external_id: str) -> InboundMessage:
    return InboundMessage(channel="telegram", chat=chat, text=text, external_id=external_id)


def _hold_processing(service: Service, monkeypatch: pytest.MonkeyPatch,
                     text: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the processing of the message ``text`` stop in the dialogue, its transaction
    open, until released: returns the events (paused, release)."""
    paused, release = asyncio.Event(), asyncio.Event()
    original = service.pipeline.dialogue.respond

    async def respond(session: Any, conversation: Any, customer: Any, message: Any,
                      now: Any) -> Any:
        if message.text == text:
            paused.set()
            await release.wait()
        return await original(session, conversation, customer, message, now)

    monkeypatch.setattr(service.pipeline.dialogue, "respond", respond)
    return paused, release


async def test_concurrent_failed_verifications_of_one_chat_are_both_counted(
        service: Service, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two wrong order-number/e-mail attempts of one chat processed at the same time: the
    second must read the contact as the first left it (the failure counter is what locks
    verification after ``verify_attempts``), not as it was before the first committed."""
    chat = "tg-verify-race"
    await service.pipeline.handle(_inbound(chat, "hello", "v-0"))
    clock.advance(timedelta(minutes=1))

    first_text = "Where is my order PO-55555? first@elsewhere.example"
    second_text = "Where is my order PO-55556? second@elsewhere.example"
    # the first holds its transaction open in the dialogue
    first_paused, release_first = _hold_processing(service, monkeypatch, first_text)
    second_read_contact = asyncio.Event()
    first = asyncio.create_task(service.pipeline.handle(_inbound(chat, first_text, "v-1")))
    await asyncio.wait_for(first_paused.wait(), 10)

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sql = statement.lstrip()
        if (sql.upper().startswith("SELECT") and "FROM contacts" in sql) \
                or "UPDATE contacts" in sql:  # read, or touched and read back
            second_read_contact.set()  # the first is paused: this is the second's read

    engine = service.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before_execute)
    try:
        second = asyncio.create_task(service.pipeline.handle(_inbound(chat, second_text, "v-2")))
        if service.db.is_postgres:
            await asyncio.wait_for(second_read_contact.wait(), 10)
        # its read is under way (or waits on a lock; on SQLite the process's writers take
        # turns, so it waits for its turn) before...
        await asyncio.sleep(0.3)
        release_first.set()  # ...the first goes on and commits
        await asyncio.wait_for(asyncio.gather(first, second), 30)
    finally:
        event.remove(engine, "before_cursor_execute", before_execute)

    async with service.db.sessions() as session:
        failures = await session.scalar(select(Contact.verify_failures).where(
            Contact.chat == chat))
    assert failures == 2


# --- the database failing while handle() processes a webhook's message (PostgreSQL) ----------


def _cut_links(proxy: Any) -> None:
    """Cut the open connections; new ones are still accepted."""
    for writer in list(proxy._links):
        writer.close()
    proxy._links.clear()


@pytest.mark.parametrize("database_back", [False, True])
async def test_the_database_failing_during_processing_gives_503_and_the_redelivery_is_answered(
        proxied: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch, database_back: bool) -> None:
    service, http, proxy, stub = proxied
    original = service.pipeline.dialogue.respond
    failed = []

    async def respond(session: Any, conversation: Any, customer: Any, message: Any,
                      now: Any) -> Any:
        if not failed:
            failed.append(message.text)
            if database_back:
                _cut_links(proxy)  # this transaction's connection dies; the server is up
            else:
                await proxy.stop()  # the database goes away mid-processing
        return await original(session, conversation, customer, message, now)

    monkeypatch.setattr(service.pipeline.dialogue, "respond", respond)
    update = message_update("hello", chat_id=7700, update_id=770_001)
    response = await post(http, update)
    assert failed and response.status_code == 503, (response.status_code, response.text)
    if not database_back:
        await proxy.start()
    async with service.db.sessions() as session:
        stored = await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in", Message.processed_at.is_(None)))
    assert stored == (1 if database_back else 0)
    assert (await post(http, update)).status_code == 200  # Telegram redelivers
    assert (await post(http, update)).status_code == 200  # and once more
    await service.outbox.dispatch_due()
    assert len(stub.sent_texts(7700)) == 1


async def test_processing_a_stored_message_and_handling_the_next_of_its_chat_do_not_deadlock(
        service: Service, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """WeChat (receive, then process), recover() and a redelivery of a message whose first
    processing failed use process(): it locks the conversation, and a failed verification
    then writes the contact. handle() of the chat's next message takes the contact first,
    then the conversation."""
    chat = "tg-lock-order"
    await service.pipeline.handle(_inbound(chat, "hello", "d-0"))
    first_text = "Where is my order PO-55555? first@elsewhere.example"
    second_text = "Where is my order PO-55556? second@elsewhere.example"
    received = await service.pipeline.receive(_inbound(chat, first_text, "d-1"))
    clock.advance(timedelta(seconds=5))
    # process() holds the conversation in the dialogue
    first_paused, release_first = _hold_processing(service, monkeypatch, first_text)
    first = asyncio.create_task(service.pipeline.process(received.message_id))
    await asyncio.wait_for(first_paused.wait(), 10)
    second = asyncio.create_task(service.pipeline.handle(_inbound(chat, second_text, "d-2")))
    await asyncio.sleep(0.5)  # handle() has the contact and waits for the conversation
    release_first.set()
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 30)
    assert [type(r).__name__ for r in results] == ["Processed", "Processed"], results
    async with service.db.sessions() as session:
        failures = await session.scalar(select(Contact.verify_failures).where(
            Contact.chat == chat))
    assert failures == 2


async def test_a_new_chats_first_two_messages_at_once_are_both_answered(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new chat's first two messages stored at the same time (two processes): on
    PostgreSQL the second's INSERT of the contact waits for the first's uncommitted row,
    then inserts nothing; the second then joins the contact and conversation the first
    created, like a chat's next message, instead of failing on the unique constraint."""
    chat = "tg-contact-race"
    # the first holds its transaction (and the contact it created) in the dialogue
    first_paused, release_first = _hold_processing(service, monkeypatch, "hello")
    second_inserting = asyncio.Event()
    inserts: list[str] = []

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith("INSERT INTO contacts"):
            inserts.append(statement)
            if len(inserts) == 2:  # the first inserted before it paused: the second's
                second_inserting.set()

    engine = service.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before_execute)
    try:
        first = asyncio.create_task(service.pipeline.handle(_inbound(chat, "hello", "cr-1")))
        await asyncio.wait_for(first_paused.wait(), 10)
        second = asyncio.create_task(service.pipeline.handle(
            _inbound(chat, "Where is my order?", "cr-2")))
        if service.db.is_postgres:
            await asyncio.wait_for(second_inserting.wait(), 10)
            await asyncio.sleep(0.2)  # now waiting on the first's row in the unique index
        else:  # one writer at a time: the second waits for the first's commit anyway
            await asyncio.sleep(0.2)
        release_first.set()
        processed = await asyncio.wait_for(asyncio.gather(first, second), 30)
    finally:
        event.remove(engine, "before_cursor_execute", before_execute)
    assert all(p.understanding is not None and p.outbox_ids for p in processed)
    assert processed[0].conversation_id == processed[1].conversation_id
    async with service.db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Contact)) == 1
        unprocessed = await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in", Message.processed_at.is_(None)))
    assert unprocessed == 0


async def test_two_messages_after_a_resolution_join_one_new_conversation(
        service: Service, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat's conversation was resolved; its next two messages come at once. The
    first opens a new conversation and holds the contact while it is processed. The
    second's look for the open conversation (on PostgreSQL part of the statement that
    waits for the contact) was made before the first committed; it must look again
    rather than open a second conversation."""
    chat = "tg-reopen-race"
    first_reply = await service.pipeline.handle(_inbound(chat, "hello", "ro-0"))
    async with service.db.sessions.begin() as session:
        await session.execute(update(Conversation).where(
            Conversation.id == first_reply.conversation_id).values(
            status="resolved", resolved_at=clock.now()))
    clock.advance(timedelta(hours=1))
    first_paused, release_first = _hold_processing(service, monkeypatch, "hello again")
    second_touching = asyncio.Event()

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "UPDATE contacts" in statement:  # the first is paused: this is the second's
            second_touching.set()

    engine = service.db.engine.sync_engine
    first = asyncio.create_task(service.pipeline.handle(_inbound(chat, "hello again", "ro-1")))
    await asyncio.wait_for(first_paused.wait(), 10)
    event.listen(engine, "before_cursor_execute", before_execute)
    try:
        second = asyncio.create_task(service.pipeline.handle(
            _inbound(chat, "Where is my order?", "ro-2")))
        if service.db.is_postgres:  # (SQLite: the process's writers take turns)
            await asyncio.wait_for(second_touching.wait(), 10)
        await asyncio.sleep(0.3)  # waiting for the contact the first holds, or its turn
        release_first.set()
        processed = await asyncio.wait_for(asyncio.gather(first, second), 30)
    finally:
        event.remove(engine, "before_cursor_execute", before_execute)
    assert processed[0].conversation_id == processed[1].conversation_id \
        != first_reply.conversation_id
    async with service.db.sessions() as session:
        statuses = (await session.execute(select(Conversation.status).order_by(
            Conversation.id))).scalars().all()
    assert statuses == ["resolved", "open"]


async def test_recover_goes_on_past_a_message_that_cannot_be_processed(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose processing always fails (a bug) stays unprocessed, and the messages
    after it are still recovered: the service's start (which recovers) is not held up."""
    original = service.pipeline.dialogue.respond

    async def respond(session: Any, conversation: Any, customer: Any, message: Any,
                      now: Any) -> Any:
        if message.text == "poison":
            raise RuntimeError("a handler bug")
        return await original(session, conversation, customer, message, now)

    monkeypatch.setattr(service.pipeline.dialogue, "respond", respond)
    await service.pipeline.receive(_inbound("tg-poison", "poison", "p-1"))
    await service.pipeline.receive(_inbound("tg-fine", "hello", "p-2"))
    assert await service.pipeline.recover() == 1
    async with service.db.sessions() as session:
        left = (await session.execute(select(Message.text).where(
            Message.direction == "in", Message.processed_at.is_(None)))).scalars().all()
    assert left == ["poison"]


async def test_a_row_the_database_refuses_gives_500_and_the_redelivery_is_answered(
        proxied: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that makes the database refuse a row (here a reply without text) is not an
    outage: the webhook answers 500, not "database unavailable", the message is stored
    unprocessed, and the platform's redelivery is answered once the bug is gone."""
    service, http, _proxy, stub = proxied
    original = service.pipeline.dialogue.respond

    async def textless_reply(*args: Any) -> Any:
        understanding, _ = await original(*args)
        return understanding, [Reply(None)]  # type: ignore[arg-type]  # text is NOT NULL

    monkeypatch.setattr(service.pipeline.dialogue, "respond", textless_reply)
    update = message_update("hello", chat_id=7800, update_id=780_001)
    response = await post(http, update)
    assert response.status_code == 500, (response.status_code, response.text)
    async with service.db.sessions() as session:
        kept = (await session.execute(select(Message.text).where(
            Message.direction == "in", Message.processed_at.is_(None)))).scalars().all()
    assert kept == ["hello"]
    monkeypatch.setattr(service.pipeline.dialogue, "respond", original)
    assert (await post(http, update)).status_code == 200  # Telegram redelivers
    await service.outbox.dispatch_due()
    assert len(stub.sent_texts(7800)) == 1


async def test_on_sqlite_the_pipeline_s_transactions_take_turns_on_the_write_lock(
        service: Service) -> None:
    """Sixteen webhooks at once on SQLite: their transactions meet at the process's write
    lock (``Database.writing``) and wait there in line, rather than in SQLite's busy
    handler, which sleeps in growing steps; all are stored and processed."""
    if not service.db.is_sqlite:
        pytest.skip("SQLite only: PostgreSQL writers lock rows, not the database")
    busy_waits: list[bool] = []
    original = service.db.writing

    def measured() -> Any:
        lock = original()
        busy_waits.append(lock.locked())  # taken: this one waits in line
        return lock

    service.db.writing = measured  # type: ignore[method-assign]
    await asyncio.gather(*(service.pipeline.handle(_inbound(f"tg-turns-{n}", "hello", f"t-{n}"))
                           for n in range(16)))
    assert any(busy_waits), "the writers never met"
    async with service.db.sessions() as session:
        stored = await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in", Message.processed_at.is_not(None)))
    assert stored == 16
