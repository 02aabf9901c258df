"""The one ASGI app of ``supportbot serve``: web chat, Slack, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bot import metrics
from bot.db.database import DatabaseUnavailable
from bot.service import Service
from bot.web import dashboard
from bot.web.webchat import build_router

if TYPE_CHECKING:
    from bot.channels.telegram import TelegramChannel

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(service: Service, *, background: bool = True) -> FastAPI:
    """Build the app around a started service; ``background`` runs the outbox dispatcher."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = []
        socket_mode = None
        if background:
            await service.pipeline.recover()
            tasks.append(asyncio.create_task(service.outbox.run(stop), name="outbox"))
            if service.settings.scheduler.enabled:
                from bot.scheduler import Scheduler

                tasks.append(asyncio.create_task(Scheduler(service).run(stop), name="scheduler"))
            if bolt_app is not None and service.settings.slack.mode == "socket":
                socket_mode = await start_socket_mode(bolt_app, service)
            if telegram is not None:
                tasks.extend(await start_telegram(service, telegram, stop))
        try:
            yield
        finally:
            stop.set()
            service.outbox.wake()
            if socket_mode is not None:
                await socket_mode.close_async()
            for task in tasks:
                if task.get_name() == "telegram-polling":
                    task.cancel()  # a long poll can take 25 s to return by itself
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for channel in service.outbox.channels.values():
                close = getattr(channel, "close", None)  # platform clients with connections
                if close is not None:
                    await close()

    bolt_app = None
    if service.settings.slack.enabled:
        from bot.channels.slack_app import build_bolt_app, start_socket_mode
        from bot.channels.slack_app import build_router as slack_router

        bolt_app, _ = build_bolt_app(service)
    telegram = None
    if service.settings.telegram.enabled:
        from bot.channels.telegram import TelegramChannel

        candidate = service.outbox.channels.get("telegram")
        telegram = candidate if isinstance(candidate, TelegramChannel) else None
    app = FastAPI(title="supportbot", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.include_router(build_router(service))
    dashboard.install(app, service)
    if bolt_app is not None and service.settings.slack.mode == "http":
        secret = service.settings.slack.signing_secret
        app.include_router(slack_router(bolt_app, secret.get_secret_value() if secret else None))
    if service.settings.wechat.enabled:
        from bot.channels.wechat import build_router as wechat_router

        app.include_router(wechat_router(service))
    if telegram is not None and service.settings.telegram.mode == "webhook":
        from bot.channels.telegram_inbound import build_router as telegram_router

        app.include_router(telegram_router(service, telegram))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(DatabaseUnavailable)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        """The database is unreachable mid-request: a clean 503 the platform retries (the
        request's transaction was rolled back: nothing half-written)."""
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path,
                    type(exc).__name__)
        return JSONResponse({"error": "database unavailable, try again shortly"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(IntegrityError)
    async def refused_row(request: Request, exc: Exception) -> JSONResponse:
        """The database refused a row (a bug, not an outage): 500, which platforms retry
        too. A customer message whose processing failed this way is stored unprocessed
        (the pipeline logged why), so the retry or the next start answers it."""
        log.error("%s %s: a row was refused: %s", request.method, request.url.path,
                  type(exc).__name__)
        return JSONResponse({"error": "the request could not be processed"}, status_code=500)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await service.db.check(timeout=2.0)
        except DatabaseUnavailable:
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus text format: this process's counters plus the deployment's backlog
        read from the database now (see bot/metrics.py; docs/operations.md)."""
        body = await metrics.render(service.db, service.clock.now(), service.outbox.channels)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    return app


async def start_telegram(service: Service, telegram: TelegramChannel,
                         stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Register the webhook (or drop it for polling) and start polling if configured.
    Telegram being unreachable at start-up does not stop the server: it is logged."""
    from telegram.error import TelegramError

    from bot.channels.telegram_inbound import configure_webhook, poll

    try:
        await configure_webhook(service, telegram)
    except TelegramError as exc:
        log.error("telegram: cannot configure the webhook or polling: %s", exc)
    if service.settings.telegram.mode != "polling":
        return []
    return [asyncio.create_task(poll(service, telegram, stop), name="telegram-polling")]

