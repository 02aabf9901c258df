"""The agents' side in Slack, inbound: a slack-bolt app for card buttons, thread replies and
the ``/support`` command.

HTTP mode serves ``POST /webhooks/slack/events`` (Events API, interactivity and slash
commands on one URL); Bolt checks every request's signature and timestamp before any
listener runs, so a forged or replayed request is refused with nothing stored. Socket
Mode connects out to Slack instead, for deployments without a public URL.

Every action goes through ``bot.agent_actions.perform``, exactly like ``supportbot
replay``; this module only translates Slack payloads to actions and outcomes to Slack
messages. Listeners finish before Slack gets its answer (``process_before_response``) so
nothing runs after a response that a crash could lose; a thread reply's event id is
recorded with the action, so Slack's retries (X-Slack-Retry-Num) change nothing.
"""

from __future__ import annotations

import html
import logging
import re
from datetime import timedelta
from typing import Any

import aiohttp
from fastapi import APIRouter, Request, Response
from slack_bolt.adapter.starlette.async_handler import (
    to_async_bolt_request,
    to_starlette_response,
)
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackClientError
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import select

from bot import agent_desk, kpis, ownership
from bot.agent_actions import ActionOutcome, perform
from bot.channels.slack import SlackChannel
from bot.channels.slack_blocks import transfer_offer
from bot.db.models import Agent
from bot.service import Service
from bot.web.limits import read_body

log = logging.getLogger(__name__)

CARD_ACTIONS = ("take", "resolve", "release", "accept")
CHANGES_CARD = frozenset({"take", "transfer", "accept", "release", "resolve"})
NOTE_PREFIX = re.compile(r"^\s*note\s*:\s*", re.IGNORECASE)
MAX_BODY_BYTES = 1_000_000  # Slack's payloads are a few kB; anything near this is not Slack
WEBHOOK_PATH = "/webhooks/slack/events"
# Thread messages an agent writes: plain, "also send to channel", and with a file attached.
RELAYED_SUBTYPES = (None, "thread_broadcast", "file_share")
SLACK_MARKUP = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")


def plain_text(text: str) -> str:
    """An agent's Slack message as the customer should read it: links as "label (url)",
    mentions and channel links as their label, then Slack's &amp; &lt; &gt; undone."""
    def replace(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        if target.startswith("@"):
            return label or "@"  # a colleague's mention: their name if Slack gave it
        if target.startswith("#"):
            return f"#{label}" if label else "#"
        if target.startswith("!"):
            return f"@{label or target[1:].split('^')[0]}"
        if label and label != target.removeprefix("mailto:"):
            return f"{label} ({target})"
        return target.removeprefix("mailto:")
    return html.unescape(SLACK_MARKUP.sub(replace, text))


def clicked_by(body: dict[str, Any]) -> str:
    return str((body.get("user") or {}).get("id"))


def clicked_in(body: dict[str, Any]) -> str | None:
    """Where a click's private answer goes: the channel of the card that was clicked."""
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")


class SlackDesk:
    """Slack payloads in, agent actions through ``perform``, answers back to Slack."""

    def __init__(self, service: Service, channel: SlackChannel) -> None:
        self.service = service
        self.channel = channel
        self.client = channel.client
        self.texts = channel.texts

    async def agent_ref(self, user_id: str) -> str:
        """The agent behind a Slack user; an unlisted user is recorded with their Slack
        name, so customers are told a name rather than an id."""
        async with self.service.db.sessions() as session:
            known = await session.scalar(select(Agent.ref).where(Agent.slack_user_id == user_id))
        if known is not None:
            return known
        name = None
        try:
            info = await self.client.users_info(user=user_id)
            profile = info["user"].get("profile", {})
            name = (profile.get("display_name") or profile.get("real_name")
                    or info["user"].get("real_name") or info["user"].get("name"))
        except (SlackClientError, KeyError, TypeError) as exc:
            log.info("users.info for %s failed (%s); recording the user id", user_id, exc)
        async with self.service.db.sessions.begin() as session:
            agent = await ownership.agent_for_slack_user(session, user_id,
                                                         self.service.clock.now(), name)
            return agent.ref

    async def act(self, user_id: str, action: str, conversation_id: int, *,
                  text: str | None = None, to_user: str | None = None,
                  once_key: str | None = None, where: str | None = None,
                  thread_ts: str | None = None) -> ActionOutcome:
        """Perform and tell the agent, privately, if it was refused or held back."""
        agent = await self.agent_ref(user_id)
        target = await self.agent_ref(to_user) if to_user else None
        outcome = await perform(self.service, "", agent, action, text=text, to=target,
                                conversation_id=conversation_id, once_key=once_key)
        if outcome.duplicate or outcome.conversation_id is None:
            return outcome
        result = outcome.result
        blocked = [e for e in outcome.events if e.get("kind") == "blocked"]
        if blocked:
            await self.whisper(where, user_id, blocked[0]["text"], thread_ts)
        elif not result["ok"]:
            await self.whisper(where, user_id,
                               await self.refusal(action, result, conversation_id), thread_ts)
        if result["ok"] and action in CHANGES_CARD:
            await self.channel.refresh_cards(conversation_id)
        if result["ok"] and action == "transfer":
            view = await self.channel.view(conversation_id)
            if view is not None:
                offer, blocks = transfer_offer(view, self.texts)
                await self.channel.post_in_thread(conversation_id, offer, blocks)
        return outcome

    async def refusal(self, action: str, result: dict[str, Any], conversation_id: int) -> str:
        if action == "reply":
            view = await self.channel.view(conversation_id)
            if view is not None and view.status == "resolved":
                return self.texts["refused.reply_resolved"]
            if result.get("owner"):
                return self.texts["refused.reply_not_owner"].format(owner=result["owner"])
            return self.texts["refused.reply_unowned"]
        return self.texts["refused.action"].format(action=action,
                                                   reason=result.get("reason", "?"))

    async def whisper(self, channel: str | None, user_id: str, text: str,
                      thread_ts: str | None = None) -> None:
        """An ephemeral message: only ``user_id`` sees it."""
        if channel is None:
            return
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user_id, text=text,
                                                 thread_ts=thread_ts)
        except (TimeoutError, SlackClientError, aiohttp.ClientError) as exc:
            log.warning("ephemeral message to %s not delivered: %s", user_id, exc)

    # -- listeners ------------------------------------------------------------------------

    async def on_card_button(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        try:
            conversation_id = int(action.get("value", ""))
        except ValueError:
            log.warning("card button without a conversation id: %r", action.get("value"))
            return
        await self.act(clicked_by(body), action["action_id"], conversation_id,
                       where=clicked_in(body))

    async def on_transfer(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        block_id = str(action.get("block_id", ""))
        if not block_id.startswith("card-") or not block_id[5:].isdigit() \
                or not action.get("selected_user"):
            return
        await self.act(clicked_by(body), "transfer", int(block_id[5:]),
                       to_user=action["selected_user"], where=clicked_in(body))

    async def on_message(self, event: dict[str, Any], body: dict[str, Any],
                         context: Any) -> None:
        """A message in a conversation's thread: the owner's reply goes to the customer,
        ``note:`` stays internal. Bots' messages (our own relays included) are ignored."""
        if event.get("subtype") not in RELAYED_SUBTYPES or event.get("bot_id") \
                or not event.get("user"):
            return
        if event["user"] == getattr(context, "bot_user_id", None):
            return
        thread_ts, channel = event.get("thread_ts"), event.get("channel")
        if not thread_ts or thread_ts == event.get("ts") or not channel:
            return  # not in a thread: conversation with colleagues, not with a customer
        async with self.service.db.sessions() as session:
            conversation_id = await agent_desk.conversation_for_thread(session, channel, thread_ts)
        if conversation_id is None:
            return
        text = plain_text(str(event.get("text") or ""))
        note = NOTE_PREFIX.match(text)
        action = "note" if note else "reply"
        if note:
            text = text[note.end():]
        if not text.strip():
            return
        event_id = body.get("event_id") or f"{channel}:{event.get('ts')}"
        await self.act(event["user"], action, conversation_id, text=text,
                       once_key=f"slack:{event_id}", where=channel, thread_ts=thread_ts)

    async def on_support_command(self, ack: Any, command: dict[str, Any]) -> None:
        words = str(command.get("text") or "").split()
        sub = words[0].lower() if words else ""
        user_id = str(command.get("user_id"))
        if sub in ("queue", "mine", "stats") and len(words) == 1:
            text = await self.listing(sub, user_id)
        elif sub in ("take", "resolve") and len(words) == 2:
            text = await self.command_action(sub, words[1], user_id)
        else:
            text = self.texts["command.usage"]
        await ack(text=text)

    async def command_action(self, action: str, reference: str, user_id: str) -> str:
        async with self.service.db.sessions() as session:
            conversation = await agent_desk.find_by_reference(session, reference)
        if conversation is None:
            return self.texts["command.not_found"].format(reference=reference)
        outcome = await self.act(user_id, action, conversation.id)
        result = outcome.result
        if result["ok"]:
            return self.texts["done.action"].format(action=action, number=conversation.id)
        return await self.refusal(action, result, conversation.id)

    def stats_kpis(self, week: dict[str, float | None]) -> str:
        """The headline KPIs of the last 7 days (bot/kpis.py) as one line."""
        none = self.texts["command.no_data"]
        return self.texts["command.stats_kpis"].format(
            first_response=kpis.minutes_text(week["first_response_median_working_minutes"],
                                             none),
            breach_rate=kpis.share_text(week["sla_breach_rate"], none),
            satisfaction=kpis.share_text(week["satisfaction_share"], none))

    async def listing(self, what: str, user_id: str) -> str:
        agent_ref = await self.agent_ref(user_id)
        now = self.service.clock.now()
        calendar = self.channel.calendar
        async with self.service.db.sessions() as session:
            agent = await ownership.agent_by_ref(session, agent_ref, now)
            if what == "stats":
                counts = await agent_desk.counts(session, agent.id,
                                                 agent_desk.day_start(now, calendar))
                week = kpis.headline(await kpis.compute_kpis(
                    session, start=now - timedelta(days=7), end=now, calendar=calendar))
                return self.texts["command.stats"].format(
                    waiting=counts.waiting, owned=counts.owned, mine=counts.mine,
                    resolved=counts.resolved_today, resolved_mine=counts.resolved_today_by_me,
                ) + "\n" + self.stats_kpis(week)
            entries = (await agent_desk.queue(session) if what == "queue"
                       else await agent_desk.owned_by(session, agent.id))
        if not entries:
            return self.texts[f"command.{what}_empty"]
        lines = [self.texts[f"command.{what}_title"].format(count=len(entries))]
        for entry in entries:
            since = entry.waiting_since.astimezone(calendar.timezone).strftime("%a %H:%M") \
                if entry.waiting_since else "?"
            lines.append(self.texts["command.line"].format(
                priority_mark=self.texts[f"priority_mark.{entry.priority}"],
                number=entry.conversation_id, customer=entry.company or "?",
                channel=entry.channel, chat=entry.chat, since=since))
        return "\n".join(lines)


def build_bolt_app(service: Service) -> tuple[AsyncApp, SlackDesk]:
    channel = service.outbox.channels.get("slack")
    if not isinstance(channel, SlackChannel):
        raise RuntimeError("Slack is not configured: set [slack] bot_token")
    settings = service.settings.slack
    http = settings.mode == "http"
    app = AsyncApp(
        client=channel.client,
        signing_secret=settings.signing_secret.get_secret_value() if settings.signing_secret else None,
        request_verification_enabled=http,
        process_before_response=True,
        logger=logging.getLogger("bot.slack"),
    )
    desk = SlackDesk(service, channel)
    for action in CARD_ACTIONS:
        app.action(action)(desk.on_card_button)
    app.action("transfer")(desk.on_transfer)
    app.event("message")(desk.on_message)
    app.command("/support")(desk.on_support_command)
    return app, desk


def build_router(app: AsyncApp, signing_secret: str | None) -> APIRouter:
    """``POST /webhooks/slack/events``: events, interactivity and slash commands. The body
    is read with a size cap before Bolt checks its signature, so an oversized request
    (with or without Content-Length) costs at most ``MAX_BODY_BYTES`` of memory."""
    router = APIRouter()
    verifier = SignatureVerifier(signing_secret) if signing_secret else None

    @router.post(WEBHOOK_PATH, include_in_schema=False)
    async def slack_events(request: Request) -> Response:
        body = await read_body(request, MAX_BODY_BYTES)
        if isinstance(body, Response):
            return body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Response("body is not UTF-8", status_code=400)
        # The signature first, before Bolt parses anything: an unsigned body, however
        # malformed (or with a malformed timestamp), is refused as unsigned.
        if verifier is not None:
            try:
                genuine = verifier.is_valid_request(text, dict(request.headers))
            except (ValueError, TypeError):
                genuine = False
            if not genuine:
                return Response("invalid request signature", status_code=401)
        bolt_response = await app.async_dispatch(to_async_bolt_request(request, body))
        return to_starlette_response(bolt_response)

    return router


async def start_socket_mode(app: AsyncApp, service: Service) -> Any:
    """Connect to Slack over Socket Mode; returns the handler to close at shutdown."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    token = service.settings.slack.app_token
    assert token is not None  # the config requires it in socket mode
    handler = AsyncSocketModeHandler(app, token.get_secret_value(), web_client=app.client)
    await handler.connect_async()
    return handler
