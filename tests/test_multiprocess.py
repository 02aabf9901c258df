"""Three real ``supportbot serve`` processes on ONE PostgreSQL database behave as one service.

The processes are started once for the module (at the same moment, on a database migrated
once with ``supportbot db upgrade``), with Telegram pointed at a local Bot API stand-in and
Slack at a local Web API stand-in, and the scheduler on in all three. Then:

* every Telegram update is delivered to one process and redelivered (same update_id) to
  another, some at the same instant: each message is stored once, answered once, and a
  chat's answers arrive in the order of its messages, whichever process sends them;
* agents click Take on one card through all three processes at once: one owner;
* an agent's thread reply (one Slack event id) reaches all three processes: relayed once;
* exactly one process holds the scheduler's advisory lock; killed (SIGKILL), exactly one
  of the two others takes over.

Two races these processes met (a processing/redelivery deadlock, agents written at a
simultaneous start) are also forced step by step in one process at the end.

PostgreSQL only (SQLite is for one process): skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import load_settings
from bot.db.database import Database
from bot.db.models import Agent, Contact, Conversation, Message, OutboxItem, OwnershipEvent
from bot.ownership import sync_agents
from bot.scheduler import LOCK_KEY
from bot.service import Service
from bot.types import InboundMessage
from tests.conftest import (
    BACKEND,
    PG_ADMIN_URL,
    RecordingChannel,
    _drop_pg_database,
    _new_pg_database,
    pg_reachable,
)
from tests.slack_stub import (
    BOT_TOKEN,
    SIGNING_SECRET,
    SlackStub,
    event_body,
    interaction_body,
    signed_headers,
    thread_message,
)
from tests.telegram_stub import TOKEN, WEBHOOK_SECRET, TelegramStub, message_update, user
from tests.test_serve import clean_env, free_port, supportbot_command

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

PROCESSES = 3
LOCK_RETRY_SECONDS = 0.3
START_LIMIT = 120.0  # three processes loading the language models on a small machine
T = TypeVar("T")

# Three messages per chat, each with an answer of its own (greeting, order question that
# asks for the e-mail, goodbye), so the order of a chat's answers is visible.
CONVERSATIONS = {
    "en": ("hello", "Where is my order PO-99117?", "thank you, bye"),
    "de": ("Hallo", "Wo ist meine Bestellung PO-99117?", "Danke, tschüss"),
    "es": ("hola", "¿Dónde está mi pedido PO-99117?", "gracias, adiós"),
    "fr": ("bonjour", "Où est ma commande PO-99117 ?", "merci, au revoir"),
    "zh": ("你好", "我的订单PO-99117在哪里？", "谢谢，再见"),
    "ru": ("привет", "Где мой заказ PO-99117?", "спасибо, до свидания"),
    "pt": ("Olá, bom dia", "Onde está o meu pedido PO-99117?", "obrigado, tchau"),
    "ar": ("مرحبا", "أين طلبي PO-99117؟", "شكرا، مع السلامة"),
}
CHATS = 30
FIRST_CHAT = 810_000


# --- the deployment: stand-ins, one database, three serve processes ---------------------------

@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@dataclass
class Deployment:
    servers: list[Server]
    db: Database
    telegram: TelegramStub
    slack: SlackStub
    http: httpx.AsyncClient

    def logs(self) -> str:
        return "\n".join(f"--- serve {s.process.pid} ({s.url}):\n{s.log()[-3000:]}"
                         for s in self.servers)

    async def telegram_update(self, server: Server, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(f"{server.url}/webhooks/telegram", content=json.dumps(body),
                                    headers={"Content-Type": "application/json",
                                             "X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET})

    async def slack_request(self, server: Server, body: str, content_type: str,
                            **headers: str) -> httpx.Response:
        return await self.http.post(f"{server.url}/webhooks/slack/events", content=body.encode(),
                                    headers={**signed_headers(body, content_type), **headers})

    async def metric(self, server: Server, name: str) -> float:
        response = await self.http.get(f"{server.url}/metrics")
        match = re.search(rf'^{name}\{{channel="telegram"\}} (\S+)$', response.text, re.M)
        return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def postgresql_run() -> None:
    if BACKEND != "postgresql":
        pytest.skip("several serve processes need PostgreSQL (SQLite is for one process "
                    "only): run with SUPPORTBOT_TEST_DATABASE=postgresql")
    if not pg_reachable():
        pytest.skip(f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string()}")


@pytest.fixture(scope="module")
def database_url(postgresql_run: None) -> Iterator[str]:
    """A fresh PostgreSQL database for the module's processes."""
    name = _new_pg_database()
    try:
        yield make_url(PG_ADMIN_URL).set(drivername="postgresql", database=name) \
            .render_as_string(hide_password=False)
    finally:
        _drop_pg_database(name)


async def wait_until(what: str, probe: Callable[[], Awaitable[T | None]], limit: float,
                     deployment: Deployment | None = None) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {limit:.0f} s"
                        + (f"\n{deployment.logs()}" if deployment else ""))
        await asyncio.sleep(0.05)


async def wait_healthy(servers: list[Server], http: httpx.AsyncClient) -> None:
    async def healthy(server: Server) -> bool:
        if server.process.poll() is not None:
            pytest.fail(f"serve exited with {server.process.returncode} before it was "
                        f"healthy:\n{server.log()}")
        try:
            return (await http.get(f"{server.url}/healthz", timeout=2.0)).status_code == 200
        except httpx.TransportError:
            return False

    async def all_healthy() -> bool:
        return all(await asyncio.gather(*(healthy(s) for s in servers)))

    deadline = time.monotonic() + START_LIMIT
    while not await all_healthy():
        if time.monotonic() > deadline:
            pytest.fail(f"serve processes not healthy within {START_LIMIT:.0f} s:\n"
                        + "\n".join(s.log()[-3000:] for s in servers))
        await asyncio.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(database_url: str, tmp_path_factory: pytest.TempPathFactory,
                     ) -> AsyncIterator[Deployment]:
    workdir = tmp_path_factory.mktemp("multiprocess")
    telegram, slack = TelegramStub(), SlackStub()
    servers: list[Server] = []
    db = Database(make_url(database_url).set(drivername="postgresql+asyncpg")
                  .render_as_string(hide_password=False))
    try:
        await telegram.start()
        await slack.start()
        env = clean_env(
            SUPPORTBOT_DATABASE__URL=database_url,
            SUPPORTBOT_TELEGRAM__TOKEN=TOKEN,
            SUPPORTBOT_TELEGRAM__WEBHOOK_SECRET=WEBHOOK_SECRET,
            SUPPORTBOT_TELEGRAM__API_BASE_URL=telegram.base_url,
            SUPPORTBOT_SLACK__BOT_TOKEN=BOT_TOKEN,
            SUPPORTBOT_SLACK__SIGNING_SECRET=SIGNING_SECRET,
            SUPPORTBOT_SLACK__API_BASE_URL=slack.base_url,
            SUPPORTBOT_SLACK__AGENTS_CHANNEL="#support",
            # Configured agents: every process writes them at start, all at the same moment.
            SUPPORTBOT_AGENTS__alice__NAME="Alice Wang",
            SUPPORTBOT_AGENTS__alice__SLACK_USER_ID="UALICE",
            SUPPORTBOT_AGENTS__bob__NAME="Bob Li",
            SUPPORTBOT_AGENTS__bob__SLACK_USER_ID="UBOB",
            SUPPORTBOT_AFTER_HOURS__ENABLED="false",
            SUPPORTBOT_SCHEDULER__ENABLED="true",
            SUPPORTBOT_SCHEDULER__LOCK_RETRY_SECONDS=str(LOCK_RETRY_SECONDS),
        )
        upgrade = await asyncio.create_subprocess_exec(
            *supportbot_command(), "db", "upgrade", cwd=workdir, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(upgrade.communicate(), 60)
        assert upgrade.returncode == 0, output.decode(errors="replace")
        for n in range(PROCESSES):
            port = free_port()
            stderr = workdir / f"serve-{n}.log"
            with stderr.open("wb") as err:
                process = subprocess.Popen(
                    [*supportbot_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                    cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=err)
            servers.append(Server(process, f"http://127.0.0.1:{port}", stderr))
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
            await wait_healthy(servers, http)
            yield Deployment(servers, db, telegram, slack, http)
    finally:
        for server in servers:
            stop(server.process)
        await db.dispose()
        await telegram.stop()
        await slack.stop()
    for server in servers:
        assert "Traceback" not in server.log(), server.log()


# --- what the shared database and the stand-ins say -------------------------------------------

async def pending_outbox(deployment: Deployment) -> int:
    async with deployment.db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxItem).where(
            OutboxItem.status == "pending")) or 0)


async def outbox_settled(deployment: Deployment, limit: float = 30.0) -> None:
    """Every queued row sent (or failed), and the stand-ins have seen every send."""
    async def settled() -> bool:
        return await pending_outbox(deployment) == 0
    await wait_until("the outbox drains", settled, limit, deployment)
    async with deployment.db.sessions() as session:
        failed = (await session.execute(select(OutboxItem.channel, OutboxItem.chat,
                                               OutboxItem.last_error).where(
            OutboxItem.status != "sent"))).all()
    assert failed == [], failed


async def conversation_of(deployment: Deployment, chat: str) -> Conversation | None:
    async with deployment.db.sessions() as session:
        return (await session.execute(select(Conversation).where(
            Conversation.channel == "telegram", Conversation.chat == chat)
            .order_by(Conversation.id.desc()))).scalars().first()


def chat_sends(stub: TelegramStub, chat: str) -> list[str]:
    """Every sendMessage the stand-in received for ``chat`` (accepted or not), in order."""
    return [str(args["text"]) for args in stub.calls_to("sendMessage")
            if str(args.get("chat_id")) == chat]


# --- 1. inbound once, reply once, in order ------------------------------------------------------

async def test_each_update_is_stored_once_and_answered_once_in_order(
        deployment: Deployment) -> None:
    servers = deployment.servers
    languages = list(CONVERSATIONS)
    stored_before = [await deployment.metric(s, "supportbot_inbound_messages_total")
                     for s in servers]
    duplicates_before = [await deployment.metric(s, "supportbot_inbound_duplicates_total")
                         for s in servers]
    sent: dict[str, list[str]] = defaultdict(list)  # chat -> external ids, in sending order
    statuses: list[int] = []

    async def customer(n: int) -> None:
        chat_id = FIRST_CHAT + n
        lang = languages[n % len(languages)]
        sender = user(chat_id, f"Buyer{n}", "Test", lang)
        for k, words in enumerate(CONVERSATIONS[lang]):
            delivery = message_update(words, chat_id=chat_id, sender=sender)
            sent[str(chat_id)].append(f"update:{delivery['update_id']}")
            first, again = servers[(n + k) % PROCESSES], servers[(n + k + 1) % PROCESSES]
            if (n + k) % 2 == 0:  # the redelivery arrives while the first is under way
                answers = list(await asyncio.gather(deployment.telegram_update(first, delivery),
                                                    deployment.telegram_update(again, delivery)))
            else:  # the redelivery comes after the first was answered
                answers = [await deployment.telegram_update(first, delivery),
                           await deployment.telegram_update(again, delivery)]
            statuses.extend(a.status_code for a in answers)

    await asyncio.gather(*(customer(n) for n in range(CHATS)))
    assert Counter(statuses) == {200: 2 * 3 * CHATS}, (Counter(statuses), deployment.logs())
    await outbox_settled(deployment)

    chats = sorted(sent)
    async with deployment.db.sessions() as session:
        inbound = (await session.execute(
            select(Message.id, Message.external_id, Message.processed_at, Contact.chat)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(Contact, Contact.id == Conversation.contact_id)
            .where(Message.direction == "in", Contact.chat.in_(chats)))).all()
        replies = (await session.execute(
            select(OutboxItem.in_reply_to, OutboxItem.status, OutboxItem.payload)
            .where(OutboxItem.channel == "telegram", OutboxItem.chat.in_(chats))
            .order_by(OutboxItem.id))).all()
    # Stored exactly once each, all processed.
    stored = Counter(row.external_id for row in inbound)
    assert stored == Counter(e for ids in sent.values() for e in ids), stored
    assert all(row.processed_at is not None for row in inbound)
    # Exactly one reply queued per message, and sent.
    by_message = {row.id: row for row in inbound}
    answered = Counter(row.in_reply_to for row in replies)
    assert set(answered) == set(by_message) and set(answered.values()) == {1}, answered
    assert {row.status for row in replies} == {"sent"}
    # At the stand-in: exactly those replies, once each, per chat in the order of the messages.
    reply_text = {by_message[row.in_reply_to].external_id: row.payload["text"] for row in replies}
    for chat in chats:
        expected = [reply_text[external_id] for external_id in sent[chat]]
        assert len(set(expected)) == 3, expected  # three different answers: order is visible
        assert chat_sends(deployment.telegram, chat) == expected, chat
    # The work really was shared: every process stored some messages and recognised some
    # redeliveries, and together exactly one store and one duplicate per update.
    stored_by = [await deployment.metric(s, "supportbot_inbound_messages_total") - before
                 for s, before in zip(servers, stored_before, strict=True)]
    duplicates_by = [await deployment.metric(s, "supportbot_inbound_duplicates_total") - before
                     for s, before in zip(servers, duplicates_before, strict=True)]
    assert sum(stored_by) == sum(duplicates_by) == 3 * CHATS, (stored_by, duplicates_by)
    assert all(stored_by) and all(duplicates_by), (stored_by, duplicates_by)


# --- 2. one owner; one Slack event acted on once -----------------------------------------------

def take_button(conversation_id: int) -> dict[str, Any]:
    return {"action_id": "take", "type": "button", "value": str(conversation_id),
            "block_id": f"card-{conversation_id}"}


async def test_simultaneous_takes_through_all_processes_give_one_owner(
        deployment: Deployment) -> None:
    servers, slack, telegram = deployment.servers, deployment.slack, deployment.telegram
    chat_id = 820_001
    chat = str(chat_id)
    handoff = message_update("Ich brauche einen Mitarbeiter", chat_id=chat_id,
                             sender=user(chat_id, "Jonas", "Meyer", "de"))
    answers = await asyncio.gather(deployment.telegram_update(servers[0], handoff),
                                   deployment.telegram_update(servers[1], handoff))
    assert [a.status_code for a in answers] == [200, 200]

    async def carded() -> Conversation | None:
        found = await conversation_of(deployment, chat)
        return found if found is not None and found.slack_thread_ts else None
    conversation = await wait_until("the hand-off card is posted", carded, 30, deployment)
    await outbox_settled(deployment)
    assert conversation.status == "handed_off" and conversation.owner_id is None
    cards = [c for c in slack.calls_to("chat.postMessage")
             if "blocks" in c and "thread_ts" not in c and chat in json.dumps(c["blocks"])]
    assert len(cards) == 1, cards  # one card, though the hand-off reached two processes
    channel, ts = str(conversation.slack_channel), str(conversation.slack_thread_ts)

    agents = [f"URACE{n:02d}" for n in range(30)]
    for n, agent in enumerate(agents):
        slack.users[agent] = f"Agent {n:02d}"
    ephemerals_before = len(slack.calls_to("chat.postEphemeral"))
    updates_before = len(slack.calls_to("chat.update"))
    told_before = len(chat_sends(telegram, chat))
    responses = await asyncio.gather(*(
        deployment.slack_request(
            servers[n % PROCESSES],
            interaction_body(agent, take_button(conversation.id), channel, ts),
            "application/x-www-form-urlencoded")
        for n, agent in enumerate(agents)))
    assert [r.status_code for r in responses] == [200] * len(agents), deployment.logs()

    async with deployment.db.sessions() as session:
        taken = await session.get(Conversation, conversation.id)
        owner = await session.get(Agent, taken.owner_id) if taken and taken.owner_id else None
        takes = (await session.execute(select(OwnershipEvent.ok, Agent.slack_user_id)
                                       .join(Agent, Agent.id == OwnershipEvent.agent_id)
                                       .where(OwnershipEvent.conversation_id == conversation.id,
                                              OwnershipEvent.action == "take"))).all()
    assert taken is not None and taken.status == "owned"
    assert owner is not None and owner.slack_user_id in agents
    winner = owner.slack_user_id
    assert sorted(takes) == sorted((agent == winner, agent) for agent in agents)
    # Everyone else was told, privately and once, who owns it; the winner was told nothing.
    refusals = slack.calls_to("chat.postEphemeral")[ephemerals_before:]
    assert Counter(r["user"] for r in refusals) == {a: 1 for a in agents if a != winner}
    assert all(f"owned by {owner.ref}" in r["text"] for r in refusals), refusals
    # The card shows the one owner, whichever process refreshed it.
    card_updates = [u for u in slack.calls_to("chat.update")[updates_before:] if u["ts"] == ts]
    assert card_updates, "the card was not refreshed"
    for card in card_updates:
        shown = set(re.findall(r"<@(URACE\d\d)>", json.dumps(card["blocks"])))
        assert shown == {winner}, shown
    # The customer learns once who helps them.
    await outbox_settled(deployment)
    told = chat_sends(telegram, chat)[told_before:]
    assert len(told) == 1 and owner.name and owner.name in told[0], told

    # The owner's reply in the thread: one Slack event id, delivered to every process at
    # once (Slack retrying after a timeout, a load balancer sending it twice).
    reply = "Guten Tag, ich kümmere mich darum."
    body = event_body(thread_message(winner, reply, channel, ts, "1800000000.000100"),
                      "EvMultiProcess1")
    responses = await asyncio.gather(*(
        deployment.slack_request(server, body, "application/json",
                                 **({"X-Slack-Retry-Num": str(n),
                                     "X-Slack-Retry-Reason": "http_timeout"} if n else {}))
        for n, server in enumerate(servers)))
    assert [r.status_code for r in responses] == [200] * PROCESSES

    async def relayed() -> bool:
        return reply in chat_sends(telegram, chat)
    await wait_until("the owner's reply reaches the customer", relayed, 30, deployment)
    await outbox_settled(deployment)
    assert chat_sends(telegram, chat).count(reply) == 1
    async with deployment.db.sessions() as session:
        keys = (await session.execute(text(
            "SELECT key FROM processed_events WHERE key LIKE '%EvMultiProcess1%'"))).scalars().all()
        relays = await session.scalar(select(func.count()).select_from(Message).where(
            Message.conversation_id == conversation.id, Message.text == reply))
    assert keys == ["slack:EvMultiProcess1"] and relays == 1


# --- 3. one scheduler ----------------------------------------------------------------------------

def tcp_socket_inodes_by_local_port() -> dict[int, str]:
    """Local port -> socket inode, for this host's TCP connections to port 5432."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(remote.rsplit(":", 1)[1], 16) == 5432:
                    found[int(local.rsplit(":", 1)[1], 16)] = inode
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    return inodes


async def lock_holders(deployment: Deployment) -> list[int]:
    """The serve processes (pids) whose database connection holds the scheduler's
    advisory lock on this database, read from pg_locks and pg_stat_activity."""
    async with deployment.db.engine.connect() as connection:
        ports = (await connection.execute(text(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = :high AND l.objid::bigint = :low AND l.objsubid = 1"),
            {"high": LOCK_KEY >> 32, "low": LOCK_KEY & 0xFFFF_FFFF})).scalars().all()
    by_port = tcp_socket_inodes_by_local_port()
    holders = []
    for port in ports:
        inode = by_port.get(int(port)) if port is not None else None
        owners = [s.process.pid for s in deployment.servers
                  if s.process.poll() is None and inode in socket_inodes(s.process.pid)]
        assert len(owners) == 1, (port, inode, owners)  # held by one of our processes
        holders.extend(owners)
    return holders


async def test_exactly_one_process_runs_the_scheduler_and_another_takes_over(
        deployment: Deployment) -> None:
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("needs Linux's /proc to tell which process holds the lock")
    servers = deployment.servers

    async def one_holder() -> list[int] | None:
        holders = await lock_holders(deployment)
        assert len(holders) <= 1, holders
        return holders or None

    [leader_pid] = await wait_until("a process takes the scheduler's lock", one_holder, 30,
                                    deployment)
    leader = next(s for s in servers if s.process.pid == leader_pid)
    others = [s for s in servers if s is not leader]
    # Only the leader says it runs the jobs; the lock stays where it is.
    assert f"(pid {leader_pid}) runs the jobs" in leader.log()
    assert all("runs the jobs" not in s.log() for s in others)
    deadline = time.monotonic() + 3 * LOCK_RETRY_SECONDS  # the others retry meanwhile
    while time.monotonic() < deadline:
        assert await lock_holders(deployment) == [leader_pid]
        await asyncio.sleep(0.05)

    leader.process.send_signal(signal.SIGKILL)  # dies without releasing anything
    leader.process.wait(timeout=10)
    killed = time.monotonic()
    [successor_pid] = await wait_until("another process takes over", one_holder, 30, deployment)
    takeover = time.monotonic() - killed
    assert successor_pid in {s.process.pid for s in others}
    successor = next(s for s in others if s.process.pid == successor_pid)
    bystander = next(s for s in others if s is not successor)
    assert takeover < 10 * LOCK_RETRY_SECONDS + 2, takeover

    async def announced() -> bool:
        return f"(pid {successor_pid}) runs the jobs" in successor.log()
    await wait_until("the successor logs that it runs the jobs", announced, 10, deployment)
    assert "runs the jobs" not in bystander.log()
    assert await lock_holders(deployment) == [successor_pid]
    # The survivors still serve: a message through the bystander is answered.
    chat_id = 830_001
    response = await deployment.telegram_update(bystander, message_update(
        "hello", chat_id=chat_id, sender=user(chat_id, "Ann", "Lee", "en")))
    assert response.status_code == 200
    await outbox_settled(deployment)
    assert len(chat_sends(deployment.telegram, str(chat_id))) == 1


# --- the two races these tests found, pinned down in one process ------------------------------
# With real processes they show only under some timings; here each is forced step by step.

async def lock_waiters(db: Database) -> int:
    """Sessions of this database waiting for a row or transaction lock."""
    async with db.engine.connect() as connection:
        return int(await connection.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")) or 0)


async def test_processing_and_a_redelivery_being_stored_do_not_deadlock(
        postgresql_run: None, postgres_url: str) -> None:
    """A redelivery's store (another process) holds the conversation row and inserts a row
    with the same (channel, external_id) while the first process is about to process the
    message. Processing takes the conversation before it claims the message, so the
    insert fails at once as a duplicate; claiming first deadlocked the two (503s)."""
    settings = load_settings(None, database={"url": postgres_url}, after_hours={"enabled": False})
    service = await Service.start(settings, migrate=True,
                                  channels={"telegram": RecordingChannel("telegram")})
    try:
        await service.pipeline.handle(InboundMessage(
            channel="telegram", chat="840001", text="hello", external_id="update:1"))
        inbound = InboundMessage(channel="telegram", chat="840001", external_id="update:2",
                                 text="Where is my order PO-99117?")
        received = await service.pipeline.receive(inbound)
        now = service.clock.now()
        async with service.db.engine.connect() as other:
            await other.begin()
            # The other process's receive: no duplicate seen yet, the conversation updated.
            await other.execute(update(Conversation).where(
                Conversation.id == received.conversation_id).values(last_inbound_at=now))
            processing = asyncio.create_task(service.pipeline.process(received.message_id))

            async def blocked() -> bool:
                return await lock_waiters(service.db) > 0
            await wait_until("processing waits for the conversation", blocked, 10)
            # ... then its insert of the same delivery: a duplicate, at once.
            async with AsyncSession(bind=other) as session:
                session.add(Message(conversation_id=received.conversation_id, direction="in",
                                    sender="customer", channel="telegram",
                                    external_id="update:2", text=inbound.text, created_at=now))
                with pytest.raises(IntegrityError):
                    await asyncio.wait_for(session.flush(), 10)
            await other.rollback()
        processed = await asyncio.wait_for(processing, 10)
        assert processed.understanding is not None and len(processed.replies) == 1
    finally:
        await service.close()


async def test_processes_starting_at_once_write_the_configured_agents_once(
        postgresql_run: None, postgres_url: str) -> None:
    """Every process writes ``[agents]`` at start. Two starting at once on a database
    without those rows: the second waits for the first's insert, then uses its row (it
    used to fail with a unique violation, and the process did not start)."""
    settings = load_settings(None, database={"url": postgres_url},
                             agents={"alice": {"name": "Alice Wang", "slack_user_id": "UALICE"}})
    first, second = Database(postgres_url), Database(postgres_url)
    try:
        await first.upgrade()
        async with first.sessions() as one, second.sessions() as two:
            await one.begin()
            await sync_agents(one, settings.agents, datetime.now(UTC))  # inserted, not committed
            await two.begin()
            starting = asyncio.create_task(sync_agents(two, settings.agents, datetime.now(UTC)))

            async def blocked() -> bool:
                return await lock_waiters(first) > 0
            await wait_until("the second start waits for the first's insert", blocked, 10)
            await one.commit()
            await asyncio.wait_for(starting, 10)
            await two.commit()
        async with first.sessions() as session:
            agents = (await session.execute(select(Agent.ref, Agent.name,
                                                   Agent.slack_user_id))).all()
        assert [tuple(a) for a in agents] == [("alice", "Alice Wang", "UALICE")]
    finally:
        await first.dispose()
        await second.dispose()
