"""Telegram updates in: the webhook ``POST /webhooks/telegram`` and long polling.

The webhook checks ``X-Telegram-Bot-Api-Secret-Token`` (set with ``setWebhook``) in
constant time before reading anything else; the bot token never appears in the URL. An
update is stored (deduplicated by ``update_id``) and answered before Telegram gets its
200, so a crash can only cause a redelivery, which is then a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from telegram.error import TelegramError

from bot.channels.telegram import ALLOWED_UPDATES, TelegramChannel, parse_update
from bot.pipeline import InvalidMessage, fit_inbound
from bot.service import Service
from bot.types import InboundMessage
from bot.web.limits import read_body

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
POLL_TIMEOUT_SECONDS = 25
MAX_POLL_BACKOFF_SECONDS = 60.0


async def handle_update(service: Service, channel: TelegramChannel,
                        inbound: InboundMessage | None, callback_id: str | None) -> None:
    if inbound is not None:
        try:
            await service.pipeline.handle(inbound)
        except InvalidMessage as exc:
            # Not stored: tell the customer why, directly (an empty or overlong message).
            lang = (inbound.language_hint or "")[:2] or None
            text = service.knowledge.templates.render(exc.template, lang, **exc.values)
            with contextlib.suppress(TelegramError):
                await (await channel.ready()).send_message(chat_id=inbound.chat, text=text)
    if callback_id is not None:
        with contextlib.suppress(TelegramError):  # only stops the button's spinner
            await (await channel.ready()).answer_callback_query(callback_id)


def build_router(service: Service, channel: TelegramChannel) -> APIRouter:
    router = APIRouter()
    secret = service.settings.telegram.webhook_secret

    @router.post(WEBHOOK_PATH, include_in_schema=False)
    async def telegram_webhook(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "")
        if secret is None or not hmac.compare_digest(given.encode(),
                                                     secret.get_secret_value().encode()):
            return Response("forbidden", status_code=403)
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("not an update")
            inbound, callback_id = parse_update(data, channel.bot)
            if inbound is not None:  # a chat id that cannot be stored: UnfitMessage
                inbound = fit_inbound(inbound)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            # Fields of the wrong type, absurd nesting, ids no column holds: not something
            # Telegram sends.
            log.info("telegram: unreadable update refused: %s", type(exc).__name__)
            return Response("not a Telegram update", status_code=400)
        await handle_update(service, channel, inbound, callback_id)
        return JSONResponse({"ok": True})

    return router


async def configure_webhook(service: Service, channel: TelegramChannel) -> None:
    """Register the webhook with Telegram (webhook mode with a public URL), or remove it
    so long polling receives the updates."""
    settings = service.settings.telegram
    bot = await channel.ready()
    if settings.mode == "polling":
        await bot.delete_webhook()
    elif settings.public_url and settings.webhook_secret is not None:
        await bot.set_webhook(url=settings.public_url.rstrip("/") + WEBHOOK_PATH,
                              secret_token=settings.webhook_secret.get_secret_value(),
                              allowed_updates=ALLOWED_UPDATES)


async def poll(service: Service, channel: TelegramChannel, stop: asyncio.Event) -> None:
    """Long polling: getUpdates in a loop, each update handled like a webhook delivery.
    After a restart Telegram resends what was not confirmed; those are duplicates."""
    offset: int | None = None
    backoff = 1.0
    while not stop.is_set():
        try:
            bot = await channel.ready()
            updates = await bot.get_updates(offset=offset, timeout=POLL_TIMEOUT_SECONDS,
                                            allowed_updates=ALLOWED_UPDATES)
            backoff = 1.0
        except TelegramError as exc:
            log.warning("telegram: getUpdates failed (%s); retrying in %.0f s", exc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
            continue
        for update in updates:
            try:
                inbound, callback_id = parse_update(update.to_dict(), channel.bot)
                if inbound is not None:
                    inbound = fit_inbound(inbound)
            except (ValueError, TypeError, KeyError):
                log.exception("telegram: unreadable update %d skipped", update.update_id)
                offset = update.update_id + 1
                continue
            try:
                await handle_update(service, channel, inbound, callback_id)
            except Exception:  # e.g. the database is down: keep the offset, fetch it again
                log.exception("telegram: update %d not stored; retrying", update.update_id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
                break
            offset = update.update_id + 1
