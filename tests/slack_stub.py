"""A local stand-in for the Slack Web API (and Slack's request signing), on 127.0.0.1.

It answers the methods supportbot calls the way Slack does (``{"ok": true, ...}``), records
every call with its arguments, checks the bearer token, and can be told to fail: a 429
with Retry-After, or an API error such as ``channel_not_found``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from tests.helpers import serve_locally

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-test-app-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_USER = "UBOT"
TEAM = "T0001"
CHANNEL_IDS = {"#support": "CSUPPORT", "#support-supervisors": "CSUPERVISORS"}


@dataclass
class Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class SlackStub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.failures: dict[str, list[Failure]] = {}
        self.users: dict[str, str] = {}  # user id -> display name for users.info
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        # Socket Mode: envelopes to push to the connected app, and the acks it sends back.
        self.envelopes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.acks: list[dict[str, Any]] = []
        self.socket_connected = asyncio.Event()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/link", self._socket)
        self._runner, port = await serve_locally(app)
        self.base_url = f"http://127.0.0.1:{port}/api/"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(self, method: str, status: int = 200, error: str | None = None,
             retry_after: int | None = None, times: int = 1) -> None:
        body = {"ok": False, "error": error or ("ratelimited" if status == 429 else "fatal_error")}
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.failures.setdefault(method, []).extend(Failure(status, body, headers)
                                                    for _ in range(times))

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == method]

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method == "apps.connections.open":  # called with the app-level token
            if request.headers.get("Authorization") != f"Bearer {APP_TOKEN}":
                return web.json_response({"ok": False, "error": "invalid_auth"})
            self.calls.append((method, {}))
            return web.json_response({"ok": True, "url": self.base_url.replace(
                "http://", "ws://").replace("/api/", "/link")})
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        else:
            args.update(await request.post())
        for key in ("blocks", "attachments"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        self.calls.append((method, args))
        if self.failures.get(method):
            failure = self.failures[method].pop(0)
            return web.json_response(failure.body, status=failure.status, headers=failure.headers)
        return web.json_response(self._answer(method, args))

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        await socket.send_json({"type": "hello", "num_connections": 1,
                                "connection_info": {"app_id": "A0001"}})
        self.socket_connected.set()

        async def push() -> None:
            while True:
                await socket.send_json(await self.envelopes.get())

        pusher = asyncio.ensure_future(push())
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    self.acks.append(json.loads(message.data))
        finally:
            pusher.cancel()
        return socket

    def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "user_id": BOT_USER, "bot_id": "BBOT", "team_id": TEAM,
                    "user": "supportbot", "team": "Test"}
        if method == "chat.postMessage":
            channel = str(args.get("channel"))
            channel = CHANNEL_IDS.get(channel, channel)
            ts = f"{1_700_000_000 + next(self._ts)}.000100"
            return {"ok": True, "channel": channel, "ts": ts,
                    "message": {"text": args.get("text"), "ts": ts}}
        if method == "chat.update":
            return {"ok": True, "channel": args.get("channel"), "ts": args.get("ts")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"{1_700_000_000 + next(self._ts)}.000200"}
        if method == "conversations.open":
            return {"ok": True, "channel": {"id": "D" + str(args.get("users"))}}
        if method == "users.info":
            user = str(args.get("user"))
            name = self.users.get(user, user.lower())
            return {"ok": True, "user": {"id": user, "name": name, "real_name": name,
                                         "profile": {"display_name": name, "real_name": name}}}
        return {"ok": False, "error": "unknown_method"}


# -- requests as Slack sends them, signed with the real scheme --------------------------------

def signed_headers(body: str, content_type: str, timestamp: int | None = None,
                   secret: str = SIGNING_SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature,
            "Content-Type": content_type}


def event_body(event: dict[str, Any], event_id: str) -> str:
    return json.dumps({"token": "unused", "team_id": TEAM, "api_app_id": "A0001",
                       "type": "event_callback", "event_id": event_id,
                       "event_time": int(time.time()), "event": event,
                       "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}]})


def thread_message(user: str, text: str, channel: str, thread_ts: str, ts: str,
                   **extra: Any) -> dict[str, Any]:
    return {"type": "message", "user": user, "text": text, "channel": channel,
            "thread_ts": thread_ts, "ts": ts, "channel_type": "channel", **extra}


def interaction_payload(user: str, action: dict[str, Any], channel: str,
                        message_ts: str) -> dict[str, Any]:
    return {
        "type": "block_actions", "team": {"id": TEAM}, "api_app_id": "A0001",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "channel": {"id": channel}, "container": {"type": "message", "message_ts": message_ts,
                                                  "channel_id": channel},
        "trigger_id": "1.2.3", "response_url": "http://127.0.0.1:9/unused",
        "actions": [{"action_ts": str(time.time()), "block_id": action.pop("block_id", "b"),
                     **action}],
    }


def interaction_body(user: str, action: dict[str, Any], channel: str, message_ts: str) -> str:
    payload = interaction_payload(user, action, channel, message_ts)
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


def command_body(user: str, text: str, channel: str = "CSUPPORT") -> str:
    return urllib.parse.urlencode({
        "token": "unused", "team_id": TEAM, "channel_id": channel, "user_id": user,
        "user_name": user.lower(), "command": "/support", "text": text,
        "response_url": "http://127.0.0.1:9/unused", "trigger_id": "1.2.3",
        "api_app_id": "A0001"})
