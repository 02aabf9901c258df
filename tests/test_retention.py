"""The retention job: personal data older than the retention period is purged; counts and
recent conversations stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.clock import ManualClock
from bot.db.models import (
    Case,
    Contact,
    Conversation,
    Customer,
    Message,
    OutboxItem,
    ProcessedEvent,
)
from bot.importer import apply_batch, validate_records
from bot.jobs import retention
from bot.service import Service
from bot.types import InboundMessage
from tests.conftest import RecordingChannel

OLD_CUSTOMER = {"id": "C-1", "company": "Old Floors Ltd", "phone": "+49 30 1234567",
                "email": "anna@old.example", "language": "en",
                "contacts": [{"channel": "telegram", "chat": "tg-old"}]}
NEW_CUSTOMER = {"id": "C-2", "company": "New Floors Ltd",
                "email": "ben@new.example", "language": "en",
                "contacts": [{"channel": "telegram", "chat": "tg-new"}]}


async def test_personal_data_older_than_three_years_is_purged(settings, database_url) -> None:
    clock = ManualClock(datetime(2023, 3, 6, 2, 0, tzinfo=UTC))
    service = await Service.start(settings, clock=clock, migrate=True,
                                  channels={"telegram": RecordingChannel("telegram")})
    try:
        async with service.db.sessions.begin() as session:
            await apply_batch(session, validate_records(
                enumerate([OLD_CUSTOMER, NEW_CUSTOMER], start=1)), clock.now())
        await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-old", text="The planks are cracked, I want to complain",
            external_id="old-1", user_name="Anna Alt"))
        await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-old", text="Order PO-9, call me on +49 30 1234567",
            external_id="old-2"))
        # The verification flow remembers what was typed (an e-mail) until it ends.
        await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-old", text="Where is my order PO-77?",
            external_id="old-3"))
        await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-old", text="anna@old.example", external_id="old-4"))
        await service.outbox.dispatch_due()
        clock.set(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
        await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-new", text="hello, this is Ben", external_id="new-1"))
        await service.outbox.dispatch_due()
        async with service.db.sessions() as session:
            messages_before = await session.scalar(select(func.count()).select_from(Message))

        clock.set(datetime(2026, 3, 20, 2, 0, tzinfo=UTC))  # > 3 years after the old chat
        assert await retention(service) > 0
        assert await retention(service) == 0  # idempotent

        async with service.db.sessions() as session:
            old_texts = (await session.execute(select(Message.text).join(Conversation).where(
                Conversation.customer_id == 1))).scalars().all()
            new_texts = (await session.execute(select(Message.text).join(Conversation).where(
                Conversation.customer_id == 2))).scalars().all()
            old = await session.get(Customer, 1)
            new = await session.get(Customer, 2)
            contacts = {c.id: c for c in (await session.execute(select(Contact))).scalars()}
            cases = (await session.execute(select(Case))).scalars().all()
            outbox_chats = set((await session.execute(select(OutboxItem.chat))).scalars())
            messages_after = await session.scalar(select(func.count()).select_from(Message))
        assert old_texts and all(text == "" for text in old_texts)
        assert any("Ben" in text for text in new_texts)
        assert old is not None and (old.email, old.phone) == (None, None)
        assert old.erased_at is not None and old.company == "Old Floors Ltd"  # company stays
        assert new is not None and new.email == "ben@new.example"
        assert contacts[1].chat.startswith("erased-") and contacts[1].display_name is None
        assert contacts[2].chat == "tg-new"
        assert all(case.description is None for case in cases)
        assert "tg-old" not in outbox_chats
        assert messages_after == messages_before  # the facts behind the KPIs remain
        # Nothing of Anna is left anywhere a search would find it.
        async with service.db.engine.connect() as connection:
            for table in ("messages", "contacts", "customers", "conversations", "cases",
                          "outbox"):
                rows = (await connection.exec_driver_sql(f"SELECT * FROM {table}")).all()
                dump = repr(rows)
                for needle in ("Anna", "anna@old.example", "1234567", "tg-old"):
                    assert needle not in dump, (table, needle)
    finally:
        await service.close()


async def test_short_lived_delivery_keys_are_forgotten_after_a_day_and_others_kept(
        service: Service) -> None:
    """Slack event ids, WeChat callback URLs and rate-limit notices guard minutes; the
    monthly report's keys say which months were reported and must stay."""
    short_lived = ["slack:Ev01ABC", "wechat-url:ab12", "wechat-url-message:cd34",
                   "rate-limit:telegram:ef56"]
    kept = ["job:monthly_report:2026-10", "slackish:1", "wechat-urlx:1", "rate_limit:x"]
    async with service.db.sessions.begin() as session:
        session.add_all(ProcessedEvent(key=key, received_at=service.clock.now())
                        for key in short_lived + kept)
    keys = select(ProcessedEvent.key).order_by(ProcessedEvent.key)
    service.clock.advance(timedelta(hours=23))  # type: ignore[attr-defined]
    await retention(service)
    async with service.db.sessions() as session:
        assert (await session.execute(keys)).scalars().all() == sorted(short_lived + kept)
    service.clock.advance(timedelta(hours=2))  # type: ignore[attr-defined]
    await retention(service)
    async with service.db.sessions() as session:
        assert (await session.execute(keys)).scalars().all() == sorted(kept)
