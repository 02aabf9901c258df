"""A local stand-in for the Telegram Bot API on 127.0.0.1, for python-telegram-bot's ``Bot``
(``base_url`` pointed here). Answers like the Bot API, records every call, serves queued
updates to getUpdates, and fails on demand (429 with retry_after, 403 blocked...)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

from tests.helpers import serve_locally

TOKEN = "123456:TEST-token_abcdefghijklmnopqrstuvwxyz"
WEBHOOK_SECRET = "s3cret-Webhook_token"
BOT_ID = 123456


class TelegramStub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        # Per method, what the next calls get: a failure, or None for a normal answer.
        self.failures: dict[str, list[tuple[int, str, dict[str, Any]] | None]] = {}
        self.updates: list[dict[str, Any]] = []
        self.delivered: list[dict[str, Any]] = []  # sendMessage calls that succeeded
        self._ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner, port = await serve_locally(app)
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(self, method: str, code: int, description: str, times: int = 1,
             retry_after: int | None = None, after: int = 0) -> None:
        """The next ``times`` calls of ``method`` fail, after ``after`` normal answers."""
        parameters = {"retry_after": retry_after} if retry_after is not None else {}
        queue = self.failures.setdefault(method, [])
        queue.extend([None] * after)
        queue.extend((code, description, parameters) for _ in range(times))

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == method]

    def sent_texts(self, chat: str | int | None = None) -> list[str]:
        """Texts Telegram accepted (refused attempts are in ``calls`` only)."""
        return [str(a["text"]) for a in self.delivered
                if chat is None or str(a["chat_id"]) == str(chat)]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        args: dict[str, Any] = {}
        if request.content_type == "application/json":
            args = await request.json()
        elif request.can_read_body:
            for key, value in (await request.post()).items():
                try:
                    args[key] = json.loads(str(value))
                except ValueError:
                    args[key] = value
        self.calls.append((method, args))
        failure = self.failures[method].pop(0) if self.failures.get(method) else None
        if failure is not None:
            code, description, parameters = failure
            body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
            if parameters:
                body["parameters"] = parameters
            return web.json_response(body, status=code)
        if method == "getUpdates":
            if not self.updates:
                await asyncio.sleep(min(0.2, float(args.get("timeout") or 0)))
            offset = int(args.get("offset") or 0)
            ready = [u for u in self.updates if u["update_id"] >= offset]
            return web.json_response({"ok": True, "result": ready})
        return web.json_response({"ok": True, "result": self._result(method, args)})

    def _result(self, method: str, args: dict[str, Any]) -> Any:
        if method == "getMe":
            return {"id": BOT_ID, "is_bot": True, "first_name": "Support",
                    "username": "evergreen_support_bot", "can_join_groups": True,
                    "can_read_all_group_messages": True, "supports_inline_queries": False}
        if method == "sendMessage":
            self.delivered.append(args)
            return {"message_id": next(self._ids), "date": int(time.time()),
                    "chat": {"id": int(args["chat_id"]), "type": "private"},
                    "text": args.get("text", "")}
        if method in ("answerCallbackQuery", "setWebhook", "deleteWebhook"):
            return True
        return True


# --- updates as Telegram sends them -----------------------------------------------------------

_update_ids = itertools.count(500_000)


def user(user_id: int = 7001, first: str = "Ivan", last: str = "Petrov",
         language_code: str | None = "ru") -> dict[str, Any]:
    data: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first, "last_name": last}
    if language_code:
        data["language_code"] = language_code
    return data


def message_update(text: str | None = None, chat_id: int = 7001, sender: dict[str, Any] | None = None,
                   chat_type: str = "private", update_id: int | None = None,
                   edited: bool = False, **extra: Any) -> dict[str, Any]:
    sender = sender or user(chat_id if chat_type == "private" else 7001)
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    if chat_type == "private":
        chat["first_name"] = sender["first_name"]
    else:
        chat["title"] = "Buyer team"
    message: dict[str, Any] = {"message_id": next(_update_ids) % 100_000, "date": int(time.time()),
                               "chat": chat, "from": sender, **extra}
    if text is not None:
        message["text"] = text
    if edited:
        message["edit_date"] = int(time.time())
    return {"update_id": update_id if update_id is not None else next(_update_ids),
            "edited_message" if edited else "message": message}


def callback_update(data: str, chat_id: int = 7001, update_id: int | None = None) -> dict[str, Any]:
    sender = user(chat_id)
    return {"update_id": update_id if update_id is not None else next(_update_ids),
            "callback_query": {
                "id": f"cb-{next(_update_ids)}", "from": sender, "chat_instance": "ci-1",
                "data": data,
                "message": {"message_id": 55, "date": int(time.time()),
                            "chat": {"id": chat_id, "type": "private", "first_name": "Ivan"},
                            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Support"},
                            "text": "menu"}}}
