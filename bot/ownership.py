"""First-responder ownership: the first agent who takes a conversation owns it until it is
resolved. Claims are conditional updates, so of any number of simultaneous Takes exactly
one succeeds; every change, and every refused attempt, is an ownership event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import AgentSettings
from bot.db.models import Agent, Conversation, OwnershipEvent

CLAIMABLE = ("open", "handed_off")


@dataclass(frozen=True)
class OwnershipResult:
    action: str
    ok: bool
    owner: str | None
    reason: str | None = None


async def agent_by_ref(session: AsyncSession, ref: str, now: datetime) -> Agent:
    agent = (await session.execute(select(Agent).where(Agent.ref == ref))).scalar_one_or_none()
    if agent is None:
        agent = await _insert_agent(session, ref, now, name=ref)
    return agent


async def _insert_agent(session: AsyncSession, ref: str, now: datetime, **values: Any) -> Agent:
    """A new agent row, in a savepoint: when another process inserted the same ref first
    (processes starting at once with the same ``[agents]``, one agent's clicks reaching two
    processes), its row is used instead of failing the whole transaction."""
    try:
        async with session.begin_nested():
            agent = Agent(ref=ref, created_at=now, **values)
            session.add(agent)
        return agent
    except IntegrityError:
        return (await session.execute(select(Agent).where(Agent.ref == ref))).scalar_one()


async def sync_agents(session: AsyncSession, configured: Mapping[str, AgentSettings],
                      now: datetime) -> None:
    """Make the agents table match ``[agents.*]``: names, Slack ids, supervisor flags.
    Agents who are no longer configured keep their rows (history refers to them)."""
    for ref, config in configured.items():
        agent = (await session.execute(select(Agent).where(Agent.ref == ref))).scalar_one_or_none()
        if agent is None:
            agent = await _insert_agent(session, ref, now)
        if config.slack_user_id and agent.slack_user_id != config.slack_user_id:
            # The Slack user may have acted before being configured, under their user id;
            # that row keeps its history but gives up the Slack id.
            await session.execute(update(Agent).where(
                Agent.slack_user_id == config.slack_user_id, Agent.ref != ref)
                .values(slack_user_id=None))
        agent.name = config.name or ref
        agent.slack_user_id = config.slack_user_id
        agent.email = config.email
        agent.is_supervisor = config.supervisor
        await session.flush()


async def agent_for_slack_user(session: AsyncSession, user_id: str, now: datetime,
                               name: str | None = None) -> Agent:
    """The agent behind a Slack user: the configured one, else one recorded under the
    Slack user id (so unlisted colleagues can still help)."""
    agent = (await session.execute(
        select(Agent).where(Agent.slack_user_id == user_id))).scalar_one_or_none()
    if agent is None:
        agent = await agent_by_ref(session, user_id, now)
        agent.slack_user_id = user_id
        agent.name = name or agent.name
        await session.flush()
    return agent


def display_name(agent: Agent) -> str:
    return agent.name or agent.ref


async def owner_ref(session: AsyncSession, conversation_id: int) -> str | None:
    """The ref of the agent who owns the conversation, if anyone does."""
    return await session.scalar(
        select(Agent.ref).join(Conversation, Conversation.owner_id == Agent.id)
        .where(Conversation.id == conversation_id))


async def _record(session: AsyncSession, conversation_id: int, agent: Agent, action: str,
                  ok: bool, now: datetime, reason: str | None = None,
                  target: Agent | None = None) -> None:
    session.add(OwnershipEvent(conversation_id=conversation_id, agent_id=agent.id,
                               target_agent_id=target.id if target else None, action=action,
                               ok=ok, reason=reason, at=now))


async def take(session: AsyncSession, conversation_id: int, agent_ref: str,
               now: datetime) -> OwnershipResult:
    agent = await agent_by_ref(session, agent_ref, now)
    claimed = await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.owner_id.is_(None),
               Conversation.status.in_(CLAIMABLE))
        .values(owner_id=agent.id, status="owned", updated_at=now))
    if claimed.rowcount == 1:  # type: ignore[attr-defined]
        await _record(session, conversation_id, agent, "take", True, now)
        return OwnershipResult("take", True, agent_ref)
    owner = await owner_ref(session, conversation_id)
    reason = f"owned by {owner}" if owner else "conversation is not open"
    await _record(session, conversation_id, agent, "take", False, now, reason)
    return OwnershipResult("take", False, owner, reason)


async def _as_owner(session: AsyncSession, conversation: Conversation, agent_ref: str,
                    action: str, now: datetime, **values: Any) -> tuple[Agent, OwnershipResult | None]:
    """Apply ``values`` if, and only if, the acting agent owns the conversation at this
    moment: a conditional update, so two agents acting at once cannot both succeed.
    Returns the agent and, when they do not own it, the refusal (recorded)."""
    agent = await agent_by_ref(session, agent_ref, now)
    changed = await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation.id, Conversation.owner_id == agent.id,
               Conversation.status == "owned")
        .values(updated_at=now, **values))
    if changed.rowcount == 1:  # type: ignore[attr-defined]
        return agent, None
    owner = await owner_ref(session, conversation.id)
    reason = f"only the owner ({owner}) can {action}" if owner else "nobody owns it yet"
    await _record(session, conversation.id, agent, action, False, now, reason)
    return agent, OwnershipResult(action, False, owner, reason)


def _without_offer(conversation: Conversation) -> dict[str, Any]:
    """The context minus a pending transfer offer, which no longer holds once the
    conversation is released, resolved or moved."""
    return {k: v for k, v in (conversation.context or {}).items() if k != "transfer_to"}


async def transfer(session: AsyncSession, conversation: Conversation, agent_ref: str,
                   to_ref: str, now: datetime) -> OwnershipResult:
    """Offer the conversation to another agent; the owner stays owner until they accept."""
    context = {**(conversation.context or {}), "transfer_to": to_ref}
    agent, refused = await _as_owner(session, conversation, agent_ref, "transfer", now,
                                     context=context)
    if refused:
        return refused
    target = await agent_by_ref(session, to_ref, now)
    await _record(session, conversation.id, agent, "transfer", True, now, target=target)
    return OwnershipResult("transfer", True, agent_ref)


async def accept(session: AsyncSession, conversation: Conversation, agent_ref: str,
                 now: datetime) -> OwnershipResult:
    agent = await agent_by_ref(session, agent_ref, now)
    offered = (conversation.context or {}).get("transfer_to")
    owner = await owner_ref(session, conversation.id)
    if offered != agent_ref or conversation.owner_id is None or conversation.status != "owned":
        reason = "no transfer was offered to this agent"
        await _record(session, conversation.id, agent, "accept", False, now, reason)
        return OwnershipResult("accept", False, owner, reason)
    moved = await session.execute(
        update(Conversation).where(Conversation.id == conversation.id,
                                   Conversation.owner_id == conversation.owner_id,
                                   Conversation.status == "owned")
        .values(owner_id=agent.id, updated_at=now, context=_without_offer(conversation)))
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        await _record(session, conversation.id, agent, "accept", False, now, "ownership changed")
        return OwnershipResult("accept", False, owner, "ownership changed")
    await _record(session, conversation.id, agent, "accept", True, now)
    return OwnershipResult("accept", True, agent_ref)


async def release(session: AsyncSession, conversation: Conversation, agent_ref: str,
                  now: datetime) -> OwnershipResult:
    # Back in the queue: the unclaimed-hand-off clock starts again.
    agent, refused = await _as_owner(session, conversation, agent_ref, "release", now,
                                     owner_id=None, status="handed_off", handed_off_at=now,
                                     context=_without_offer(conversation))
    if refused:
        return refused
    await _record(session, conversation.id, agent, "release", True, now)
    return OwnershipResult("release", True, None)


async def resolve(session: AsyncSession, conversation: Conversation, agent_ref: str,
                  now: datetime) -> OwnershipResult:
    agent, refused = await _as_owner(session, conversation, agent_ref, "resolve", now,
                                     status="resolved", resolved_at=now,
                                     context=_without_offer(conversation))
    if refused:
        return refused
    await _record(session, conversation.id, agent, "resolve", True, now)
    return OwnershipResult("resolve", True, agent_ref)
