"""What an intent handler sees and returns: channel-neutral context in, replies out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.db.models import Contact, Conversation, Customer, Message
from bot.knowledge import Knowledge
from bot.types import Button, Reply
from intents.understanding import Understanding

# A different intent at least this confident leaves the current flow ("a new question").
SWITCH_CONFIDENCE = 0.8
MENU = ("order_status", "quote_request", "complaint", "documents", "product_info",
        "human_agent")


@dataclass
class HandlerContext:
    session: AsyncSession
    settings: Settings
    knowledge: Knowledge
    now: datetime
    conversation: Conversation
    contact: Contact
    customer: Customer | None
    message: Message
    understanding: Understanding
    lang: str

    def text(self, key: str, **values: Any) -> str:
        """A template in the conversation's language, with the company's details filled in."""
        values.setdefault("company", self.settings.company.name)
        return self.knowledge.templates.render(key, self.lang, **values)

    def reply(self, key: str, *, kind: str = "reply", buttons: list[Button] | None = None,
              **values: Any) -> Reply:
        return Reply(text=self.text(key, **values), kind=kind,  # type: ignore[arg-type]
                     buttons=buttons or [], lang=self.lang,
                     intent=self.understanding.intent, template=key)

    def menu_buttons(self, *intents: str) -> list[Button]:
        """The main things the bot can do, offered as buttons (numbered text elsewhere)."""
        return [Button(label=self.text(f"button.{intent}"), payload=intent)
                for intent in (intents or MENU)]

    def start_flow(self, name: str, state: dict[str, Any]) -> None:
        self.conversation.flow = name
        self.conversation.flow_state = dict(state)
        self.conversation.flow_expires_at = self.now + self.settings.flows.timeout

    def update_flow(self, **changes: Any) -> dict[str, Any]:
        state = {**(self.conversation.flow_state or {}), **changes}
        self.conversation.flow_state = state  # a new dict, so the JSON column is saved
        self.conversation.flow_expires_at = self.now + self.settings.flows.timeout
        return state

    def end_flow(self) -> None:
        self.conversation.flow = None
        self.conversation.flow_state = {}
        self.conversation.flow_expires_at = None

    def remember(self, key: str, value: Any) -> None:
        """Facts kept for the whole conversation (e.g. incoterms already explained)."""
        self.conversation.context = {**(self.conversation.context or {}), key: value}

    def recall(self, key: str, default: Any = None) -> Any:
        return (self.conversation.context or {}).get(key, default)

    def duration(self, amount: timedelta) -> str:
        """A working-time target in words: "2 working hour(s)", "30 working minutes"."""
        minutes = int(amount.total_seconds() // 60)
        if minutes % 60 == 0:
            return self.text("duration.hours", n=minutes // 60)
        return self.text("duration.minutes", n=minutes)


class Handler(Protocol):
    """A handler answers one intent; it returns replies and never commits."""

    intent: str

    async def handle(self, ctx: HandlerContext) -> list[Reply]: ...


@runtime_checkable
class FlowHandler(Protocol):
    """A handler with a multi-turn flow stored in the conversation (``flow`` = its intent)."""

    intent: str

    async def handle(self, ctx: HandlerContext) -> list[Reply]: ...

    def accepts(self, ctx: HandlerContext) -> bool: ...

    async def resume(self, ctx: HandlerContext) -> list[Reply]: ...


# Questions answered in passing: the flow they interrupt goes on afterwards.
SIDE_QUESTIONS = ("product_info", "technical_support")
# Requests that always leave the flow, even if the message also holds an awaited entity.
LEAVING = ("human_agent", "complaint", "return_refund", *SIDE_QUESTIONS)


class FlowMixin:
    """Default rule for whether a message continues the flow or asks something new."""

    intent: str
    flow_intents: ClassVar[tuple[str, ...]] = ()
    flow_entities: ClassVar[tuple[str, ...]] = ()

    def accepts(self, ctx: HandlerContext) -> bool:
        understood = ctx.understanding
        if understood.intent in ("unknown", self.intent, *self.flow_intents):
            return True
        if understood.confidence < SWITCH_CONFIDENCE:
            return True
        return understood.intent not in LEAVING and any(
            key in understood.entities for key in self.flow_entities)
