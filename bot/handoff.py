"""A request for a human: recorded on the conversation and sent to the agents' side.

The conversation moves to ``handed_off`` (until an agent takes it), its priority only ever
goes up, and a ``handoff`` message with the summary goes through the outbox to the agents'
channel (Slack), so it is as durable as any reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.db.models import Case, Customer
from bot.types import Reply

if TYPE_CHECKING:  # handlers import this module; at run time no import is needed
    from handlers.base import HandlerContext

PRIORITY_ORDER = ("normal", "high", "urgent")
AGENTS_CHANNEL = "slack"
ACCOUNT_MANAGER_ROUTE = "account_manager"  # conversations.handoff_route: the card goes to a DM
CHANNEL_ROUTE = "channel"


def raise_priority(current: str, wanted: str | None) -> str:
    if wanted is None:
        return current
    return max(current, wanted, key=lambda p: PRIORITY_ORDER.index(p)
               if p in PRIORITY_ORDER else 0)


def describe_customer(ctx: HandlerContext) -> str:
    return describe_customer_record(ctx.customer, ctx.knowledge.agent_texts)


def describe_customer_record(customer: Customer | None, agent_texts: dict[str, str]) -> str:
    """Who the customer is, for the agents' side: company, id and country, or unverified."""
    if customer is None:
        return agent_texts["unknown_customer"]
    return f"{customer.company or customer.ref} ({customer.ref}, {customer.country or '?'})"


def request_handoff(ctx: HandlerContext, reason: str, *, priority: str | None = None,
                    case: Case | None = None, **values: Any) -> Reply:
    conversation = ctx.conversation
    if conversation.status == "open":
        conversation.status = "handed_off"
        conversation.handed_off_at = ctx.now
    if ctx.customer is not None and ctx.customer.strategic:
        priority = raise_priority("high", priority)  # the green channel: strategic first
        if ctx.customer.account_manager and conversation.owner_id is None \
                and conversation.handoff_route is None:
            # Their account manager sees the hand-off first, in a direct message; if it is
            # not taken within the first-response target it moves to the agents' channel.
            conversation.handoff_route = ACCOUNT_MANAGER_ROUTE
    conversation.priority = raise_priority(conversation.priority, priority)
    agents = ctx.knowledge.agent_texts
    text = agents["handoff"].format(
        priority_mark=agents[f"priority_mark.{conversation.priority}"],
        reason=agents[f"reason.{reason}"].format(**values),
        customer=describe_customer(ctx), language=ctx.lang, channel=conversation.channel,
        chat=conversation.chat,
        case_part=agents["case_part"].format(case=case.number) if case else "",
        last_message=ctx.message.text[:500],
    )
    return Reply(text=text, kind="handoff", to="agents", lang=ctx.lang,
                 intent=ctx.understanding.intent, template=f"reason.{reason}")
