"""The agents' side in Slack, outbound: what the outbox hands to channel ``slack``.

Each conversation gets one card, posted when its first agents' message goes out (normally
the hand-off), and a thread under it; later agents' messages (customer messages relayed
while a person owns the conversation, escalations) go into that thread. The card is
rebuilt from the database and updated in place whenever ownership changes.

Strategic customers' cards go to their account manager's direct messages first; an
``escalation.green_channel`` message posts a second card in the agents' channel, which
from then on is the conversation's thread. Replies in either thread still count.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot import agent_desk
from bot.business_hours import BusinessCalendar
from bot.channels.base import Delivery, PermanentDeliveryError, TemporaryDeliveryError
from bot.channels.slack_blocks import card, escape, mention
from bot.clock import Clock
from bot.config import Settings
from bot.db.database import Database
from bot.db.models import Conversation
from bot.handoff import ACCOUNT_MANAGER_ROUTE, CHANNEL_ROUTE

log = logging.getLogger(__name__)

# Web API errors that no retry can fix: the message is marked failed (and logged).
PERMANENT_ERRORS = frozenset({
    "channel_not_found", "is_archived", "not_in_channel", "msg_too_long", "no_text",
    "invalid_blocks", "user_not_found", "cannot_dm_bot", "invalid_auth", "account_inactive",
    "not_authed", "token_revoked", "missing_scope",
})


def delivery_error(exc: Exception) -> Exception:
    """A Slack client failure as the outbox understands it."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        error = str(response.get("error", "")) if response is not None else ""
        status = getattr(response, "status_code", 0)
        if status == 429 or error == "ratelimited":
            headers = getattr(response, "headers", {}) or {}
            retry_after = headers.get("Retry-After") or headers.get("retry-after")
            return TemporaryDeliveryError("slack: rate limited",
                                          float(retry_after) if retry_after else None)
        if error in PERMANENT_ERRORS:
            return PermanentDeliveryError(f"slack: {error}")
        return TemporaryDeliveryError(f"slack: {error or f'HTTP {status}'}")
    return TemporaryDeliveryError(f"slack: {type(exc).__name__}: {exc}")


# Escalations that stay with the agents: the on-call page (broadcast in the agents'
# channel) and the green channel's move to it.
AGENTS_ESCALATIONS = ("escalation.green_channel", "escalation.after_hours_urgent",
                      "escalation.delivery_failed", "escalation.delivery_held")


def supervised(delivery: Delivery) -> bool:
    """SLA breaches, unclaimed hand-offs and low ratings go to the supervisors' channel."""
    return delivery.kind == "sla_breach" or (
        delivery.kind == "escalation" and delivery.template not in AGENTS_ESCALATIONS)


class SlackChannel:
    name = "slack"

    def __init__(self, settings: Settings, db: Database, clock: Clock, texts: dict[str, str],
                 calendar: BusinessCalendar, client: AsyncWebClient | None = None) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.texts = texts
        self.calendar = calendar
        token = settings.slack.bot_token.get_secret_value() if settings.slack.bot_token else None
        self.client = client or AsyncWebClient(token=token, base_url=settings.slack.api_base_url,
                                               timeout=15)

    @property
    def timezone(self) -> ZoneInfo:
        return self.calendar.timezone

    async def send(self, delivery: Delivery) -> str | None:
        try:
            if delivery.conversation_id is None:
                if delivery.kind != "report":
                    raise PermanentDeliveryError("slack: message has no conversation")
                response = await self.client.chat_postMessage(
                    channel=self.settings.slack.agents_channel, text=escape(delivery.text))
                return str(response.get("ts") or "") or None
            return await self._send(delivery, delivery.conversation_id)
        except (TimeoutError, SlackClientError, aiohttp.ClientError) as exc:
            raise delivery_error(exc) from exc

    async def _send(self, delivery: Delivery, conversation_id: int) -> str | None:
        async with self.db.sessions() as session:
            threads = await agent_desk.threads_of(session, conversation_id)
            conversation = await session.get(Conversation, conversation_id)
            speaker = await agent_desk.customer_label(session, conversation_id)
        if conversation is None:
            raise PermanentDeliveryError(f"slack: conversation {conversation_id} not found")
        if not threads:
            channel, ts = await self._post_card(conversation_id, await self._first_destination(
                conversation))
            if delivery.kind == "handoff":
                return ts  # the card is the hand-off
        elif delivery.template == "escalation.green_channel" and len(threads) == 1:
            # The card moves from the manager's DM to the channel. Once the second card is
            # stored, a retry of this delivery only posts the text (no second move).
            previous_channel, previous_ts = threads[-1].slack_channel, threads[-1].thread_ts
            channel, ts = await self._post_card(conversation_id, self.settings.slack.agents_channel)
            await self._best_effort(self.client.chat_postMessage(
                channel=previous_channel, thread_ts=previous_ts,
                text=self.texts["thread.moved"].format(channel=f"<#{channel}>")))
        else:
            channel, ts = threads[-1].slack_channel, threads[-1].thread_ts
        text = self.thread_text(delivery, speaker)
        if delivery.kind in ("sla_warning", "sla_breach"):
            view = await self.view(conversation_id)
            owner = view.owner if view is not None else None
            if owner is not None and owner.slack_user_id:
                text = f"<@{owner.slack_user_id}> {text}"
        if supervised(delivery):
            # Supervisors must see breaches and escalations: their channel first (retried
            # until it works), then the conversation's thread (best effort).
            response = await self.client.chat_postMessage(
                channel=self.settings.slack.supervisors_channel,
                text=f"{text}\n{self.texts['thread.link'].format(channel=f'<#{channel}>')}")
            await self._best_effort(self.client.chat_postMessage(
                channel=channel, thread_ts=ts, text=text))
            return str(response.get("ts") or "") or None
        response = await self.client.chat_postMessage(
            channel=channel, thread_ts=ts, text=text,
            # Escalations must be seen: shown in the channel as well as in the thread.
            reply_broadcast=delivery.kind == "escalation")
        if delivery.kind == "handoff":
            await self.refresh_cards(conversation_id)
        return str(response.get("ts") or "") or None

    def thread_text(self, delivery: Delivery, speaker: str) -> str:
        if delivery.kind == "relay":
            return self.texts["thread.customer"].format(customer=escape(speaker),
                                                        text=escape(delivery.text))
        return escape(delivery.text)

    async def _first_destination(self, conversation: Conversation) -> str:
        """The account manager's DM for a green-channel hand-off, else the agents' channel.
        When the manager cannot be reached directly the card goes to the channel at once,
        and the green channel's later escalation is cancelled (it would post twice)."""
        if conversation.handoff_route != ACCOUNT_MANAGER_ROUTE:
            return self.settings.slack.agents_channel
        view = await self.view(conversation.id)
        manager = view.account_manager if view else None
        if manager is not None and manager.slack_user_id:
            try:
                opened = await self.client.conversations_open(users=manager.slack_user_id)
                return str(opened["channel"]["id"])
            except SlackApiError as exc:
                if isinstance(delivery_error(exc), TemporaryDeliveryError):
                    raise
                log.warning("conversation %d: cannot message account manager %s (%s)",
                            conversation.id, manager.ref, exc.response.get("error"))
        else:
            log.warning("conversation %d: account manager %s has no Slack user id",
                        conversation.id, manager.ref if manager else "?")
        async with self.db.sessions.begin() as session:
            await agent_desk.set_route(session, conversation.id, CHANNEL_ROUTE)
        return self.settings.slack.agents_channel

    async def _post_card(self, conversation_id: int, destination: str) -> tuple[str, str]:
        text, blocks = await self._card(conversation_id)
        response = await self.client.chat_postMessage(channel=destination, text=text,
                                                      blocks=blocks, unfurl_links=False)
        channel, ts = str(response["channel"]), str(response["ts"])
        async with self.db.sessions.begin() as session:
            await agent_desk.remember_thread(session, conversation_id, channel, ts,
                                             self.clock.now())
        return channel, ts

    async def _card(self, conversation_id: int) -> tuple[str, list[dict[str, Any]]]:
        view = await self.view(conversation_id)
        if view is None:
            raise PermanentDeliveryError(f"slack: conversation {conversation_id} not found")
        return card(view, self.texts, self.timezone)

    async def refresh_cards(self, conversation_id: int) -> None:
        """Show the conversation's current state on each of its cards. Best effort: a card
        that cannot be updated now is refreshed by the next change."""
        async with self.db.sessions() as session:
            threads = await agent_desk.threads_of(session, conversation_id)
        if not threads:
            return
        text, blocks = await self._card(conversation_id)
        for thread in threads:
            await self._best_effort(self.client.chat_update(
                channel=thread.slack_channel, ts=thread.thread_ts, text=text, blocks=blocks))

    async def post_in_thread(self, conversation_id: int, text: str,
                             blocks: list[dict[str, Any]] | None = None) -> None:
        """Best effort, like card updates: used for notices whose loss is visible and
        harmless (the card shows the same state)."""
        async with self.db.sessions() as session:
            threads = await agent_desk.threads_of(session, conversation_id)
        if threads:
            await self._best_effort(self.client.chat_postMessage(
                channel=threads[-1].slack_channel, thread_ts=threads[-1].thread_ts, text=text,
                blocks=blocks))

    @staticmethod
    async def _best_effort(call: Awaitable[Any]) -> bool:
        try:
            await call
        except (TimeoutError, SlackClientError, aiohttp.ClientError) as exc:
            log.warning("Slack call failed, not retried: %s", exc)
            return False
        return True

    async def view(self, conversation_id: int) -> agent_desk.CardView | None:
        async with self.db.sessions() as session:
            return await agent_desk.card_view(session, conversation_id, self.settings.sla,
                                              self.calendar)

    def mention(self, person: agent_desk.Person | None) -> str:
        return mention(person, self.texts)
