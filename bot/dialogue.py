"""Deciding what to answer: language, commands, multi-turn flows, intent handlers.

The pipeline owns the transaction; this module only reads and changes the conversation and
returns replies. Order of precedence for a customer message:

1. commands (``/lang xx``, ``/start``, ``/human``, ``/cancel``) — always work;
2. an active flow (quote, verification, complaint...) continues, unless the customer
   cancels it or clearly asks something else, or it timed out;
3. the handler of the message's intent (``fallback`` for intents without one);
then, outside working hours, the after-hours notice (once per off-hours period) and, for
an urgent message, a page to the on-call agent.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot.after_hours import after_hours_replies
from bot.business_hours import BusinessCalendar
from bot.config import Settings
from bot.db.models import Conversation, Customer, Message
from bot.knowledge import Knowledge
from bot.types import Reply
from handlers import FlowHandler, Handler, HandlerContext
from handlers.base import SIDE_QUESTIONS
from intents.understanding import Understander, Understanding


class Dialogue:
    def __init__(self, settings: Settings, knowledge: Knowledge, understander: Understander,
                 handlers: dict[str, Handler], calendar: BusinessCalendar) -> None:
        self.settings = settings
        self.knowledge = knowledge
        self.understander = understander
        self.handlers = handlers
        self.calendar = calendar

    async def respond(self, session: AsyncSession, conversation: Conversation,
                      customer: Customer | None, message: Message,
                      now: datetime) -> tuple[Understanding, list[Reply]]:
        understanding = self.understander.understand(
            message.text,
            lang_hint=conversation.language or self.prior_language(conversation, customer))
        # On the message before any handler queries: a message stored in this transaction
        # is then inserted (autoflush) complete, one statement instead of two.
        message.lang, message.intent = understanding.lang, understanding.intent
        message.confidence, message.entities = understanding.confidence, understanding.entities
        message.urgent = understanding.urgent
        lang = self.choose_language(conversation, customer, understanding)
        if understanding.urgent:
            conversation.priority = "urgent"
        ctx = HandlerContext(
            session=session, settings=self.settings, knowledge=self.knowledge, now=now,
            conversation=conversation, contact=conversation.contact, customer=customer,
            message=message, understanding=understanding, lang=lang,
        )
        if conversation.status == "resolved":
            # Only the survey's answer reaches a resolved conversation (the pipeline stored
            # the rating; anything else went to a new conversation).
            return understanding, self._rating(ctx)
        replies = await self._command(ctx)
        if replies is not None:
            return understanding, replies + await after_hours_replies(ctx, self.calendar)
        if conversation.status == "owned":
            # A person owns the conversation: the bot stays quiet and relays to them.
            return understanding, [Reply(text=message.text, kind="relay", to="agents",
                                         lang=lang, intent=understanding.intent)]
        replies = await self._flow(ctx)
        if replies is None:
            handler = self.handlers.get(understanding.intent) or self.handlers["fallback"]
            replies = await handler.handle(ctx)
            # Assigned only when they change: an unchanged conversation needs no flush.
            if conversation.last_intent != understanding.intent:
                conversation.last_intent = understanding.intent
            if understanding.intent != "unknown" and conversation.misses:
                conversation.misses = 0
        # Outside working hours self-service goes on; the notice and any page follow.
        return understanding, replies + await after_hours_replies(ctx, self.calendar)

    def _rating(self, ctx: HandlerContext) -> list[Reply]:
        from bot.handoff import describe_customer

        conversation = ctx.conversation
        rating = conversation.satisfaction or 0  # stored by the pipeline, once
        if rating >= 3:
            return [ctx.reply("survey.thanks")]
        agents = ctx.knowledge.agent_texts
        alert = agents["escalation.low_rating"].format(
            rating=rating, number=conversation.id, customer=describe_customer(ctx))
        return [ctx.reply("survey.thanks_low"),
                Reply(alert, kind="escalation", to="agents", lang=ctx.lang,
                      template="escalation.low_rating")]

    async def _flow(self, ctx: HandlerContext) -> list[Reply] | None:
        conversation = ctx.conversation
        if not conversation.flow:
            if self.understander.is_cancel(ctx.message.text, ctx.lang, whole=True):
                return [ctx.reply("flow.nothing_to_cancel", buttons=ctx.menu_buttons())]
            return None
        if conversation.flow_expires_at is not None and conversation.flow_expires_at <= ctx.now:
            ctx.end_flow()
            return None
        if self.understander.is_cancel(ctx.message.text, ctx.lang):
            ctx.end_flow()
            return [ctx.reply("flow.cancelled", buttons=ctx.menu_buttons())]
        handler = self.handlers.get(conversation.flow)
        if handler is None or not isinstance(handler, FlowHandler):
            ctx.end_flow()
            return None
        if handler.accepts(ctx):
            return await handler.resume(ctx)
        if ctx.understanding.intent not in SIDE_QUESTIONS:
            ctx.end_flow()  # a new request: answer that instead
        return None  # answered by its own handler; a side question keeps the flow

    async def _command(self, ctx: HandlerContext) -> list[Reply] | None:
        parts = ctx.message.text.strip().split()
        if not parts or not parts[0].startswith("/"):
            return None
        command = parts[0][1:].split("@")[0].lower()
        supported = self.settings.languages.supported
        if command == "lang" and len(parts) == 2:
            code = parts[1].lower()
            if code not in supported:
                return [ctx.reply("language_unsupported", supported=", ".join(supported))]
            ctx.conversation.language, ctx.conversation.language_locked = code, True
            ctx.lang = code
            return [ctx.reply("language_set")]
        if command == "start":
            return [ctx.reply("welcome", buttons=ctx.menu_buttons())]
        if command == "cancel":
            had_flow = bool(ctx.conversation.flow)
            ctx.end_flow()
            return [ctx.reply("flow.cancelled" if had_flow else "flow.nothing_to_cancel",
                              buttons=ctx.menu_buttons())]
        if command in ("human", "agent"):
            return await self.handlers["human_agent"].handle(ctx)
        return None

    def choose_language(self, conversation: Conversation, customer: Customer | None,
                        understanding: Understanding) -> str:
        """The reply language.

        An explicit ``/lang`` choice holds. Strong evidence in the message switches the
        conversation. Otherwise the conversation keeps its language; a new conversation
        takes the customer's stored language, then the platform's hint, then the weak
        guess, then the default.
        """
        supported = self.settings.languages.supported
        guess = understanding.lang if understanding.lang in supported else None
        if understanding.text.lstrip().startswith("/"):
            guess = None  # "/human" is a command word, not a sign the customer writes English
        if not conversation.language_locked:
            if guess and understanding.lang_strong and conversation.language != guess:
                conversation.language = guess
            elif conversation.language not in supported:
                conversation.language = (self.prior_language(conversation, customer) or guess
                                         or self.settings.languages.default)
        return conversation.language or self.settings.languages.default

    def prior_language(self, conversation: Conversation, customer: Customer | None) -> str | None:
        supported = self.settings.languages.supported
        for prior in (customer.language if customer else None,
                      (conversation.contact.language_hint or "")[:2].lower() or None):
            if prior in supported:
                return prior
        return None
