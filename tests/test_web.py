"""The web chat HTTP API, through the real ASGI app (no server, no background dispatcher).

The ``service`` fixture's recording channel named "webchat" stands in for the web chat
channel: it accepts every send, so a reply counts as delivered (outbox row "sent") and shows
in the history exactly as with the real channel.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.channels.base import TemporaryDeliveryError
from bot.clock import ManualClock
from bot.db.models import Contact, Conversation, Message, OutboxItem
from bot.service import Service
from bot.web.app import create_app
from bot.web.webchat import MAX_BODY_BYTES, TOKEN_PATTERN

MESSAGES = "/api/webchat/messages"


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service, background=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def new_token(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/webchat/session")
    assert response.status_code == 200
    return response.json()["token"]


@pytest.fixture
async def token(client: httpx.AsyncClient) -> str:
    return await new_token(client)


def auth(token: str) -> dict[str, str]:
    return {"X-Webchat-Token": token}


async def say(client: httpx.AsyncClient, token: str, text: str, client_id: str,
              **extra: Any) -> list[dict[str, Any]]:
    response = await client.post(MESSAGES, headers=auth(token),
                                 json={"text": text, "client_id": client_id, **extra})
    assert response.status_code == 200, response.text
    return response.json()["messages"]


async def history(client: httpx.AsyncClient, token: str, after: int = 0) -> list[dict[str, Any]]:
    response = await client.get(MESSAGES, headers=auth(token), params={"after": after})
    assert response.status_code == 200, response.text
    return response.json()["messages"]


async def count(service: Service, model: Any) -> int:
    async with service.db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


def render(service: Service, key: str, lang: str, **values: Any) -> str:
    return service.knowledge.templates.render(key, lang, company=service.settings.company.name,
                                              **values)


# --- page, health, UI strings ------------------------------------------------------------

async def test_health_and_the_chat_page_with_its_assets(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="input"' in response.text and 'id="composer"' in response.text
    assert "/static/chat.js" in response.text
    script = await client.get("/static/chat.js")
    assert script.status_code == 200
    assert "X-Webchat-Token" in script.text
    assert (await client.get("/static/style.css")).status_code == 200


async def test_ui_strings_in_chinese(client: httpx.AsyncClient, service: Service) -> None:
    response = await client.get("/api/webchat/ui", params={"lang": "zh"})
    assert response.status_code == 200
    data = response.json()
    assert data["lang"] == "zh"
    assert data["strings"] == {
        "title": render(service, "webchat.title", "zh"),
        "placeholder": render(service, "webchat.placeholder", "zh"),
        "send": render(service, "webchat.send", "zh"),
        "connection_error": render(service, "webchat.connection_error", "zh"),
    }
    assert data["strings"]["send"] == "发送"
    assert data["welcome"] == render(service, "welcome", "zh")
    assert service.settings.company.name in data["strings"]["title"]


async def test_ui_language_falls_back_to_english(client: httpx.AsyncClient,
                                                 service: Service) -> None:
    cases = [("xx", "en"), ("", "en"), (None, "en"), ("ZH-cn", "zh"), ("fr-CA", "fr"),
             ("ar", "ar")]
    for lang, expected in cases:
        params = {} if lang is None else {"lang": lang}
        response = await client.get("/api/webchat/ui", params=params)
        assert response.status_code == 200, lang
        data = response.json()
        assert data["lang"] == expected, lang
        assert data["strings"]["send"] == render(service, "webchat.send", expected), lang
        assert data["welcome"] == render(service, "welcome", expected), lang


async def test_session_tokens_are_random_and_well_formed(client: httpx.AsyncClient) -> None:
    tokens = {await new_token(client) for _ in range(5)}
    assert len(tokens) == 5
    assert all(TOKEN_PATTERN.match(t) for t in tokens)


# --- a conversation --------------------------------------------------------------------

async def test_hello_gets_the_english_greeting(client: httpx.AsyncClient, service: Service,
                                               token: str, channels: Any) -> None:
    messages = await say(client, token, "hello", "c1")
    assert [(m["from"], m["text"]) for m in messages] == [
        ("customer", "hello"), ("bot", render(service, "greeting", "en"))]
    customer, reply = messages
    assert customer["id"] < reply["id"]
    assert customer["buttons"] == []
    assert reply["lang"] == "en"
    assert "support assistant" in reply["text"]
    assert len(reply["buttons"]) == 6
    assert render(service, "button.order_status", "en") in reply["buttons"]
    assert [d.text for d in channels["webchat"].sent] == [reply["text"]]


async def test_chinese_gets_a_chinese_reply(client: httpx.AsyncClient, service: Service,
                                            token: str) -> None:
    messages = await say(client, token, "你好", "c1")
    assert [m["from"] for m in messages] == ["customer", "bot"]
    reply = messages[1]
    assert reply["lang"] == "zh"
    assert reply["text"] == render(service, "greeting", "zh")
    assert "您好" in reply["text"]
    assert render(service, "button.order_status", "zh") in reply["buttons"]


async def test_conversation_survives_a_reload_and_is_private_to_its_token(
        client: httpx.AsyncClient, token: str) -> None:
    sent = await say(client, token, "hello", "c1")
    sent += await say(client, token, "你好", "c2", after=sent[-1]["id"])
    sent += await say(client, token, "bye", "c3", after=sent[-1]["id"])
    assert [m["from"] for m in sent] == ["customer", "bot"] * 3
    # A reload: the page asks for everything again with the token from localStorage.
    reloaded = await history(client, token)
    assert reloaded == sent
    assert [m["id"] for m in reloaded] == sorted(m["id"] for m in reloaded)
    assert [m["text"] for m in reloaded if m["from"] == "customer"] == ["hello", "你好", "bye"]
    stranger = await new_token(client)
    assert await history(client, stranger) == []
    assert await history(client, stranger, after=0) == []


async def test_resending_the_same_client_id_does_not_answer_twice(
        client: httpx.AsyncClient, service: Service, token: str, channels: Any) -> None:
    first = await say(client, token, "hello", "retry-1")
    again = await say(client, token, "hello", "retry-1")
    assert again == first
    assert await count(service, Message) == 2
    assert await count(service, OutboxItem) == 1
    assert len(channels["webchat"].sent) == 1
    # The same client id from another browser is another message.
    other = await new_token(client)
    theirs = await say(client, other, "hello", "retry-1")
    assert [m["from"] for m in theirs] == ["customer", "bot"]
    assert await count(service, Message) == 4


async def test_messages_without_client_id_are_all_answered(client: httpx.AsyncClient,
                                                           token: str) -> None:
    for _ in range(2):
        response = await client.post(MESSAGES, headers=auth(token), json={"text": "hello"})
        assert response.status_code == 200
    assert [m["from"] for m in await history(client, token)] == ["customer", "bot"] * 2


async def test_after_pages_the_history(client: httpx.AsyncClient, token: str) -> None:
    first = await say(client, token, "hello", "p1")
    last_seen = first[-1]["id"]
    second = await say(client, token, "bye", "p2", after=last_seen)
    assert [m["from"] for m in second] == ["customer", "bot"]
    assert all(m["id"] > last_seen for m in second)
    everything = await history(client, token)
    assert everything == first + second
    assert await history(client, token, after=last_seen) == second
    assert await history(client, token, after=second[0]["id"]) == second[1:]
    assert await history(client, token, after=everything[-1]["id"]) == []
    response = await client.get(MESSAGES, headers=auth(token), params={"after": -1})
    assert response.status_code == 422


async def test_a_reply_shows_only_once_delivered(client: httpx.AsyncClient, service: Service,
                                                 clock: ManualClock, token: str,
                                                 channels: Any) -> None:
    channels["webchat"].failures.append(TemporaryDeliveryError("web chat hiccup"))
    messages = await say(client, token, "hello", "d1")
    assert [m["from"] for m in messages] == ["customer"]
    assert [m["from"] for m in await history(client, token)] == ["customer"]
    clock.set(clock.now() + timedelta(minutes=10))
    assert await service.outbox.dispatch_due() == 1
    later = await history(client, token, after=messages[-1]["id"])
    assert [(m["from"], m["lang"]) for m in later] == [("bot", "en")]


# --- refusals ----------------------------------------------------------------------------

async def test_missing_or_malformed_token_is_401(client: httpx.AsyncClient,
                                                 service: Service) -> None:
    tokens = [None, "", "short", "x" * 65, "has spaces in it and is long enough",
              "abc/def+ghi=jkl.mno:pqr;stu"]
    for bad in tokens:
        headers = {} if bad is None else {"X-Webchat-Token": bad}
        post = await client.post(MESSAGES, headers=headers,
                                 json={"text": "hello", "client_id": "c1"})
        get = await client.get(MESSAGES, headers=headers)
        for response in (post, get):
            assert response.status_code == 401, (bad, response.request.method)
            assert response.json()["code"] == "bad_token"
            assert "X-Webchat-Token" in response.json()["error"]
    assert await count(service, Message) == 0


MALFORMED = [
    (b'{"text": "hello"', "bad_json"),
    (b"", "bad_json"),
    (b"hello", "bad_json"),
    (b'["hello"]', "bad_request"),
    (b'{"message": "hello"}', "bad_request"),
    (b'{"text": 42}', "bad_request"),
    (b'{"text": null}', "bad_request"),
    (b'{"text": "hello", "client_id": "no spaces allowed"}', "bad_request"),
    (b'{"text": "hello", "client_id": 7}', "bad_request"),
    (b'{"text": "hello", "client_id": ""}', "bad_request"),
]


async def test_malformed_requests_are_400(client: httpx.AsyncClient, service: Service,
                                          token: str) -> None:
    response = await client.post(MESSAGES, headers={**auth(token),
                                                    "Content-Type": "application/json"},
                                 content=b'{"text":"\xff"}')
    assert response.status_code == 400
    assert response.json() == {"error": "request body is not valid UTF-8", "code": "bad_encoding"}
    for body, code in MALFORMED:
        response = await client.post(MESSAGES, headers={**auth(token),
                                                        "Content-Type": "application/json"},
                                     content=body)
        assert response.status_code == 400, body
        assert response.json()["code"] == code, body
        assert response.json()["error"], body
    assert await count(service, Message) == 0


async def test_empty_text_is_422_with_a_localized_explanation(
        client: httpx.AsyncClient, service: Service, token: str) -> None:
    for lang in ("en", "zh", "es"):
        for text in ("", "   \n\t "):
            response = await client.post(MESSAGES, headers=auth(token),
                                         json={"text": text, "client_id": "e1", "lang": lang})
            assert response.status_code == 422, (lang, text)
            assert response.json() == {"error": render(service, "error.message_empty", lang),
                                       "code": "empty"}, (lang, text)
    assert render(service, "error.message_empty", "zh") != render(
        service, "error.message_empty", "en")
    assert await count(service, Message) == 0


async def test_text_over_the_limit_is_413_and_nothing_is_stored(
        client: httpx.AsyncClient, service: Service, token: str) -> None:
    body = {"text": "x" * 100_000, "client_id": "big", "lang": "en"}
    assert len(json.dumps(body)) < MAX_BODY_BYTES
    response = await client.post(MESSAGES, headers=auth(token), json=body)
    assert response.status_code == 413
    limit = service.settings.limits.max_message_chars
    assert response.json() == {"error": render(service, "error.message_too_long", "en",
                                               limit=limit),
                               "code": "too_long"}
    assert str(limit) in response.json()["error"]
    for model in (Message, Contact, Conversation, OutboxItem):
        assert await count(service, model) == 0
    assert await history(client, token) == []


async def test_bodies_over_256_kb_are_refused_without_being_read(
        client: httpx.AsyncClient, service: Service, token: str) -> None:
    headers = {**auth(token), "Content-Type": "application/json"}
    body = b'{"text": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    response = await client.post(MESSAGES, headers=headers, content=body)
    assert response.status_code == 413
    assert response.json() == {"error": f"request body larger than {MAX_BODY_BYTES} bytes",
                               "code": "too_large"}

    # The limit guards memory: reading stops once it is exceeded (chunked, no length).
    chunk = b"x" * 65536
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'{"text": "'
        while pulled < 1024:  # 64 MiB: far over the limit, but finite if it is not honoured
            pulled += 1
            yield chunk

    response = await client.post(MESSAGES, headers=headers, content=endless())
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert pulled * len(chunk) <= 2 * MAX_BODY_BYTES

    # A declared Content-Length over the limit is refused before reading anything.
    async def small() -> AsyncIterator[bytes]:
        yield b'{"text": "hello"}'

    response = await client.post(MESSAGES, content=small(),
                                 headers={**headers, "Content-Length": str(MAX_BODY_BYTES + 1)})
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert await count(service, Message) == 0
