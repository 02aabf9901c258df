"""The SLA sweep's cost against the number of open conversations.

For each size N (1,000 / 10,000 / 100,000 by default) a fresh database gets N open,
handed-off conversations with running clocks that are not due, plus a fixed number of
clocks that are due now. The sweep then runs: its time should depend on the due clocks
only (it reads ``sla_clocks`` through the (status, next_check_at) index), not on N.

    python bench/sla_sweep_bench.py [--sizes 1000,10000,100000] [--due 50] [--postgres]

Prints, per size: the time of a sweep with ``--due`` clocks due (it warns or escalates
each, queueing a message), and of an idle sweep (nothing due), median of 5 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, text

from bot.clock import ManualClock
from bot.config import load_settings
from bot.db.models import Contact, Conversation, SlaClock
from bot.jobs import sla_sweep
from bot.service import Service

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
RUNS = 5
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def fill(service: Service, size: int, due: int) -> None:
    """``size`` open conversations with a clock due in a week, ``due`` more due now."""
    later, past = NOW + timedelta(days=7), NOW - timedelta(minutes=5)
    total = size + due
    async with service.db.sessions.begin() as session:
        for start in range(0, total, 10_000):
            block = range(start, min(total, start + 10_000))
            await session.execute(insert(Contact), [
                {"id": n + 1, "channel": "telegram", "chat": f"tg-{n}", "created_at": past,
                 "verify_failures": 0} for n in block])
            await session.execute(insert(Conversation), [
                {"id": n + 1, "contact_id": n + 1, "channel": "telegram", "chat": f"tg-{n}",
                 "status": "handed_off", "priority": "normal", "created_at": past,
                 "updated_at": past, "handed_off_at": past, "flow_state": {}, "context": {},
                 "misses": 0, "language_locked": False} for n in block])
            await session.execute(insert(SlaClock), [
                {"conversation_id": n + 1, "kind": "first_response", "status": "running",
                 "calendar": "default", "target_minutes": 120, "started_at": past,
                 "segment_started_at": past, "consumed_minutes": 0,
                 "deadline_at": later if n < size else past,
                 "warn_at": later if n < size else past,
                 "next_check_at": later if n < size else past} for n in block])
    if service.db.is_postgres:
        async with service.db.engine.connect() as connection:
            await connection.execute(text("ANALYZE"))
            await connection.commit()


async def measure(url: str, size: int, due: int) -> tuple[float, float, int]:
    settings = load_settings(None, database={"url": url})
    clock = ManualClock(NOW)
    service = await Service.start(settings, clock=clock, migrate=True, channels={})
    try:
        await fill(service, size, due)
        started = time.perf_counter()
        handled = await sla_sweep(service)  # the due clocks: warned or breached, once
        busy = time.perf_counter() - started
        idle = []
        for _ in range(RUNS):
            started = time.perf_counter()
            await sla_sweep(service)
            idle.append(time.perf_counter() - started)
        return busy, statistics.median(idle), handled
    finally:
        await service.close()


async def postgres_database() -> tuple[str, str]:
    import asyncpg

    name = f"supportbot_bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(PG_ADMIN, timeout=5)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    return name, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_postgres_database(name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN, timeout=5)
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--due", type=int, default=50)
    parser.add_argument("--postgres", action="store_true",
                        help="also on PostgreSQL at 127.0.0.1:5432 (skipped if unreachable)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
    print(f"SLA sweep: {args.due} clocks due, idle sweep = nothing due (median of {RUNS})")
    print(f"{'backend':<11} {'open conversations':>18} {'sweep with due':>15} {'idle sweep':>11}")
    for backend in backends:
        for size in sizes:
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as folder:
                    url = f"sqlite+aiosqlite:///{folder}/bench.db"
                    busy, idle, handled = await measure(url, size, args.due)
            else:
                try:
                    name, url = await postgres_database()
                except OSError as exc:
                    print(f"postgresql  skipped: {exc}")
                    break
                try:
                    busy, idle, handled = await measure(url, size, args.due)
                finally:
                    await drop_postgres_database(name)
            assert handled == args.due, (handled, args.due)
            print(f"{backend:<11} {size:>18,} {busy * 1000:>12.1f} ms {idle * 1000:>8.2f} ms",
                  flush=True)


if __name__ == "__main__":
    asyncio.run(main())
