"""Channels by name. Only modules in this package may import a platform SDK."""

from __future__ import annotations

from bot.business_hours import BusinessCalendar
from bot.channels.base import (
    Channel,
    Delivery,
    HeldDeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    numbered_buttons,
)
from bot.channels.webchat import WebChatChannel
from bot.clock import Clock
from bot.config import Settings
from bot.db.database import Database

__all__ = [
    "Channel", "Delivery", "HeldDeliveryError", "PermanentDeliveryError", "TemporaryDeliveryError",
    "build_channels", "numbered_buttons",
]


def build_channels(settings: Settings, *, db: Database, clock: Clock,
                   agent_texts: dict[str, str], calendar: BusinessCalendar) -> dict[str, Channel]:
    """The channels a deployment delivers to: the web chat always, others when configured."""
    channels: dict[str, Channel] = {WebChatChannel.name: WebChatChannel()}
    if settings.telegram.enabled:
        from bot.channels.telegram import TelegramChannel

        channels[TelegramChannel.name] = TelegramChannel(
            settings.telegram, sends_in_flight=settings.outbox.concurrency)
    if settings.wechat.enabled:
        from bot.channels.wechat import WechatChannel

        channels[WechatChannel.name] = WechatChannel(settings.wechat)
    if settings.slack.enabled:
        from bot.channels.slack import SlackChannel  # the SDK loads only when Slack is used

        channels[SlackChannel.name] = SlackChannel(settings, db, clock, agent_texts, calendar)
    return channels
