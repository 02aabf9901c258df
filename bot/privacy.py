"""Personal data: the retention purge (SPEC §7: older than three years).

What is personal here: what people wrote (message texts, attachments, case descriptions
and evidence, the texts waiting in the outbox), who they are (names, e-mail, phone) and
their chat ids. What stays, so the numbers still add up: rows, timestamps, intents,
languages, SLA clocks, ratings, ownership events, order facts and company names.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, cast, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Case, Contact, Conversation, Customer, Message, Order, OutboxItem

ERASED_CHAT = "erased-"  # chat ids become "erased-<contact id>": unique, meaningless


async def purge_expired(session: AsyncSession, cutoff: datetime, now: datetime) -> int:
    """Remove personal data last touched before ``cutoff``; returns rows changed.
    Idempotent: rows already purged are not matched again."""
    changed = 0
    result = await session.execute(
        update(Message).where(Message.created_at < cutoff, Message.text != "")
        .values(text="", attachments=[], entities={}).execution_options(synchronize_session=False))
    changed += result.rowcount  # type: ignore[attr-defined]
    # A message still undelivered after the retention period is given up, then purged.
    await session.execute(
        update(OutboxItem).where(OutboxItem.created_at < cutoff, OutboxItem.status == "pending")
        .values(status="failed", last_error="expired: personal data retention")
        .execution_options(synchronize_session=False))
    result = await session.execute(
        update(OutboxItem).where(OutboxItem.created_at < cutoff,
                                 OutboxItem.chat.not_like(f"{ERASED_CHAT}%"))
        .values(payload={}, chat=ERASED_CHAT).execution_options(synchronize_session=False))
    changed += result.rowcount  # type: ignore[attr-defined]
    result = await session.execute(
        update(Case).where(Case.opened_at < cutoff,
                           or_(Case.description.is_not(None),
                               cast(Case.evidence, String) != "[]"))
        .values(description=None, evidence=[]).execution_options(synchronize_session=False))
    changed += result.rowcount  # type: ignore[attr-defined]

    # Conversations untouched since the cutoff: what flows and context remembered (an
    # e-mail typed into the verification flow, for one).
    result = await session.execute(
        update(Conversation).where(Conversation.updated_at < cutoff,
                                   or_(cast(Conversation.flow_state, String) != "{}",
                                       cast(Conversation.context, String) != "{}"))
        .values(flow_state={}, context={}, flow=None)
        .execution_options(synchronize_session=False))
    changed += result.rowcount  # type: ignore[attr-defined]

    recent_conversation = select(Conversation.id).where(
        Conversation.customer_id == Customer.id, Conversation.updated_at >= cutoff).exists()
    recent_order = select(Order.id).where(Order.customer_id == Customer.id,
                                          Order.updated_at >= cutoff).exists()
    result = await session.execute(
        update(Customer).where(
            Customer.updated_at < cutoff, Customer.erased_at.is_(None),
            ~recent_conversation, ~recent_order,
            or_(Customer.contact_name.is_not(None), Customer.email.is_not(None),
                Customer.phone.is_not(None)))
        .values(contact_name=None, email=None, phone=None, erased_at=now)
        .execution_options(synchronize_session=False))
    changed += result.rowcount  # type: ignore[attr-defined]

    # Chat ids: of people who wrote, last before the cutoff; of contacts who never wrote,
    # only when nobody needs them (no customer, or a customer whose data is erased), since
    # an imported chat of an active customer is how the bot reaches them.
    erased_customer = select(Customer.id).where(Customer.id == Contact.customer_id,
                                                Customer.erased_at.is_not(None)).exists()
    stale_contacts = list((await session.execute(
        select(Contact).where(
            Contact.chat.not_like(f"{ERASED_CHAT}%"),
            or_(Contact.last_seen_at < cutoff,
                Contact.last_seen_at.is_(None) & (Contact.created_at < cutoff)
                & (Contact.customer_id.is_(None) | erased_customer)))
    )).scalars())
    for contact in stale_contacts:
        erased = f"{ERASED_CHAT}{contact.id}"
        await session.execute(
            update(Conversation).where(Conversation.contact_id == contact.id)
            .values(chat=erased).execution_options(synchronize_session=False))
        contact.chat, contact.display_name, contact.language_hint = erased, None, None
        changed += 1
    return changed
