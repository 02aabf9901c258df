"""A support history for benchmarks: conversations with their messages, SLA clocks,
complaint cases, ratings and delivered orders, spread over a year, written with bulk
SQLAlchemy Core inserts (no ORM objects), so 10^6 messages take seconds, not minutes.

    python bench/generate_history.py --database URL [--messages 100000] [--seed 1]

About 10 messages per conversation (6 to 14). Of the conversations, 60 % are handed off
(unclaimed-hand-off and first-response clocks, working minutes from the real calendar),
90 % of those are taken and resolved within three days, half of the resolved are rated;
10 % have a complaint case; one order per 10 conversations is delivered around its ETA.
The database is migrated first; it should be empty.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.business_hours import BusinessCalendar, build_calendars
from bot.config import HoursSettings
from bot.db.database import Database
from bot.db.models import Agent, Case, Contact, Conversation, Customer, Message, Order, SlaClock
from bot.kpis import WorkingTime

FIRST_DAY = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 365
MESSAGES_PER_CONVERSATION = 10
CHANNELS = ("telegram", "webchat", "wechat", "console")
LANGUAGES = ("en", "zh", "ru", "es", "fr", "de", "pt", "ar")
CATEGORIES = ("transit_damage", "quality", "wrong_goods", "shortage", "packaging", "delay",
              "documents")
RATINGS = (5, 5, 5, 5, 4, 4, 4, 3, 2, 1)
AGENTS = 20
CUSTOMERS = 1000
BATCH = 20_000


def _batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), BATCH):
        yield rows[start:start + BATCH]


async def _insert(connection: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Executemany wants the same keys in every row: absent ones are NULL."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    for batch in _batches(rows):
        await connection.execute(insert(table), [{key: row.get(key) for key in keys}
                                                 for row in batch])


def build_rows(conversations: int, calendar: BusinessCalendar,
               seed: int = 1) -> dict[str, list[dict[str, Any]]]:
    """Every row of the history, as plain dicts per table."""
    rng = random.Random(seed)
    span = timedelta(days=DAYS)
    working = WorkingTime(calendar, FIRST_DAY - timedelta(days=2),
                          FIRST_DAY + span + timedelta(days=10))
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "agents", "customers", "contacts", "conversations", "messages", "sla_clocks", "cases",
        "orders")}
    rows["agents"] = [{"id": n + 1, "ref": f"agent-{n + 1}", "name": f"Agent {n + 1}",
                       "created_at": FIRST_DAY, "is_supervisor": False, "active": True}
                      for n in range(AGENTS)]
    rows["customers"] = [{"id": n + 1, "ref": f"C-{n + 1}", "company": f"Customer {n + 1}",
                          "created_at": FIRST_DAY, "updated_at": FIRST_DAY, "strategic": False}
                         for n in range(CUSTOMERS)]
    case_number = 0
    for n in range(1, conversations + 1):
        created = FIRST_DAY + timedelta(seconds=rng.randrange(int(span.total_seconds())))
        channel = rng.choice(CHANNELS)
        customer = rng.randrange(CUSTOMERS) + 1
        row: dict[str, Any] = {
            "id": n, "contact_id": n, "customer_id": customer, "channel": channel,
            "chat": f"chat-{n}", "status": "open", "language": rng.choice(LANGUAGES),
            "language_locked": False, "priority": "normal", "flow_state": {}, "misses": 0,
            "context": {}, "created_at": created, "updated_at": created}
        rows["contacts"].append({"id": n, "channel": channel, "chat": f"chat-{n}",
                                 "customer_id": customer, "created_at": created,
                                 "verify_failures": 0})
        count = rng.randint(MESSAGES_PER_CONVERSATION - 4, MESSAGES_PER_CONVERSATION + 4)
        moment = created
        for index in range(count):
            inbound = index % 2 == 0
            rows["messages"].append({
                "conversation_id": n, "direction": "in" if inbound else "out",
                "sender": "customer" if inbound else "bot", "channel": channel,
                "audience": "customer", "text": "where is my order?" if inbound else "On its way.",
                "entities": {}, "urgent": False, "attachments": [], "created_at": moment,
                "processed_at": moment})
            moment += timedelta(seconds=rng.randint(5, 600))
        last = moment
        if rng.random() < 0.6:  # handed off
            handed = created + timedelta(minutes=rng.randint(1, 10))
            row.update(status="handed_off", handed_off_at=handed)
            taken = handed + timedelta(minutes=rng.randint(1, 60 * 18))
            answered = taken + timedelta(minutes=rng.randint(1, 120))
            if rng.random() < 0.9:
                owner = rng.randrange(AGENTS) + 1
                resolved = answered + timedelta(minutes=rng.randint(10, 60 * 72))
                row.update(status="resolved", owner_id=owner, resolved_at=resolved)
                if rng.random() < 0.5:
                    row.update(satisfaction=rng.choice(RATINGS), satisfaction_at=resolved)
                last = max(last, resolved)
                for kind, target, stop in (("unclaimed_handoff", 30, taken),
                                           ("first_response", 120, answered)):
                    minutes = round(working.minutes(handed, stop))
                    rows["sla_clocks"].append({
                        "conversation_id": n, "kind": kind,
                        "status": "breached" if minutes >= target else "met",
                        "calendar": "default", "target_minutes": target, "started_at": handed,
                        "segment_started_at": handed, "consumed_minutes": 0,
                        "stopped_at": stop, "working_minutes": minutes,
                        "breached_at": stop if minutes >= target else None})
            else:  # still waiting for an agent
                for kind, target in (("unclaimed_handoff", 30), ("first_response", 120)):
                    rows["sla_clocks"].append({
                        "conversation_id": n, "kind": kind, "status": "running",
                        "calendar": "default", "target_minutes": target, "started_at": handed,
                        "segment_started_at": handed, "consumed_minutes": 0})
        if rng.random() < 0.1:  # a complaint
            case_number += 1
            opened = created + timedelta(minutes=rng.randint(1, 30))
            resolved_case = row.get("resolved_at")
            rows["cases"].append({
                "number": f"CS-{case_number:07d}", "conversation_id": n,
                "customer_id": customer, "kind": "complaint",
                "category": rng.choice(CATEGORIES),
                "status": "resolved" if resolved_case else "open", "priority": "normal",
                "evidence": [], "opened_at": opened, "resolved_at": resolved_case})
        row["updated_at"] = last
        rows["conversations"].append(row)
        if n % 10 == 0:  # an order, delivered around its ETA
            eta = (created + timedelta(days=30)).date()
            delivered = datetime.combine(eta, datetime.min.time(), tzinfo=UTC) + timedelta(
                hours=rng.randint(-72, 30))
            rows["orders"].append({
                "number": f"PO-{n:07d}", "customer_id": customer, "stage": "delivered",
                "eta": eta, "delivered_at": delivered, "inspection": {}, "documents": {},
                "created_at": created, "updated_at": delivered})
    return rows


async def generate(database: Database, messages: int, seed: int = 1) -> dict[str, int]:
    """Fill a migrated, empty database with a history of about ``messages`` messages."""
    calendar = build_calendars(HoursSettings())["default"]
    rows = build_rows(max(1, messages // MESSAGES_PER_CONVERSATION), calendar, seed)
    tables = {"agents": Agent, "customers": Customer, "contacts": Contact,
              "conversations": Conversation, "messages": Message, "sla_clocks": SlaClock,
              "cases": Case, "orders": Order}
    async with database.engine.begin() as connection:
        for name, model in tables.items():
            await _insert(connection, model.__table__, rows[name])  # type: ignore[arg-type]
    async with database.engine.connect() as connection:  # fresh statistics for the planner
        await connection.execute(text("ANALYZE"))
        await connection.commit()
    return {name: len(table_rows) for name, table_rows in rows.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="database URL (SQLAlchemy, async)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    database = Database(args.database)
    try:
        await database.upgrade()
        started = time.perf_counter()
        counts = await generate(database, args.messages, args.seed)
        print(f"generated in {time.perf_counter() - started:.1f} s: "
              + ", ".join(f"{count:,} {name}" for name, count in counts.items()))
    finally:
        await database.dispose()


if __name__ == "__main__":
    asyncio.run(main())
