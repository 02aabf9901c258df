"""Run the ASGI app under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from bot.config import Settings
from bot.service import Service
from bot.web.app import create_app

log = logging.getLogger(__name__)


async def serve(settings: Settings, host: str, port: int) -> None:
    service = await Service.start(settings)
    try:
        app = create_app(service)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                               access_log=False))
        log.info("web chat at http://%s:%d/", host, port)
        await server.serve()
    finally:
        await service.close()
