"""What agents do to a conversation: take, reply, note, transfer, accept, release, resolve.

One implementation for every front end: ``supportbot replay`` and the Slack app (buttons,
thread replies, ``/support``) call ``perform``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bot import ownership
from bot.agent_desk import current_conversation
from bot.db.models import Case, Conversation, Message, ProcessedEvent
from bot.service import Service
from bot.types import Button, Reply

ACTIONS = ("take", "reply", "note", "transfer", "accept", "release", "resolve")


@dataclass
class ActionOutcome:
    """What happened, as the replay output line(s) describe it."""

    events: list[dict[str, Any]] = field(default_factory=list)
    conversation_id: int | None = None
    duplicate: bool = False  # the delivery (once_key) was acted on before: nothing done

    @property
    def result(self) -> dict[str, Any]:
        """The ownership line: whether the action was done, and who owns the conversation."""
        return next(e for e in reversed(self.events) if e.get("event") == "owner")


async def ask_for_rating(service: Service, session: Any, conversation: Conversation,
                         now: Any) -> None:
    """The satisfaction survey (1-5), once per conversation a person resolved."""
    if not service.settings.proactive.survey or conversation.survey_sent_at is not None:
        return
    lang = conversation.language or service.settings.languages.default
    question = service.knowledge.templates.render("survey.question", lang)
    buttons = [Button(label=str(n), payload=str(n)) for n in range(1, 6)]
    conversation.survey_sent_at = now
    await service.pipeline.queue_replies(
        session, conversation,
        [Reply(question, kind="survey", lang=lang, template="survey.question", buttons=buttons)],
        now)


async def perform(service: Service, chat: str, agent_ref: str, action: str,
                  text: str | None = None, to: str | None = None,
                  conversation_id: int | None = None,
                  once_key: str | None = None) -> ActionOutcome:
    """Do one agent action on the chat's current conversation (or, from Slack, the
    conversation whose card or thread the agent used).

    ``once_key`` names the platform delivery (a Slack event id); it is recorded in the
    action's own transaction, so a redelivery does nothing and says so (``duplicate``).
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown agent action {action!r}")
    outcome = ActionOutcome()
    try:
        async with service.db.sessions.begin() as session:
            if once_key is not None:
                session.add(ProcessedEvent(key=once_key, received_at=service.clock.now()))
                await session.flush()
            await _perform(service, session, outcome, chat, agent_ref, action, text, to,
                           conversation_id)
    except IntegrityError:
        if once_key is None:
            raise
        async with service.db.sessions() as session:
            if await session.get(ProcessedEvent, once_key) is None:
                raise
        return ActionOutcome(duplicate=True)
    service.outbox.wake()
    return outcome


async def _perform(service: Service, session: Any, outcome: ActionOutcome, chat: str,
                   agent_ref: str, action: str, text: str | None, to: str | None,
                   conversation_id: int | None) -> None:
    now = service.clock.now()
    if conversation_id is None:
        found = await current_conversation(session, chat)
        conversation_id = found.id if found else None
    conversation = None
    if conversation_id is not None:
        # One action at a time per conversation (PostgreSQL row lock): an owner's check and
        # the change it guards see the same row. SQLite runs one writer at a time anyway.
        query = select(Conversation).where(Conversation.id == conversation_id) \
            .execution_options(populate_existing=True)
        if service.db.is_postgres:
            query = query.with_for_update()
        conversation = (await session.execute(query)).scalar_one_or_none()
    if conversation is None:
        outcome.events.append({"event": "owner", "chat": chat, "agent": agent_ref,
                               "action": action, "ok": False,
                               "reason": "no conversation with this chat"})
        return
    chat = conversation.chat
    outcome.conversation_id = conversation.id
    if action == "take":
        result = await ownership.take(session, conversation.id, agent_ref, now)
        if result.ok:
            await service.sla.after_take(session, conversation.id, now)
            await session.refresh(conversation)
            lang = conversation.language or service.settings.languages.default
            agent = await ownership.agent_by_ref(session, agent_ref, now)
            notice = service.knowledge.templates.render(
                "human.taken", lang, agent=ownership.display_name(agent))
            await service.pipeline.queue_replies(
                session, conversation, [Reply(notice, lang=lang, template="human.taken")], now)
    elif action in ("reply", "note"):
        agent = await ownership.agent_by_ref(session, agent_ref, now)
        is_owner = conversation.owner_id == agent.id and conversation.status == "owned"
        if action == "reply" and not is_owner:
            result = ownership.OwnershipResult(
                "reply", False, await ownership.owner_ref(session, conversation.id),
                "only the owner replies to the customer; others add notes")
        elif action == "reply" and (hit := service.tone_guard.check(text or "")):
            # Held back: the agent sees why and a polite alternative; nothing is sent.
            warning = service.knowledge.agent_texts["blocked"].format(
                phrase=hit.phrase, alternative=hit.alternative, language=hit.lang)
            outcome.events.append({"to": "agents", "chat": chat, "kind": "blocked",
                                   "text": warning, "owner": agent_ref})
            result = ownership.OwnershipResult("reply", False, agent_ref,
                                               "held back by the tone guard")
        elif action == "reply":
            lang = conversation.language or service.settings.languages.default
            await service.pipeline.queue_replies(
                session, conversation, [Reply(text or "", kind="relay", lang=lang)], now,
                agent_id=agent.id)
            await service.sla.after_agent_reply(session, conversation.id, now, text or "")
            result = ownership.OwnershipResult("reply", True, agent_ref)
        else:
            session.add(Message(conversation_id=conversation.id, direction="out",
                                sender="agent", agent_id=agent.id,
                                channel=conversation.channel, audience="agents",
                                kind="note", text=text or "", created_at=now,
                                processed_at=now))
            result = ownership.OwnershipResult("note", True,
                                               await ownership.owner_ref(session,
                                                                          conversation.id))
    elif action == "transfer":
        result = await ownership.transfer(session, conversation, agent_ref, to or "", now)
    elif action == "accept":
        result = await ownership.accept(session, conversation, agent_ref, now)
    elif action == "release":
        result = await ownership.release(session, conversation, agent_ref, now)
        if result.ok:
            await session.refresh(conversation)
            await service.sla.after_release(session, conversation, now)
    else:
        result = await ownership.resolve(session, conversation, agent_ref, now)
        if result.ok:
            await service.sla.after_resolve(session, conversation.id, now)
            # Its open cases are resolved with it (the dispute-resolution KPI reads them).
            await session.execute(
                update(Case).where(Case.conversation_id == conversation.id,
                                   Case.resolved_at.is_(None))
                .values(status="resolved", resolved_at=now)
                .execution_options(synchronize_session=False))
            await session.refresh(conversation)
            await ask_for_rating(service, session, conversation, now)
    event: dict[str, Any] = {"event": "owner", "chat": chat, "agent": agent_ref,
                             "owner": result.owner, "action": action, "ok": result.ok}
    if result.reason:
        event["reason"] = result.reason
    outcome.events.append(event)
