"""The channel contract: how the outbox hands a reply to a platform.

Webhook channels add ``parse``/``verify`` in their own modules; the contract every channel
shares is only ``name`` and ``send``, so no channel implements methods it has no use for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Delivery:
    """One outbox row as a channel sees it."""

    outbox_id: int
    chat: str
    text: str
    kind: str
    to: str
    lang: str | None = None
    intent: str | None = None
    buttons: list[dict[str, str]] = field(default_factory=list)
    attachments: list[dict[str, str]] = field(default_factory=list)
    owner: str | None = None  # for the agents' side: who owns the conversation
    conversation_id: int | None = None
    template: str | None = None  # which knowledge text this is (e.g. escalation.green_channel)
    parts_sent: int = 0  # parts of a long message already delivered by earlier attempts

    @classmethod
    def from_payload(cls, outbox_id: int, chat: str, payload: dict[str, Any]) -> Delivery:
        return cls(outbox_id=outbox_id, chat=chat, text=payload["text"], kind=payload["kind"],
                   to=payload.get("to", "customer"), lang=payload.get("lang"),
                   intent=payload.get("intent"), buttons=list(payload.get("buttons") or []),
                   attachments=list(payload.get("attachments") or []),
                   owner=payload.get("owner"), conversation_id=payload.get("conversation_id"),
                   template=payload.get("template"), parts_sent=payload.get("parts_sent", 0))


class TemporaryDeliveryError(Exception):
    """The platform may accept the message later (timeouts, 5xx, 429 with retry_after)."""

    def __init__(self, reason: str, retry_after: float | None = None,
                 parts_sent: int | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.parts_sent = parts_sent  # a long message split in parts: how many went out


class PermanentDeliveryError(Exception):
    """The platform will never accept this message (blocked bot, chat not found)."""


class HeldDeliveryError(Exception):
    """The platform accepts this message only after the customer writes again (WeChat's
    48-hour window): it is held, not failed, and sent on their next message."""


class Channel(Protocol):
    """A platform the outbox sends through. A channel whose ``send`` may raise
    ``HeldDeliveryError`` (the platform refuses until the customer writes again) also sets
    ``holds_replies = True``: only for those does storing a customer message release the
    chat's held replies (one statement less per message everywhere else)."""

    name: str

    async def send(self, delivery: Delivery) -> str | None:
        """Deliver; return the platform's message id if it gives one. Raise a DeliveryError."""
        ...


def numbered_buttons(text: str, buttons: list[dict[str, str]]) -> str:
    """Buttons as numbered text, for channels that have no buttons."""
    if not buttons:
        return text
    options = "\n".join(f"{i}. {b['label']}" for i, b in enumerate(buttons, start=1))
    return f"{text}\n\n{options}"


def split_text(text: str, limit: int) -> list[str]:
    """Parts of at most ``limit`` characters, cut at a paragraph, line or word boundary
    when there is one in the second half of the part, else hard."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = -1
        for separator in ("\n\n", "\n", " "):
            cut = window.rfind(separator)
            if cut >= limit // 2:
                break
        if cut < limit // 2:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts
