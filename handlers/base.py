"""What an intent handler sees and returns: channel-neutral context in, replies out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.db.models import Contact, Conversation, Customer, Message
from bot.knowledge import Knowledge
from bot.types import Button, Reply
from intents.understanding import Understanding


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

    def menu_buttons(self) -> list[Button]:
        """The main things the bot can do, offered as buttons (numbered text elsewhere)."""
        return [Button(label=self.text(f"button.{intent}"), payload=intent)
                for intent in ("order_status", "quote_request", "complaint", "documents",
                               "product_info", "human_agent")]


class Handler(Protocol):
    """A handler answers one intent; it returns replies and never commits."""

    intent: str

    async def handle(self, ctx: HandlerContext) -> list[Reply]: ...
