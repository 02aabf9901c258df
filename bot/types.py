"""Channel-neutral message types: the only shapes handlers and the pipeline see."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ReplyKind = Literal[
    "reply", "after_hours", "clarify", "handoff", "relay", "blocked", "sla_warning",
    "sla_breach", "escalation", "alert", "followup", "survey", "report",
]
Audience = Literal["customer", "agents"]


@dataclass(frozen=True)
class InboundMessage:
    """One message from a customer, as every channel hands it to the pipeline.

    ``external_id`` must be unique per channel (the channel composes it from the platform's
    ids); it is what makes a redelivered webhook a duplicate.
    """

    channel: str
    chat: str
    text: str
    external_id: str | None = None
    user: str | None = None
    user_name: str | None = None
    language_hint: str | None = None
    received_at: datetime | None = None
    attachments: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Button:
    """A choice offered to the customer; channels without buttons show numbered text."""

    label: str
    payload: str


@dataclass
class Reply:
    """Something the bot sends: to the customer's chat or to the agents' side."""

    text: str
    kind: ReplyKind = "reply"
    to: Audience = "customer"
    buttons: list[Button] = field(default_factory=list)
    lang: str | None = None
    intent: str | None = None
    template: str | None = None
    # Files to send with the text, e.g. {"type": "pi", "name": "PI-24117.pdf"}.
    attachments: list[dict[str, str]] = field(default_factory=list)
