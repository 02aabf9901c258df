"""Run the ASGI app under uvicorn."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
from collections.abc import Iterator

import uvicorn
import uvicorn.server

from bot.config import Settings
from bot.service import Service
from bot.web.app import create_app

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM/SIGINT once it has stopped, which kills the
    process before the service is closed (and makes a clean stop exit -15). Here a signal
    only asks for a graceful stop; the caller then closes the service and exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit)
                    for sig in uvicorn.server.HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def serve(settings: Settings, host: str, port: int) -> None:
    service = await Service.start(settings)
    try:
        app = create_app(service)
        # What is loaded by now (knowledge, classifier, libraries) lives as long as the
        # process: out of the garbage collector's sight, so that its full collections,
        # which run every so often under load, do not walk it (30 ms each otherwise).
        gc.freeze()
        server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                        access_log=False))
        log.info("web chat at http://%s:%d/", host, port)
        await server.serve()
    finally:
        await service.close()
