"""The one ASGI app of ``supportbot serve``: web chat, health, and (later) webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from bot.db.database import DatabaseUnavailable
from bot.service import Service
from bot.web.webchat import build_router

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(service: Service, *, background: bool = True) -> FastAPI:
    """Build the app around a started service; ``background`` runs the outbox dispatcher."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = None
        if background:
            await service.pipeline.recover()
            task = asyncio.create_task(service.outbox.run(stop), name="outbox")
        try:
            yield
        finally:
            stop.set()
            service.outbox.wake()
            if task is not None:
                await task

    app = FastAPI(title="supportbot", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.include_router(build_router(service))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await service.db.check(timeout=2.0)
        except DatabaseUnavailable:
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return app
