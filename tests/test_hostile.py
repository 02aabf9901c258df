"""Hostile input: every webhook, the import files and the config file get random, forged,
oversized and malformed input; each is refused clearly (a 4xx, ImportError_, ConfigError,
InvalidMessage), never with a 500 or a traceback, and a refusal stores nothing. Customer
text is stored verbatim and never evaluated; nobody reads another customer's order, quote
or case by guessing numbers; a flooding chat is rate limited and told once a minute.

The number of random examples per property comes from SUPPORTBOT_FUZZ_EXAMPLES (40 by
default, so the file stays fast in CI); ``make stress`` runs many more.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import string
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import event, func, select

from bot.clock import ManualClock
from bot.config import ConfigError, Settings, load_settings
from bot.db.models import (
    Agent,
    Case,
    Contact,
    Conversation,
    Customer,
    Message,
    OutboxItem,
    OwnershipEvent,
    ProcessedEvent,
    Quote,
)
from bot.importer import Batch, ImportError_, apply_batch, parse_text, read_file, validate_records
from bot.pipeline import InvalidMessage
from bot.service import Service
from bot.types import InboundMessage
from tests.conftest import ChatDriver, RecordingChannel
from tests.helpers import app_client
from tests.slack_stub import (
    BOT_TOKEN,
    SIGNING_SECRET,
    SlackStub,
    command_body,
    event_body,
    interaction_body,
    signed_headers,
    thread_message,
)
from tests.telegram_stub import TOKEN as TELEGRAM_TOKEN
from tests.telegram_stub import WEBHOOK_SECRET, TelegramStub, message_update
from tests.wechat_stub import APP_ID, APP_SECRET, WechatStub, signed_query, text_xml
from tests.wechat_stub import TOKEN as WECHAT_TOKEN

FUZZ_EXAMPLES = int(os.environ.get("SUPPORTBOT_FUZZ_EXAMPLES", "40"))
FUZZ = hsettings(
    max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example])
STORED = (Message, Contact, Conversation, OutboxItem, Case, Quote, OwnershipEvent,
          ProcessedEvent)
_ids = itertools.count(1)
LEAKS = ("Traceback", "sqlalchemy", "<class", "__class__", "KeyError", "IndexError",
         "psycopg", "asyncpg", "sqlite3", "DROP TABLE")


async def counts(service: Service) -> dict[str, int]:
    """Rows per table, to prove that a refusal stored nothing."""
    async with service.db.sessions() as session:
        return {model.__name__: int(await session.scalar(
            select(func.count()).select_from(model)) or 0) for model in STORED}


async def inbound_texts(service: Service, chat: str) -> list[str]:
    async with service.db.sessions() as session:
        return list((await session.execute(
            select(Message.text).join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.chat == chat, Message.direction == "in")
            .order_by(Message.id))).scalars())


# --- strategies ------------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\u202e", "👍", "PO-24117", "/start", "{company}",
                     "'; DROP TABLE messages; --", "x" * 300]))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=25)


json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=5)


def deep_json(depth: int, kind: str = "list") -> str:
    """Nesting that json.loads cannot follow (RecursionError) from a depth of about 1,000."""
    opener, closer = ("[", "]") if kind == "list" else ('{"a":', "}")
    return opener * depth + "0" + closer * depth


DEPTHS = st.sampled_from([10, 500, 990, 1_000, 5_000, 100_000])
deep_json_texts = st.builds(deep_json, DEPTHS, st.sampled_from(["list", "object"]))
# A value that json.dumps cannot write (too deep) is put in as this mark, then swapped in.
deep_marks = st.builds("@@deep-{}-{}@@".format, DEPTHS, st.sampled_from(["list", "object"]))
DEEP_MARK = re.compile(r'"@@deep-(\d+)-(list|object)@@"')


def dump_json(value: Any) -> bytes:
    return DEEP_MARK.sub(lambda m: deep_json(int(m[1]), m[2]), json.dumps(value)).encode()


telegram_users = st.fixed_dictionaries(
    {"id": st.integers(1, 2 ** 40), "is_bot": st.booleans(),
     "first_name": st.one_of(st.text(max_size=300), st.just("n" * 250))},
    optional={"last_name": st.text(max_size=80),
              "language_code": st.one_of(st.sampled_from(["ru", "zh-hans", "pt-br", "", "xx",
                                                          "en-US-x-" + "a" * 40]),
                                         st.text(max_size=40)),
              "username": st.text(max_size=40)})
telegram_chats = st.fixed_dictionaries(
    # A chat id longer than its column (128 digits) is refused with a 400.
    {"id": st.one_of(st.integers(-(2 ** 52), 2 ** 52), st.integers(-(10 ** 140), 10 ** 140)),
     "type": st.sampled_from(["private", "group", "supergroup", "channel", "secret"])},
    optional={"title": st.text(max_size=60), "first_name": st.text(max_size=60)})
telegram_messages = st.fixed_dictionaries(
    {"message_id": st.integers(0, 2 ** 31), "date": st.integers(0, 2 ** 33),
     "chat": telegram_chats},
    optional={"from": telegram_users, "text": st.text(max_size=200),
              "caption": st.text(max_size=50), "edit_date": st.integers(0, 2 ** 33),
              "photo": st.lists(st.fixed_dictionaries(
                  {"file_id": st.text(max_size=20), "file_unique_id": st.text(max_size=20),
                   "width": st.integers(0, 5000), "height": st.integers(0, 5000)}), max_size=3),
              "document": st.fixed_dictionaries(
                  {"file_id": st.text(max_size=20), "file_unique_id": st.text(max_size=20)},
                  optional={"file_name": st.text(max_size=60),
                            "mime_type": st.text(max_size=30)}),
              "entities": st.lists(json_objects, max_size=3),
              "reply_to_message": json_objects})


@st.composite
def telegram_updates(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["message", "edited_message", "callback_query", "channel_post",
                                 "my_chat_member", "poll", "nonsense"]))
    if kind == "callback_query":
        payload: Any = draw(st.fixed_dictionaries(
            {"id": st.text(max_size=20), "from": telegram_users,
             "chat_instance": st.text(max_size=10)},
            optional={"data": st.text(max_size=64), "message": telegram_messages}))
    elif kind in ("message", "edited_message", "channel_post"):
        payload = draw(telegram_messages)
    else:
        payload = draw(json_values)  # of any JSON type, e.g. {"poll": []}
    if isinstance(payload, dict) and payload and draw(st.booleans()):
        # A field of the wrong type (or absurdly nested), here or one level down.
        payload = target = dict(payload)
        inner = [key for key, value in payload.items() if isinstance(value, dict) and value]
        if inner and draw(st.booleans()):
            name = draw(st.sampled_from(inner))
            payload[name] = target = dict(payload[name])
        target[draw(st.sampled_from(sorted(target)))] = draw(st.one_of(json_values, deep_marks))
    update_id = draw(st.one_of(st.integers(0, 2 ** 31), st.integers(-(2 ** 63), 2 ** 63),
                               json_leaves))
    return {"update_id": update_id, kind: payload, **draw(st.dictionaries(
        st.sampled_from(["extra", "message"]), json_objects, max_size=1))}


def telegram_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        telegram_updates().map(dump_json),
        deep_json_texts.map(lambda t: f'{{"update_id": 1, "message": {t}}}'.encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


ascii_text = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ",
                     max_size=80)


# --- Telegram ----------------------------------------------------------------------------------

@dataclass(repr=False)
class Site:
    """A service behind its real ASGI app, with the platform's stand-in."""

    service: Service
    http: httpx.AsyncClient
    stub: Any
    clock: ManualClock

    def __repr__(self) -> str:  # hypothesis shows the arguments of a failing example
        return f"Site({type(self.stub).__name__})"


@pytest.fixture
async def telegram(database_url: str, clock: ManualClock) -> AsyncIterator[Site]:
    stub = TelegramStub()
    base_url = await stub.start()
    settings = load_settings(None, database={"url": database_url},
                             after_hours={"enabled": False},
                             telegram={"token": TELEGRAM_TOKEN, "webhook_secret": WEBHOOK_SECRET,
                                       "api_base_url": base_url})
    service = await Service.start(settings, clock=clock, migrate=True)
    service.outbox.channels["slack"] = RecordingChannel("slack")
    try:
        async with app_client(service) as http:
            yield Site(service, http, stub, clock)
    finally:
        await service.outbox.channels["telegram"].close()  # type: ignore[attr-defined]
        await service.close()
        await stub.stop()


async def post_telegram(site: Site, body: bytes, secret: str | None = WEBHOOK_SECRET
                        ) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    return await site.http.post("/webhooks/telegram", content=body, headers=headers)


@FUZZ
@given(body=telegram_bodies())
async def test_telegram_random_updates_get_200_or_400_and_a_refusal_stores_nothing(
        telegram: Site, body: bytes) -> None:
    before = await counts(telegram.service)
    response = await post_telegram(telegram, body)
    assert response.status_code in (200, 400), (response.status_code, body[:200])
    if response.status_code == 400:
        assert await counts(telegram.service) == before


@FUZZ
@given(secret=st.one_of(st.none(), ascii_text, st.just(WEBHOOK_SECRET[:-1]),
                        st.just(WEBHOOK_SECRET + "x"), st.just(WEBHOOK_SECRET.upper())),
       body=st.one_of(st.just(json.dumps(message_update("hello", chat_id=7100)).encode()),
                      telegram_bodies()))
async def test_telegram_without_the_secret_gets_403_and_nothing_happens(
        telegram: Site, secret: str | None, body: bytes) -> None:
    assume(secret is None or secret.strip() != WEBHOOK_SECRET)
    before, calls = await counts(telegram.service), len(telegram.stub.calls)
    response = await post_telegram(telegram, body, secret)
    assert response.status_code == 403
    assert await counts(telegram.service) == before
    assert len(telegram.stub.calls) == calls  # not even getMe: the body was never read


async def test_telegram_oversized_bodies_get_413(telegram: Site) -> None:
    for size in (1_000_001, 3_000_000):
        response = await post_telegram(telegram, b"{" + b" " * size + b"}")
        assert response.status_code == 413
    assert (await counts(telegram.service))["Message"] == 0


# --- Slack ---------------------------------------------------------------------------------------

@pytest.fixture
async def slack(database_url: str, clock: ManualClock) -> AsyncIterator[Site]:
    """A handed-off conversation with its card and thread, so a forged request would have
    something to act on."""
    stub = SlackStub()
    base_url = await stub.start()
    settings = load_settings(None, database={"url": database_url},
                             after_hours={"enabled": False},
                             slack={"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                                    "api_base_url": base_url, "agents_channel": "#support"},
                             agents={"alice": {"name": "Alice Wang", "slack_user_id": "UALICE"}})
    service = await Service.start(settings, clock=clock, migrate=True)
    service.outbox.channels["telegram"] = RecordingChannel("telegram")
    await service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-slack",
                                                 text="/human", external_id="seed-1"))
    await service.outbox.dispatch_due()
    try:
        async with app_client(service) as http:
            yield Site(service, http, stub, clock)
    finally:
        await service.close()
        await stub.stop()


async def seeded_thread(site: Site) -> tuple[int, str, str]:
    async with site.service.db.sessions() as session:
        conversation = (await session.execute(
            select(Conversation).where(Conversation.chat == "tg-slack"))).scalar_one()
    assert conversation.slack_thread_ts is not None
    return conversation.id, str(conversation.slack_channel), conversation.slack_thread_ts


# Bolt reads these keys while it builds the request context and picks a listener; in a
# signed body one of the wrong JSON type (Slack never sends that) is refused with a 400, so
# random objects use them often.
BOLT_KEYS = {"actor_enterprise_id", "actor_team_id", "actor_user_id", "app_installed_team_id",
             "assistant_thread", "authorizations", "bot_access_token", "channel", "channel_id",
             "container", "context_enterprise_id", "context_team_id", "enterprise",
             "enterprise_id", "event", "execution_id", "function_bot_access_token",
             "function_data", "function_execution_id", "id", "inputs", "is_enterprise_install",
             "is_ext_shared_channel", "item", "items", "message", "payload", "previous_message",
             "response_url", "response_urls", "team", "team_id", "thread_ts", "type", "user",
             "user_id", "user_team", "view", "actions"}
slack_objects = st.dictionaries(st.one_of(st.sampled_from(sorted(BOLT_KEYS)), st.text(max_size=12)),
                                json_values, max_size=5)
slack_ids = st.fixed_dictionaries({"id": st.text(max_size=12)})
slack_events = st.fixed_dictionaries(
    {"type": st.sampled_from(["event_callback", "url_verification", "app_rate_limited"]),
     "event_id": st.text(max_size=20), "team_id": st.just("T0001")},
    optional={"challenge": st.text(max_size=20), "event_time": st.integers(0, 2 ** 40),
              "event": st.fixed_dictionaries(
                  {"type": st.sampled_from(["message", "app_mention", "reaction_added"])},
                  optional={"user": st.sampled_from(["UALICE", "UBOB", "UBOT", ""]),
                            "text": st.text(max_size=100),
                            "channel": st.sampled_from(["CSUPPORT", "D123", "C0"]),
                            "thread_ts": st.text(max_size=20),
                            "ts": st.text(max_size=20),
                            "subtype": st.sampled_from(["bot_message", "message_changed"]),
                            "bot_id": st.text(max_size=10)}),
              "authorizations": st.lists(st.fixed_dictionaries(
                  {"team_id": st.text(max_size=8), "user_id": st.text(max_size=8),
                   "is_bot": st.booleans()}), max_size=2)})
slack_actions = st.fixed_dictionaries(
    {"action_id": st.sampled_from(["take", "resolve", "release", "accept", "transfer", "x"])},
    optional={"value": st.text(max_size=20), "block_id": st.text(max_size=20),
              "selected_option": st.fixed_dictionaries({"value": st.text(max_size=20)}),
              "type": st.sampled_from(["button", "static_select"])})
slack_payloads = st.one_of(slack_objects, json_values, st.fixed_dictionaries(
    # Slack always sends at least one action with a block_actions payload; no action, or
    # actions of the wrong type, get a 400.
    {"type": st.sampled_from(["block_actions", "view_submission", "shortcut", "nonsense"]),
     "actions": st.one_of(st.lists(slack_actions, min_size=1, max_size=2),
                          st.lists(slack_actions, max_size=0), json_values)},
    optional={"user": slack_ids, "channel": slack_ids, "team": slack_ids,
              "container": st.fixed_dictionaries({"type": st.just("message"),
                                                  "message_ts": st.text(max_size=12)}),
              "trigger_id": st.text()}))
slack_forms = st.builds(
    lambda fields, payload: urllib.parse.urlencode(
        {**fields, **({"payload": json.dumps(payload)} if payload is not None else {})}),
    st.dictionaries(st.sampled_from(["command", "text", "user_id", "channel_id", "team_id",
                                     "ssl_check", "token", "response_url", "trigger_id"]),
                    st.one_of(st.text(max_size=100),
                              st.sampled_from(["/support", "queue", "take #1", "resolve CS-1",
                                               "mine", "stats", "1"])), max_size=6),
    st.one_of(st.none(), slack_payloads))


@FUZZ
@given(kind=st.sampled_from(["json", "form"]), data=st.data())
async def test_slack_random_signed_requests_never_get_a_500(
        slack: Site, kind: str, data: st.DataObject) -> None:
    if kind == "json":
        body = dump_json(data.draw(st.one_of(slack_events, slack_objects, json_values,
                                             deep_marks))).decode()
        content_type = "application/json"
    else:
        body = data.draw(st.one_of(
            slack_forms, st.text(max_size=200),
            deep_json_texts.map(lambda t: urllib.parse.urlencode({"payload": t})),
            st.dictionaries(st.sampled_from(sorted(BOLT_KEYS)), st.text(max_size=20),
                            max_size=4).map(urllib.parse.urlencode)))
        content_type = "application/x-www-form-urlencoded"
    response = await slack.http.post("/webhooks/slack/events", content=body.encode(),
                                     headers=signed_headers(body, content_type))
    assert response.status_code < 500 and response.status_code != 401, (response, body[:200])


@FUZZ
@given(tamper=st.sampled_from(["secret", "body", "stale", "future", "garbage", "timestamp",
                               "missing-signature", "missing-timestamp"]),
       action=st.sampled_from(["take", "reply", "command"]), data=st.data())
async def test_slack_forged_or_replayed_requests_get_401_and_store_nothing(
        slack: Site, tamper: str, action: str, data: st.DataObject) -> None:
    conversation_id, channel, ts = await seeded_thread(slack)
    if action == "take":
        body = interaction_body("UALICE", {"action_id": "take", "type": "button",
                                           "value": str(conversation_id)}, channel, ts)
        content_type = "application/x-www-form-urlencoded"
    elif action == "reply":
        body = event_body(thread_message("UALICE", "Hello from a forger", channel, ts,
                                         f"{time.time():.6f}"), f"EvF{data.draw(ascii_text)}")
        content_type = "application/json"
    else:
        body = command_body("UALICE", f"take #{conversation_id}")
        content_type = "application/x-www-form-urlencoded"
    headers = signed_headers(body, content_type)
    sent = body
    if tamper == "secret":
        secret = data.draw(ascii_text.filter(lambda s: s.strip() not in ("", SIGNING_SECRET)))
        headers = signed_headers(body, content_type, secret=secret)
    elif tamper == "body":  # signed, then changed in transit: well-formed or not at all
        how = data.draw(st.sampled_from(["edit", "cut", "junk", "deep"]))
        extra = data.draw(st.text(min_size=1, max_size=20))
        if how == "edit":
            sent = body.replace("Hello from a forger", json.dumps(extra)[1:-1]) \
                if action == "reply" else body + "&" + urllib.parse.urlencode({"text": extra})
        elif how == "cut":
            # Drawn independently of the body's length (conversation ids and times make it
            # vary between examples; hypothesis needs the same draws when it replays one).
            sent = body[:data.draw(st.integers(0, 1 << 16)) % len(body)]
        elif how == "junk":
            sent = body + extra
        else:
            deep = deep_json(data.draw(st.sampled_from([1_000, 50_000])),  # stays < 1 MB
                             data.draw(st.sampled_from(["list", "object"])))
            sent = f'{{"type": "event_callback", "event": {deep}}}' if action == "reply" \
                else urllib.parse.urlencode({"payload": deep})
        assume(sent != body)
    elif tamper in ("stale", "future"):
        offset = data.draw(st.integers(6 * 60, 10 ** 8))
        stamp = int(time.time()) + (offset if tamper == "future" else -offset)
        headers = signed_headers(body, content_type, timestamp=stamp)  # a genuine signature
    elif tamper == "garbage":
        headers["X-Slack-Signature"] = data.draw(st.one_of(
            st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map("v0=".__add__),
            ascii_text))
    elif tamper == "timestamp":  # not the one signed: another number, or not a number
        signed = headers["X-Slack-Request-Timestamp"]
        headers["X-Slack-Request-Timestamp"] = data.draw(st.one_of(
            st.integers(-(2 ** 70), 2 ** 70).map(str), ascii_text.map(str.strip),
            st.sampled_from(["", "NaN", "1e9", "inf", signed + ".0", "0x10"])
        ).filter(lambda stamp: stamp != signed))
    else:
        del headers["X-Slack-Signature" if tamper == "missing-signature"
                    else "X-Slack-Request-Timestamp"]
    before, posts = await counts(slack.service), len(slack.stub.calls)
    response = await slack.http.post("/webhooks/slack/events",
                                     content=sent.encode("utf-8", "surrogatepass"),
                                     headers=headers)
    await slack.service.outbox.dispatch_due()
    assert response.status_code == 401, (tamper, response.status_code)
    assert await counts(slack.service) == before
    assert len(slack.stub.calls) == posts


async def test_customer_text_cannot_ping_or_link_in_slack(slack: Site) -> None:
    conversation_id, channel, ts = await seeded_thread(slack)
    body = interaction_body("UALICE", {"action_id": "take", "type": "button",
                                       "value": str(conversation_id)}, channel, ts)
    response = await slack.http.post("/webhooks/slack/events", content=body.encode(),
                                     headers=signed_headers(body,
                                                            "application/x-www-form-urlencoded"))
    assert response.status_code == 200
    before = len(slack.stub.calls_to("chat.postMessage"))
    hostile = "<!channel> <@UALICE> <https://evil.example|click here> {0.__class__} *bold*"
    await slack.service.pipeline.handle(InboundMessage(channel="telegram", chat="tg-slack",
                                                       text=hostile, external_id="seed-2"))
    await slack.service.outbox.dispatch_due()
    relayed = [json.dumps(call, ensure_ascii=False)
               for call in slack.stub.calls_to("chat.postMessage")[before:]]
    assert any("&lt;!channel&gt;" in text for text in relayed), relayed
    for text in relayed:
        assert "<!channel>" not in text and "<@UALICE>" not in text and "<https://" not in text


async def test_slack_oversized_bodies_get_413(slack: Site) -> None:
    body = json.dumps({"type": "event_callback", "pad": "x" * 1_100_000})
    response = await slack.http.post("/webhooks/slack/events", content=body.encode(),
                                     headers=signed_headers(body, "application/json"))
    assert response.status_code == 413


# --- WeChat --------------------------------------------------------------------------------------

@pytest.fixture
async def wechat(database_url: str, clock: ManualClock) -> AsyncIterator[Site]:
    stub = WechatStub()
    await stub.start()
    settings = load_settings(None, database={"url": database_url},
                             after_hours={"enabled": False},
                             wechat={"token": WECHAT_TOKEN, "app_id": APP_ID,
                                     "app_secret": APP_SECRET, "api_base_url": stub.base_url})
    service = await Service.start(settings, clock=clock, migrate=True)
    service.outbox.channels["slack"] = RecordingChannel("slack")
    try:
        async with app_client(service) as http:
            yield Site(service, http, stub, clock)
    finally:
        await service.close()
        await stub.stop()


WECHAT_FIELDS = ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "MsgId",
                 "Event", "PicUrl", "MediaId", "Encrypt"]
BOMB = ('<!DOCTYPE xml [<!ENTITY a "{pad}">'  # a billion laughs: &i; is 10^8 times &a;
        + "".join(f'<!ENTITY {name} "{f"&{previous};" * 10}">'
                  for previous, name in zip("abcdefgh", "bcdefghi", strict=True))
        + "]>")
DOCTYPES = [
    BOMB,
    '<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd"> %p;]>',
    '<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd">',
    '<!DOCTYPE xml [<!ENTITY e "text">]>',
]


def xml_text(value: str, how: str) -> str:
    if how == "cdata":
        return f"<![CDATA[{value}]]>"
    if how == "escaped":
        return escape(value)
    return value  # raw: may well break the document


@st.composite
def wechat_documents(draw: st.DrawFn) -> bytes:
    """XML more or less like WeChat's, with entities, odd encodings and broken bytes."""
    fields = draw(st.lists(st.tuples(
        st.one_of(st.sampled_from(WECHAT_FIELDS), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}",
                                                                fullmatch=True)),
        st.one_of(st.sampled_from(["text", "image", "event", "subscribe", "voice", "", "hello",
                                   "o" * 200, "6000000000000000001", "&e;", "&b;"]),
                  st.text(max_size=80)),
        st.sampled_from(["cdata", "escaped", "raw"])), max_size=8))
    children = "".join(f"<{tag}>{xml_text(value, how)}</{tag}>" for tag, value, how in fields)
    root = draw(st.sampled_from(["xml", "xml", "xml", "notxml"]))
    document = f"<{root}>{children}</{root}>"
    if draw(st.booleans()):
        document = draw(st.sampled_from(DOCTYPES)).replace("{pad}", "lol" * 10) + document
    declaration = draw(st.one_of(
        st.sampled_from(["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-8"?>',
                         '<?xml version="1.0" encoding="GBK"?>',
                         '<?xml version="1.0" encoding="UTF-16"?>',
                         '<?xml version="1.0" encoding="ascii"?>',
                         '<?xml version="1.0" encoding="bogus-42"?>',  # unknown to Python
                         '<?xml version="1.0" encoding="rot13"?>',  # not a text encoding
                         '<?xml version="1.0" encoding="utf-7"?>']),
        st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,15}", fullmatch=True).map(
            '<?xml version="1.0" encoding="{}"?>'.format)))
    document = declaration + document
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "gb18030", "latin-1",
                                     "cp1251"]))
    body = document.encode(encoding, "replace") if encoding != "utf-8" \
        else document.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # a broken byte somewhere
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at:]
    return body


async def post_wechat(site: Site, body: bytes, query: str | None = None) -> httpx.Response:
    return await site.http.post(f"/webhooks/wechat?{query or signed_query()}", content=body,
                                headers={"Content-Type": "text/xml"})


@FUZZ
@given(body=st.one_of(wechat_documents(), st.binary(max_size=500)))
async def test_wechat_random_xml_gets_200_or_400_and_a_refusal_stores_nothing(
        wechat: Site, body: bytes) -> None:
    before = await counts(wechat.service)
    response = await post_wechat(wechat, body)
    assert response.status_code in (200, 400), (response.status_code, body[:300])
    if response.status_code == 400:
        assert await counts(wechat.service) == before
    assert not any(leak in response.text for leak in LEAKS)


@FUZZ
@given(size=st.integers(64 * 1024 + 1, 3_000_000), filler=st.sampled_from([b"x", b"\xff", b"<a>"]))
async def test_wechat_huge_bodies_get_413(wechat: Site, size: int, filler: bytes) -> None:
    body = b"<xml><Content>" + filler * (size // len(filler)) + b"</Content></xml>"
    response = await post_wechat(wechat, body)
    assert response.status_code == 413
    assert (await counts(wechat.service))["Message"] == 0


async def test_wechat_entity_expansion_and_external_entities_get_400(wechat: Site) -> None:
    for doctype in DOCTYPES:
        reference = "&i;" if doctype == BOMB else "&e;"
        xml = text_xml("o-entity", "MARK").replace("<![CDATA[MARK]]>", reference)
        body = (doctype.replace("{pad}", "lol" * 1000) + xml).encode()
        response = await post_wechat(wechat, body)
        assert response.status_code == 400, doctype
    assert await counts(wechat.service) == dict.fromkeys((m.__name__ for m in STORED), 0)


@FUZZ
@given(signature=st.one_of(st.none(), ascii_text,
                           st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)),
       timestamp=st.one_of(st.none(), ascii_text), nonce=st.one_of(st.none(), ascii_text))
async def test_wechat_without_a_valid_signature_gets_403_and_stores_nothing(
        wechat: Site, signature: str | None, timestamp: str | None, nonce: str | None) -> None:
    params = {k: v for k, v in (("signature", signature), ("timestamp", timestamp),
                                ("nonce", nonce)) if v is not None}
    before = await counts(wechat.service)
    response = await post_wechat(wechat, text_xml("o-forged", "hello").encode(),
                                 urllib.parse.urlencode(params) or "x=1")
    assert response.status_code == 403
    assert await counts(wechat.service) == before


# --- web chat ------------------------------------------------------------------------------------

webchat_fields = st.one_of(json_values, deep_marks)
webchat_bodies = st.one_of(
    st.fixed_dictionaries(
        {"text": st.one_of(st.text(max_size=200), webchat_fields)},
        optional={"client_id": st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
                                         st.just("c" * 65), webchat_fields),
                  "lang": st.one_of(st.sampled_from(["ru", "zh-CN", "xx", "en-US-x-" + "a" * 40]),
                                    webchat_fields),
                  "after": webchat_fields}).map(dump_json),
    st.one_of(json_values, deep_marks).map(dump_json),
    deep_json_texts.map(str.encode),
    st.binary(max_size=300))


@FUZZ
@given(body=webchat_bodies)
async def test_webchat_random_bodies_get_200_or_4xx_and_a_refusal_stores_nothing(
        service: Service, body: bytes) -> None:
    token = f"fuzz{next(_ids):028d}"  # a chat per example: the rate limit stays out of it
    before = await counts(service)
    async with app_client(service) as http:
        response = await http.post("/api/webchat/messages", content=body,
                                   headers={"X-Webchat-Token": token,
                                            "Content-Type": "application/json"})
    assert response.status_code in (200, 400, 413, 422), (response.status_code, body[:200])
    if response.status_code != 200:
        assert await counts(service) == before
        assert not any(leak in response.text for leak in LEAKS)


# --- import files ---------------------------------------------------------------------------------

RECORD_KEYS = ["id", "company", "name", "country", "email", "phone", "language", "timezone",
               "contacts", "strategic", "account_manager", "number", "customer", "product",
               "quantity_m2", "incoterm", "destination", "stage", "progress", "etd", "eta",
               "vessel", "bl_number", "documents", "inspection", "at", "event", "customers"]
record_values = st.one_of(
    json_values,
    st.sampled_from(["C-1", "PO-1", "confirmed", "shipped", "FOB", "DE", "de", "Europe/Berlin",
                     "2026-12-01", "2026-12-01T10:00:00+08:00", "a@b.example", "-5", "1e999",
                     "telegram:tg-1", "yes", "no", "𝟙𝟚𝟛"]))
records = st.one_of(
    st.dictionaries(st.sampled_from(RECORD_KEYS), record_values, max_size=8),
    st.sampled_from(["customer", "order", "order_event"]).flatmap(
        lambda kind: st.dictionaries(st.sampled_from(RECORD_KEYS), record_values, max_size=6)
        .map(lambda r: {kind: r})))
jsonl_lines = st.one_of(records.map(lambda r: json.dumps(r, ensure_ascii=False)),
                        json_values.map(json.dumps), st.text(max_size=60),
                        st.sampled_from(["", "   ", "{", "[1,", "\ufeff{}", "null"]),
                        deep_json_texts, records.flatmap(lambda r: deep_marks.map(
                            lambda mark: dump_json({**r, "contacts": mark}).decode())))
# A cell longer than the csv module reads (131,072 characters) is reported on its line.
HUGE_CELL = "x" * 131_073


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    header = draw(st.lists(st.one_of(st.sampled_from(RECORD_KEYS), st.text(max_size=8)),
                           min_size=0, max_size=6))
    cell = st.one_of(record_values.map(lambda v: v if isinstance(v, str) else json.dumps(v)),
                     st.text(max_size=30), st.just(HUGE_CELL), deep_json_texts)

    def quoted(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if draw(st.booleans()) else value

    rows = draw(st.lists(st.lists(cell, max_size=len(header) + 2), max_size=6))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))  # "\r": old Mac line ends
    return newline.join(",".join(quoted(c) for c in row) for row in [header, *rows])


def assert_clean_import_error(error: ImportError_, prefix: str = "") -> None:
    assert error.problems
    for problem in error.problems:
        assert isinstance(problem, str) and problem.startswith(prefix), problem
        rest = problem[len(prefix):]
        assert re.match(r"line \d+: ", rest) or rest == "the file holds no records" \
            or re.match(r"(line \d+: )?not valid UTF-8", rest), problem
        assert not any(leak in problem for leak in ("Traceback", "<class")), problem


@FUZZ
@given(fmt=st.sampled_from(["jsonl", "csv"]), data=st.data())
def test_random_import_text_gives_a_batch_or_problems_with_line_numbers(
        fmt: str, data: st.DataObject) -> None:
    if fmt == "jsonl":
        text = data.draw(st.one_of(st.lists(jsonl_lines, max_size=8).map("\n".join),
                                   st.text(max_size=300)))
    else:
        text = data.draw(st.one_of(csv_texts(), st.text(max_size=300)))
    try:
        batch = parse_text(text, fmt)  # type: ignore[arg-type]
    except ImportError_ as error:
        assert_clean_import_error(error)
    else:
        assert isinstance(batch, Batch) and batch.size > 0


@FUZZ
@given(suffix=st.sampled_from([".jsonl", ".csv", ".json", ""]),
       content=st.one_of(st.lists(jsonl_lines, max_size=6).map(
           lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
           csv_texts().map(lambda t: t.encode("utf-8", "surrogatepass")),
           st.binary(max_size=300),
           st.text(max_size=100).map(lambda t: t.encode("utf-16"))))
def test_random_import_files_give_a_batch_or_problems_with_line_numbers(
        tmp_path: Path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"upload{suffix}"
    path.write_bytes(content)
    try:
        batch = read_file(path)
    except ImportError_ as error:
        assert_clean_import_error(error, f"{path}: ")
    else:
        assert batch.size > 0


# --- the config file -------------------------------------------------------------------------------

CONFIG_KEYS = {
    "company": ["name", "emergency_contact", "support_email"],
    "hours": ["timezone", "weekly", "holidays_country", "extra_closed", "extra_open"],
    "sla": ["first_response", "first_response_urgent", "warn_at", "first_response_by_intent"],
    "languages": ["supported", "default", "detector"],
    "database": ["url", "echo"],
    "telegram": ["token", "webhook_secret", "mode", "public_url"],
    "slack": ["bot_token", "signing_secret", "mode", "app_token"],
    "wechat": ["token", "app_id", "app_secret", "aes_key", "reply_window_seconds"],
    "web": ["host", "port", "session_secret", "session_hours"],
    "limits": ["max_message_chars", "messages_per_minute"],
    "outbox": ["max_attempts", "base_delay_seconds", "lease_seconds"],
    "flows": ["timeout", "verify_attempts", "verify_lock"],
    "proactive": ["quiet_hours", "progress_every", "delay_threshold"],
    "retention": ["personal_data_days"],
    "knowledge": ["path"],
    "calendars": ["europe", "x"],
    "agents": ["anna", "li"],
    "nonsense": ["key"],
}
# Durations of any size: more than 100 years (or than timedelta holds) is a ConfigError.
durations = st.builds(lambda n, unit: f"{n}{unit}",
                      st.one_of(st.integers(0, 9999), st.integers(0, 10 ** 30)),
                      st.sampled_from(["d", "h", "m", "min", "x", ""]))
toml_scalars = st.one_of(
    st.text(max_size=40), st.integers(-(2 ** 63), 2 ** 63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.dates(), durations,
    st.sampled_from(["Asia/Shanghai", "Mars/Olympus", "sqlite:///x.db", "mysql://x/y",
                     "postgresql://u@h/d", "09:00-18:00", "25:00-26:00", "en", "xx",
                     "$argon2id$v=19$x", "a" * 43, "webhook", "socket", "polling"]))
toml_values = st.recursive(
    toml_scalars, lambda inner: st.one_of(
        st.lists(toml_scalars, max_size=3),
        st.dictionaries(st.sampled_from(["mon", "tue", "sun", "funday", "quote_request", "name",
                                         "slack_user_id", "supervisor", "timezone", "weekly"]),
                        inner, max_size=3)), max_leaves=8)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) \
            + "}"
    return str(value)  # int, date


SECRET_KEYS = {("telegram", "token"), ("telegram", "webhook_secret"), ("slack", "bot_token"),
               ("slack", "signing_secret"), ("slack", "app_token"), ("wechat", "token"),
               ("wechat", "app_secret"), ("wechat", "aes_key"), ("web", "session_secret")}
SENTINEL = "xoxb-S3NT1NEL-secret"


@st.composite
def toml_documents(draw: st.DrawFn) -> bytes:
    parts = []
    for section in draw(st.lists(st.sampled_from(sorted(CONFIG_KEYS)), max_size=4, unique=True)):
        parts.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(CONFIG_KEYS[section]), max_size=3,
                                 unique=True)):
            secret = (section, key) in SECRET_KEYS and draw(st.booleans())
            parts.append(f"{key} = {toml_value(SENTINEL if secret else draw(toml_values))}")
    text = "\n".join(parts) + "\n"
    if draw(st.integers(0, 4)) == 0:  # a broken byte or line somewhere
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\x00", "[", "=", "\"", "\ud800", "\n[x"])) \
            + text[at:]
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(content=st.one_of(toml_documents(), st.binary(max_size=200),
                         st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_a_random_config_file_loads_or_gives_a_config_error(tmp_path: Path,
                                                            content: bytes) -> None:
    path = tmp_path / "supportbot.toml"
    path.write_bytes(content)
    try:
        settings = load_settings(path)
    except ConfigError as error:
        message = str(error)
        assert str(path) in message and "Traceback" not in message
        assert "S3NT1NEL" not in message  # a secret is never echoed back
    else:
        assert isinstance(settings, Settings)


# --- injection in customer messages ----------------------------------------------------------------

HOSTILE_TEXTS = [
    "'; DROP TABLE messages; --",
    "Robert'); DELETE FROM customers WHERE ('1'='1",
    "PO-24117' OR '1'='1",
    "PO-1%' OR 1=1 --",
    "{company}",
    "{0.__class__}",
    "{0.__class__.__mro__[1].__subclasses__()}",
    "{number} {limit} {{company}} {",
    "%s %d %(company)s %n",
    "${7*7} {{7*7}} <%= 7*7 %> #{7*7}",
    "<script>alert(document.cookie)</script>",
    "<img src=x onerror=alert(1)>",
    "\u202eevil\u202c and \u200b zero width",
    "../../../../etc/passwd",
    "where is PO-24117 {0.__class__}? '; DROP TABLE orders; --",
    "/lang {0.__class__}",
    "/lang en'; DROP TABLE contacts; --",
    "цена {company} SPC-5-05 2000 m2 CIF Hamburg %s",
]


async def test_injection_attempts_are_stored_verbatim_and_answered_normally(
        service: Service, make_chat: Any) -> None:
    for number, text in enumerate(HOSTILE_TEXTS):
        chat = make_chat(f"tg-inject-{number}")
        replies = await chat.say(text)
        assert replies, text  # answered like any message
        assert await inbound_texts(service, chat.chat) == [text]
        for reply in replies:
            assert not any(leak in reply.text for leak in LEAKS), (text, reply.text)
            assert "{0" not in reply.text and "%(company)s" not in reply.text, reply.text
        again = await chat.say("hello")  # the tables are all still there
        assert again and again[0].intent == "greeting", text
    totals = await counts(service)
    assert totals["Contact"] == len(HOSTILE_TEXTS)
    assert totals["Message"] >= 4 * len(HOSTILE_TEXTS)


@FUZZ
@given(text=st.one_of(st.text(max_size=300), st.sampled_from(HOSTILE_TEXTS).flatmap(
    lambda hostile: st.text(max_size=40).map(lambda extra: hostile + extra))))
async def test_any_customer_text_is_stored_verbatim_or_refused_cleanly(
        service: Service, text: str) -> None:
    external_id = f"any-{next(_ids)}"
    chat = f"tg-any-{external_id}"
    try:
        await service.pipeline.handle(InboundMessage(channel="telegram", chat=chat, text=text,
                                                     external_id=external_id))
    except InvalidMessage as refused:
        assert refused.template in ("error.message_empty", "error.message_too_long")
        assert await inbound_texts(service, chat) == []
        rendered = service.knowledge.templates.render(refused.template, "en", **refused.values)
        assert rendered and "{" not in rendered
        return
    assert await inbound_texts(service, chat) == [text.replace("\x00", "")]
    async with service.db.sessions() as session:
        replies = (await session.execute(
            select(Message.text).join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.chat == chat, Message.direction == "out",
                   Message.audience == "customer"))).scalars().all()
    assert replies
    for reply in replies:
        assert not any(leak in reply for leak in LEAKS), reply


async def test_hostile_names_in_imported_data_are_shown_literally(
        service: Service, make_chat: Any) -> None:
    company = "{company} <script>alert(1)</script> {0.__class__} %s'; DROP TABLE customers; --"
    await load(service, [{"id": "C-666", "company": company, "email": "evil@example.com",
                          "contacts": [{"channel": "telegram", "chat": "tg-evil"}]},
                         {"number": "PO-66601", "customer": "C-666", "product": "SPC-5-05",
                          "destination": "{destination} <b>Hamburg</b>", "stage": "shipped",
                          "vessel": "{vessel}%s"}])
    chat = make_chat("tg-evil-unlinked")
    await chat.say("where is PO-66601?")
    replies = await chat.say("evil@example.com")
    texts = " ".join(r.text for r in replies)
    assert company in texts  # verify.ok names the company, character for character
    assert "{vessel}%s" in texts and "<class" not in texts


# --- nobody reads another customer's order, quote or case --------------------------------------------

CUSTOMERS = [
    {"id": "C-100", "company": "Nordic Floors GmbH", "country": "DE", "language": "en",
     "email": "buyer@nordicfloors.example",
     "contacts": [{"channel": "telegram", "chat": "tg-nordic"}]},
    {"id": "C-200", "company": "PolTrade Distribution LLC", "country": "RU", "language": "en",
     "email": "info@poltrade.example",
     "contacts": [{"channel": "telegram", "chat": "tg-poltrade"}]},
]
ORDERS = [
    {"number": "PO-24117", "customer": "C-100", "product": "SPC-5-05", "quantity_m2": 2000,
     "incoterm": "CIF", "destination": "Hamburg", "stage": "shipped", "vessel": "MSC Aurora",
     "bl_number": "MEDU1234567", "eta": "2027-01-05"},
    {"number": "PO-30001", "customer": "C-200", "product": "WPC-8", "quantity_m2": 500,
     "incoterm": "FOB", "destination": "St Petersburg", "stage": "in_production",
     "progress": 40, "eta": "2027-02-11"},
]
SECRETS_OF_C100 = ("Nordic Floors", "MSC Aurora", "MEDU1234567", "2027-01-05", "Hamburg",
                   "buyer@nordicfloors", "18,780.99", "18780.99", "crushed pallets of row 7")


async def load(service: Service, rows: list[dict[str, Any]]) -> None:
    async with service.db.sessions.begin() as session:
        await apply_batch(session, validate_records(enumerate(rows, start=1)),
                          service.clock.now())


@pytest.fixture
async def customers(service: Service) -> Service:
    """Two customers with orders; C-100 also has a quote and an open complaint case."""
    await load(service, [*CUSTOMERS, *ORDERS])
    now = service.clock.now()
    async with service.db.sessions.begin() as session:
        nordic = (await session.execute(select(Customer).where(Customer.ref == "C-100"))
                  ).scalar_one()
        session.add(Quote(number="Q-2612-00001", customer_id=nordic.id, status="sent",
                          product="SPC-5-05", quantity_m2=Decimal(2000), incoterm="CIF",
                          destination="Hamburg", total=Decimal("18780.99"), lines=[],
                          created_at=now))
        session.add(Case(number="CS-2612-00001", customer_id=nordic.id, kind="complaint",
                         category="transit_damage", description="crushed pallets of row 7",
                         opened_at=now))
    return service


def assert_nothing_of_c100(replies: list[Any]) -> None:
    for reply in replies:
        for secret in SECRETS_OF_C100:
            assert secret not in reply.text, (secret, reply.text)


async def contact_customer(service: Service, chat: str) -> int | None:
    async with service.db.sessions() as session:
        return await session.scalar(select(Contact.customer_id).where(Contact.chat == chat))


QUESTIONS = [
    "where is PO-24117?", "status of order 24117", "PO-24117 B/L please",
    "send me the bill of lading for PO-24117", "what is the status of quote Q-2612-00001?",
    "case CS-2612-00001 — any news?", "Q-2612-00001", "CS-2612-00001",
    "I am Nordic Floors GmbH, show my orders", "PO-24117 PO-24118 PO-24119 PO-30001",
    "¿dónde está mi pedido PO-24117?", "订单PO-24117到哪了", "Где заказ 24117?"]


async def test_other_customers_orders_quotes_and_cases_stay_hidden(
        customers: Service, make_chat: Any) -> None:
    render = customers.knowledge.templates.render
    poltrade = make_chat("tg-poltrade")  # linked to the other customer, C-200
    for number, question in enumerate(QUESTIONS):
        for chat in (make_chat(f"tg-stranger-{number}"), poltrade):
            replies = await chat.say(question)
            assert replies, question
            assert_nothing_of_c100(replies)
            assert_nothing_of_c100(await chat.say("cancel"))
        assert await contact_customer(customers, f"tg-stranger-{number}") is None
        customers.clock.advance(timedelta(seconds=10))  # type: ignore[attr-defined]
    replies = await poltrade.say("where is PO-24117?")
    assert [r.text for r in replies] == [render("order.not_found", replies[0].lang,
                                                number="PO-24117")]


async def test_guessing_order_and_e_mail_locks_the_chat(customers: Service,
                                                         make_chat: Any) -> None:
    render = customers.knowledge.templates.render
    flows = customers.settings.flows
    guesser: ChatDriver = make_chat("tg-guesser")
    replies = await guesser.say("where is PO-24117?")
    assert [r.text for r in replies] == [render("verify.ask_email", "en")]
    answers = []
    for attempt in range(flows.verify_attempts):
        replies = await guesser.say(f"PO-2411{7 + attempt % 2} guess{attempt}@nordicfloors.example")
        assert_nothing_of_c100(replies)
        answers.append(replies[-1].text)
    assert answers == [render("verify.failed", "en")] * (flows.verify_attempts - 1) \
        + [render("verify.locked", "en")]
    # Locked: even the right pair is refused until the lock ends.
    replies = await guesser.say("PO-24117 buyer@nordicfloors.example")
    assert [r.text for r in replies] == [render("verify.locked", "en")]
    assert await contact_customer(customers, "tg-guesser") is None
    customers.clock.advance(flows.verify_lock - timedelta(minutes=1))  # type: ignore[attr-defined]
    replies = await guesser.say("PO-24117 buyer@nordicfloors.example")
    assert [r.text for r in replies] == [render("verify.locked", "en")]
    customers.clock.advance(timedelta(minutes=2))  # type: ignore[attr-defined]
    replies = await guesser.say("PO-24117 buyer@nordicfloors.example")
    assert replies[0].text == render("verify.ok", "en", company_name="Nordic Floors GmbH")
    assert await contact_customer(customers, "tg-guesser") is not None


@FUZZ
@given(guesses=st.lists(st.tuples(st.integers(0, 99999), st.sampled_from(
    ["info@poltrade.example", "buyer@nordicfloors.example.com", "admin@evergreen.example",
     "BUYER@nordicfloors.exampl", "' OR '1'='1@x.example", "%@%.%"])), min_size=1, max_size=4))
async def test_guessing_numbers_never_shows_an_order(customers: Service, make_chat: Any,
                                                     guesses: list[tuple[int, str]]) -> None:
    chat = make_chat(f"tg-guess-{next(_ids)}")
    for number, email in guesses:
        replies = await chat.say(f"order PO-{number:05d} {email}")
        assert_nothing_of_c100(replies)
        for reply in replies:
            assert "WPC-8" not in reply.text and "St Petersburg" not in reply.text
    assert await contact_customer(customers, chat.chat) is None


# --- rate limiting -------------------------------------------------------------------------------

async def flood(service: Service, chat: str, count: int, start: int = 0,
                step: timedelta = timedelta(milliseconds=500)) -> tuple[int, int]:
    """``count`` messages from one chat; (refusals raised, messages stored)."""
    refusals = 0
    before = len(await inbound_texts(service, chat))
    for n in range(start, start + count):
        try:
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=chat, text=f"hello {n}", external_id=f"{chat}:flood-{n}"))
        except InvalidMessage as refused:
            assert (refused.reason, refused.template) == ("rate limited", "error.rate_limited")
            refusals += 1
        service.clock.advance(step)  # type: ignore[attr-defined]
    return refusals, len(await inbound_texts(service, chat)) - before


async def test_a_flooding_chat_is_limited_and_told_once_a_minute(
        service: Service, make_chat: Any, channels: dict[str, RecordingChannel]) -> None:
    limit = service.settings.limits.messages_per_minute
    assert limit == 20
    refusals, stored = await flood(service, "tg-flood", 50)  # 50 messages in 25 seconds
    assert (refusals, stored) == (1, limit)
    await service.outbox.dispatch_due()
    replies = [d for d in channels["telegram"].sent if d.chat == "tg-flood"]
    assert len(replies) == limit  # one answer per stored message, none for the dropped
    # A redelivery of a stored message is still a duplicate, not a refusal.
    received = await service.pipeline.receive(InboundMessage(
        channel="telegram", chat="tg-flood", text="hello 0", external_id="tg-flood:flood-0"))
    assert received.duplicate
    # Another chat is not affected.
    assert [r.intent for r in await make_chat("tg-calm").say("hello")] == ["greeting"]
    # A minute after the burst the chat is heard again, and a new flood is told again.
    service.clock.advance(timedelta(seconds=61))  # type: ignore[attr-defined]
    assert [r.intent for r in await make_chat("tg-flood").say("hello again")] == ["greeting"]
    refusals, stored = await flood(service, "tg-flood", 30, start=100,
                                   step=timedelta(milliseconds=100))
    assert (refusals, stored) == (1, limit - 1)


@pytest.mark.parametrize("known_chat", [True, False], ids=["known chat", "first messages"])
async def test_a_flood_sent_all_at_once_stores_no_more_than_the_limit(
        service: Service, known_chat: bool) -> None:
    """Concurrent messages of one chat all begin before any of them is stored; the limit
    still holds. (On PostgreSQL a message whose count missed another one stored meanwhile
    waits for the chat's contact row and counts again: the contact changed, or was
    created, after its statement began.)"""
    limit = service.settings.limits.messages_per_minute
    if known_chat:
        await flood(service, "tg-burst", 1)
    recounts = []  # PostgreSQL: the messages that took the contact's lock to count again

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FOR NO KEY UPDATE" in statement:
            recounts.append(statement)

    engine = service.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        outcomes = await asyncio.gather(*(service.pipeline.handle(InboundMessage(
            channel="telegram", chat="tg-burst", text=f"burst {n}",
            external_id=f"burst-{n}")) for n in range(3 * limit)), return_exceptions=True)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert bool(recounts) == service.db.is_postgres  # the burst did meet itself there
    unexpected = [o for o in outcomes if isinstance(o, BaseException)
                  and not isinstance(o, InvalidMessage)]
    assert unexpected == []
    assert len(await inbound_texts(service, "tg-burst")) == limit
    assert sum(isinstance(o, InvalidMessage) for o in outcomes) == 1
    async with service.db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Contact).where(
            Contact.chat == "tg-burst")) == 1
        assert await session.scalar(select(func.count()).select_from(Conversation).where(
            Conversation.chat == "tg-burst")) == 1


async def test_the_rate_limit_can_be_turned_off(database_url: str, clock: ManualClock) -> None:
    settings = load_settings(None, database={"url": database_url},
                             limits={"messages_per_minute": 0})
    service = await Service.start(settings, clock=clock, channels={
        "telegram": RecordingChannel("telegram")}, migrate=True)
    try:
        assert await flood(service, "tg-unlimited", 25, step=timedelta(0)) == (0, 25)
    finally:
        await service.close()


async def test_a_telegram_flood_gets_one_refusal(telegram: Site) -> None:
    limit = telegram.service.settings.limits.messages_per_minute
    for n in range(50):
        response = await post_telegram(telegram, json.dumps(message_update(
            f"hello {n}", chat_id=7300)).encode())
        assert response.status_code == 200
    await telegram.service.outbox.dispatch_due()
    refusal = telegram.service.knowledge.templates.render("error.rate_limited", "ru")
    texts = telegram.stub.sent_texts(7300)
    assert texts.count(refusal) == 1 and len(texts) == limit + 1
    assert len(await inbound_texts(telegram.service, "7300")) == limit


async def test_a_wechat_flood_gets_one_passive_refusal(wechat: Site) -> None:
    limit = wechat.service.settings.limits.messages_per_minute
    refusal = wechat.service.knowledge.templates.render("error.rate_limited", None)
    bodies = []
    for n in range(30):
        response = await post_wechat(wechat, text_xml("o-flood", f"hello {n}").encode())
        assert response.status_code == 200
        bodies.append(response.text)
    assert sum(refusal in body for body in bodies) == 1
    assert bodies[limit] != "success" and refusal in bodies[limit]
    assert all(body == "success" for body in bodies[limit + 1:])
    assert len(await inbound_texts(wechat.service, "o-flood")) == limit


async def test_a_webchat_flood_gets_one_422(service: Service) -> None:
    token = {"X-Webchat-Token": "t" * 32}
    async with app_client(service) as http:
        statuses = []
        for n in range(25):
            response = await http.post("/api/webchat/messages", headers=token,
                                       json={"text": f"hello {n}", "client_id": f"c{n}"})
            statuses.append(response.status_code)
            if response.status_code == 422:
                assert response.json()["error"] == service.knowledge.templates.render(
                    "error.rate_limited", "en")
    limit = service.settings.limits.messages_per_minute
    assert statuses == [200] * limit + [422] + [200] * (25 - limit - 1)


# --- formerly known gaps ---------------------------------------------------------------------------
# Hostile input that once got a 500 (or a 503, or a traceback); each test states the right
# answer. A newly found gap is recorded here as a strict xfail with ``@gap(...)``: when it
# is fixed the xfail turns into a failure, and the marker (and any matching restriction of
# the random strategies above) is removed.

def gap(where: str, fix: str, condition: bool = True) -> pytest.MarkDecorator:
    return pytest.mark.xfail(condition, strict=True, reason=f"known gap in {where}: {fix}")


DEEP = b"[" * 100_000 + b"]" * 100_000  # a small body, but json.loads raises RecursionError


async def test_telegram_wrong_types_and_deep_nesting_get_400(telegram: Site) -> None:
    chat = {"id": 0, "type": "private"}
    user = {"id": 1, "is_bot": False, "first_name": ""}
    for body in [{"update_id": 0, "poll": []}, {"update_id": 0, "my_chat_member": False},
                 {"update_id": 0, "message": {"message_id": 0, "date": 0, "chat": None,
                                              "document": []}},
                 # found by make stress: button data or text that is not a string
                 {"update_id": 0, "callback_query": {
                     "id": "", "from": user, "chat_instance": "", "data": [[[0]]],
                     "message": {"message_id": 0, "date": 0, "chat": chat}}},
                 {"update_id": 0, "message": {"message_id": 0, "date": 0, "chat": chat,
                                              "from": user, "text": {"a": 1}}},
                 # ids and names of the wrong type, which would be stored as their string
                 *({"update_id": 0, "message": {
                     "message_id": 0, "date": 0, "text": "hello",
                     "chat": {**chat, **chat_fields}, "from": {**user, **user_fields}}}
                   for chat_fields, user_fields in (
                       ({"id": True}, {}), ({"id": [1]}, {}), ({"id": "12"}, {}),
                       ({}, {"id": 1.5}), ({}, {"first_name": ["a"]}),
                       ({}, {"language_code": 7}), ({}, {"username": {}}))),
                 {"update_id": 0, "message": {"message_id": 0, "date": 0, "chat": chat,
                                              "from": user, "caption": "x", "document": {
                                                  "file_id": "f", "file_unique_id": "u",
                                                  "file_name": ["a"]}}}]:
        before = await counts(telegram.service)
        assert (await post_telegram(telegram, json.dumps(body).encode())).status_code == 400
        assert await counts(telegram.service) == before
    body = b'{"update_id": 1, "message": ' + DEEP + b"}"
    assert (await post_telegram(telegram, body)).status_code == 400


async def test_webchat_deeply_nested_json_gets_400(service: Service) -> None:
    async with app_client(service) as http:
        response = await http.post("/api/webchat/messages", content=DEEP,
                                   headers={"X-Webchat-Token": "t" * 32})
    assert response.status_code == 400


async def test_slack_unsigned_unreadable_payload_gets_401(slack: Site) -> None:
    form, json_type = "application/x-www-form-urlencoded", "application/json"
    for body, content_type in [("payload=%7B", form), ("payload=0", form), ("{", form),
                               ("payload=" + "%5B" * 100_000, form),
                               ('{"channel": false}', json_type)]:
        headers = signed_headers(body, content_type, secret="not-the-secret")
        response = await slack.http.post("/webhooks/slack/events", content=body.encode(),
                                         headers=headers)
        assert response.status_code == 401


async def test_slack_non_numeric_timestamp_gets_401(slack: Site) -> None:
    body = command_body("UALICE", "queue")
    for stamp in ("", "abc", "1e9", "NaN"):
        headers = {**signed_headers(body, "application/x-www-form-urlencoded"),
                   "X-Slack-Request-Timestamp": stamp}
        response = await slack.http.post("/webhooks/slack/events", content=body.encode(),
                                         headers=headers)
        assert response.status_code == 401


async def test_slack_signed_block_actions_without_actions_get_400(slack: Site) -> None:
    before = await counts(slack.service)
    for actions in ([], None, "take", [1], [{}], [{"action_id": 5}]):
        payload: dict[str, Any] = {"type": "block_actions", "user": {"id": "UALICE"}}
        if actions is not None:
            payload["actions"] = actions
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        response = await slack.http.post(
            "/webhooks/slack/events", content=body.encode(),
            headers=signed_headers(body, "application/x-www-form-urlencoded"))
        assert response.status_code == 400, actions
    assert await counts(slack.service) == before


async def test_slack_ids_and_names_too_long_for_their_columns(slack: Site) -> None:
    """A user id over 64 characters or an event id over 128 is not Slack's: ignored, never
    sent to the database to fail there. A long profile name is clipped to agents.name."""
    conversation_id, channel, ts = await seeded_thread(slack)
    before = await counts(slack.service)
    for user, event_id in (("U" * 65, "EvLong1"), ("UALICE", "Ev" + "x" * 130)):
        body = event_body(thread_message(user, "hello from nowhere", channel, ts,
                                         f"{time.time():.6f}"), event_id)
        response = await slack.http.post("/webhooks/slack/events", content=body.encode(),
                                         headers=signed_headers(body, "application/json"))
        assert response.status_code == 200
    assert await counts(slack.service) == before
    slack.stub.users["ULONGNAME"] = "Zed " + "z" * 300
    body = interaction_body("ULONGNAME", {"action_id": "take", "type": "button",
                                          "value": str(conversation_id)}, channel, ts)
    response = await slack.http.post("/webhooks/slack/events", content=body.encode(),
                                     headers=signed_headers(body,
                                                            "application/x-www-form-urlencoded"))
    assert response.status_code == 200
    async with slack.service.db.sessions() as session:
        name = await session.scalar(select(Agent.name).where(Agent.slack_user_id == "ULONGNAME"))
    assert name == ("Zed " + "z" * 300)[:200]


async def test_wechat_unknown_xml_encoding_gets_400(wechat: Site) -> None:
    body = b'<?xml version="1.0" encoding="bogus-42"?><xml></xml>'
    assert (await post_wechat(wechat, body)).status_code == 400


async def test_overlong_platform_fields_are_clipped_or_refused(telegram: Site) -> None:
    """Longer than their columns (display name 200, language hint 16, chat and external id
    128): PostgreSQL would refuse the row, and a 503 makes the platform retry for ever."""
    update = message_update("hello", chat_id=7400, sender={
        "id": 7400, "is_bot": False, "first_name": "a\x00" * 150 + "\ud800",
        "last_name": "b" * 100, "language_code": "en-US-x-" + "a" * 40})
    body = json.dumps(update).encode()
    assert (await post_telegram(telegram, body)).status_code == 200
    async with telegram.service.db.sessions() as session:
        contact = (await session.execute(select(Contact).where(Contact.chat == "7400"))
                   ).scalar_one()
    assert contact.display_name == "a" * 150 + "? " + "b" * 48  # clipped, not refused
    assert contact.language_hint == "en-US-x-aaaaaaaa"
    before = await counts(telegram.service)
    huge_chat = message_update("hello", chat_id=10 ** 130, sender={
        "id": 7401, "is_bot": False, "first_name": "Huge"})
    assert (await post_telegram(telegram, json.dumps(huge_chat).encode())).status_code == 400
    assert await counts(telegram.service) == before


async def test_overlong_wechat_ids_are_refused(wechat: Site) -> None:
    for body in (text_xml("o" * 129, "hello"), text_xml("o-long", "hello", msg_id=10 ** 130)):
        assert (await post_wechat(wechat, body.encode())).status_code == 400
    assert await counts(wechat.service) == dict.fromkeys((m.__name__ for m in STORED), 0)
    assert (await post_wechat(wechat, text_xml("o" * 128, "hello").encode())).status_code == 200


def test_import_deeply_nested_json_line() -> None:
    with pytest.raises(ImportError_):
        parse_text(DEEP.decode(), "jsonl")


def test_import_huge_csv_cell() -> None:
    with pytest.raises(ImportError_):
        parse_text("id,company\nC-1," + "x" * 200_000 + "\n", "csv")


def test_import_csv_with_lone_carriage_returns() -> None:
    with pytest.raises(ImportError_):
        parse_text("id,company\rC-1,Acme\r", "csv")


@pytest.mark.parametrize("value", ['"99999999999999999d"', '"9999999999999999999999h"'])
def test_config_huge_duration_is_a_config_error(tmp_path: Path, value: str) -> None:
    path = tmp_path / "supportbot.toml"
    path.write_text(f"[sla]\nfirst_response = {value}\n")
    with pytest.raises(ConfigError):
        load_settings(path)
