"""The application object: everything a process needs, wired once from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from bot.business_hours import BusinessCalendar, build_calendars
from bot.channels import Channel, build_channels
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.db.database import Database, DatabaseUnavailable
from bot.db.models import Conversation, Message, OutboxItem
from bot.dialogue import Dialogue
from bot.knowledge import Knowledge
from bot.outbox import OutboxDispatcher
from bot.ownership import sync_agents
from bot.pipeline import Pipeline
from bot.sla import SlaRules
from bot.tone_guard import ToneGuard
from bot.types import Reply
from handlers import build_handlers
from intents.understanding import Understander, shared_understander

log = logging.getLogger(__name__)


class SchemaOutOfDate(DatabaseUnavailable):
    """The database has not been migrated to this version's schema."""


@dataclass
class Service:
    settings: Settings
    clock: Clock
    db: Database
    knowledge: Knowledge
    understander: Understander
    pipeline: Pipeline
    outbox: OutboxDispatcher
    calendars: dict[str, BusinessCalendar]
    tone_guard: ToneGuard
    sla: SlaRules

    @classmethod
    async def start(cls, settings: Settings, *, clock: Clock | None = None,
                    channels: dict[str, Channel] | None = None,
                    migrate: bool | None = None, database_url: str | None = None) -> Service:
        """Check the database, migrate it (embedded SQLite by default), load the knowledge.

        Raises ``DatabaseUnavailable`` or ``KnowledgeError`` with a message for the user.
        """
        clock = clock or SystemClock()
        knowledge = Knowledge.load_cached(settings.knowledge.path,
                                          tuple(settings.languages.supported),
                                          settings.languages.default)
        db = await open_database(settings, migrate=migrate, database_url=database_url)
        understander = shared_understander(tuple(settings.languages.supported),
                                           settings.languages.detector)
        calendars = build_calendars(settings.hours, settings.calendars)
        if channels is None:
            channels = build_channels(settings, db=db, clock=clock,
                                      agent_texts=knowledge.agent_texts,
                                      calendar=calendars["default"])
        outbox = OutboxDispatcher(db, clock, channels, settings.outbox)
        if settings.agents:
            async with db.sessions.begin() as session:
                await sync_agents(session, settings.agents, clock.now())
        dialogue = Dialogue(settings, knowledge, understander, build_handlers(),
                            calendars["default"])
        sla = SlaRules(settings, calendars)
        pipeline = Pipeline(settings=settings, db=db, clock=clock, dialogue=dialogue, sla=sla,
                            on_outbox=outbox.wake)
        # Only these channels' replies can be held until the customer writes again.
        pipeline.holding_channels = {name for name, channel in channels.items()
                                     if getattr(channel, "holds_replies", False)}
        if settings.wechat.enabled:
            # Replies wait out WeChat's answer window (plus a margin) before the outbox may
            # send them through the API: the callback's response gets the first chance.
            pipeline.passive_reply_windows["wechat"] = timedelta(
                seconds=settings.wechat.reply_window_seconds + 0.5)
        service = cls(settings, clock, db, knowledge, understander, pipeline, outbox, calendars,
                      ToneGuard(knowledge.phrases), sla)
        outbox.on_failed = service.report_failed_delivery
        return service

    async def report_failed_delivery(self, item: OutboxItem, status: str, error: str) -> None:
        """A customer's message that can never be delivered (blocked bot, chat not found,
        retries exhausted) or is held until they write again: the conversation's agents
        are told, in its thread."""
        if item.message_id is None or item.payload.get("to") != "customer":
            return
        now = self.clock.now()
        async with self.db.sessions.begin() as session:
            message = await session.get(Message, item.message_id)
            conversation = await session.get(Conversation, message.conversation_id) \
                if message is not None else None
            if conversation is None:
                return
            key = "escalation.delivery_held" if status == "held" else \
                "escalation.delivery_failed"
            text = self.knowledge.agent_texts[key].format(
                channel=item.channel, chat=item.chat, error=error[:200],
                text=str(item.payload.get("text", ""))[:300])
            await self.pipeline.queue_replies(session, conversation, [Reply(
                text, kind="escalation", to="agents", template=key)], now)
        self.outbox.wake()

    async def close(self) -> None:
        await self.db.dispose()


async def open_database(settings: Settings, *, migrate: bool | None = None,
                        database_url: str | None = None) -> Database:
    """The database alone, checked and migrated like ``Service.start`` does, for commands
    that need no knowledge or classifier (import, report)."""
    db = Database(database_url or settings.database.url, echo=settings.database.echo,
                  pool_size=settings.database.pool_size)
    try:
        await db.check()
        if migrate if migrate is not None else db.is_sqlite:
            await db.upgrade()
        else:
            await ensure_schema_current(db)
    except BaseException:
        await db.dispose()
        raise
    return db


async def ensure_schema_current(db: Database) -> None:
    from alembic.script import ScriptDirectory

    from bot.db.database import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    current = await db.current_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing'}, this version needs {head}: "
            "run 'supportbot db upgrade'")
