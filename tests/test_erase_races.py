"""``supportbot customer erase`` racing a message of the same customer (PostgreSQL).

Every path that stores or processes a message locks the contact, then the conversation,
then the message (docs/architecture.md, "Lock order"); the erasure must too. Forced here
step by step: the message's transaction holds the chat's contact and is about to lock its
conversation when the erasure starts. An erasure that locked the conversations first would
then wait for the contact while the message waits for the conversation: a deadlock, which
PostgreSQL breaks by aborting one of them. Taking the contacts first, the erasure waits for
the message, then erases it with the rest.

PostgreSQL only (SQLite runs one writer at a time): skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.util import await_only

from bot.clock import ManualClock
from bot.db.models import Contact, Conversation, Customer, Message, OutboxItem
from bot.pipeline import InvalidMessage
from bot.privacy import ERASED_CHAT, ERASED_REASON, erase_customer
from bot.service import Service
from bot.types import InboundMessage
from tests.conftest import BACKEND
from tests.test_data_rights import ANNA, dump, load

CONVERSATIONS = re.compile(r"\bconversations\b")
CONTACTS = re.compile(r"\bcontacts\b")
BOTH_UPDATED = re.compile(r"UPDATE contacts\b.*UPDATE conversations\b", re.DOTALL)


@pytest.fixture(autouse=True)
def postgresql_run() -> None:
    if BACKEND != "postgresql":
        pytest.skip("lock order races need PostgreSQL's row locks (SQLite runs one writer "
                    "at a time): run with SUPPORTBOT_TEST_DATABASE=postgresql")


class PauseBeforeConversation:
    """Holds the transaction that stores a message of ``chat`` just before its first
    statement on ``conversations`` after the one on ``contacts``: the contact is locked
    (read ``FOR UPDATE`` or updated), the conversation not yet. Where one statement
    updates both (the pipeline's admission on PostgreSQL: the contact, then the
    conversation), just after it: both are locked, in that order."""

    def __init__(self, service: Service, chat: str) -> None:
        self.engine = service.db.engine.sync_engine
        self.chat = chat
        self.connection: Any = None
        self.both_locked = False
        self.paused, self.release = asyncio.Event(), asyncio.Event()

    def _before_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                        *args: Any) -> None:
        if self.paused.is_set():
            return
        if self.connection is None:
            if CONTACTS.search(statement) and self.chat in repr(parameters):
                self.connection = conn  # the message's transaction reached its contact
                self.both_locked = bool(BOTH_UPDATED.search(statement))
        elif conn is self.connection and (self.both_locked or CONVERSATIONS.search(statement)):
            self.paused.set()
            await_only(self.release.wait())  # the statement runs once released

    def __enter__(self) -> PauseBeforeConversation:
        event.listen(self.engine, "before_cursor_execute", self._before_execute)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        event.remove(self.engine, "before_cursor_execute", self._before_execute)


async def _waiting_for_a_lock(service: Service, task: asyncio.Task[Any]) -> None:
    """Until a session of this database waits for a row lock (or ``task`` is done)."""
    for _ in range(200):
        async with service.db.engine.connect() as connection:
            waiting = (await connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))).scalar_one()
        if waiting or task.done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the erasure neither finished nor waited for a lock")


ANNA_CHATS = {contact["channel"]: contact["chat"] for contact in ANNA["contacts"]}


@pytest.mark.parametrize("path", ["handle", "receive"])
async def test_erasing_a_customer_while_their_message_is_stored_does_not_deadlock(
        service: Service, clock: ManualClock, path: str) -> None:
    """``handle`` (Telegram, web chat) reads the contact ``FOR UPDATE``; ``receive`` (WeChat)
    updates it: either way the contact is locked before the conversation."""
    channel = "telegram" if path == "handle" else "wechat"
    chat = ANNA_CHATS[channel]
    await load(service, ANNA)
    first = InboundMessage(channel=channel, chat=chat, text="where is PO-5501?",
                           external_id=f"{channel}-1")
    await service.pipeline.handle(first)  # a conversation the next message joins
    clock.advance(timedelta(minutes=1))
    second = InboundMessage(channel=channel, chat=chat, external_id=f"{channel}-2",
                            text="zebra-striped accordion: call me on +49 40 5550 1234")

    async def erase() -> dict[str, Any]:
        async with service.db.sessions.begin() as session:
            return await erase_customer(session, ANNA["id"], clock.now())

    with PauseBeforeConversation(service, chat) as pause:
        storing = asyncio.create_task(getattr(service.pipeline, path)(second))
        await asyncio.wait_for(pause.paused.wait(), 10)
        erasing = asyncio.create_task(erase())
        await _waiting_for_a_lock(service, erasing)  # the erasure waits for the contact
        pause.release.set()
        results = await asyncio.wait_for(
            asyncio.gather(storing, erasing, return_exceptions=True), 30)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors  # the old order: DBAPIError (DeadlockDetectedError) here

    stored, report = results
    if path == "handle":
        assert stored.replies, "the message was answered"
    assert report["conversations"] == 1 and report["contacts"] == len(ANNA["contacts"])
    assert not report["already_erased"]
    assert report["changed"]["messages"] >= 3  # both messages and the first one's answers
    assert report["changed"]["outbox_given_up"] >= 1

    # The message was stored first, then erased with the rest, in the same erasure.
    async with service.db.sessions() as session:
        contacts = (await session.execute(select(Contact).order_by(Contact.id))).scalars().all()
        assert [c.chat for c in contacts] == [f"{ERASED_CHAT}{c.id}" for c in contacts]
        inbound = (await session.execute(select(Message).where(
            Message.direction == "in").order_by(Message.id))).scalars().all()
        assert [m.external_id for m in inbound] == [f"{channel}-1", f"{channel}-2"]
        assert all(m.text == "" for m in inbound)
        assert (inbound[1].processed_at is not None) == (path == "handle")
        outbox = (await session.execute(select(OutboxItem))).scalars().all()
        assert outbox and all((item.status, item.last_error, item.payload)
                              == ("failed", ERASED_REASON, {}) for item in outbox)
        customer = await session.scalar(select(Customer).where(Customer.ref == ANNA["id"]))
        assert customer is not None and customer.erased_at is not None
    everything = " ".join((await dump(service)).values())
    for needle in (chat, "zebra", "5550", "Lindqvist"):
        assert needle not in everything


async def test_a_message_that_waited_for_an_erasure_is_counted_against_the_rate_limit(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose first statement saw the chat's contact waits for its erasure, then
    finds no contact to lock and none to touch; while it is about to create one, the chat
    writes on and reaches its limit. Losing that INSERT, it counts again holding the new
    contact (it once was stored unchecked: the limit + 1)."""
    from bot.pipeline import Pipeline
    from bot.privacy import erase_contacts

    chat, limit = "tg-erased-flood", service.settings.limits.messages_per_minute
    await service.pipeline.handle(InboundMessage(channel="telegram", chat=chat, text="hi",
                                                 external_id="before-erasure"))
    creating, create = asyncio.Event(), Pipeline._create_contact
    release = asyncio.Event()

    async def create_later(self: Pipeline, connection: Any, admission: Any,
                           inbound: InboundMessage, now: Any) -> bool:
        if inbound.external_id == "late":
            creating.set()
            await release.wait()
        return await create(self, connection, admission, inbound, now)

    monkeypatch.setattr(Pipeline, "_create_contact", create_later)
    async with service.db.sessions.begin() as session:
        contact = (await session.execute(select(Contact).where(Contact.chat == chat)
                                         .with_for_update())).scalar_one()
        await erase_contacts(session, [contact])
        late = asyncio.create_task(service.pipeline.handle(InboundMessage(
            channel="telegram", chat=chat, text="late", external_id="late")))
        await _waiting_for_a_lock(service, late)
    await asyncio.wait_for(creating.wait(), 10)  # the erasure committed; the late one goes on
    for n in range(limit + 3):  # the chat writes on: a new contact, up to the limit
        try:
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=chat, text=f"m{n}", external_id=f"m{n}"))
        except InvalidMessage:
            pass  # the one notice of the minute
    release.set()
    await asyncio.wait_for(asyncio.gather(late, return_exceptions=True), 10)
    async with service.db.sessions() as session:
        stored = (await session.execute(select(Message.external_id).join(
            Contact, Contact.chat == chat).where(
            Message.direction == "in",
            Message.conversation_id.in_(select(Conversation.id).where(
                Conversation.contact_id == Contact.id))))).scalars().all()
    assert len(stored) == limit and "late" not in stored, stored
