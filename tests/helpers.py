"""Small helpers shared by test modules."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aiohttp import web

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


@contextlib.asynccontextmanager
async def app_client(service: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the service's real ASGI app in process (no socket)."""
    from bot.web.app import create_app

    app = create_app(service, background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://supportbot") as http:
        yield http


async def serve_locally(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """A platform stand-in's aiohttp app, served on 127.0.0.1 at a free port: the runner
    (to clean up) and the port."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
