"""Intent handlers, one module per intent; ``build_handlers`` is the registry."""

from __future__ import annotations

from handlers.base import FlowHandler, Handler, HandlerContext
from handlers.clarify import ClarifyHandler
from handlers.complaint import ComplaintHandler
from handlers.documents import DocumentsHandler
from handlers.fallback import FallbackHandler
from handlers.faq import ProductInfoHandler, TechnicalSupportHandler
from handlers.goodbye import GoodbyeHandler
from handlers.greeting import GreetingHandler
from handlers.human_agent import HumanAgentHandler
from handlers.order_status import OrderStatusHandler
from handlers.quote import QuoteHandler
from handlers.return_refund import ReturnRefundHandler

__all__ = ["FlowHandler", "Handler", "HandlerContext", "build_handlers"]


def build_handlers() -> dict[str, Handler]:
    """Intent name -> handler; ``fallback`` answers recognised intents without their own."""
    handlers: list[Handler] = [
        GreetingHandler(), GoodbyeHandler(), ClarifyHandler(), FallbackHandler(),
        OrderStatusHandler(), QuoteHandler(), ComplaintHandler(), ReturnRefundHandler(),
        DocumentsHandler(), ProductInfoHandler(), TechnicalSupportHandler(),
        HumanAgentHandler(),
    ]
    return {handler.intent: handler for handler in handlers}
