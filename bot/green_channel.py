"""The green channel for strategic customers (SPEC §5): their hand-offs go to their account
manager first, by direct message; a hand-off the manager has not taken within the
first-response target is escalated to the agents' channel, where anyone may take it.

``escalate_unclaimed`` is a periodic job: the scheduler runs it, and ``tick`` in replay.
"""

from __future__ import annotations

from sqlalchemy import select

from bot.agent_desk import first_response_target, unclaimed_green_channel
from bot.db.models import Conversation, Customer
from bot.handoff import ACCOUNT_MANAGER_ROUTE, CHANNEL_ROUTE, describe_customer_record
from bot.service import Service
from bot.types import Reply


async def escalate_unclaimed(service: Service) -> int:
    """Move every overdue green-channel hand-off to the agents' channel; returns how many."""
    now = service.clock.now()
    texts = service.knowledge.agent_texts
    moved = 0
    async with service.db.sessions.begin() as session:
        due = await unclaimed_green_channel(session, now, service.settings.sla,
                                            service.calendars["default"])
        for conversation_id in due:
            query = select(Conversation).where(Conversation.id == conversation_id) \
                .execution_options(populate_existing=True)
            if service.db.is_postgres:  # re-read under a lock: another process may act too
                query = query.with_for_update()
            conversation = (await session.execute(query)).scalar_one()
            if conversation.owner_id is not None or \
                    conversation.handoff_route != ACCOUNT_MANAGER_ROUTE:
                continue
            customer = await session.get(Customer, conversation.customer_id)
            conversation.handoff_route = CHANNEL_ROUTE
            target = first_response_target(conversation.priority, service.settings.sla)
            text = texts["escalation.green_channel"].format(
                customer=describe_customer_record(customer, texts),
                manager=customer.account_manager if customer else "?",
                minutes=int(target.total_seconds() // 60))
            await service.pipeline.queue_replies(
                session, conversation,
                [Reply(text, kind="escalation", to="agents", template="escalation.green_channel")],
                now)
            await service.sla.start(session, conversation, "unclaimed_handoff", now)
            moved += 1
    if moved:
        service.outbox.wake()
    return moved
