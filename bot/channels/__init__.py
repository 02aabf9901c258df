"""Channels by name. Only modules in this package may import a platform SDK."""

from __future__ import annotations

from bot.channels.base import (
    Channel,
    Delivery,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    numbered_buttons,
)
from bot.channels.webchat import WebChatChannel
from bot.config import Settings

__all__ = [
    "Channel", "Delivery", "PermanentDeliveryError", "TemporaryDeliveryError",
    "build_channels", "numbered_buttons",
]


def build_channels(settings: Settings) -> dict[str, Channel]:
    """The channels a deployment delivers to: the web chat always, others when configured."""
    channels: dict[str, Channel] = {WebChatChannel.name: WebChatChannel()}
    return channels
