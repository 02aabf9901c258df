"""Intent handlers, one module per intent; ``build_handlers`` is the registry."""

from __future__ import annotations

from handlers.base import Handler, HandlerContext
from handlers.fallback import FallbackHandler
from handlers.goodbye import GoodbyeHandler
from handlers.greeting import GreetingHandler

__all__ = ["Handler", "HandlerContext", "build_handlers"]


def build_handlers() -> dict[str, Handler]:
    """Intent name -> handler. Intents without a handler of their own get the fallback."""
    handlers: list[Handler] = [GreetingHandler(), GoodbyeHandler(), FallbackHandler()]
    return {handler.intent: handler for handler in handlers}
