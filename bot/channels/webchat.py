"""The web chat served by ``supportbot serve``: no external account, the embedded default.

The page reads its conversation from the database, so delivering a reply means marking it
visible; the browser polls for new messages (agent replies arrive the same way).
"""

from __future__ import annotations

from bot.channels.base import Delivery

NAME = "webchat"


class WebChatChannel:
    name = NAME

    async def send(self, delivery: Delivery) -> str | None:
        return f"webchat-{delivery.outbox_id}"
