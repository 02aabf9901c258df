"""A local stand-in for WeChat's API (access tokens and customer-service messages) on
127.0.0.1, and callbacks signed (and, in safe mode, encrypted) the way WeChat sends them."""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from bot.channels.wechat_protocol import AesCrypto, signature
from tests.helpers import serve_locally

TOKEN = "wxToken123"
APP_ID = "wx1234567890abcdef"
APP_SECRET = "app-secret-0123456789"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters
ACCOUNT = "gh_0123456789ab"  # the Official Account's original id


class WechatStub:
    def __init__(self) -> None:
        self.tokens_issued = 0
        self.forced_refreshes = 0
        self.current_token = ""
        self.sent: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.errors: list[int] = []  # errcodes for the next customer-service sends
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/cgi-bin/stable_token", self._token)
        app.router.add_post("/cgi-bin/message/custom/send", self._send)
        self._runner, port = await serve_locally(app)
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        data = await request.json()
        if (data.get("appid"), data.get("secret")) != (APP_ID, APP_SECRET):
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        self.forced_refreshes += bool(data.get("force_refresh"))
        if not self.current_token or data.get("force_refresh"):
            self.tokens_issued += 1
            self.current_token = f"ACCESS-{self.tokens_issued}"
        return web.json_response({"access_token": self.current_token, "expires_in": 7200})

    async def _send(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.attempts.append(data)
        if request.query.get("access_token") != self.current_token:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        if self.errors:
            code = self.errors.pop(0)
            return web.json_response({"errcode": code, "errmsg": f"error {code}"})
        self.sent.append(data)
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    def texts_to(self, open_id: str) -> list[str]:
        return [m["text"]["content"] for m in self.sent if m["touser"] == open_id]


_ids = itertools.count(6_000_000_000_000_000_000)


def text_xml(open_id: str, content: str, msg_id: int | None = None) -> str:
    return (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
            f"<FromUserName><![CDATA[{open_id}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content>"
            f"<MsgId>{msg_id if msg_id is not None else next(_ids)}</MsgId></xml>")


def image_xml(open_id: str) -> str:
    return (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
            f"<FromUserName><![CDATA[{open_id}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[image]]></MsgType>"
            "<PicUrl><![CDATA[http://mmbiz.example/pic.jpg]]></PicUrl>"
            f"<MediaId><![CDATA[media-42]]></MediaId><MsgId>{next(_ids)}</MsgId></xml>")


def subscribe_xml(open_id: str) -> str:
    return (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
            f"<FromUserName><![CDATA[{open_id}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            "<Event><![CDATA[subscribe]]></Event></xml>")


def new_nonce() -> str:
    """A nonce as WeChat gives each callback: another one every time."""
    return str(secrets.randbelow(10 ** 10))


def signed_query(token: str = TOKEN, nonce: str | None = None, timestamp: int | None = None,
                 **extra: str) -> str:
    """A callback URL's query, signed as WeChat signs it: now, with a new nonce, unless
    told otherwise."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = new_nonce() if nonce is None else nonce
    params = {"signature": signature(token, stamp, nonce), "timestamp": stamp,
              "nonce": nonce, **extra}
    return urlencode(params)


def encrypted(xml: str, nonce: str | None = None) -> tuple[str, str]:
    """A safe-mode callback: the query string and the body, as WeChat sends them."""
    timestamp = str(int(time.time()))
    nonce = new_nonce() if nonce is None else nonce
    body = AesCrypto(AES_KEY, APP_ID).encrypt(xml)
    params = {"signature": signature(TOKEN, timestamp, nonce), "timestamp": timestamp,
              "nonce": nonce, "encrypt_type": "aes",
              "msg_signature": signature(TOKEN, timestamp, nonce, body)}
    return urlencode(params), (f"<xml><ToUserName><![CDATA[{APP_ID}]]></ToUserName>"
                               f"<Encrypt><![CDATA[{body}]]></Encrypt></xml>")
