"""Customers' data rights (GDPR/CCPA): ``supportbot customer export`` gives everything stored
about a customer; ``supportbot customer erase`` leaves nothing that identifies them while the
figures stay computable; the retention purge uses the same code."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from bot.agent_actions import perform
from bot.cli import main
from bot.clock import ManualClock
from bot.config import Settings
from bot.db.models import (
    Base,
    Case,
    Contact,
    Conversation,
    Customer,
    Message,
    OutboxItem,
)
from bot.importer import apply_batch, validate_records
from bot.jobs import order_alerts
from bot.privacy import CustomerNotFound, erase_customer, export_customer, purge_expired
from bot.service import Service
from bot.types import InboundMessage
from tests.conftest import CHANNEL_NAMES, RecordingChannel

ANNA = {"id": "C-100", "company": "Nordic Floors GmbH", "name": "Anna Lindqvist",
        "country": "DE", "email": "anna.lindqvist@nordicfloors.example",
        "phone": "+49 40 5550 1234", "language": "en", "timezone": "Europe/Berlin",
        "contacts": [{"channel": "telegram", "chat": "tg-anna-7781"},
                     {"channel": "wechat", "chat": "wx-oAnnaQ93"}]}  # never wrote
BRUNO = {"id": "C-200", "company": "Costa Pisos Lda", "name": "Bruno Costa", "country": "PT",
         "email": "bruno@costapisos.example", "phone": "+351 21 555 0199", "language": "en",
         "contacts": [{"channel": "telegram", "chat": "tg-bruno-4410"}]}
ORDER_ANNA = {"number": "PO-5501", "customer": "C-100", "product": "SPC-5-05",
              "quantity_m2": "2000.50", "incoterm": "CIF", "destination": "Hamburg",
              "stage": "in_production", "progress": 40, "etd": "2026-12-20",
              "eta": "2027-01-25", "documents": {"pi": "PI-5501.pdf"}}
ORDER_BRUNO = {"number": "PO-6602", "customer": "C-200", "product": "SPC-4-03",
               "quantity_m2": 1200, "incoterm": "FOB", "destination": "Lisbon",
               "stage": "confirmed", "progress": 0, "etd": "2027-01-10", "eta": "2027-02-20"}
WEBCHAT_CHAT = "wc-5f3e0a9d1b77"  # the web chat keeps a hash of the browser's token
PHRASE = "zebra-striped accordion"  # something only Anna wrote
# Everything that would identify Anna in a dump of the database.
ANNA_NEEDLES = ("Anna", "Lindqvist", "anna.lindqvist", "nordicfloors", "Nordic Floors",
                "5550 1234", "5550", "tg-anna-7781", "wx-oAnnaQ93", WEBCHAT_CHAT, "zebra",
                "IMG_anna", "AgADanna")
KPI_TABLES = ("customers", "contacts", "conversations", "messages", "cases", "sla_clocks",
              "ownership_events", "outbox", "orders", "order_events", "quotes")


async def start(settings: Settings, clock: ManualClock) -> Service:
    return await Service.start(settings, clock=clock, migrate=True,
                               channels={name: RecordingChannel(name) for name in CHANNEL_NAMES})


async def load(service: Service, *records: dict[str, Any]) -> None:
    async with service.db.sessions.begin() as session:
        await apply_batch(session, validate_records(enumerate(records, start=1)),
                          service.clock.now())


async def say(service: Service, chat: str, text: str, external_id: str,
              channel: str = "telegram", **extra: Any) -> None:
    await service.pipeline.handle(InboundMessage(channel=channel, chat=chat, text=text,
                                                 external_id=external_id, **extra))
    await service.outbox.dispatch_due()


async def build_history(service: Service, clock: ManualClock) -> None:
    """Two customers' real history: orders and an order alert, order status, a quote, a
    complaint with a photo, an agent who takes, replies and resolves, a rating, and a web
    chat that proves ownership with order number and e-mail."""
    await load(service, ANNA, BRUNO, ORDER_ANNA, ORDER_BRUNO)
    clock.advance(timedelta(minutes=5))
    await load(service, {**ORDER_ANNA, "stage": "inspection", "progress": 100})
    assert await order_alerts(service) == 1
    anna = {"user_name": "Anna Lindqvist", "user": "anna-user-7781"}
    await say(service, "tg-anna-7781", "where is PO-5501?", "a-1", **anna)
    clock.advance(timedelta(minutes=2))
    await say(service, "tg-anna-7781", "I need a quote for 2000 m2 of SPC 5 mm CIF Hamburg",
              "a-2", **anna)
    await say(service, "tg-anna-7781", "SPC-5-05", "a-3", **anna)
    clock.advance(timedelta(minutes=5))
    await say(service, "tg-anna-7781",
              f"The cartons arrived crushed, the pallets look like a {PHRASE}. "
              "Call me on +49 40 5550 1234", "a-4", **anna)
    await say(service, "tg-anna-7781", "photo of the zebra damage", "a-5",
              attachments=({"type": "photo", "file_id": "AgADanna", "name": "IMG_anna.jpg"},),
              **anna)
    clock.advance(timedelta(minutes=10))
    await perform(service, "tg-anna-7781", "alice", "take")
    await perform(service, "tg-anna-7781", "alice", "reply",
                  text="Thank you Anna Lindqvist, we will replace the crushed cartons.")
    await perform(service, "tg-anna-7781", "alice", "note", text="Anna prefers phone calls")
    await perform(service, "tg-anna-7781", "alice", "resolve")
    await service.outbox.dispatch_due()
    await say(service, "tg-anna-7781", "5", "a-6", **anna)  # the survey's answer
    clock.advance(timedelta(minutes=10))
    # The web chat: unknown at first, proves ownership with order number + e-mail.
    await say(service, WEBCHAT_CHAT, "Where is my order PO-5501?", f"{WEBCHAT_CHAT}:c1",
              channel="webchat")
    await say(service, WEBCHAT_CHAT, "anna.lindqvist@nordicfloors.example",
              f"{WEBCHAT_CHAT}:c2", channel="webchat")
    # Bruno, another customer.
    await say(service, "tg-bruno-4410", "Hello, I want to talk to a person about PO-6602",
              "b-1", user_name="Bruno Costa")
    await perform(service, "tg-bruno-4410", "bob", "take")
    await perform(service, "tg-bruno-4410", "bob", "reply", text="Hello Bruno, how can I help?")
    await service.outbox.dispatch_due()


async def dump(service: Service) -> dict[str, str]:
    """Every row of every table, as text a search can look through."""
    tables: dict[str, str] = {}
    async with service.db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = (await connection.exec_driver_sql(f"SELECT * FROM {table.name}")).all()
            tables[table.name] = repr(rows)
    return tables


async def counts(service: Service) -> dict[str, int]:
    async with service.db.engine.connect() as connection:
        return {table: (await connection.exec_driver_sql(
            f"SELECT count(*) FROM {table}")).scalar_one() for table in KPI_TABLES}


async def export(service: Service, ref: str) -> dict[str, Any]:
    async with service.db.sessions() as session:
        return await export_customer(session, ref)


async def erase(service: Service, ref: str) -> dict[str, Any]:
    async with service.db.sessions.begin() as session:
        return await erase_customer(session, ref, service.clock.now())


def all_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for c in data["conversations"] for m in c["messages"]]


async def test_export_contains_everything_stored_about_the_customer(settings: Settings) -> None:
    clock = ManualClock(datetime(2026, 12, 7, 2, 0, tzinfo=UTC))  # Monday 10:00 in Shanghai
    service = await start(settings, clock)
    try:
        await build_history(service, clock)
        data = await export(service, "C-100")
        with pytest.raises(CustomerNotFound, match="C-999"):
            await export(service, "C-999")
    finally:
        await service.close()

    json.dumps(data, ensure_ascii=False)  # JSON-serialisable as it is
    assert data["customer"]["ref"] == "C-100"
    assert data["customer"]["email"] == "anna.lindqvist@nordicfloors.example"
    assert data["customer"]["contact_name"] == "Anna Lindqvist"
    assert data["customer"]["created_at"].startswith("2026-12-07T02:00:00")  # ISO 8601
    chats = {(c["channel"], c["chat"]) for c in data["contacts"]}
    assert chats == {("telegram", "tg-anna-7781"), ("wechat", "wx-oAnnaQ93"),
                     ("webchat", WEBCHAT_CHAT)}
    assert any(c["display_name"] == "Anna Lindqvist" for c in data["contacts"])
    # Conversations with their status, owner, rating, messages both ways, clocks and events.
    channels = {c["channel"] for c in data["conversations"]}
    assert channels == {"telegram", "webchat"}
    resolved = next(c for c in data["conversations"] if c["status"] == "resolved")
    assert resolved["owner"] == "alice" and resolved["satisfaction"] == 5
    assert resolved["language"] == "en" and resolved["resolved_at"]
    assert {e["action"] for e in resolved["ownership_events"]} >= {"take", "resolve"}
    assert resolved["sla_clocks"] and all(c["kind"] for c in resolved["sla_clocks"])
    assert resolved["outbox"] and all("payload" in o for o in resolved["outbox"])
    texts = [m["text"] for m in all_messages(data)]
    assert any(PHRASE in t for t in texts)
    assert any("Thank you Anna Lindqvist" in t for t in texts)  # the agent's reply
    assert any(m["sender"] == "agent" and m["agent"] == "alice" for m in all_messages(data))
    assert any(m["direction"] == "out" and m["sender"] == "bot" for m in all_messages(data))
    photo = next(m for m in all_messages(data) if m["attachments"])
    assert photo["attachments"][0]["file_id"] == "AgADanna"
    assert {m["intent"] for m in all_messages(data) if m["direction"] == "in"} >= {
        "order_status", "complaint"}
    # The verification flow on the web chat linked that chat to Anna.
    assert any("anna.lindqvist@nordicfloors.example" in t for t in texts)
    # Cases with evidence, quotes, orders with their events; money and quantities as text.
    complaint = next(c for c in data["cases"] if c["kind"] == "complaint")
    assert PHRASE in complaint["description"] and complaint["category"]
    assert any(e.get("attachments") for e in complaint["evidence"])
    assert data["quotes"] and isinstance(data["quotes"][0]["total"], str)
    assert data["quotes"][0]["product"] == "SPC-5-05"
    (order,) = data["orders"]
    assert order["number"] == "PO-5501" and order["quantity_m2"] == "2000.50"
    assert order["stage"] == "inspection" and order["eta"] == "2027-01-25"
    assert [e["stage"] for e in order["events"]] == ["in_production", "inspection"]
    # Nothing of Bruno's.
    assert "Bruno" not in json.dumps(data) and "PO-6602" not in json.dumps(data)


async def test_erase_leaves_nothing_that_identifies_the_customer(settings: Settings) -> None:
    clock = ManualClock(datetime(2026, 12, 7, 2, 0, tzinfo=UTC))
    service = await start(settings, clock)
    try:
        await build_history(service, clock)
        before = await dump(service)
        assert all(any(needle in text for text in before.values()) for needle in ANNA_NEEDLES)
        counts_before = await counts(service)
        bruno_before = await export(service, "C-200")
        async with service.db.sessions() as session:
            facts_before = (await session.execute(
                select(Message.id, Message.direction, Message.sender, Message.intent,
                       Message.lang, Message.channel, Message.created_at)
                .order_by(Message.id))).all()
            conversations_before = (await session.execute(
                select(Conversation.id, Conversation.status, Conversation.language,
                       Conversation.channel, Conversation.satisfaction,
                       Conversation.owner_id, Conversation.resolved_at)
                .order_by(Conversation.id))).all()
            cases_before = (await session.execute(
                select(Case.number, Case.kind, Case.category, Case.status, Case.opened_at)
                .order_by(Case.id))).all()
        sla_before, ownership_before = before["sla_clocks"], before["ownership_events"]

        clock.advance(timedelta(days=3))
        summary = await erase(service, "C-100")
        assert summary["already_erased"] is False
        assert summary["changed"]["messages"] > 0 and summary["changed"]["contacts"] == 3
        assert summary["changed"]["customer"] == 1
        after = await dump(service)
        for table, text in after.items():
            for needle in ANNA_NEEDLES:
                assert needle not in text, (table, needle)
        # Bruno is untouched, and the facts behind the figures are all still there.
        assert await export(service, "C-200") == bruno_before
        assert "Bruno Costa" in after["contacts"] and "bruno@costapisos.example" in \
            after["customers"]
        assert await counts(service) == counts_before
        assert after["sla_clocks"] == sla_before
        assert after["ownership_events"] == ownership_before
        assert after["orders"] == before["orders"] and after["quotes"] == before["quotes"]
        async with service.db.sessions() as session:
            assert (await session.execute(
                select(Message.id, Message.direction, Message.sender, Message.intent,
                       Message.lang, Message.channel, Message.created_at)
                .order_by(Message.id))).all() == facts_before
            assert (await session.execute(
                select(Conversation.id, Conversation.status, Conversation.language,
                       Conversation.channel, Conversation.satisfaction,
                       Conversation.owner_id, Conversation.resolved_at)
                .order_by(Conversation.id))).all() == conversations_before
            assert (await session.execute(
                select(Case.number, Case.kind, Case.category, Case.status, Case.opened_at)
                .order_by(Case.id))).all() == cases_before
            anna = (await session.execute(
                select(Customer).where(Customer.ref == "C-100"))).scalar_one()
            assert anna.company == "erased customer C-100"
            assert (anna.contact_name, anna.email, anna.phone) == (None, None, None)
            assert anna.erased_at == clock.now() and anna.country == "DE"
            contacts = (await session.execute(
                select(Contact).where(Contact.customer_id == anna.id))).scalars().all()
            assert sorted(c.chat for c in contacts) == sorted(f"erased-{c.id}" for c in contacts)
            # Conversations and their outbox rows follow their contact's new chat.
            chats = (await session.execute(
                select(Conversation.chat, Contact.chat).join(Contact)
                .where(Conversation.customer_id == anna.id))).all()
            assert chats and all(a == b for a, b in chats)
            anna_outbox = (await session.execute(
                select(OutboxItem).join(Message).join(Conversation)
                .where(Conversation.customer_id == anna.id))).scalars().all()
            assert anna_outbox and all(o.payload == {} and o.chat.startswith("erased-")
                                       for o in anna_outbox)
            # Nothing undelivered is left to be sent: the agents' rows (no Slack here) failed.
            assert all(o.status in ("sent", "failed") for o in anna_outbox)
            assert any(o.last_error == "erased" for o in anna_outbox)

        # Erasing twice is fine, and changes nothing more.
        again = await erase(service, "C-100")
        assert again["already_erased"] is True and not any(again["changed"].values())
        assert await dump(service) == after
        # The export of an erased customer shows what is kept.
        kept = await export(service, "C-100")
        assert kept["customer"]["company"] == "erased customer C-100"
        assert all(m["text"] == "" for m in all_messages(kept))
        assert kept["orders"][0]["number"] == "PO-5501"
        with pytest.raises(CustomerNotFound):
            await erase(service, "C-999")
    finally:
        await service.close()


async def test_the_retention_purge_and_erasure_share_their_code(settings: Settings) -> None:
    """A customer anonymised by the retention purge (company kept) can still be erased on
    request; the purge then finds nothing more, and the erasure changes only the company."""
    clock = ManualClock(datetime(2026, 12, 7, 2, 0, tzinfo=UTC))
    service = await start(settings, clock)
    try:
        await build_history(service, clock)
        clock.advance(timedelta(days=3 * 365 + 30))
        now = clock.now()
        async with service.db.sessions.begin() as session:
            assert await purge_expired(session, now - timedelta(days=3 * 365), now) > 0
        async with service.db.sessions.begin() as session:
            assert await purge_expired(session, now - timedelta(days=3 * 365), now) == 0
        purged = await dump(service)
        for needle in ("Lindqvist", "anna.lindqvist", "tg-anna-7781", WEBCHAT_CHAT, "zebra",
                       "Bruno Costa", "tg-bruno-4410"):
            assert all(needle not in text for text in purged.values()), needle
        summary = await erase(service, "C-100")
        assert summary["changed"] == {"outbox_given_up": 0, "outbox": 0, "messages": 0, "order_notes": 0,
                                      "cases": 0, "conversations": 0, "contacts": 0,
                                      "customer": 1}
        after = await dump(service)
        assert all("Nordic Floors" not in text for text in after.values())
        assert {table: text for table, text in after.items() if table != "customers"} == \
            {table: text for table, text in purged.items() if table != "customers"}
    finally:
        await service.close()


# --- the command line ----------------------------------------------------------------------------

def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def db_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> str:
    monkeypatch.setenv("SUPPORTBOT_DATABASE__URL", database_url)
    return database_url


def with_history(settings: Settings) -> None:
    async def _build() -> None:
        clock = ManualClock(datetime(2026, 12, 7, 2, 0, tzinfo=UTC))
        service = await start(settings, clock)
        try:
            await build_history(service, clock)
        finally:
            await service.close()
    asyncio.run(_build())


def stored(settings: Settings, ref: str) -> dict[str, Any]:
    async def _export() -> dict[str, Any]:
        service = await start(settings, ManualClock(datetime(2026, 12, 8, tzinfo=UTC)))
        try:
            return await export(service, ref)
        finally:
            await service.close()
    return asyncio.run(_export())


def test_customer_export_prints_or_writes_json(db_env: str, settings: Settings,
                                               tmp_path: Path) -> None:
    with_history(settings)
    result = run("customer", "export", "C-100")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["customer"]["email"] == "anna.lindqvist@nordicfloors.example"
    assert any(PHRASE in m["text"] for m in all_messages(data))
    assert data["exported_at"]
    out = tmp_path / "anna.json"
    result = run("customer", "export", "C-100", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "anna.json" in result.stderr
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["orders"][0]["number"] == "PO-5501"
    assert out.stat().st_mode & 0o077 == 0  # personal data: readable by its owner only
    missing = run("customer", "export", "C-999")
    assert missing.exit_code == 1
    assert "no customer with id 'C-999'" in missing.stderr


def test_customer_erase_needs_yes_then_erases(db_env: str, settings: Settings) -> None:
    with_history(settings)
    refused = run("customer", "erase", "C-100")
    assert refused.exit_code == 1
    assert "irreversible" in refused.stderr and "--yes" in refused.stderr
    assert stored(settings, "C-100")["customer"]["email"] is not None  # nothing done

    result = run("customer", "erase", "C-100", "--yes")
    assert result.exit_code == 0, result.output
    assert "customer C-100 erased" in result.stdout
    data = stored(settings, "C-100")
    assert data["customer"]["email"] is None
    assert data["customer"]["company"] == "erased customer C-100"
    assert all(m["text"] == "" for m in all_messages(data))
    assert stored(settings, "C-200")["customer"]["email"] == "bruno@costapisos.example"

    again = run("customer", "erase", "C-100", "--yes")
    assert again.exit_code == 0 and "already erased" in again.stdout
    missing = run("customer", "erase", "C-999", "--yes")
    assert missing.exit_code == 1 and "no customer with id 'C-999'" in missing.stderr


def test_unicode_stays_readable_in_the_export(db_env: str, settings: Settings) -> None:
    async def _build() -> None:
        service = await start(settings, ManualClock(datetime(2026, 12, 7, 2, 0, tzinfo=UTC)))
        try:
            await load(service, {**BRUNO, "id": "C-300", "name": "Jörg Müller",
                                 "contacts": [{"channel": "telegram", "chat": "tg-jorg"}]})
            await say(service, "tg-jorg", "我们要退货，地板有质量问题", "j-1")
        finally:
            await service.close()
    asyncio.run(_build())
    result = run("customer", "export", "C-300")
    assert result.exit_code == 0, result.output
    assert "Jörg Müller" in result.stdout and "地板有质量问题" in result.stdout  # not \\u escapes
    assert json.loads(result.stdout)["conversations"][0]["language"] == "zh"


async def test_no_proactive_message_goes_to_an_erased_customer(settings, clock) -> None:
    """After erasure the jobs do not write to the customer (alerts, follow-ups...)."""
    from datetime import timedelta

    from bot.importer import apply_batch, validate_records
    from bot.jobs import delivery_followups, order_alerts
    from bot.privacy import erase_customer
    from bot.service import Service
    from tests.conftest import RecordingChannel

    service = await Service.start(settings, clock=clock, migrate=True,
                                  channels={"telegram": RecordingChannel("telegram")})
    try:
        customer = {"id": "C-E", "company": "Erased GmbH", "email": "e@erased.example",
                    "contacts": [{"channel": "telegram", "chat": "tg-erased"}]}
        order = {"number": "PO-E", "customer": "C-E", "stage": "shipped", "eta": "2027-01-05"}
        async with service.db.sessions.begin() as session:
            await apply_batch(session, validate_records(enumerate([customer, order], 1)),
                              clock.now())
        async with service.db.sessions.begin() as session:
            await erase_customer(session, "C-E", clock.now())
        async with service.db.sessions.begin() as session:
            await apply_batch(session, validate_records(enumerate(
                [{**order, "stage": "delivered", "eta": "2027-01-20"}], 1)), clock.now())
        assert await order_alerts(service) == 0
        clock.advance(timedelta(days=3))
        assert await delivery_followups(service) == 0
    finally:
        await service.close()
