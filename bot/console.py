"""``supportbot chat``: the console channel, a customer conversation in the terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from bot.channels.console import ConsoleChannel
from bot.config import Settings
from bot.pipeline import InvalidMessage
from bot.service import Service
from bot.types import InboundMessage


async def run_console(settings: Settings, chat_id: str, stdin: TextIO,
                      write: Callable[[str], None]) -> None:
    channel = ConsoleChannel(lambda text: write(f"bot> {text}"))
    service = await Service.start(settings, channels={channel.name: channel})
    interactive = stdin.isatty()
    try:
        await service.pipeline.recover()
        await service.outbox.dispatch_due()
        if interactive:
            write("Type a message (Ctrl-D or /quit to leave).")
        while True:
            if interactive:
                write("you> ")
            line = stdin.readline()
            if not line or line.strip() == "/quit":
                break
            try:
                await service.pipeline.handle(InboundMessage(
                    channel=channel.name, chat=chat_id, text=line.rstrip("\n")))
            except InvalidMessage as exc:
                lang = settings.languages.default
                write(f"bot> {service.knowledge.templates.render(exc.template, lang, **exc.values)}")
                continue
            await service.outbox.dispatch_due()
    finally:
        await service.close()
