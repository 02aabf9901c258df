"""Load: real ``supportbot serve`` processes, Telegram webhooks in, replies out to a local Bot API.

For each configuration (default: SQLite with 1 process, PostgreSQL with 1 and with 3
processes on one database, each process on its own port, requests spread round-robin)
the benchmark starts the processes on 127.0.0.1 with Telegram pointed at a Bot API
stand-in of its own (a separate process that records when each chat's ``sendMessage``
arrives), the after-hours notice and the scheduler off, warms them up, then runs
``--messages`` webhook updates per process, from many chats (five messages per chat, each
chat greeting in one of the eight languages, so every message gets exactly one reply):

* **saturated**: ``--concurrency`` requests in flight per process, as fast as the
  processes take them: the capacity;
* **paced**: at each of ``--rates`` updates per process per second (open loop: requests
  leave on schedule whether or not earlier ones finished, and their times count from
  when they were due), then at 70 % of the capacity just measured.

Printed per run: messages per second end to end (first request sent → last reply at the
stand-in), p50/p99 from request sent to reply received, p50/p99 of the webhook's HTTP
answer (the message stored and processed, replies queued), peak RSS (VmHWM) and CPU time
per message of each serve process, and the CPU per message spent elsewhere on the machine
(PostgreSQL, the load generator, the stand-in); after the runs, the bare database cost on
the same database (one INSERT + COMMIT per message in a tight loop through the app's
engine) and the ratio end-to-end time per message and process / bare; at the end, unless
``--breakdown 0``, the same pipeline in this process without HTTP, per stage, then two
parts apart: the webhook's HTTP handling with the pipeline stubbed out, and the outbox's
``serve`` loop delivering to a channel that answers in 1 ms (4 and 16 sends in flight).
``--profile`` samples the first process with py-spy during the saturated run and says
where its time goes; ``--check`` exits 1 when a message went without reply or got two.
``--outbox-concurrency N`` sets the processes' ``[outbox] concurrency`` (sends in flight;
default: the configuration's default) to see how much delivery holds the capacity back.

The harness shares the CPUs with what it measures, so it is kept cheap: the load
generator sends request bodies rendered to bytes beforehand with prebuilt headers through
one aiohttp session on kept-alive connections and looks at just the answers' status, and
the stand-in is an aiohttp web server with a single handler.

    python bench/load_bench.py [--configs sqlite:1,postgresql:1,postgresql:3]
        [--messages 1000] [--rates 300] [--concurrency 16] [--breakdown 300]
        [--bare-rounds 3000] [--profile [--profile-out FILE]] [--check] [--no-postgres]
        [--outbox-concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "123456:BENCH-token_abcdefghijklmnopqrstuvwxyz"
SECRET = "bench-webhook-secret"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# One greeting per language: each gets exactly one reply (the after-hours notice is off).
GREETINGS = [("en", "hello"), ("de", "Hallo"), ("es", "hola"), ("fr", "bonjour"),
             ("zh", "你好"), ("ru", "привет"), ("pt", "olá"), ("ar", "مرحبا")]
MESSAGES_PER_CHAT = 5


# --- the Telegram Bot API stand-in (its own process) -------------------------------------------

GET_ME = json.dumps({"ok": True, "result": {
    "id": 123456, "is_bot": True, "first_name": "Bench", "username": "bench_bot",
    "can_join_groups": True, "can_read_all_group_messages": False,
    "supports_inline_queries": False}}).encode()


def stand_in_main() -> None:
    """``load_bench.py --stand-in``: answer getMe and sendMessage like the Bot API, record
    the arrival time (time.monotonic, system-wide on Linux) of every sendMessage per chat,
    serve the records on GET /_records (``?full=1``: the times per chat), forget them on
    POST /_reset. Prints its port on stdout.

    An aiohttp web server with a single handler for every path. A sendMessage body is read
    as the form (application/x-www-form-urlencoded: what python-telegram-bot sends without
    files) or as JSON, by its Content-Type."""
    from urllib.parse import parse_qsl

    from aiohttp import web

    received: dict[str, list[float]] = defaultdict(list)
    count = 0
    ids = itertools.count(1)

    def answer(body: bytes, status: int = 200) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    def bad_request(description: str) -> web.Response:
        return answer(json.dumps({"ok": False, "error_code": 400,
                                  "description": f"Bad Request: {description}"}).encode(), 400)

    async def send_message(request: web.Request, arrived: float) -> web.Response:
        nonlocal count
        body = await request.read()
        try:
            if request.content_type == "application/x-www-form-urlencoded":
                form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
            elif request.content_type == "application/json":
                form = json.loads(body)
            else:
                return bad_request("the stand-in reads form or JSON bodies, not "
                                   + request.headers.get("Content-Type", "none"))
            chat = str(form.get("chat_id"))
            reply = json.dumps({"ok": True, "result": {
                "message_id": next(ids), "date": int(time.time()),
                "chat": {"id": int(chat), "type": "private"},
                "text": str(form.get("text"))}}).encode()
        except (ValueError, TypeError, AttributeError) as exc:  # a body it cannot read
            return bad_request(str(exc))
        received[chat].append(arrived)
        count += 1
        return answer(reply)

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        arrived = time.monotonic()
        path = request.path
        if path.startswith("/bot"):
            api_method = path.rpartition("/")[2]
            if api_method == "sendMessage":
                return await send_message(request, arrived)
            if api_method == "getMe":
                return answer(GET_ME)
            return answer(b'{"ok":true,"result":true}')
        if path == "/_records":
            full = "full" in request.query
            return answer(json.dumps({"count": count, "chats": received if full else {}}).encode())
        if path == "/_reset" and request.method == "POST":
            received.clear()
            count = 0
            return answer(b'{"ok":true}')
        return answer(b'{"ok":false,"error_code":404,"description":"Not Found"}', 404)

    async def run() -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", handle)  # one handler for everything
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


class StandIn:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--stand-in"],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# --- serve processes ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def supportbot() -> list[str]:
    script = Path(sys.executable).with_name("supportbot")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bot.cli"]


def serve_env(database_url: str, stand_in: str,
              outbox_concurrency: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    if outbox_concurrency is not None:
        env["SUPPORTBOT_OUTBOX__CONCURRENCY"] = str(outbox_concurrency)
    env.update({
        "SUPPORTBOT_DATABASE__URL": database_url,
        "SUPPORTBOT_TELEGRAM__TOKEN": TOKEN,
        "SUPPORTBOT_TELEGRAM__WEBHOOK_SECRET": SECRET,
        "SUPPORTBOT_TELEGRAM__API_BASE_URL": stand_in,
        "SUPPORTBOT_AFTER_HOURS__ENABLED": "false",
        "SUPPORTBOT_SCHEDULER__ENABLED": "false",
    })
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def status(self, key: str) -> int:
        """A /proc/<pid>/status figure in kB (VmHWM: peak resident set)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        return process_cpu(self.process.pid)


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL server process on this machine, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found[int(entry.name)] = process_cpu(int(entry.name))
    return found


def postgres_cpu_since(before: dict[int, float]) -> float:
    """PostgreSQL CPU seconds since ``before`` (backends that exited meanwhile are lost,
    and other databases' work on the same server is included)."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in postgres_cpu().items())


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / ticks, sum(values) / ticks


def start_servers(count: int, env: dict[str, str], folder: Path) -> list[Server]:
    servers = []
    for n in range(count):
        port = free_port()
        log = folder / f"serve-{n}.log"
        process = subprocess.Popen(
            [*supportbot(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        servers.append(Server(process, f"http://127.0.0.1:{port}", log))
    import httpx

    deadline = time.monotonic() + 90
    for server in servers:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"serve exited with {server.process.returncode}:\n"
                                   f"{server.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not become healthy within 90 s")
            time.sleep(0.2)
    return servers


def stop_servers(servers: list[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# --- load --------------------------------------------------------------------------------------

def update(update_id: int, chat_id: int) -> dict[str, Any]:
    lang, text = GREETINGS[chat_id % len(GREETINGS)]
    sender = {"id": chat_id, "is_bot": False, "first_name": "Buyer", "language_code": lang}
    return {"update_id": update_id, "message": {
        "message_id": update_id % 1_000_000, "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private", "first_name": "Buyer"},
        "from": sender, "text": text}}


@dataclass
class RunResult:
    label: str
    sent: int
    replies: int = 0
    missing: int = 0
    extra: int = 0
    throughput: float = 0.0
    send_rate: float = 0.0
    e2e: list[float] = field(default_factory=list)
    http: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: list[float] = field(default_factory=list)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def stand_in_call(session: aiohttp.ClientSession, stand_in: str, method: str,
                        path: str) -> Any:
    """One call to the stand-in's own endpoints."""
    async with session.request(method, stand_in + path) as response:
        if response.status != 200:
            raise RuntimeError(f"stand-in {method} {path}: HTTP {response.status} "
                               f"{(await response.read())[:200]!r}")
        return await response.json()


async def send_load(servers: list[Server], stand_in: str, *, first_update: int,
                    first_chat: int, total: int, rate: float | None, concurrency: int,
                    label: str) -> RunResult:
    """Send ``total`` updates (paced at ``rate`` per second overall, or ``concurrency``
    in flight per process), wait for the replies, match them to the requests per chat (a
    chat's replies arrive in order, one per message).

    The generator has to stay cheap next to the processes it measures on the same CPUs:
    one aiohttp session on kept-alive connections, every request body rendered to bytes
    and the headers built before the clock starts, nothing of the answers but their
    status looked at (httpx costs about four times as much CPU per request)."""
    chats = max(1, total // MESSAGES_PER_CHAT)
    while chats % len(servers) == 0 and len(servers) > 1:
        chats += 1  # a chat's messages reach different processes, as behind a balancer
    result = RunResult(label, total)
    sent_at: dict[int, list[float]] = defaultdict(list)
    chat_of = [first_chat + i % chats for i in range(total)]
    bodies = [json.dumps(update(first_update + i, chat_of[i])).encode() for i in range(total)]
    urls = [server.url + "/webhooks/telegram" for server in servers]
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}

    # Per process: the requests in flight of the saturated run, plus a share of 64 more
    # connections for the paced runs (requests beyond them wait for one, first come first
    # served; their time still counts from when they were due). Idle connections are let
    # go after 4 s, before uvicorn's keep-alive timeout (5 s) closes one under a request.
    # No limit on the wait for a connection; 60 s to connect, 60 s for an answer.
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=concurrency + max(1, 64 // len(servers)), keepalive_timeout=4)
    session = aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60))

    async def send(i: int, started: float) -> None:
        chat = chat_of[i]
        sent_at[chat].append(started)
        try:
            async with session.post(urls[i % len(urls)], data=bodies[i],
                                    headers=headers) as response:
                await response.read()  # small; read to the end, the connection is reused
                failure = None if response.status == 200 else f"HTTP {response.status}"
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError included
            failure = type(exc).__name__
        result.http.append(time.monotonic() - started)
        if failure is not None:  # not stored: Telegram would resend it; no reply comes
            result.errors[failure] += 1
            sent_at[chat].remove(started)

    tasks: list[asyncio.Task[None]] = []
    try:
        await stand_in_call(session, stand_in, "POST", "/_reset")
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        if rate:  # open loop: each request leaves when due, however the earlier ones fare
            for i in range(total):
                scheduled = began + i / rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(loop.create_task(send(i, scheduled)))
            issued = time.monotonic()
            await asyncio.gather(*tasks)
        else:  # each answered request makes way for the next, round-robin over processes
            upcoming = iter(range(total))

            async def worker() -> None:
                for i in upcoming:
                    await send(i, time.monotonic())

            tasks += [loop.create_task(worker())
                      for _ in range(min(total, concurrency * len(servers)))]
            await asyncio.gather(*tasks)
            issued = time.monotonic()
        result.send_rate = total / max(1e-9, issued - began)
        expected = sum(len(times) for times in sent_at.values())

        deadline = time.monotonic() + 900
        quiet_since, seen = time.monotonic(), -1
        while time.monotonic() < deadline:
            count = (await stand_in_call(session, stand_in, "GET", "/_records"))["count"]
            if count >= expected:
                break
            if count != seen:
                quiet_since, seen = time.monotonic(), count
            elif time.monotonic() - quiet_since > 15:
                break  # nothing new for 15 s: the rest is not coming
            await asyncio.sleep(0.1)
        records = await stand_in_call(session, stand_in, "GET", "/_records?full=1")
    finally:
        for task in tasks:
            task.cancel()
        await session.close()
    last_reply = began
    for chat, times in sent_at.items():
        replies = sorted(records["chats"].get(str(chat), []))
        result.missing += max(0, len(times) - len(replies))
        result.extra += max(0, len(replies) - len(times))
        for request, reply in zip(sorted(times), replies, strict=False):
            result.e2e.append(reply - request)
            last_reply = max(last_reply, reply)
    result.replies = records["count"]
    result.throughput = len(result.e2e) / max(1e-9, last_reply - began)
    return result


async def warm_up(servers: list[Server], stand_in: str) -> None:
    """A few messages per process first: connection pools, caches, the first queries."""
    await send_load(servers, stand_in, first_update=1, first_chat=1_000_000,
                    total=20 * len(servers), rate=None, concurrency=4, label="warm-up")


# --- the bare database cost ----------------------------------------------------------------

async def bare_insert_ms(database_url: str, rounds: int) -> float:
    """One INSERT + COMMIT per message, in a tight loop, through the app's own engine (same
    driver, pool and SQLite pragmas), into a scratch table of the same database."""
    from datetime import UTC, datetime

    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

    from bot.db.database import Database

    metadata = MetaData()
    table = Table("bench_bare_insert", metadata, Column("id", Integer, primary_key=True),
                  Column("chat", String(128)), Column("text", Text),
                  Column("created_at", DateTime))
    from bot.config import DatabaseSettings

    db = Database(DatabaseSettings(url=database_url).url)  # the async driver, as serve's
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        statement = table.insert()
        for _ in range(20):  # warm the pool and the statement cache
            async with db.engine.begin() as conn:
                await conn.execute(statement, {"chat": "warm", "text": "hello",
                                               "created_at": datetime.now(UTC).replace(tzinfo=None)})
        started = time.perf_counter()
        for n in range(rounds):
            async with db.engine.begin() as conn:
                await conn.execute(statement, {"chat": f"tg-{n}", "text": "hello",
                                               "created_at": datetime.now(UTC).replace(tzinfo=None)})
        elapsed = time.perf_counter() - started
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
    finally:
        await db.dispose()
    return elapsed / rounds * 1000


# --- profile -----------------------------------------------------------------------------------

CATEGORIES = [  # leaf first: a sample counts for the innermost frame that matches
    ("SQLite driver (aiosqlite, sqlite3)", ("aiosqlite", "sqlite3")),
    ("PostgreSQL driver (asyncpg)", ("asyncpg",)),
    ("SQLAlchemy ORM/Core", ("sqlalchemy",)),
    ("understanding (intents, lingua, rapidfuzz)", ("/intents/", "lingua", "rapidfuzz",
                                                    "langdetect")),
    ("HTTP server (uvicorn, starlette, fastapi)", ("uvicorn", "starlette", "fastapi", "h11",
                                                   "httptools")),
    ("Telegram client (python-telegram-bot, httpx)", ("/telegram/", "httpx", "httpcore")),
    ("pydantic", ("pydantic",)),
    ("logging", ("/logging/",)),
    ("supportbot code (bot/, handlers/)", ("/bot/", "/handlers/", "/knowledge/")),
    ("asyncio event loop", ("/asyncio/",)),
]


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).is_file():
        print("  (profile skipped: py-spy not installed; pip install py-spy)")
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate",
                             "250", "--gil", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(out: Path) -> list[str]:
    shares: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaves[frames[-1]] += count
        category = "other (stdlib, json, ...)"
        for frame in reversed(frames):
            match = next((name for name, needles in CATEGORIES
                          if any(n in frame for n in needles)), None)
            if match is not None:
                category = match
                break
        shares[category] += count
    if not total:
        return ["  (no samples)"]
    lines = [f"  where the first process's CPU goes (py-spy --gil, {total} samples of the "
             "thread holding the GIL, innermost matching frame):"]
    lines += [f"    {count / total:6.1%}  {name}" for name, count in shares.most_common()]
    lines.append("  hottest leaf frames:")
    lines += [f"    {count / total:6.1%}  {frame[:110]}" for frame, count in
              leaves.most_common(8)]
    return lines


# --- configurations ------------------------------------------------------------------------

async def create_pg_database(admin: str) -> tuple[str, str]:
    import asyncpg

    name = f"supportbot_load_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(admin, timeout=5)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base = admin.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


async def drop_pg_database(admin: str, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def row(result: RunResult, rss_mb: list[float], cpu_ms: list[float]) -> str:
    problems = []
    if result.missing:
        problems.append(f"{result.missing} without reply")
    if result.extra:
        problems.append(f"{result.extra} extra replies")
    problems += [f"{n} × {what}" for what, n in result.errors.items()]
    return (f"  {result.label:<16} {result.sent:>6} {result.send_rate:>7.0f} "
            f"{result.throughput:>7.0f} {1000 * percentile(result.e2e, 0.5):>8.0f} "
            f"{1000 * percentile(result.e2e, 0.99):>8.0f} "
            f"{1000 * percentile(result.http, 0.5):>8.0f} "
            f"{1000 * percentile(result.http, 0.99):>8.0f} "
            f"{'/'.join(f'{m:.0f}' for m in rss_mb):>12} "
            f"{'/'.join(f'{c:.1f}' for c in cpu_ms):>12}"
            + (f"   ({', '.join(problems)})" if problems else ""))


HEADER = (f"  {'run':<16} {'sent':>6} {'sent/s':>7} {'msgs/s':>7} {'e2e p50':>8} "
          f"{'e2e p99':>8} {'http p50':>8} {'http p99':>8} {'peak RSS MB':>12} "
          f"{'CPU ms/msg':>12}")


async def run_config(backend: str, processes: int, args: argparse.Namespace,
                     stand_in: StandIn) -> list[RunResult]:
    folder = Path(tempfile.mkdtemp(prefix="supportbot-load-"))
    pg_name = None
    title = f"{backend}, {processes} process{'es' if processes > 1 else ''}"
    results: list[RunResult] = []
    print(f"{title}:", flush=True)
    try:
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{folder}/load.db"
        else:
            pg_name, url = await create_pg_database(args.pg_admin)
        env = serve_env(url, stand_in.url, args.outbox_concurrency)
        if backend != "sqlite":  # several processes must not race to migrate
            subprocess.run([*supportbot(), "db", "upgrade"], cwd=folder, env=env, check=True,
                           capture_output=True)
        servers = start_servers(processes, env, folder)
        total = args.messages * processes
        capacity = 0.0
        try:
            await warm_up(servers, stand_in.url)
            runs: list[tuple[str, float | None]] = [("saturated", None)]
            runs += [(f"{rate:g}/s per process", rate * processes) for rate in args.rates]
            runs.append(("70% of capacity", -1.0))
            first = 10_000_000
            for label, rate in runs:
                if rate is not None and rate < 0:
                    rate = 0.7 * capacity
                    label = f"70% = {rate / processes:.0f}/s/proc"
                profile, out = None, folder / "profile.txt"
                if args.profile and rate is None:
                    profile = start_profile(servers[0].process.pid, out)
                cpu_before = [s.cpu_seconds() for s in servers]
                others_before = (postgres_cpu(), time.process_time(),
                                 process_cpu(stand_in.process.pid), *machine_busy())
                result = await send_load(servers, stand_in.url, first_update=first,
                                         first_chat=first, total=total, rate=rate,
                                         concurrency=args.concurrency, label=label)
                first += 10_000_000
                result.cpu = [1000 * (s.cpu_seconds() - b) / (total / processes)
                              for s, b in zip(servers, cpu_before, strict=True)]
                pg = postgres_cpu_since(others_before[0])
                client, stub, busy, elapsed = (
                    after - before for after, before in zip(
                        (time.process_time(), process_cpu(stand_in.process.pid),
                         *machine_busy()), others_before[1:], strict=True))
                rss = [s.status("VmHWM") / 1024 for s in servers]
                print(row(result, rss, result.cpu), flush=True)
                result.label = f"{title}, {label}"  # for the check at the end
                results.append(result)
                cpus = os.cpu_count() or 1
                wall = max(elapsed / cpus, 1e-9)
                ours = (sum(result.cpu) * total / processes / 1000 + pg + client + stub) / wall
                print(f"  {'':<16} CPU ms per message elsewhere: PostgreSQL "
                      f"{1000 * pg / total:.1f}, load generator {1000 * client / total:.1f}, "
                      f"stand-in {1000 * stub / total:.1f}; machine busy {busy / wall:.1f} "
                      f"of {cpus} CPUs, this benchmark's processes {ours:.1f}", flush=True)
                if profile is not None:
                    profile.send_signal(signal.SIGINT)
                    profile.wait(60)
                    for line in summarize_profile(out) if out.exists() else []:
                        print(line)
                    if args.profile_out and out.exists():
                        shutil.copyfile(out, args.profile_out)
                if rate is None:
                    capacity = result.throughput
        finally:
            stop_servers(servers)
        bare = await bare_insert_ms(url, args.bare_rounds)
        per_message = 1000 * processes / capacity if capacity else float("nan")
        print(f"  capacity {capacity:.0f} msgs/s = {per_message:.1f} ms per message and "
              f"process; bare INSERT + COMMIT {bare:.2f} ms: end-to-end / bare = "
              f"{per_message / bare:.0f}×", flush=True)
        return results
    finally:
        if pg_name is not None:
            await drop_pg_database(args.pg_admin, pg_name)
        shutil.rmtree(folder, ignore_errors=True)


# --- in-process breakdown: the same message without HTTP, per stage ------------------------

async def breakdown(backend: str, url: str, messages: int) -> None:
    """The pipeline and the outbox in this process (a recording channel instead of
    Telegram, no HTTP): CPU and wall time per message of each stage, and SQL statements."""
    import functools

    from sqlalchemy import event

    from bot.channels.base import Delivery
    from bot.config import load_settings
    from bot.service import Service
    from bot.types import InboundMessage

    class Recording:
        name = "telegram"

        async def send(self, delivery: Delivery) -> str | None:
            return "ok"

    settings = load_settings(None, database={"url": url}, after_hours={"enabled": False},
                             scheduler={"enabled": False})
    service = await Service.start(settings, channels={"telegram": Recording()}, migrate=True)
    order = ["receive and process (one transaction)",
             "  of which processing (understand, answer, SLA, queue)",
             "    of which the dialogue", "    of which the SLA clocks",
             "deliver (find, claim, send, mark)"]
    stages: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    statements = [0]

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return await original(*args, **kwargs)
            finally:
                stages[label][0] += time.perf_counter() - wall
                stages[label][1] += time.thread_time() - cpu

        setattr(owner, name, wrapper)

    def count(*_: Any) -> None:
        statements[0] += 1

    try:
        timed(service.pipeline, "handle", "receive and process (one transaction)")
        timed(service.pipeline, "_process_claimed",
              "  of which processing (understand, answer, SLA, queue)")
        timed(service.pipeline.dialogue, "respond", "    of which the dialogue")
        timed(service.sla, "after_customer_message", "    of which the SLA clocks")
        timed(service.outbox, "dispatch_due", "deliver (find, claim, send, mark)")
        event.listen(service.db.engine.sync_engine, "before_cursor_execute", count)
        # Enough chats that none writes more than [rate_limit] messages_per_minute (20)
        # however fast the machine: five messages per chat, as over HTTP.
        chats = max(50, messages // MESSAGES_PER_CHAT)
        for n in range(-30, messages):  # the first 30 warm up
            if n == 0:
                stages.clear()
                statements[0] = 0
                wall, cpu = time.perf_counter(), time.process_time()
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=f"tg-{n % chats}", text=GREETINGS[n % 8][1],
                external_id=f"m-{n}"))
            await service.outbox.dispatch_due()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await service.close()
    print(f"{backend}, in-process (no HTTP, no Telegram client), {messages} messages: "
          f"{1000 * wall / messages:.1f} ms wall, {1000 * cpu / messages:.1f} ms CPU, "
          f"{statements[0] / messages:.0f} SQL statements per message")
    for label in order:
        stage_wall, stage_cpu = stages[label]
        print(f"  {label:<42} {1000 * stage_wall / messages:6.1f} ms wall "
              f"{1000 * stage_cpu / messages:6.1f} ms CPU")


async def parts(backend: str, url: str, messages: int) -> None:
    """Two parts of a message's cost measured apart, in this process: the webhook's HTTP
    handling (the FastAPI app called as ASGI, python-telegram-bot parsing the update) with
    the pipeline stubbed out, and the outbox's ``serve`` loop delivering ``messages``
    queued replies to a channel that answers in 1 ms, with 4 and with 16 sends in flight."""
    from bot.config import load_settings
    from bot.pipeline import Processed
    from bot.service import Service
    from bot.types import InboundMessage
    from bot.web.app import create_app

    settings = load_settings(None, database={"url": url}, after_hours={"enabled": False},
                             scheduler={"enabled": False},
                             telegram={"token": TOKEN, "webhook_secret": SECRET})
    service = await Service.start(settings, migrate=True)
    try:
        app = create_app(service, background=False)

        async def stubbed(inbound: InboundMessage) -> Processed:
            return Processed(0, 0, None)

        service.pipeline.handle = stubbed  # type: ignore[method-assign]
        bodies = [json.dumps(update(n, 7_000_000 + n % 500)).encode() for n in range(messages)]
        statuses: Counter[int] = Counter()

        async def call(body: bytes) -> None:
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": "/webhooks/telegram",
                     "raw_path": b"/webhooks/telegram", "query_string": b"", "root_path": "",
                     "headers": [(b"content-type", b"application/json"),
                                 (b"content-length", str(len(body)).encode()),
                                 (b"x-telegram-bot-api-secret-token", SECRET.encode())],
                     "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
            messages_in = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages_in:
                    return messages_in.pop()
                await asyncio.Event().wait()  # the client never disconnects
                return {}

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses[message["status"]] += 1

            await app(scope, receive, send)

        for body in bodies[:50]:  # warm-up
            await call(body)
        statuses.clear()
        cpu = time.process_time()
        for body in bodies:
            await call(body)
        cpu = time.process_time() - cpu
        print(f"  webhook HTTP handling, pipeline stubbed out: {1000 * cpu / messages:.2f} ms "
              f"CPU per request (answers {dict(statuses)})")
    finally:
        await service.close()

    class OneMillisecond:
        name = "telegram"
        sent = 0

        async def send(self, delivery: Any) -> str | None:
            await asyncio.sleep(0.001)
            OneMillisecond.sent += 1
            return "ok"

    for concurrency in (4, 16):
        settings = load_settings(None, database={"url": url}, after_hours={"enabled": False},
                                 scheduler={"enabled": False},
                                 outbox={"concurrency": concurrency})
        channel = OneMillisecond()
        service = await Service.start(settings, channels={"telegram": channel})
        try:
            for n in range(messages):
                await service.pipeline.handle(InboundMessage(
                    channel="telegram", chat=f"outbox-{concurrency}-{n}", text="hello",
                    external_id=f"outbox-{concurrency}-{n}"))
            OneMillisecond.sent = 0
            stop = asyncio.Event()
            wall, cpu = time.perf_counter(), time.process_time()
            loop = asyncio.create_task(service.outbox.run(stop))
            while OneMillisecond.sent < messages and not loop.done():
                await asyncio.sleep(0.01)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            stop.set()
            await loop
        finally:
            await service.close()
        print(f"  outbox serve loop, {concurrency} sends in flight, channel answering in "
              f"1 ms: {messages / wall:.0f} replies/s, {1000 * cpu / messages:.2f} ms CPU "
              f"per reply ({backend})")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="sqlite:1,postgresql:1,postgresql:3",
                        help="backend:processes, comma-separated")
    parser.add_argument("--messages", type=int, default=1000,
                        help="webhook updates per process in each run")
    parser.add_argument("--rates", default="300",
                        help="paced runs: updates per second per process, comma-separated")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="saturated run: requests in flight per process")
    parser.add_argument("--bare-rounds", type=int, default=3000)
    parser.add_argument("--breakdown", type=int, default=300, metavar="N",
                        help="in-process breakdown per backend over N messages (0: none)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the first process during the saturated run")
    parser.add_argument("--profile-out", type=Path, default=None, metavar="FILE",
                        help="with --profile: keep py-spy's raw stacks (collapsed) in FILE")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a message went without reply or got two")
    parser.add_argument("--pg-admin", default=PG_ADMIN)
    parser.add_argument("--outbox-concurrency", type=int, default=None, metavar="N",
                        help="[outbox] concurrency of the serve processes (default: the "
                             "configuration's)")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]

    configs = []
    for item in args.configs.split(","):
        backend, _, count = item.strip().partition(":")
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
        if backend == "postgresql" and args.no_postgres:
            continue
        configs.append((backend, int(count or 1)))
    if any(backend == "postgresql" for backend, _ in configs):
        try:
            import asyncpg

            connection = await asyncpg.connect(args.pg_admin, timeout=5)
            await connection.close()
        except (OSError, ImportError, asyncpg.PostgresError) as exc:
            print(f"postgresql skipped: {args.pg_admin} not reachable ({exc})")
            configs = [c for c in configs if c[0] != "postgresql"]

    print(f"load: Telegram webhooks -> supportbot serve -> Bot API stand-in, "
          f"{args.messages} updates per process and run, {os.cpu_count()} CPUs; e2e: request "
          "sent -> reply at the stand-in, http: the webhook's answer (ms)")
    print(HEADER)
    stand_in = StandIn()
    results: list[RunResult] = []
    try:
        for backend, processes in configs:
            results += await run_config(backend, processes, args, stand_in)
    finally:
        stand_in.stop()
    # Nothing lost, nothing twice: every acknowledged message got exactly one reply. (A
    # request refused with 503 is not lost: the platform sends it again.)
    lost = [r for r in results if r.missing or r.extra]
    print(f"check: {sum(r.sent for r in results)} messages in {len(results)} runs; "
          + ("every acknowledged message answered exactly once" if not lost else
             "; ".join(f"{r.label}: {r.missing} without reply, {r.extra} extra replies"
                       for r in lost)), flush=True)
    if args.check and lost:
        return 1
    if args.breakdown:
        for backend in dict.fromkeys(b for b, _ in configs):
            folder = Path(tempfile.mkdtemp(prefix="supportbot-breakdown-"))
            pg_name = None
            try:
                if backend == "sqlite":
                    url = f"sqlite+aiosqlite:///{folder}/breakdown.db"
                else:
                    pg_name, url = await create_pg_database(args.pg_admin)
                await breakdown(backend, url, args.breakdown)
                await parts(backend, url, args.breakdown)
            finally:
                if pg_name is not None:
                    await drop_pg_database(args.pg_admin, pg_name)
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if "--stand-in" in sys.argv:
        stand_in_main()
    else:
        raise SystemExit(asyncio.run(main()))
