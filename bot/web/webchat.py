"""HTTP API of the web chat page.

A browser gets a random session token once and keeps it (localStorage), so the
conversation survives a reload. Only a hash of the token is stored as the chat id, so the
database alone does not let anyone read a visitor's chat.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import or_, select

from bot.channels.webchat import NAME as CHANNEL
from bot.db.models import Contact, Conversation, Message, OutboxItem
from bot.pipeline import InvalidMessage
from bot.service import Service
from bot.types import InboundMessage

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{24,64}$")
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UI_KEYS = ("webchat.title", "webchat.placeholder", "webchat.send", "webchat.connection_error")
MAX_BODY_BYTES = 256 * 1024


def chat_id_for(token: str) -> str:
    return "w-" + hashlib.sha256(token.encode()).hexdigest()[:40]


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def build_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/api/webchat")
    templates = service.knowledge.templates
    supported = service.settings.languages.supported

    def ui_language(requested: str | None) -> str:
        code = (requested or "").split("-")[0].lower()
        return code if code in supported else service.settings.languages.default

    @router.post("/session")
    async def new_session() -> dict[str, str]:
        return {"token": secrets.token_urlsafe(32)}

    @router.get("/ui")
    async def ui(lang: str | None = Query(default=None, max_length=16)) -> dict[str, Any]:
        code = ui_language(lang)
        company = service.settings.company.name
        strings = {key.split(".", 1)[1]: templates.render(key, code, company=company)
                   for key in UI_KEYS}
        return {"lang": code, "strings": strings,
                "welcome": templates.render("welcome", code, company=company)}

    @router.post("/messages")
    async def send(request: Request,
                   x_webchat_token: str | None = Header(default=None)) -> JSONResponse:
        if not x_webchat_token or not TOKEN_PATTERN.match(x_webchat_token):
            return _error(401, "missing or malformed X-Webchat-Token header", "bad_token")
        body = await _read_body(request, MAX_BODY_BYTES)
        if body is None:
            return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes", "too_large")
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            return _error(400, "request body is not valid UTF-8", "bad_encoding")
        except (json.JSONDecodeError, RecursionError):
            return _error(400, "request body is not valid JSON", "bad_json")
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            return _error(400, "expected a JSON object with a 'text' string", "bad_request")
        client_id = data.get("client_id")
        if client_id is not None and (not isinstance(client_id, str)
                                      or not CLIENT_ID_PATTERN.match(client_id)):
            return _error(400, "'client_id' must be 1-64 letters, digits, '-' or '_'",
                          "bad_request")
        chat = chat_id_for(x_webchat_token)
        lang = ui_language(data.get("lang") if isinstance(data.get("lang"), str) else None)
        inbound = InboundMessage(
            channel=CHANNEL, chat=chat, text=data["text"], language_hint=lang,
            external_id=f"{chat}:{client_id}" if client_id else None,
        )
        try:
            await service.pipeline.handle(inbound)
        except InvalidMessage as exc:
            status = 413 if exc.reason.startswith("message is longer") else 422
            return _error(status, templates.render(exc.template, lang, **exc.values),
                          _code(exc.reason))
        # The web chat's own replies, for this answer; other channels' rows (an agents'
        # notice) are the serve loop's, which keeps their platforms' pauses.
        await service.outbox.dispatch_due(channel=CHANNEL)
        raw_after = data.get("after")
        after = raw_after if isinstance(raw_after, int) and not isinstance(raw_after, bool) else 0
        return JSONResponse({"messages": await history(chat, after)})

    @router.get("/messages")
    async def messages(after: int = Query(default=0, ge=0),
                       x_webchat_token: str | None = Header(default=None)) -> JSONResponse:
        if not x_webchat_token or not TOKEN_PATTERN.match(x_webchat_token):
            return _error(401, "missing or malformed X-Webchat-Token header", "bad_token")
        return JSONResponse({"messages": await history(chat_id_for(x_webchat_token), after)})

    async def history(chat: str, after: int) -> list[dict[str, Any]]:
        """The chat's messages after ``after``: everything the customer wrote and every
        reply the outbox has delivered."""
        query = (
            select(Message, OutboxItem.payload)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(Contact, Contact.id == Conversation.contact_id)
            .outerjoin(OutboxItem, OutboxItem.message_id == Message.id)
            .where(Contact.channel == CHANNEL, Contact.chat == chat, Message.id > after,
                   or_(Message.direction == "in",
                       (Message.audience == "customer") & (OutboxItem.status == "sent")))
            .order_by(Message.id).limit(500)
        )
        async with service.db.sessions() as session:
            rows = (await session.execute(query)).all()
        return [{
            "id": message.id,
            "from": message.sender,
            "text": message.text,
            "lang": message.lang,
            "buttons": [b["label"] for b in (payload or {}).get("buttons", [])],
            "attachments": [a["name"] for a in (payload or {}).get("attachments", [])],
            "at": message.created_at.isoformat(),
        } for message, payload in rows]

    return router


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes (by its
    Content-Length or while streaming), so an oversized body is never held in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _code(reason: str) -> str:
    if reason.startswith("message is longer"):
        return "too_long"
    if reason == "message is empty":
        return "empty"
    return "invalid_text"
