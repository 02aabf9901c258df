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
from slack_bolt.request.payload_utils import (
    to_action,
    to_command,
    to_event,
    to_message,
    to_options,
    to_shortcut,
    to_step,
    to_view,
)
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackClientError
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import select

from bot import agent_desk, kpis, ownership
from bot.agent_actions import ActionOutcome, perform
from bot.channels.slack import SlackChannel
from bot.channels.slack_blocks import transfer_offer
from bot.db.models import SLACK_EVENT_KEY, Agent
from bot.pipeline import clip_text, storable_text
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
# What a payload with a field of the wrong shape makes Bolt (or a listener) raise: Bolt
# indexes into payloads without checking. Slack never sends such a payload; it gets a 400.
SHAPE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)
# The views of the payload Bolt computes for every listener and error handler it calls.
PAYLOAD_VIEWS = (to_options, to_shortcut, to_action, to_view, to_command, to_event,
                 to_message, to_step)
# Lengths of the columns a Slack id or name ends up in (agents.slack_user_id and .ref,
# agents.name, processed_events.key): a longer value is refused or clipped, never sent to
# the database to fail there.
SLACK_ID_MAX = 64
AGENT_NAME_MAX = 200
ONCE_KEY_MAX = 128


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


def slack_id(value: Any) -> str | None:
    """A Slack id (user, channel) as a payload gives it, or None if it is not one."""
    return value if isinstance(value, str) and 0 < len(value) <= SLACK_ID_MAX else None


def _field(body: dict[str, Any], key: str, inner: str) -> Any:
    value = body.get(key)
    return value.get(inner) if isinstance(value, dict) else None


def clicked_by(body: dict[str, Any]) -> str | None:
    return slack_id(_field(body, "user", "id"))


def clicked_in(body: dict[str, Any]) -> str | None:
    """Where a click's private answer goes: the channel of the card that was clicked."""
    return slack_id(_field(body, "channel", "id")) \
        or slack_id(_field(body, "container", "channel_id"))


def unfit_payload(body: Any) -> str | None:
    """Why a signed request's payload is not one Slack sends, in a way that would make Bolt
    fail on it (a 500), or None. Slack's interactions always carry their actions."""
    if not isinstance(body, dict):
        return "the payload is not an object"
    if body.get("type") == "block_actions" or (body.get("type") == "interactive_message"
                                               and "callback_id" in body):
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions:
            return "an interaction without actions"
        block_actions = body.get("type") == "block_actions"
        if not all(isinstance(a, dict) and (not block_actions
                                            or isinstance(a.get("action_id"), str))
                   for a in actions):
            return "an interaction with malformed actions"
    for view in PAYLOAD_VIEWS:  # what Bolt computes before any listener or error handler
        view(body)
    return None


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
        except (SlackClientError, KeyError, TypeError, AttributeError) as exc:
            log.info("users.info for %s failed (%s); recording the user id", user_id, exc)
        name = clip_text(str(name), AGENT_NAME_MAX) if name else None
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
        user_id = clicked_by(body)
        try:
            conversation_id = int(str(action.get("value", "")))
        except ValueError:
            log.warning("card button without a conversation id: %r", action.get("value"))
            return
        if user_id is None:
            log.warning("card button without a user")
            return
        await self.act(user_id, action["action_id"], conversation_id, where=clicked_in(body))

    async def on_transfer(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        block_id = str(action.get("block_id", ""))
        user_id, to_user = clicked_by(body), slack_id(action.get("selected_user"))
        if not block_id.startswith("card-") or not block_id[5:].isdigit() \
                or user_id is None or to_user is None:
            return
        await self.act(user_id, "transfer", int(block_id[5:]), to_user=to_user,
                       where=clicked_in(body))

    async def on_message(self, event: dict[str, Any], body: dict[str, Any],
                         context: Any) -> None:
        """A message in a conversation's thread: the owner's reply goes to the customer,
        ``note:`` stays internal. Bots' messages (our own relays included) are ignored."""
        user_id = slack_id(event.get("user"))
        if event.get("subtype") not in RELAYED_SUBTYPES or event.get("bot_id") \
                or user_id is None:
            return
        if user_id == getattr(context, "bot_user_id", None):
            return
        thread_ts, channel = event.get("thread_ts"), slack_id(event.get("channel"))
        if not isinstance(thread_ts, str) or not thread_ts or thread_ts == event.get("ts") \
                or not channel:
            return  # not in a thread: conversation with colleagues, not with a customer
        async with self.service.db.sessions() as session:
            conversation_id = await agent_desk.conversation_for_thread(session, channel, thread_ts)
        if conversation_id is None:
            return
        text = plain_text(storable_text(str(event.get("text") or "")))
        note = NOTE_PREFIX.match(text)
        action = "note" if note else "reply"
        if note:
            text = text[note.end():]
        if not text.strip():
            return
        event_id = body.get("event_id") or f"{channel}:{event.get('ts')}"
        once_key = f"{SLACK_EVENT_KEY}{event_id}"
        if len(once_key) > ONCE_KEY_MAX:  # Slack's event ids are a dozen characters
            log.warning("slack: event id too long to record; event ignored")
            return
        await self.act(user_id, action, conversation_id, text=text, once_key=once_key,
                       where=channel, thread_ts=thread_ts)

    async def on_support_command(self, ack: Any, command: dict[str, Any]) -> None:
        words = str(command.get("text") or "").split()
        sub = words[0].lower() if words else ""
        user_id = slack_id(command.get("user_id"))
        if user_id is None:  # Slack always says who typed the command
            text = self.texts["command.usage"]
        elif sub in ("queue", "mine", "stats") and len(words) == 1:
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
    app.error(on_error)
    return app, desk


async def on_error(error: Exception) -> BoltResponse | None:
    """Bolt's handler for an exception in a middleware or listener: a payload field of an
    unexpected shape is a bad request (400); anything else (the database is down, say)
    stays a 500, so Slack retries the event."""
    if isinstance(error, SHAPE_ERRORS):
        log.warning("slack: a payload of an unexpected shape: %s", type(error).__name__,
                    exc_info=error)
        return BoltResponse(status=400, body="not a Slack request")
    log.error("slack: request failed: %s", type(error).__name__, exc_info=error)
    return None


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
                log.info("slack: request refused: bad signature, or a timestamp more than 5 "
                         "minutes from this machine's clock")
                return Response("invalid request signature", status_code=401)
        # Bolt parses the payload and indexes into it while it builds the request and
        # picks a listener; a signed payload of a shape Slack never sends is refused here.
        try:
            bolt_request = to_async_bolt_request(request, body)
            problem = unfit_payload(bolt_request.body)
        except SHAPE_ERRORS as exc:
            problem = f"unreadable payload ({type(exc).__name__})"
        if problem is not None:
            log.info("slack: signed request refused: %s", problem)
            return Response(f"not a Slack request: {problem}", status_code=400)
        bolt_response = await app.async_dispatch(bolt_request)
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
