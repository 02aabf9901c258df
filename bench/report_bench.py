"""The KPI report's cost (``compute_kpis``, what ``supportbot report``, the dashboard and
``/support stats`` run) against the size of the history.

For each size (10^4, 10^5, 10^6 messages by default; about 10 per conversation, so up to
100,000 conversations over a year) a fresh database is filled by ``generate_history.py``,
then timed: the report over the whole year (every row read), one agent's report
(``--owner``), and the last 7 days (Slack's ``/support stats``), median of 3 runs each.
SQLite always; PostgreSQL at 127.0.0.1:5432 too unless it is unreachable (then skipped,
with the reason).

    python bench/report_bench.py [--sizes 10000,100000,1000000] [--no-postgres] [--plans]

``--plans`` prints each KPI query's plan for the 7-day window on the largest size, to show
that every one reads through an index.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event

from bench.generate_history import DAYS, FIRST_DAY, generate
from bot.business_hours import build_calendars
from bot.config import HoursSettings
from bot.db.database import Database
from bot.kpis import compute_kpis

RUNS = 3
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CALENDAR = build_calendars(HoursSettings())["default"]
WHOLE = (FIRST_DAY - timedelta(days=1), FIRST_DAY + timedelta(days=DAYS + 1))
WEEK = (FIRST_DAY + timedelta(days=DAYS - 7), FIRST_DAY + timedelta(days=DAYS))


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def report(database: Database, period: tuple[datetime, datetime],
                 **filters: Any) -> dict[str, Any]:
    async with database.sessions() as session:
        return await compute_kpis(session, start=period[0], end=period[1], calendar=CALENDAR,
                                  **filters)


async def plans(database: Database) -> None:
    """EXPLAIN every statement the 7-day report runs."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        await report(database, WEEK)
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", record)
    prefix = "EXPLAIN " if database.is_postgres else "EXPLAIN QUERY PLAN "
    async with database.engine.connect() as connection:
        for statement, parameters in statements:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            if database.is_postgres:
                rows = await driver.fetch(prefix + statement, *parameters)
                plan = [row[0] for row in rows]
            else:
                cursor = await driver.execute(prefix + statement, parameters)
                plan = [row[-1] for row in await cursor.fetchall()]
            first_line = " ".join(statement.split())[:110]
            print(f"  {first_line}...")
            for line in plan:
                print(f"      {line}")


async def measure(url: str, messages: int, show_plans: bool) -> dict[str, Any]:
    database = Database(url)
    try:
        await database.upgrade()
        started = time.perf_counter()
        counts = await generate(database, messages)
        generated = time.perf_counter() - started
        whole = await timed(lambda: report(database, WHOLE))
        owner = await timed(lambda: report(database, WHOLE, owner="agent-1"))
        week = await timed(lambda: report(database, WEEK))
        figures = await report(database, WHOLE)
        if show_plans:
            await plans(database)
        return {"counts": counts, "generated": generated, "whole": whole, "owner": owner,
                "week": week, "figures": figures}
    finally:
        await database.dispose()


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
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="numbers of messages, comma-separated")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--plans", action="store_true",
                        help="print the query plans of the 7-day report at the largest size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"KPI report (compute_kpis), median of {RUNS}: whole year, one owner's, last 7 days")
    print(f"{'backend':<11} {'messages':>10} {'conversations':>13} {'generate':>9} "
          f"{'whole year':>11} {'one owner':>10} {'7 days':>9}")
    backends = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    for backend in backends:
        for size in sizes:
            show_plans = args.plans and size == sizes[-1]
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as folder:
                    result = await measure(f"sqlite+aiosqlite:///{folder}/bench.db", size,
                                           show_plans)
            else:
                try:
                    name, url = await postgres_database()
                except (OSError, ImportError) as exc:
                    print(f"postgresql  skipped: PostgreSQL at 127.0.0.1:5432 is not "
                          f"reachable ({exc})")
                    break
                try:
                    result = await measure(url, size, show_plans)
                finally:
                    await drop_postgres_database(name)
            counts = result["counts"]
            print(f"{backend:<11} {counts['messages']:>10,} {counts['conversations']:>13,} "
                  f"{result['generated']:>7.1f} s {result['whole']:>9.2f} s "
                  f"{result['owner']:>8.2f} s {result['week'] * 1000:>6.0f} ms", flush=True)
    print()
    figures = result["figures"]
    print(f"(largest history: first response median "
          f"{figures['first_response']['working_minutes']['median']} working min, "
          f"SLA breach rate {figures['sla']['all']['breach_rate']}, "
          f"satisfaction {figures['satisfaction']['share']}, "
          f"on-time {figures['delivery']['share']})")


if __name__ == "__main__":
    asyncio.run(main())
