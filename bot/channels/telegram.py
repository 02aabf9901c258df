"""Telegram, with python-telegram-bot's ``Bot`` (v22): webhook or long polling in, the
outbox out.

Inbound, an ``Update`` becomes an ``InboundMessage`` whose platform id is the
``update_id`` (a redelivered update is a duplicate). Text, photos and documents (kept as
attachments: complaint evidence), captions, edited messages (taken as what the customer
now says), button presses (callback queries, answered so the button stops spinning) and
group chats (the whole buyer's team is one chat). ``/start``, ``/lang`` and ``/human``
are commands for the dialogue; the user's ``language_code`` is the language hint.

Outbound, a reply longer than Telegram's 4,096 characters is split at paragraph, line or
word boundaries; buttons become an inline keyboard on the last part. A part that was sent
is never sent again when a later part is retried (the outbox keeps the count).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import warnings
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError

from bot.channels.base import (
    Delivery,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    split_text,
)
from bot.channels.telegram_request import AiohttpRequest
from bot.config import TelegramSettings
from bot.types import InboundMessage

log = logging.getLogger(__name__)

NAME = "telegram"
MESSAGE_LIMIT = 4096
CALLBACK_DATA_LIMIT = 64  # bytes, Telegram's limit for a button's callback data
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
PERMANENT_BAD_REQUESTS = ("chat not found", "user is deactivated", "chat_write_forbidden",
                          "have no rights to send", "peer_id_invalid", "bot was kicked")


def callback_data(payload: str) -> str:
    """Button payloads fit Telegram's 64 bytes; a longer one is sent as its digest, which
    the dialogue cannot read, so payloads are kept short (commands, digits, intents)."""
    if len(payload.encode()) <= CALLBACK_DATA_LIMIT:
        return payload
    log.warning("button payload longer than %d bytes: %r", CALLBACK_DATA_LIMIT, payload)
    return "#" + hashlib.sha256(payload.encode()).hexdigest()[:40]


def _seconds(value: int | dt.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def delivery_error(exc: TelegramError) -> Exception:
    if isinstance(exc, RetryAfter):
        with warnings.catch_warnings():  # int or timedelta, depending on PTB_TIMEDELTA
            warnings.simplefilter("ignore")
            retry_after = _seconds(exc.retry_after)
        return TemporaryDeliveryError(f"telegram: {exc}", retry_after)
    if isinstance(exc, Forbidden | InvalidToken):
        return PermanentDeliveryError(f"telegram: {exc}")  # blocked by the user, kicked...
    if isinstance(exc, BadRequest) and any(s in str(exc).lower() for s in PERMANENT_BAD_REQUESTS):
        return PermanentDeliveryError(f"telegram: {exc}")
    return TemporaryDeliveryError(f"telegram: {exc}")


def pool_size_for(sends_in_flight: int) -> int:
    """Connections for a bot whose outbox has ``sends_in_flight``: one each, and room for
    the webhook's own calls (answers to button presses, refusals), which come as many at
    once as Telegram sends."""
    return sends_in_flight + max(8, sends_in_flight // 2)


def build_bot(settings: TelegramSettings, connections: int = 16) -> Bot:
    """``connections``: the most Bot API calls at once (the outbox's sends in flight and
    the webhook's own calls); a call waiting for a free one longer than the pool timeout
    (1 s) fails as a temporary error."""
    assert settings.token is not None
    base = settings.api_base_url.rstrip("/")
    return Bot(settings.token.get_secret_value(), base_url=f"{base}/bot",
               base_file_url=f"{base}/file/bot",
               # aiohttp instead of PTB's default httpx: a third of the CPU per call.
               request=AiohttpRequest(connection_pool_size=connections, read_timeout=15),
               # getUpdates waits read_timeout plus the poll's own timeout (PTB adds it).
               get_updates_request=AiohttpRequest(connection_pool_size=2, read_timeout=40))


class TelegramChannel:
    name = NAME

    def __init__(self, settings: TelegramSettings, bot: Bot | None = None,
                 sends_in_flight: int = 16) -> None:
        self.settings = settings
        self.bot = bot or build_bot(settings, pool_size_for(sends_in_flight))
        self._ready = False

    async def ready(self) -> Bot:
        if not self._ready:
            await self.bot.initialize()  # getMe: the bot's own id and name
            self._ready = True
        return self.bot

    async def close(self) -> None:
        if self._ready:
            await self.bot.shutdown()
            self._ready = False

    async def send(self, delivery: Delivery) -> str | None:
        parts = split_text(delivery.text, MESSAGE_LIMIT)
        markup = None
        if delivery.buttons:
            markup = InlineKeyboardMarkup([[InlineKeyboardButton(
                b["label"], callback_data=callback_data(b["payload"]))] for b in delivery.buttons])
        sent_id = None
        for index in range(delivery.parts_sent, len(parts)):
            try:
                bot = await self.ready()
                message = await bot.send_message(
                    chat_id=delivery.chat, text=parts[index],
                    reply_markup=markup if index == len(parts) - 1 else None)
            except TelegramError as exc:
                error = delivery_error(exc)
                if isinstance(error, TemporaryDeliveryError):
                    error.parts_sent = index  # the parts before this one went out
                raise error from exc
            sent_id = str(message.message_id)
        return sent_id


# --- inbound ----------------------------------------------------------------------------------

def _checked(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it has the type Telegram documents for it. ``Update.de_json`` does not
    check field types, so a forged or broken update could carry, say, a chat id that is a
    list or a bool; that is refused (400) rather than stored as its string."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{what} has the wrong type")
    return value


def _sender_fields(user: Any, chat: Any) -> dict[str, Any]:
    """The chat and sender fields of an InboundMessage, each checked for its type."""
    _checked(chat.id, int, "chat id")
    _checked(user.id, int, "user id")
    for name in ("first_name", "last_name", "username", "language_code"):
        if getattr(user, name) is not None:
            _checked(getattr(user, name), str, f"user {name}")
    return {"chat": str(chat.id), "user": str(user.id), "user_name": user.full_name,
            "language_hint": user.language_code}


def parse_update(data: dict[str, Any], bot: Bot | None = None) -> tuple[InboundMessage | None,
                                                                         str | None]:
    """The customer message in an update (or None for updates that carry none), and the
    callback query id to answer, if any. A field the message is made of with the wrong
    type raises ValueError."""
    update = Update.de_json(data, bot)
    external_id = f"update:{update.update_id}"
    query = update.callback_query
    if query is not None:
        message = query.message
        if message is None or not query.data:
            return None, query.id
        if not isinstance(query.data, str):  # Update.de_json does not check field types
            raise ValueError("callback data is not text")
        return InboundMessage(channel=NAME, text=query.data, external_id=external_id,
                              **_sender_fields(query.from_user, message.chat)), query.id
    message = update.message or update.edited_message
    if message is None or message.from_user is None or message.from_user.is_bot:
        return None, None
    attachments: list[dict[str, str]] = []
    if message.photo:
        largest = message.photo[-1]
        # (python-telegram-bot turns a file's ids into strings itself)
        attachments.append({"type": "photo", "file_id": largest.file_id,
                            "name": f"photo-{largest.file_unique_id}.jpg"})
    if message.document is not None:
        document = message.document
        attachments.append({"type": "document", "file_id": document.file_id,
                            "name": _checked(document.file_name or "document", str,
                                             "document name"),
                            "mime": _checked(document.mime_type or "", str, "document type")})
    text = message.text or message.caption or ""
    if not isinstance(text, str):  # Update.de_json does not check field types
        raise ValueError("message text is not text")
    if not text.strip() and attachments:
        # The pipeline needs words; a bare attachment is described by its file names.
        text = " ".join("📎 " + a["name"] for a in attachments)
    if not text.strip():
        return None, None  # stickers, locations, voice...: nothing the bot can read yet
    return InboundMessage(channel=NAME, text=text, external_id=external_id,
                          attachments=tuple(attachments),
                          **_sender_fields(message.from_user, message.chat)), None
