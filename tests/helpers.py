"""Small helpers shared by test modules."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.db.database import Database


def query(url: str, statement: Any) -> list[Any]:
    """Run one SELECT against a database URL from synchronous test code."""
    async def _run() -> list[Any]:
        database = Database(url)
        try:
            async with database.sessions() as session:
                return list((await session.execute(statement)).scalars())
        finally:
            await database.dispose()
    return asyncio.run(_run())
