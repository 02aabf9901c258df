"""The WeChat Official Account callback with real signatures and AES, and the
customer-service API against a local stand-in: handshake, passive replies within the
window, the API after it, retries answered the same, the 48-hour window, hostile XML."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select

from bot.channels.wechat_protocol import (
    AesCrypto,
    ProtocolError,
    parse_xml,
    signature,
    signature_matches,
)
from bot.clock import ManualClock
from bot.config import load_settings
from bot.db.models import Message, OutboxItem, ProcessedEvent
from bot.service import Service
from bot.web.app import create_app
from tests.conftest import RecordingChannel
from tests.wechat_stub import (
    AES_KEY,
    APP_ID,
    APP_SECRET,
    TOKEN,
    WechatStub,
    encrypted,
    image_xml,
    signed_query,
    subscribe_xml,
    text_xml,
)

SAMPLE = json.loads((Path(__file__).parent / "fixtures/wechat/official_sample.json").read_text())


def test_the_published_sample_verifies_and_decrypts() -> None:
    fields = parse_xml(SAMPLE["body"].encode())
    assert signature_matches(SAMPLE["msg_signature"], SAMPLE["token"], SAMPLE["timestamp"],
                             SAMPLE["nonce"], fields["Encrypt"])
    assert not signature_matches(SAMPLE["msg_signature"], "other-token", SAMPLE["timestamp"],
                                 SAMPLE["nonce"], fields["Encrypt"])
    inner = parse_xml(AesCrypto(SAMPLE["encoding_aes_key"], SAMPLE["app_id"])
                      .decrypt(fields["Encrypt"]).encode())
    assert (inner["FromUserName"], inner["MsgType"], inner["Content"]) == (
        "mycreate", "text", "hello")
    with pytest.raises(ProtocolError, match="another AppID"):
        AesCrypto(SAMPLE["encoding_aes_key"], "wx0000000000000000").decrypt(fields["Encrypt"])


def test_encryption_round_trips_and_matches_the_sample_format() -> None:
    crypto = AesCrypto(SAMPLE["encoding_aes_key"], SAMPLE["app_id"])
    message = "<xml><Content><![CDATA[测试一下中文的情况，消息长度是按字节来算的]]></Content></xml>"
    assert crypto.decrypt(crypto.encrypt(message)) == message
    # Same key, same 16 random bytes: the same ciphertext every time (the format is fixed).
    prefix = b"0123456789abcdef"
    assert crypto.encrypt(message, prefix) == crypto.encrypt(message, prefix)


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
    b"<xml><Content>&lol2;</Content></xml>",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml>&e;</xml>',
    b"<xml><Content>unclosed</xml>",
    b"\xff\xfe<xml></xml>",
    b"<notwechat/>",
])
def test_hostile_or_broken_xml_is_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_xml(body)


class Wechat:
    def __init__(self, service: Service, stub: WechatStub, http: httpx.AsyncClient,
                 clock: ManualClock) -> None:
        self.service = service
        self.stub = stub
        self.http = http
        self.clock = clock

    async def post(self, xml: str, query: str | None = None) -> httpx.Response:
        return await self.http.post(f"/webhooks/wechat?{query or signed_query()}",
                                    content=xml.encode(), headers={"Content-Type": "text/xml"})

    async def count(self, model: Any) -> int:
        async with self.service.db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def start(database_url: str, clock: ManualClock, stub: WechatStub,
                **wechat: Any) -> Service:
    settings = load_settings(None, database={"url": database_url},
                             after_hours={"enabled": False},
                             wechat={"token": TOKEN, "app_id": APP_ID, "app_secret": APP_SECRET,
                                     "api_base_url": stub.base_url, **wechat})
    service = await Service.start(settings, clock=clock, migrate=True)
    service.outbox.channels["slack"] = RecordingChannel("slack")
    return service


@pytest.fixture
async def wechat(database_url: str, clock: ManualClock) -> AsyncIterator[Wechat]:
    stub = WechatStub()
    await stub.start()
    service = await start(database_url, clock, stub)
    app = create_app(service, background=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://supportbot") as http:
            yield Wechat(service, stub, http, clock)
    finally:
        await service.outbox.channels["wechat"].close()  # type: ignore[attr-defined]
        await service.close()
        await stub.stop()


async def test_the_handshake_echoes_only_when_signed(wechat: Wechat) -> None:
    ok = await wechat.http.get(f"/webhooks/wechat?{signed_query(echostr='8472937')}")
    assert (ok.status_code, ok.text) == (200, "8472937")
    forged = await wechat.http.get(f"/webhooks/wechat?{signed_query(token='nope', echostr='1')}")
    assert forged.status_code == 403


async def test_a_text_gets_a_passive_reply_in_the_response(wechat: Wechat) -> None:
    response = await wechat.post(text_xml("oUser1", "你好"))
    assert response.status_code == 200
    reply = parse_xml(response.content)
    assert (reply["ToUserName"], reply["FromUserName"], reply["MsgType"]) == (
        "oUser1", "gh_0123456789ab", "text")
    assert "您好" in reply["Content"] or "你好" in reply["Content"]
    # Sent in the response: the outbox never sends it again through the API.
    wechat.clock.advance(timedelta(seconds=30))
    await wechat.service.outbox.dispatch_due()
    assert wechat.stub.sent == []


@pytest.mark.parametrize("query", [
    "signature=0000&timestamp=1&nonce=2", "nonce=2", "timestamp=1&nonce=2"])
async def test_a_bad_signature_gets_403_and_stores_nothing(wechat: Wechat, query: str) -> None:
    response = await wechat.post(text_xml("oUser2", "hello"), query=query)
    assert response.status_code == 403
    assert await wechat.count(Message) == 0


@pytest.mark.parametrize("age", [-310, 310, 86_400 * 365 * 20], ids=["future", "stale", "ancient"])
async def test_a_callback_signed_too_long_ago_or_ahead_gets_403(wechat: Wechat, age: int) -> None:
    """Correctly signed, but its timestamp is more than 5 minutes from now: a captured URL
    replayed later, or a clock far off. (10 s beyond the limit: the request may be handled
    in the next second.)"""
    query = signed_query(timestamp=int(time.time()) - age)
    response = await wechat.post(text_xml("oUser2", "hello"), query=query)
    assert response.status_code == 403
    assert await wechat.count(Message) == 0


async def test_a_callback_signed_with_a_timestamp_that_is_no_number_gets_403(
        wechat: Wechat) -> None:
    arabic_indic_now = str(int(time.time())).translate(str.maketrans("0123456789",
                                                                     "٠١٢٣٤٥٦٧٨٩"))
    for stamp in ("soon", "-5", "1e9", "+" + str(int(time.time())), arabic_indic_now,
                  "9" * 40):
        query = urlencode({"signature": signature(TOKEN, stamp, "1"), "timestamp": stamp,
                           "nonce": "1"})
        assert (await wechat.post(text_xml("oUser2", "hello"), query=query)).status_code == 403
    assert await wechat.count(Message) == 0


async def test_a_signed_url_replayed_with_another_message_gets_403(wechat: Wechat) -> None:
    """In plain mode the signature does not cover the body: a URL seen once must not carry
    a message of the attacker's choosing. WeChat's own retry of the message still gets
    its answer."""
    query = signed_query()
    genuine = text_xml("oUser5", "Where is my order?", msg_id=5_550_101)
    first = await wechat.post(genuine, query=query)
    assert first.status_code == 200
    forged = await wechat.post(text_xml("oVictim", "Cancel all my orders", msg_id=5_550_102),
                               query=query)
    assert forged.status_code == 403
    retried = await wechat.post(genuine, query=query)
    assert retried.status_code == 200  # the same answer (its CreateTime is the moment's)
    assert parse_xml(retried.content)["Content"] == parse_xml(first.content)["Content"]
    async with wechat.service.db.sessions() as session:
        texts = (await session.execute(select(Message.text).where(
            Message.direction == "in"))).scalars().all()
    assert texts == ["Where is my order?"]


@pytest.mark.parametrize("first", ["voice", "click", "blank text"])
async def test_a_signed_url_first_used_by_a_callback_not_answered_is_no_blank_cheque(
        wechat: Wechat, first: str) -> None:
    """A voice message, a menu click or blank text is acknowledged without an answer; the
    URL it came with is bound to it all the same."""
    bodies = {
        "voice": ("<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA["
                  "oUser8]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType>"
                  "<![CDATA[voice]]></MsgType><MediaId><![CDATA[m1]]></MediaId><MsgId>"
                  "5550501</MsgId></xml>"),
        "click": ("<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA["
                  "oUser8]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType>"
                  "<![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event><EventKey>"
                  "<![CDATA[menu]]></EventKey></xml>"),
        "blank text": text_xml("oUser8", "   ", msg_id=5_550_502),
    }
    query = signed_query()
    acknowledged = await wechat.post(bodies[first], query=query)
    assert (acknowledged.status_code, acknowledged.text) == (200, "success")
    forged = await wechat.post(text_xml("oVictim", "Cancel my orders", msg_id=5_550_503),
                               query=query)
    assert forged.status_code == 403
    assert (await wechat.post(bodies[first], query=query)).status_code == 200  # a retry
    assert await wechat.count(Message) == 0


async def test_a_signed_url_rewritten_under_the_same_signature_is_still_a_replay(
        wechat: Wechat) -> None:
    """The signature is SHA-1 of the token, timestamp and nonce sorted and concatenated,
    compared in any case: the same signature passes with its hex digits upper-cased, and
    with the digits cut differently between a timestamp and a nonce ("0" + "0" + T and
    "0" + "0T": T with a leading zero, the same moment). Each is still the URL seen."""
    now = str(int(time.time()))
    query = {"signature": signature(TOKEN, now, "00"), "timestamp": now, "nonce": "00"}
    assert (await wechat.post(text_xml("oUser7", "hello", msg_id=5_550_401),
                              query=urlencode(query))).status_code == 200
    shouting = {**query, "signature": query["signature"].upper()}
    shifted = {**query, "timestamp": "0" + now, "nonce": "0"}
    assert signature(TOKEN, shifted["timestamp"], shifted["nonce"]) == query["signature"]
    for n, forged in enumerate((shouting, shifted)):
        response = await wechat.post(text_xml("oVictim", "Cancel my orders",
                                              msg_id=5_550_402 + n), query=urlencode(forged))
        assert response.status_code == 403
    async with wechat.service.db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in")) == 1


async def test_one_signed_url_with_two_messages_at_once_stores_one(wechat: Wechat) -> None:
    query = signed_query()
    responses = await asyncio.gather(*(
        wechat.post(text_xml(f"oUser{n}", f"message {n}", msg_id=5_550_200 + n), query=query)
        for n in range(4)))
    assert sorted(r.status_code for r in responses) == [200, 403, 403, 403]
    async with wechat.service.db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in")) == 1


async def test_the_retention_job_forgets_callback_urls_after_a_day(wechat: Wechat) -> None:
    from bot.jobs import retention

    await wechat.post(text_xml("oUser6", "hello", msg_id=5_550_301))
    keys = select(ProcessedEvent.key).where(ProcessedEvent.key.startswith("wechat-url"))
    async with wechat.service.db.sessions() as session:
        assert len((await session.execute(keys)).all()) == 2  # the URL's, the URL's + message's
    wechat.clock.advance(timedelta(hours=23))
    await retention(wechat.service)
    async with wechat.service.db.sessions() as session:
        assert len((await session.execute(keys)).all()) == 2
    wechat.clock.advance(timedelta(hours=2))
    await retention(wechat.service)
    async with wechat.service.db.sessions() as session:
        assert (await session.execute(keys)).all() == []


async def test_hostile_callbacks_are_refused_and_store_nothing(wechat: Wechat) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><xml><Content>&b;</Content></xml>')
    assert (await wechat.post(bomb)).status_code == 400
    assert (await wechat.post("<xml>" + "x" * 100_000 + "</xml>")).status_code == 413
    response = await wechat.http.post(f"/webhooks/wechat?{signed_query()}",
                                      content=b"<xml>\xff\xfe</xml>")
    assert response.status_code == 400
    assert await wechat.count(Message) == 0


async def test_a_retried_message_is_processed_once_and_answered_the_same(wechat: Wechat) -> None:
    xml = text_xml("oUser3", "Where is my order?", msg_id=5_550_001)
    first, second = await asyncio.gather(wechat.post(xml), wechat.post(xml))
    third = await wechat.post(xml)
    contents = [parse_xml(r.content)["Content"] for r in (first, second, third)]
    assert contents[0] and contents[0] == contents[1] == contents[2]
    async with wechat.service.db.sessions() as session:
        inbound = await session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "in"))
    assert inbound == 1


async def test_a_slow_reply_goes_through_the_customer_service_api(wechat: Wechat) -> None:
    pipeline = wechat.service.pipeline
    original = pipeline.process

    async def slow(message_id: int) -> Any:
        await asyncio.sleep(0.6)
        return await original(message_id)

    pipeline.process = slow  # type: ignore[method-assign]
    window = wechat.service.settings.wechat.reply_window_seconds
    wechat.service.settings.wechat.reply_window_seconds = 0.1
    try:
        from bot.channels.wechat import answer_within
        from bot.types import InboundMessage

        reply = await answer_within(wechat.service, InboundMessage(
            channel="wechat", chat="oUser4", text="hello", external_id="slow-1"), 0.1)
        assert reply is None  # the callback answers "success"
        for _ in range(200):  # processing finishes in the background
            async with wechat.service.db.sessions() as session:
                queued = await session.scalar(select(func.count()).select_from(OutboxItem)
                                              .where(OutboxItem.chat == "oUser4"))
            if queued:
                break
            await asyncio.sleep(0.05)
    finally:
        pipeline.process = original  # type: ignore[method-assign]
        wechat.service.settings.wechat.reply_window_seconds = window
    await wechat.service.outbox.dispatch_due()
    assert wechat.stub.texts_to("oUser4") == []  # not before the window has passed
    wechat.clock.advance(timedelta(seconds=6))
    await wechat.service.outbox.dispatch_due()
    assert len(wechat.stub.texts_to("oUser4")) == 1
    assert wechat.stub.tokens_issued == 1


async def test_the_slow_path_through_the_callback_answers_success(wechat: Wechat) -> None:
    pipeline = wechat.service.pipeline
    original = pipeline.process

    async def slow(message_id: int) -> Any:
        await asyncio.sleep(5.2)
        return await original(message_id)

    pipeline.process = slow  # type: ignore[method-assign]
    try:
        response = await wechat.post(text_xml("oUser5", "hello"))
    finally:
        await asyncio.sleep(0.5)
        pipeline.process = original  # type: ignore[method-assign]
    assert (response.status_code, response.text) == (200, "success")


async def test_a_token_renewed_elsewhere_is_picked_up_without_forcing(wechat: Wechat) -> None:
    """Another process renewed the stable token (ours is refused): ours is fetched again
    without forcing, which would invalidate that process's token in turn."""
    from bot.channels.base import Delivery

    channel = wechat.service.outbox.channels["wechat"]
    await channel.send(Delivery(0, "oUser6", "first", "reply", "customer"))
    wechat.stub.current_token = "rotated-elsewhere"  # our cached token is no longer valid
    await channel.send(Delivery(0, "oUser6", "second", "reply", "customer"))
    assert wechat.stub.texts_to("oUser6") == ["first", "second"]
    assert (wechat.stub.tokens_issued, wechat.stub.forced_refreshes) == (1, 0)


async def test_sends_in_flight_refused_for_one_token_force_one_refresh(
        wechat: Wechat) -> None:
    """Sixteen sends at once (the outbox's default concurrency) are refused for a token
    the stable-token API still hands out: the first forces a refresh, the others use the
    token it got. Forcing one each would invalidate the token the one before fetched,
    and most sends would fail."""
    from bot.channels.base import Delivery

    channel = wechat.service.outbox.channels["wechat"]
    await channel.send(Delivery(0, "oUser7", "warm", "reply", "customer"))
    wechat.stub.errors = [40001] * 16  # revoked, though still the current one
    await asyncio.gather(*(channel.send(Delivery(n, f"oUser7-{n}", f"reply {n}", "reply",
                                                 "customer")) for n in range(16)))
    assert sorted(d["touser"] for d in wechat.stub.sent[1:]) == sorted(
        f"oUser7-{n}" for n in range(16))
    assert (wechat.stub.tokens_issued, wechat.stub.forced_refreshes) == (2, 1)


async def test_two_processes_do_not_take_turns_forcing_refreshes(wechat: Wechat) -> None:
    """Two serve processes, each with its own cache, after the token changed: neither
    forces a refresh (each would invalidate the other's token, send after send)."""
    from bot.channels.wechat import WechatApi

    apis = [WechatApi(wechat.service.settings.wechat) for _ in range(2)]
    try:
        for api in apis:
            await api.send_text("o", "warm")
        wechat.stub.current_token = "rotated-elsewhere"
        for n in range(10):  # the processes' sends alternate
            await apis[n % 2].send_text("o", f"reply {n}")
        assert wechat.stub.forced_refreshes == 0
        assert wechat.stub.texts_to("o") == ["warm", "warm"] + [f"reply {n}" for n in range(10)]
    finally:
        for api in apis:
            await api.close()


async def test_outside_48_hours_the_reply_waits_for_the_customer_and_agents_are_told(
        wechat: Wechat) -> None:
    from bot.types import Reply

    await wechat.post(text_xml("oUser7", "hello"))
    async with wechat.service.db.sessions.begin() as session:
        from bot.db.models import Conversation

        conversation = (await session.execute(select(Conversation))).scalar_one()
        await wechat.service.pipeline.queue_replies(
            session, conversation, [Reply("Your samples were shipped today.")],
            wechat.clock.now())
    wechat.stub.errors = [45015]
    await wechat.service.outbox.dispatch_due()
    await wechat.service.outbox.dispatch_due()  # the notice queued for the agents
    async with wechat.service.db.sessions() as session:
        statuses = (await session.execute(select(OutboxItem.status).where(
            OutboxItem.channel == "wechat").order_by(OutboxItem.id))).scalars().all()
    assert statuses[-1] == "held"
    agents = wechat.service.outbox.channels["slack"].sent  # type: ignore[attr-defined]
    assert any(d.template == "escalation.delivery_held" for d in agents)
    # The customer writes again: the held reply goes out, then the new answer.
    await wechat.post(text_xml("oUser7", "any news?"))
    await wechat.service.outbox.dispatch_due()
    assert "Your samples were shipped today." in wechat.stub.texts_to("oUser7")


async def test_a_follow_event_welcomes_and_an_image_is_kept(wechat: Wechat) -> None:
    welcome = parse_xml((await wechat.post(subscribe_xml("oUser8"))).content)["Content"]
    assert "Evergreen" in welcome or "欢迎" in welcome
    await wechat.post(image_xml("oUser8"))
    async with wechat.service.db.sessions() as session:
        attachments = (await session.execute(select(Message.attachments).where(
            Message.direction == "in"))).scalars().all()
    assert [a["media_id"] for batch in attachments for a in batch] == ["media-42"]


async def test_safe_mode_decrypts_and_answers_encrypted(database_url: str,
                                                        clock: ManualClock) -> None:
    stub = WechatStub()
    await stub.start()
    service = await start(database_url, clock, stub, aes_key=AES_KEY)
    app = create_app(service, background=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://supportbot") as http:
            query, body = encrypted(text_xml("oUser9", "Hello, I need a quote"))
            response = await http.post(f"/webhooks/wechat?{query}", content=body.encode())
            assert response.status_code == 200
            outer = parse_xml(response.content)
            assert outer["MsgSignature"] == signature(TOKEN, outer["TimeStamp"], outer["Nonce"],
                                                      outer["Encrypt"])
            inner = parse_xml(AesCrypto(AES_KEY, APP_ID).decrypt(outer["Encrypt"]).encode())
            assert inner["ToUserName"] == "oUser9" and inner["Content"]
            # Plain text is refused in safe mode; so is a wrong message signature.
            plain = await http.post(f"/webhooks/wechat?{signed_query()}",
                                    content=text_xml("oUser9", "hi").encode())
            assert plain.status_code == 400
            forged_query = query.replace("msg_signature=", "msg_signature=0")
            forged = await http.post(f"/webhooks/wechat?{forged_query}", content=body.encode())
            assert forged.status_code == 403
    finally:
        await service.outbox.channels["wechat"].close()  # type: ignore[attr-defined]
        await service.close()
        await stub.stop()
