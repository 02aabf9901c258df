from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as OrmSession

from bot.db.models import Contact, Conversation, Message, OutboxItem
from bot.pipeline import InvalidMessage
from bot.service import Service
from bot.types import InboundMessage, Reply

GREETINGS = {
    "en": "hello", "zh": "你好", "ru": "Здравствуйте", "es": "Hola, buenos días",
    "fr": "Bonjour", "de": "Guten Morgen", "pt": "Olá, bom dia", "ar": "مرحبا",
}
GOODBYES = {
    "en": "bye", "zh": "再见", "ru": "до свидания", "es": "adiós", "fr": "au revoir",
    "de": "tschüss", "pt": "tchau", "ar": "مع السلامة",
}


async def count(service: Service, model: Any) -> int:
    async with service.db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.parametrize("lang", sorted(GREETINGS))
async def test_greeting_is_answered_in_the_customers_language(make_chat: Any, service: Service,
                                                              lang: str) -> None:
    replies = await make_chat(f"chat-{lang}").say(GREETINGS[lang])
    assert len(replies) == 1
    reply = replies[0]
    assert (reply.lang, reply.intent, reply.kind) == (lang, "greeting", "reply")
    assert reply.text == service.knowledge.templates.render(
        "greeting", lang, company=service.settings.company.name)
    assert len(reply.buttons) == 6


@pytest.mark.parametrize("lang", sorted(GOODBYES))
async def test_goodbye_in_every_language(make_chat: Any, lang: str) -> None:
    replies = await make_chat(f"bye-{lang}").say(GOODBYES[lang])
    assert [(r.lang, r.intent) for r in replies] == [(lang, "goodbye")]


async def test_unknown_gets_one_clarifying_question_then_a_human_is_offered(
        chat: Any, service: Service) -> None:
    replies = await chat.say("what will the weather be like in Lisbon tomorrow?")
    assert [(r.intent, r.kind, r.lang) for r in replies] == [("unknown", "clarify", "en")]
    assert replies[0].text == service.knowledge.templates.render("clarify", "en")
    assert {b["payload"] for b in replies[0].buttons} >= {"order_status", "quote_request",
                                                          "human_agent"}
    replies = await chat.say("tell me a joke about penguins")
    assert replies[0].text == service.knowledge.templates.render("clarify_human", "en")
    assert replies[0].buttons[0]["payload"] == "human_agent"
    await chat.say("hello")  # understood: the count starts again
    replies = await chat.say("who won the chess championship")
    assert replies[0].text == service.knowledge.templates.render("clarify", "en")


async def test_short_message_keeps_the_conversation_language(chat: Any) -> None:
    await chat.say("Здравствуйте")
    for text in ("ok", "👍", "PO-118", "12345"):
        replies = await chat.say(text)
        assert replies[0].lang == "ru", text


async def test_lang_command_sets_language_explicitly(chat: Any) -> None:
    replies = await chat.say("/lang fr")
    assert replies[0].lang == "fr"
    replies = await chat.say("hello")  # an English word does not undo an explicit choice
    assert replies[0].lang == "fr"
    replies = await chat.say("/lang xx")
    assert "en, zh, ru, es, fr, de, pt, ar" in replies[0].text


async def test_customer_language_is_a_prior_for_ambiguous_messages(service: Service, chat: Any) -> None:
    async with service.db.sessions.begin() as session:
        from bot.db.models import Customer

        customer = Customer(ref="C-1", language="de", created_at=service.clock.now(),
                            updated_at=service.clock.now())
        session.add(customer)
        await session.flush()
        session.add(Contact(channel="telegram", chat="tg-test", customer_id=customer.id,
                            created_at=service.clock.now()))
    replies = await chat.say("PO-24117?")
    assert replies[0].lang == "de"


async def test_duplicate_delivery_is_processed_once(service: Service, chat: Any,
                                                    channels: Any) -> None:
    first = await chat.say("hello", external_id="update-1")
    second = await chat.say("hello", external_id="update-1")
    assert len(first) == 1 and second == []
    assert await count(service, Message) == 2  # one in, one out
    assert await count(service, OutboxItem) == 1


async def test_inbound_is_stored_before_processing_and_recovered_after_a_crash(
        service: Service, channels: Any) -> None:
    received = await service.pipeline.receive(InboundMessage(
        channel="telegram", chat="tg-crash", text="hello", external_id="u-9"))
    # The process "dies" here: stored, acknowledged, not processed.
    async with service.db.sessions() as session:
        stored = await session.get(Message, received.message_id)
        assert stored is not None and stored.processed_at is None
    assert await service.pipeline.recover() == 1
    assert await service.pipeline.recover() == 0
    await service.outbox.dispatch_due()
    assert [d.intent for d in channels["telegram"].sent] == ["greeting"]


@pytest.mark.parametrize("text, reason", [
    ("", "message is empty"),
    ("   \n\t ", "message is empty"),
    ("x" * 100_000, "message is longer than 8000 characters"),
    ("bad \ud800 surrogate", "text is not valid Unicode"),
])
async def test_invalid_messages_are_refused_and_nothing_is_stored(
        service: Service, text: str, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-x", text=text,
                                                     external_id="bad-1"))
    assert info.value.reason == reason
    for model in (Message, Contact, Conversation, OutboxItem):
        assert await count(service, model) == 0


async def test_nul_characters_are_removed_not_stored(service: Service, chat: Any) -> None:
    replies = await chat.say("hel\x00lo")
    async with service.db.sessions() as session:
        texts = (await session.execute(
            select(Message.text).where(Message.direction == "in"))).scalars().all()
    assert texts == ["hello"] and replies[0].intent == "greeting"


async def test_replies_are_recorded_with_understanding(service: Service, chat: Any) -> None:
    await chat.say("Bonjour")
    async with service.db.sessions() as session:
        inbound = (await session.execute(
            select(Message).where(Message.direction == "in"))).scalar_one()
    assert (inbound.lang, inbound.intent) == ("fr", "greeting")
    assert inbound.processed_at is not None


async def test_a_redelivery_processes_a_message_whose_first_processing_failed(
        service: Service, channels: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    inbound = InboundMessage(channel="telegram", chat="tg-fail", text="hello", external_id="r1")
    original = service.pipeline.dialogue.respond

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("handler bug")

    monkeypatch.setattr(service.pipeline.dialogue, "respond", broken)
    with pytest.raises(RuntimeError):
        await service.pipeline.handle(inbound)
    monkeypatch.setattr(service.pipeline.dialogue, "respond", original)
    await service.pipeline.handle(inbound)  # the platform retries the same delivery
    await service.pipeline.handle(inbound)  # and once more: nothing new
    await service.outbox.dispatch_due()
    assert [d.intent for d in channels["telegram"].sent] == ["greeting"]
    assert await count(service, Message) == 2


async def test_a_greeting_is_stored_and_answered_in_few_statements_without_a_flush(
        service: Service) -> None:
    """The hot path's statement budget (docs/architecture.md, "Few statements per message"):
    duplicate check and rate limit in one SELECT, the contact and the open conversation
    each touched and read back in one UPDATE (on PostgreSQL those three are one
    statement), the message (complete with what was understood) and its reply in one
    INSERT, the reply's outbox row. No held replies to
    look for on Telegram (it holds none), no paused SLA clock on a conversation no agent
    has answered, and no unit-of-work flush at all: the rows go in with Core statements
    and nothing else changed."""
    chat = "tg-statements"
    await service.pipeline.handle(InboundMessage(channel="telegram", chat=chat,
                                                 text="hello", external_id="s-0"))
    service.clock.advance(timedelta(minutes=1))  # type: ignore[attr-defined]
    statements: list[str] = []

    full: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split())[:40])
        if statement.lstrip().startswith("WITH"):
            full.append(" ".join(statement.split()))

    flushes: list[int] = []

    def count_flush(session: Any, _context: Any) -> None:
        flushes.append(len(session.new))

    engine = service.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    event.listen(OrmSession, "after_flush", count_flush)
    try:
        processed = await service.pipeline.handle(InboundMessage(
            channel="telegram", chat=chat, text="hello", external_id="s-1"))
    finally:
        event.remove(engine, "before_cursor_execute", record)
        event.remove(OrmSession, "after_flush", count_flush)
    # Each flush costs far more CPU than its statements.
    assert flushes == [], flushes
    assert processed.understanding is not None and processed.understanding.intent == "greeting"
    assert len(processed.outbox_ids) == 1
    work = [s for s in statements if not s.upper().startswith(("BEGIN", "COMMIT", "SELECT 1"))]
    # SQLite's driver cannot return the ids of a multi-row INSERT in order: a row each.
    message_inserts = 1 if service.db.is_postgres else 2
    if service.db.is_postgres:
        assert len(work) == 3, statements
        assert work[0].startswith("WITH ") and "admission AS (" in full[0]
        # Only what is meant to change: SQLAlchemy SETs any column an execution parameter
        # is named after, in a data-modifying CTE too.
        sets = re.findall(r"UPDATE (\w+) SET (.*?) WHERE", full[0])
        assert [(table, sorted(re.findall(r"(\w+)=", columns))) for table, columns in sets] \
            == [("contacts", ["display_name", "language_hint", "last_seen_at"]),
                ("conversations", ["last_inbound_at", "updated_at"])], sets
    else:
        assert len(work) == 6, statements
        assert sum(s.startswith("UPDATE conversations") for s in work) == 1  # the touch
    assert sum(s.startswith("INSERT INTO messages") for s in work) == message_inserts
    assert sum(s.startswith("INSERT INTO outbox") for s in work) == 1
    assert not any("sla_clocks" in s or s.startswith("UPDATE outbox") for s in work)
    async with service.db.sessions() as session:
        stored = (await session.execute(select(Message).where(
            Message.external_id == "s-1"))).scalar_one()
    assert (stored.intent, stored.lang, stored.processed_at) == ("greeting", "en",
                                                                 stored.created_at)
    # written with Core: the columns the message left empty got their defaults
    assert (stored.audience, stored.attachments, stored.urgent) == ("customer", [], False)


async def test_a_chats_first_message_creates_contact_and_conversation_without_looking(
        service: Service) -> None:
    """A contact created in the transaction has no conversation yet: no statement looks
    for an open one, a survey awaiting an answer or a previous language; the contact and
    the conversation are inserted and read back with their defaults."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    engine = service.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        processed = await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-first", text="hello", external_id="f-0",
            user_name="Ana"))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert processed.understanding is not None and len(processed.outbox_ids) == 1
    # Every such look-up is by contact (the admission's rate-limit count is by chat; on
    # PostgreSQL the admission's statement looks for the open conversation of the
    # contact it touched: none here, so nothing).
    assert not any("contact_id = " in s for s in statements
                   if "admission AS (" not in s), statements
    assert sum(s.startswith("INSERT INTO contacts") for s in statements) == 1
    assert sum(s.startswith("INSERT INTO conversations") for s in statements) == 1
    now = service.clock.now()
    async with service.db.sessions() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
        conversation = (await session.execute(select(Conversation))).scalar_one()
    assert (contact.chat, contact.display_name, contact.verify_failures) == (
        "tg-first", "Ana", 0)
    assert (conversation.contact_id, conversation.status, conversation.language,
            conversation.last_intent, conversation.misses, conversation.flow_state) == (
        contact.id, "open", "en", "greeting", 0, {})
    assert conversation.last_inbound_at == conversation.updated_at == now


async def test_a_reply_that_cannot_be_stored_leaves_the_message_stored_unprocessed(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The customer's message and its replies go in one INSERT: a reply row the database
    refuses (a handler bug) fails the message's own INSERT with it. That is a failure in
    processing, not a duplicate delivery: the message is stored alone, unprocessed, and
    the error raised (a redelivery or ``recover`` processes it later)."""
    original = service.pipeline.dialogue.respond

    async def textless_reply(*args: Any) -> Any:
        understanding, _ = await original(*args)
        return understanding, [Reply(None)]  # type: ignore[arg-type]  # text is NOT NULL

    await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-ie", text="hi",
                                                 external_id="ie-0"))
    monkeypatch.setattr(service.pipeline.dialogue, "respond", textless_reply)
    with pytest.raises(IntegrityError):
        await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-ie",
                                                     text="hello again", external_id="ie-1"))
    async with service.db.sessions() as session:
        stored = (await session.execute(select(Message.text, Message.processed_at).where(
            Message.external_id == "ie-1"))).all()
    assert [(text, processed) for text, processed in stored] == [("hello again", None)]
    monkeypatch.setattr(service.pipeline.dialogue, "respond", original)
    assert await service.pipeline.recover() == 1


async def test_replies_queued_in_a_savepoint_rolled_back_are_gone_and_the_next_stay(
        service: Service) -> None:
    """A scheduled job queues each alert in a savepoint (bot/jobs.py); queue_replies
    writes its rows with Core statements the ORM does not track, so a rolled-back
    savepoint must take them with it, and the next alert of the transaction, with
    something of the conversation's to flush too, must be stored whole."""
    await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-sp", text="hi",
                                                 external_id="sp-0"))
    service.clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
    now = service.clock.now()
    async with service.db.sessions.begin() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        with pytest.raises(KeyError):
            async with session.begin_nested():
                await service.pipeline.queue_replies(session, conversation, [Reply("a")], now)
                raise KeyError("the next alert's template is missing")
        async with session.begin_nested():
            conversation.priority = "high"  # something to flush: the flush writes it
            await service.pipeline.queue_replies(session, conversation, [Reply("b")], now)
    async with service.db.sessions() as session:
        priority = await session.scalar(select(Conversation.priority))
        texts = (await session.execute(select(Message.text).where(
            Message.direction == "out", Message.created_at == now))).scalars().all()
        queued = (await session.execute(select(OutboxItem.payload).where(
            OutboxItem.created_at == now))).scalars().all()
    assert texts == ["b"] and [payload["text"] for payload in queued] == ["b"]
    assert priority == "high"


async def test_a_held_reply_is_released_when_the_customer_writes_on_a_holding_channel(
        service: Service, chat: Any) -> None:
    """Only channels that hold replies look for them; there a new message releases them."""
    assert service.pipeline.holding_channels == {"wechat"}
    async with service.db.sessions.begin() as session:
        session.add(OutboxItem(channel="wechat", chat="wx-held", status="held", attempts=1,
                               payload={"text": "later", "kind": "text", "to": "customer"},
                               next_attempt_at=service.clock.now(),
                               created_at=service.clock.now()))
    await service.pipeline.receive(InboundMessage(channel="wechat", chat="wx-held",
                                                  text="hello", external_id="wx-1"))
    async with service.db.sessions() as session:
        status = await session.scalar(select(OutboxItem.status).where(
            OutboxItem.chat == "wx-held", OutboxItem.payload.is_not(None)).limit(1))
    assert status == "pending"
