"""WeChat Official Account: the callback ``GET|POST /webhooks/wechat`` in, the
customer-service message API out.

Every request's signature is checked before anything is read (and, in safe mode, the
message signature and the AppID inside the encrypted message). A message is stored
(deduplicated by ``MsgId``; WeChat retries a callback three times when it gets no answer
in 5 seconds) and processed. If the reply is ready within ``[wechat]
reply_window_seconds`` it is returned in the response (a passive reply) — a retry of the
same message gets the same answer; otherwise the response is ``success`` and the outbox
sends the reply through the customer-service API once the window has passed.

That API only reaches customers who wrote in the last 48 hours (error 45015): such a
reply is held, the agents are told, and it goes out when the customer writes again.

A signed callback URL is good for 5 minutes: its ``timestamp`` must be within
``CALLBACK_MAX_AGE`` of this machine's clock. In plain mode the signature covers the
token, timestamp and nonce but not the body, so without more anyone who had seen one
signed URL could post any message with it: there a URL seen before is accepted again
only with the message it first came with (WeChat's retries of that message).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError

from bot.channels.base import (
    Delivery,
    HeldDeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    numbered_buttons,
    split_text,
)
from bot.channels.wechat_protocol import (
    AesCrypto,
    ProtocolError,
    encrypted_reply_xml,
    parse_xml,
    read_message,
    signature_matches,
    text_reply_xml,
)
from bot.config import WechatSettings
from bot.db.models import (
    WECHAT_URL_KEY,
    WECHAT_URL_MESSAGE_KEY,
    OutboxItem,
    ProcessedEvent,
    key_digest,
)
from bot.pipeline import InvalidMessage, UnfitMessage, fit_inbound
from bot.service import Service
from bot.types import InboundMessage
from bot.web.limits import read_body

log = logging.getLogger(__name__)

NAME = "wechat"
WEBHOOK_PATH = "/webhooks/wechat"
MAX_BODY_BYTES = 64 * 1024  # WeChat's callbacks are well under this
TEXT_LIMIT = 600  # characters per customer-service text message (WeChat allows ~2,048 bytes)
PASSIVE = "passive"  # outbox external id of a reply returned in the callback's response
TOKEN_ERRORS = {40001, 40014, 42001}  # access token invalid or expired: refresh, retry
WINDOW_CLOSED = {45015}  # the customer last wrote more than 48 hours ago
PERMANENT = {40003, 43004, 43019, 40013}  # bad openid, unsubscribed, blocked, bad AppID
SUCCESS = PlainTextResponse("success")
# How far a callback's timestamp may be from this machine's clock (WeChat retries within
# about 15 seconds; the rest is for clocks that disagree).
CALLBACK_MAX_AGE = 300


class WechatApi:
    """The customer-service message API with a cached access token (``stable_token``:
    several processes share one token instead of invalidating each other's)."""

    def __init__(self, settings: WechatSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.client = client or httpx.AsyncClient(base_url=settings.api_base_url, timeout=10)
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def access_token(self, refused: str | None = None) -> str:
        """The cached token, fetched when there is none or it is about to expire. With
        ``refused`` (a token WeChat refused): the cache's token if it already holds
        another (a send refused at the same time renewed it), else the stable token
        without forcing (another process may have renewed it: forcing would invalidate
        that one in turn, and WeChat limits forced refreshes), forced only when that is
        the refused token still."""
        async with self._lock:
            if self._token is not None and time.monotonic() < self._expires \
                    and refused != self._token:
                return self._token  # fresh, and not the one refused (if any)
            token = await self._fetch_token(force=False)
            if refused is not None and token == refused:
                token = await self._fetch_token(force=True)
            return token

    async def _fetch_token(self, force: bool) -> str:
        assert self.settings.app_secret is not None
        response = await self.client.post("/cgi-bin/stable_token", json={
            "grant_type": "client_credential", "appid": self.settings.app_id,
            "secret": self.settings.app_secret.get_secret_value(), "force_refresh": force})
        data = response.json()
        if "access_token" not in data:
            raise TemporaryDeliveryError(f"wechat: no access token: {data.get('errcode')} "
                                         f"{data.get('errmsg')}")
        self._token = str(data["access_token"])
        # Renew five minutes early: a token must not expire between check and use.
        self._expires = time.monotonic() + max(60, int(data.get("expires_in", 7200)) - 300)
        return self._token

    async def send_text(self, open_id: str, content: str) -> dict[str, Any]:
        refused: str | None = None
        for attempt in range(2):
            token = await self.access_token(refused)
            response = await self.client.post(
                "/cgi-bin/message/custom/send", params={"access_token": token},
                json={"touser": open_id, "msgtype": "text", "text": {"content": content}})
            if response.status_code >= 500:
                raise TemporaryDeliveryError(f"wechat: HTTP {response.status_code}")
            data: dict[str, Any] = response.json()
            code = int(data.get("errcode", 0))
            if code == 0:
                return data
            if code in TOKEN_ERRORS and attempt == 0:
                refused = token
                continue
            message = f"wechat: {code} {data.get('errmsg', '')}".strip()
            if code in WINDOW_CLOSED:
                raise HeldDeliveryError(message)
            if code in PERMANENT:
                raise PermanentDeliveryError(message)
            raise TemporaryDeliveryError(message)
        raise TemporaryDeliveryError("wechat: access token refused twice")

    async def close(self) -> None:
        await self.client.aclose()


class WechatChannel:
    name = NAME
    holds_replies = True  # outside the 48-hour window send() raises HeldDeliveryError

    def __init__(self, settings: WechatSettings, api: WechatApi | None = None) -> None:
        self.settings = settings
        self.api = api or WechatApi(settings)

    async def send(self, delivery: Delivery) -> str | None:
        text = numbered_buttons(delivery.text, delivery.buttons)  # no buttons in this API
        parts = split_text(text, TEXT_LIMIT)
        for index in range(delivery.parts_sent, len(parts)):
            try:
                await self.api.send_text(delivery.chat, parts[index])
            except TemporaryDeliveryError as exc:
                exc.parts_sent = index
                raise
            except httpx.HTTPError as exc:
                raise TemporaryDeliveryError(f"wechat: {type(exc).__name__}", parts_sent=index) \
                    from exc
        return None

    async def close(self) -> None:
        await self.api.close()


# --- the callback ---------------------------------------------------------------------------

def build_router(service: Service) -> APIRouter:
    settings = service.settings.wechat
    assert settings.token is not None
    token = settings.token.get_secret_value()
    crypto = AesCrypto(settings.aes_key.get_secret_value(), settings.app_id or "") \
        if settings.aes_key is not None else None
    window = settings.reply_window_seconds
    router = APIRouter()

    def genuine(request: Request) -> bool:
        query = request.query_params
        return signature_matches(query.get("signature"), token, query.get("timestamp", ""),
                                 query.get("nonce", ""))

    def fresh(request: Request) -> bool:
        """The callback's timestamp is within ``CALLBACK_MAX_AGE`` of now."""
        stamp = request.query_params.get("timestamp", "")
        return stamp.isascii() and stamp.isdigit() and len(stamp) <= 12 \
            and abs(time.time() - int(stamp)) <= CALLBACK_MAX_AGE

    @router.get(WEBHOOK_PATH, include_in_schema=False)
    async def handshake(request: Request) -> Response:
        """The server check when the URL is configured: echo ``echostr`` if signed."""
        if not genuine(request):
            return Response("forbidden", status_code=403)
        return PlainTextResponse(request.query_params.get("echostr", ""))

    @router.post(WEBHOOK_PATH, include_in_schema=False)
    async def callback(request: Request) -> Response:
        if not genuine(request):
            return Response("forbidden", status_code=403)
        if not fresh(request):
            log.info("wechat: callback refused: timestamp %r is not within %d s of now",
                     request.query_params.get("timestamp", "")[:20], CALLBACK_MAX_AGE)
            return Response("forbidden", status_code=403)
        body = await read_body(request, MAX_BODY_BYTES)
        if isinstance(body, Response):
            return body
        query = request.query_params
        try:
            fields = parse_xml(body)
            if crypto is not None:
                if query.get("encrypt_type") != "aes" or "Encrypt" not in fields:
                    raise ProtocolError("safe mode: the message must be encrypted")
                if not signature_matches(query.get("msg_signature"), token,
                                         query.get("timestamp", ""), query.get("nonce", ""),
                                         fields["Encrypt"]):
                    return Response("forbidden", status_code=403)
                fields = parse_xml(crypto.decrypt(fields["Encrypt"]).encode())
            message = read_message(fields)
            # An open id or message id no column holds: UnfitMessage, refused the same way
            # (before anything is written, the callback URL's keys included).
            inbound = fit_inbound(InboundMessage(channel=NAME, chat=message.open_id, text="",
                                                 external_id=message.external_id,
                                                 attachments=message.attachments))
        except (ProtocolError, UnfitMessage) as exc:
            log.info("wechat: callback refused: %s", exc)
            return Response("bad request", status_code=400)
        # Plain mode: every callback, answered or not, binds its URL to its message (in
        # safe mode msg_signature covers the body, so a URL can only bring it again).
        if crypto is None and not await claim_callback_url(
                service, query.get("signature", ""), inbound.external_id):
            log.warning("wechat: callback refused: its signed URL came before with another "
                        "message (a replay)")
            return Response("forbidden", status_code=403)
        if message.kind == "event" and message.event == "subscribe":
            text = "/start"  # a new follower is welcomed like Telegram's /start
        elif message.kind in ("text", "image") and message.text.strip():
            text = message.text
        else:
            return SUCCESS  # other events and message types: nothing to answer
        reply = await answer_within(service, dataclasses.replace(inbound, text=text), window)
        if reply is None:
            return SUCCESS
        xml = text_reply_xml(message.open_id, message.account, reply)
        if crypto is not None:
            xml = encrypted_reply_xml(crypto, token, xml, query.get("nonce", ""))
        return Response(xml, media_type="application/xml")

    return router


async def claim_callback_url(service: Service, signature: str,
                             external_id: str | None) -> bool:
    """True the first time a signed callback URL comes, and when it comes again with the
    same message (WeChat retrying it); False when it comes with another message. Two
    ``processed_events`` keys, written together: the URL's, and the URL's with the
    message's id.

    A URL is known by its (checked) signature alone, in lower case as it is compared:
    the timestamp and the nonce are signed concatenated, so they can be cut differently
    ("12"+"345" or "123"+"45") or written otherwise under the same signature, and the
    hex digits can change case; another signature needs the token."""
    url = key_digest(signature.lower())
    url_key = f"{WECHAT_URL_KEY}{url}"
    message_key = f"{WECHAT_URL_MESSAGE_KEY}{key_digest(url, external_id or '')}"
    now = service.clock.now()
    try:
        async with service.db.sessions.begin() as session:
            session.add(ProcessedEvent(key=url_key, received_at=now))
            await session.flush()  # the URL's key first: it is the one that can collide
            session.add(ProcessedEvent(key=message_key, received_at=now))
        return True
    except IntegrityError:  # seen before, or at this moment by another request
        async with service.db.sessions() as session:
            return await session.get(ProcessedEvent, message_key) is not None


async def answer_within(service: Service, inbound: InboundMessage, window: float) -> str | None:
    """Store and process the message; the reply text if it is ready within ``window``
    seconds (taken from the outbox so it is sent once), else None."""
    try:
        received = await service.pipeline.receive(inbound)
    except InvalidMessage as exc:
        return service.knowledge.templates.render(exc.template, None, **exc.values)
    processing = asyncio.ensure_future(service.pipeline.process(received.message_id))
    try:
        await asyncio.wait_for(asyncio.shield(processing), timeout=window)
    except TimeoutError:
        processing.add_done_callback(_log_failure)
        return None  # the outbox sends the reply through the API after the window
    return await take_passive_reply(service, received.message_id)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("wechat: processing failed: %s", task.exception())


async def take_passive_reply(service: Service, message_id: int) -> str | None:
    """The customer-facing replies to ``message_id``, marked as sent in the response: rows
    the dispatcher has not tried yet, or rows an earlier attempt of this callback already
    answered with (WeChat retries when our response was lost)."""
    now = service.clock.now()
    async with service.db.sessions.begin() as session:
        mine = and_(OutboxItem.in_reply_to == message_id, OutboxItem.channel == NAME)
        await session.execute(
            update(OutboxItem).where(mine, OutboxItem.status == "pending",
                                     OutboxItem.attempts == 0)
            .values(status="sent", sent_at=now, external_id=PASSIVE)
            .execution_options(synchronize_session=False))
        rows = (await session.execute(
            select(OutboxItem.payload).where(mine, OutboxItem.external_id == PASSIVE)
            .order_by(OutboxItem.id))).scalars().all()
    texts = [numbered_buttons(p["text"], p.get("buttons") or []) for p in rows]
    return "\n\n".join(texts) if texts else None

