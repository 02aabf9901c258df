"""The console channel of ``supportbot chat``: replies are printed to the terminal."""

from __future__ import annotations

from collections.abc import Callable

from bot.channels.base import Delivery, numbered_buttons

NAME = "console"


class ConsoleChannel:
    name = NAME

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write

    async def send(self, delivery: Delivery) -> str | None:
        self._write(numbered_buttons(delivery.text, delivery.buttons))
        return None
