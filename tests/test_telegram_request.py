"""AiohttpRequest, python-telegram-bot's networking on aiohttp, under a real ``telegram.Bot``
against a local Bot API stand-in on 127.0.0.1: forms and uploads arrive, Telegram's
answers become PTB's errors (RetryAfter, NetworkError...), timeouts and refused
connections become TimedOut and NetworkError, and the session's life cycle."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from bot.channels.base import PermanentDeliveryError, TemporaryDeliveryError
from bot.channels.telegram import build_bot, delivery_error
from bot.channels.telegram_request import AiohttpRequest
from bot.config import load_settings
from tests.helpers import serve_locally
from tests.telegram_stub import TOKEN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BotApi:
    """Records each call (method, content type, headers, form fields, files); a test can
    replace the answer of a method."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers: dict[str, Handler] = {}
        self.release = asyncio.Event()  # lets hanging handlers end at teardown
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner, port = await serve_locally(app, shutdown_timeout=2)
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def bot(self, request: AiohttpRequest | None = None) -> Bot:
        request = request or AiohttpRequest(connection_pool_size=4, read_timeout=5)
        return Bot(TOKEN, base_url=f"{self.base_url}/bot", base_file_url=f"{self.base_url}/file/bot",
                   request=request, get_updates_request=AiohttpRequest(connection_pool_size=1))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        fields: dict[str, str] = {}
        files: dict[str, tuple[str, bytes, str]] = {}
        if request.can_read_body:
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files[name] = (value.filename, value.file.read(), value.content_type)
                else:
                    fields[name] = str(value)
        self.calls.append({"method": method, "content_type": request.content_type,
                           "user_agent": request.headers.get("User-Agent", ""),
                           "fields": fields, "files": files})
        if method in self.answers:
            return await self.answers[method](request)
        return web.json_response({"ok": True, "result": self._result(method, fields)})

    @staticmethod
    def _result(method: str, fields: dict[str, str]) -> Any:
        if method == "getMe":
            return {"id": 42, "is_bot": True, "first_name": "Support", "username": "support_bot"}
        if method == "getUpdates":
            return []
        message: dict[str, Any] = {"message_id": 7, "date": int(time.time()),
                                   "chat": {"id": int(fields["chat_id"]), "type": "private"}}
        if method == "sendMessage":
            message["text"] = fields["text"]
        if method == "sendDocument":
            message["document"] = {"file_id": "f1", "file_unique_id": "u1"}
            message["caption"] = fields.get("caption")
        return message


def failing(status: int, description: str, **parameters: Any) -> Handler:
    async def answer(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=status)
    return answer


def plain(status: int, text: str) -> Handler:
    """Not the Bot API answering: a proxy's error page."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type="text/html")
    return answer


def hanging(api: BotApi) -> Handler:
    async def answer(request: web.Request) -> web.Response:
        await api.release.wait()
        return web.json_response({"ok": True, "result": True})
    return answer


@pytest.fixture
async def api() -> AsyncIterator[BotApi]:
    server = BotApi()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def bot(api: BotApi) -> AsyncIterator[Bot]:
    bot = api.bot()
    await bot.initialize()
    try:
        yield bot
    finally:
        await bot.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- requests that arrive -----------------------------------------------------------------


async def test_send_message_round_trip_as_a_form(api: BotApi, bot: Bot) -> None:
    text = "Здравствуйте! Ваш заказ №123 отправлен. 您好 ✓ & a=b+c%20"
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Да ✓", callback_data="yes")]])
    message = await bot.send_message(chat_id=5, text=text, reply_markup=markup)

    assert message.text == text and message.chat.id == 5 and message.message_id == 7
    call = api.calls[-1]
    assert call["method"] == "sendMessage"
    assert call["content_type"] == "application/x-www-form-urlencoded"
    assert call["fields"]["text"] == text
    assert call["fields"]["chat_id"] == "5"
    keyboard = json.loads(call["fields"]["reply_markup"])  # JSON-encoded, as PTB sends it
    assert keyboard["inline_keyboard"][0][0]["text"] == "Да ✓"
    assert call["user_agent"].startswith("python-telegram-bot")
    assert [c["method"] for c in api.calls] == ["getMe", "sendMessage"]


async def test_document_upload_is_multipart_with_its_bytes(api: BotApi, bot: Bot) -> None:
    content = bytes(range(256)) + b"\r\n--boundary?\r\n" + "жалоба".encode()
    message = await bot.send_document(chat_id=9, document=content, filename="жалоба №5.bin",
                                      caption="Фото упаковки")

    assert message.document is not None and message.caption == "Фото упаковки"
    call = api.calls[-1]
    assert call["method"] == "sendDocument"
    assert call["content_type"] == "multipart/form-data"
    assert call["fields"]["chat_id"] == "9" and call["fields"]["caption"] == "Фото упаковки"
    filename, data, mimetype = call["files"]["document"]
    assert data == content
    assert filename == "жалоба №5.bin"  # UTF-8, not percent-encoded
    assert mimetype == "application/octet-stream"


async def test_document_upload_from_a_file(api: BotApi, bot: Bot, tmp_path: Any) -> None:
    path = tmp_path / "invoice.pdf"
    path.write_bytes(b"%PDF-1.4\n" + b"\x00\xff" * 5000)
    with path.open("rb") as handle:
        await bot.send_document(chat_id=9, document=handle)
    filename, data, mimetype = api.calls[-1]["files"]["document"]
    assert (filename, data, mimetype) == ("invoice.pdf", path.read_bytes(), "application/pdf")


# --- Telegram's errors, as PTB raises them ------------------------------------------------


async def test_429_becomes_retry_after(api: BotApi, bot: Bot) -> None:
    api.answers["sendMessage"] = failing(429, "Too Many Requests: retry after 7", retry_after=7)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(chat_id=5, text="hi")
    error = delivery_error(caught.value)  # reads retry_after, an int or a timedelta
    assert isinstance(error, TemporaryDeliveryError) and error.retry_after == 7


@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors_become_network_errors(api: BotApi, bot: Bot, status: int) -> None:
    api.answers["sendMessage"] = failing(status, "Internal Server Error: restart")
    with pytest.raises(NetworkError, match="restart") as caught:
        await bot.send_message(chat_id=5, text="hi")
    assert not isinstance(caught.value, TimedOut)
    assert isinstance(delivery_error(caught.value), TemporaryDeliveryError)


async def test_an_error_page_that_is_not_json(api: BotApi, bot: Bot) -> None:
    api.answers["sendMessage"] = plain(502, "<html>Bad Gateway</html>")
    with pytest.raises(NetworkError, match=r"Bad Gateway \(502\)"):
        await bot.send_message(chat_id=5, text="hi")


async def test_403_and_400_keep_their_meaning(api: BotApi, bot: Bot) -> None:
    api.answers["sendMessage"] = failing(403, "Forbidden: bot was blocked by the user")
    with pytest.raises(Forbidden) as forbidden:
        await bot.send_message(chat_id=5, text="hi")
    assert isinstance(delivery_error(forbidden.value), PermanentDeliveryError)
    api.answers["sendMessage"] = failing(400, "Bad Request: chat not found")
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(chat_id=5, text="hi")


# --- the network failing --------------------------------------------------------------------


async def test_no_answer_times_out_within_the_read_timeout(api: BotApi) -> None:
    bot = api.bot(AiohttpRequest(read_timeout=0.3))
    await bot.initialize()
    try:
        api.answers["sendMessage"] = hanging(api)
        started = time.monotonic()
        with pytest.raises(TimedOut) as caught:
            await bot.send_message(chat_id=5, text="hi")
        assert 0.25 <= time.monotonic() - started < 2
        assert isinstance(delivery_error(caught.value), TemporaryDeliveryError)
        # A Bot method's own timeout wins over the default.
        started = time.monotonic()
        with pytest.raises(TimedOut):
            await bot.send_message(chat_id=5, text="hi", read_timeout=0.1)
        assert time.monotonic() - started < 0.3
    finally:
        await bot.shutdown()


async def test_a_busy_pool_times_out_after_pool_and_connect_timeouts(api: BotApi) -> None:
    request = AiohttpRequest(connection_pool_size=1, read_timeout=10, pool_timeout=0.1,
                             connect_timeout=0.1)
    bot = api.bot(request)
    await bot.initialize()
    try:
        api.answers["sendMessage"] = hanging(api)
        first = asyncio.create_task(bot.send_message(chat_id=5, text="holds the connection"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(TimedOut):
            await bot.send_message(chat_id=5, text="waits for it")
        assert time.monotonic() - started < 1
        api.release.set()
        assert (await first) is not None
    finally:
        await bot.shutdown()


async def test_refused_connection_is_a_network_error() -> None:
    port = free_port()  # nothing listens there any more
    bot = Bot(TOKEN, base_url=f"http://127.0.0.1:{port}/bot", request=AiohttpRequest())
    with pytest.raises(NetworkError, match=r"aiohttp\.ClientConnectorError") as caught:
        await bot.initialize()
    assert not isinstance(caught.value, TimedOut)
    assert isinstance(delivery_error(caught.value), TemporaryDeliveryError)
    await bot.shutdown()


# --- life cycle -----------------------------------------------------------------------------


async def test_initialize_twice_and_shutdown_twice_are_harmless(api: BotApi) -> None:
    request = AiohttpRequest()
    await request.initialize()
    session = request._session
    await request.initialize()
    assert request._session is session and session is not None
    body = await request.post(f"{api.base_url}/bot{TOKEN}/getMe")
    assert isinstance(body, dict) and body["id"] == 42
    await request.shutdown()
    await request.shutdown()
    assert session.closed


async def test_use_after_shutdown_raises_runtime_error(api: BotApi) -> None:
    request = AiohttpRequest()
    await request.initialize()
    await request.shutdown()
    url = f"{api.base_url}/bot{TOKEN}/getMe"
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request(url, "POST")
    # Through PTB, as HTTPXRequest's: wrapped in a NetworkError.
    with pytest.raises(NetworkError) as caught:
        await request.post(url)
    assert isinstance(caught.value.__cause__, RuntimeError)
    # Initialized again, it works again.
    async with request:
        assert isinstance(await request.post(url), dict)
    assert len(api.calls) == 1


async def test_first_request_opens_the_session_without_initialize(api: BotApi) -> None:
    request = AiohttpRequest()
    try:
        assert isinstance(await request.post(f"{api.base_url}/bot{TOKEN}/getMe"), dict)
    finally:
        await request.shutdown()


async def test_defaults_are_httpx_request_s() -> None:
    request = AiohttpRequest()
    assert request.read_timeout == 5.0
    assert (request._pool_size, request._write_timeout, request._connect_timeout,
            request._pool_timeout, request._media_write_timeout) == (256, 5.0, 5.0, 1.0, 20.0)
    assert AiohttpRequest(read_timeout=None).read_timeout is None
    with pytest.raises(ValueError):
        AiohttpRequest(connection_pool_size=0)


async def test_the_channel_s_bot_uses_it_for_sending_and_polling(api: BotApi) -> None:
    settings = load_settings(None, telegram={"token": TOKEN, "api_base_url": api.base_url,
                                                   "mode": "polling"})
    bot = build_bot(settings.telegram)
    send_request, updates_request = bot._request[1], bot._request[0]
    assert isinstance(send_request, AiohttpRequest) and send_request.read_timeout == 15
    assert send_request._pool_size == 16
    assert build_bot(settings.telegram, connections=40)._request[1]._pool_size == 40
    assert isinstance(updates_request, AiohttpRequest) and updates_request.read_timeout == 40
    async with bot:
        assert await bot.get_updates(timeout=0) == ()
        assert (await bot.send_message(chat_id=3, text="ok")).text == "ok"
    assert [c["method"] for c in api.calls] == ["getMe", "getUpdates", "sendMessage"]


def test_the_channel_has_a_connection_per_send_in_flight_and_room_for_the_webhook() -> None:
    from bot.channels import build_channels

    settings = load_settings(None, telegram={"token": TOKEN, "mode": "polling"},
                             outbox={"concurrency": 30})
    channel = build_channels(settings, db=None, clock=None, agent_texts={},  # type: ignore[arg-type]
                             calendar=None)["telegram"]  # type: ignore[arg-type]
    assert channel.bot._request[1]._pool_size == 45  # type: ignore[attr-defined]


async def test_a_proxy_from_the_environment_is_used(api: BotApi,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", api.base_url)  # the stand-in answers as the proxy
    bot = Bot(TOKEN, base_url="http://api.telegram.invalid/bot", request=AiohttpRequest())
    async with bot:
        assert (await bot.send_message(chat_id=5, text="via proxy")).text == "via proxy"
    assert [c["method"] for c in api.calls] == ["getMe", "sendMessage"]
