"""``supportbot report``: figures counted from stored facts, never from counters."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from bot.config import Settings
from bot.db.models import Case, Conversation, Message, OutboxItem
from bot.service import open_database


async def collect_report(settings: Settings) -> dict[str, Any]:
    db = await open_database(settings)
    try:
        async with db.sessions() as session:
            async def grouped(column: Any, *where: Any) -> dict[str, int]:
                rows = await session.execute(
                    select(column, func.count()).where(*where).group_by(column))
                return {str(key): count for key, count in rows.all()}

            return {
                "conversations": {
                    "by_status": await grouped(Conversation.status),
                    "by_channel": await grouped(Conversation.channel),
                    "by_language": await grouped(Conversation.language),
                },
                "messages": {
                    "inbound": await session.scalar(
                        select(func.count()).where(Message.direction == "in")) or 0,
                    "outbound": await session.scalar(
                        select(func.count()).where(Message.direction == "out")) or 0,
                    "by_intent": await grouped(Message.intent, Message.direction == "in"),
                },
                "outbox": await grouped(OutboxItem.status),
                "cases": {"by_status": await grouped(Case.status),
                          "by_category": await grouped(Case.category)},
            }
    finally:
        await db.dispose()


def format_report(figures: dict[str, Any], indent: str = "") -> str:
    lines = []
    for key, value in figures.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(format_report(value, indent + "  ") if value else f"{indent}  (none)")
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)
