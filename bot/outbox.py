"""The outbox dispatcher: every reply waits in the database until its platform accepts it.

Retries use exponential backoff with jitter and honour a platform's ``retry_after``; a reply
that can never be delivered is marked ``failed`` (never dropped silently). Replies to one
chat go out in order: a chat's later replies wait while its oldest pending one is retried.
Each attempt first claims its row with a conditional update (a lease), so several
dispatchers, in one process or many, never send the same reply twice, and no database
transaction stays open while a platform is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import aliased

from bot.channels.base import (
    Channel,
    Delivery,
    HeldDeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from bot.clock import Clock
from bot.config import OutboxSettings
from bot.db.database import Database
from bot.db.models import OutboxItem

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, settings: OutboxSettings,
                  jitter: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``attempt`` (1-based): capped exponential, equal jitter.

    The retry is a row in the database, not a loop in memory, so it survives restarts;
    that is why it is scheduled here rather than by a retry decorator.
    """
    ceiling = min(settings.max_delay_seconds, settings.base_delay_seconds * 2 ** (attempt - 1))
    return ceiling / 2 + jitter() * ceiling / 2


class OutboxDispatcher:
    def __init__(self, db: Database, clock: Clock, channels: dict[str, Channel],
                 settings: OutboxSettings, jitter: Callable[[], float] = random.random) -> None:
        self.db = db
        self.clock = clock
        self.channels = channels
        self.settings = settings
        self._jitter = jitter
        self._wake = asyncio.Event()
        # Told about every message that could not be delivered, or is held until the
        # customer writes again (the service tells the conversation's agents); nothing
        # fails silently.
        self.on_failed: Callable[[OutboxItem, str, str], Awaitable[None]] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def _due_heads(self, limit: int) -> list[int]:
        """Ids of due rows that are the oldest pending row of their chat. A row scheduled
        for later and never tried (a proactive message waiting out quiet hours) does not
        hold back the chat's replies; a row being retried does, to keep the order."""
        older = aliased(OutboxItem)
        now = self.clock.now()
        oldest_pending = (
            select(func.min(older.id))
            .where(older.status == "pending", older.channel == OutboxItem.channel,
                   older.chat == OutboxItem.chat,
                   or_(older.next_attempt_at <= now, older.attempts > 0))
            .scalar_subquery()
        )
        query = (
            select(OutboxItem.id)
            .where(OutboxItem.status == "pending",
                   OutboxItem.next_attempt_at <= now,
                   OutboxItem.channel.in_(list(self.channels)),
                   OutboxItem.id == oldest_pending)
            .order_by(OutboxItem.id).limit(limit)
        )
        async with self.db.sessions() as session:
            return list((await session.execute(query)).scalars())

    async def dispatch_due(self, limit: int = 200) -> int:
        """Send everything that is due now; returns how many rows were delivered."""
        delivered = 0
        while True:
            heads = await self._due_heads(limit)
            progressed = 0
            for outbox_id in heads:
                if await self._deliver(outbox_id):
                    progressed += 1
            delivered += progressed
            if not heads or progressed == 0:
                return delivered

    async def _claim(self, outbox_id: int) -> OutboxItem | None:
        """Take the row for one delivery attempt: a conditional update that only one
        process or task can win. The claim is a lease: if this process dies while
        sending, the row becomes due again when the lease ends (at-least-once)."""
        now = self.clock.now()
        async with self.db.sessions.begin() as session:
            claimed = await session.execute(
                update(OutboxItem)
                .where(OutboxItem.id == outbox_id, OutboxItem.status == "pending",
                       OutboxItem.next_attempt_at <= now)
                .values(attempts=OutboxItem.attempts + 1,
                        next_attempt_at=now + timedelta(seconds=self.settings.lease_seconds)))
            if claimed.rowcount == 0:  # type: ignore[attr-defined]
                return None  # delivered meanwhile, or claimed by another dispatcher
            return await session.get(OutboxItem, outbox_id)

    async def _deliver(self, outbox_id: int) -> bool:
        item = await self._claim(outbox_id)
        if item is None:
            return False
        delivery = Delivery.from_payload(item.id, item.chat, item.payload)
        status, error, external_id, retry_after = "sent", None, None, None
        parts_sent: int | None = None
        try:
            external_id = await self.channels[item.channel].send(delivery)
        except PermanentDeliveryError as exc:
            status, error = "failed", str(exc)[:500]
            log.warning("outbox %d to %s failed permanently: %s", item.id, item.channel, exc)
        except HeldDeliveryError as exc:
            status, error = "held", str(exc)[:500]
            log.info("outbox %d to %s held until the customer writes: %s", item.id,
                     item.channel, exc)
        except (TimeoutError, TemporaryDeliveryError, OSError) as exc:
            status, error = "pending", str(exc)[:500] or type(exc).__name__
            retry_after = getattr(exc, "retry_after", None)
            parts_sent = getattr(exc, "parts_sent", None)
        now = self.clock.now()
        values: dict[str, object] = {"status": status, "last_error": error}
        if status == "pending" and parts_sent:
            # The first parts of a long message arrived: the retry sends only the rest.
            values["payload"] = {**item.payload, "parts_sent": parts_sent}
        if status == "sent":
            values.update(sent_at=now, external_id=external_id)
        elif status == "pending":
            if item.attempts >= self.settings.max_attempts:
                values["status"] = "failed"
                log.error("outbox %d to %s gave up after %d attempts: %s", item.id,
                          item.channel, item.attempts, error)
            else:
                delay = backoff_delay(item.attempts, self.settings, self._jitter)
                if retry_after is not None:
                    delay = max(delay, float(retry_after))
                values["next_attempt_at"] = now + timedelta(seconds=delay)
                log.info("outbox %d to %s: retry %d in %.1f s (%s)", item.id, item.channel,
                         item.attempts, delay, error)
        async with self.db.sessions.begin() as session:
            await session.execute(update(OutboxItem).where(OutboxItem.id == item.id)
                                  .values(**values))
        if values["status"] in ("failed", "held") and self.on_failed is not None:
            try:
                await self.on_failed(item, str(values["status"]), error or "")
            except Exception:  # the failure itself is recorded on the row and logged
                log.exception("outbox %d: could not report the failed delivery", item.id)
        return status == "sent"

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: on every wake-up, and every poll interval for retries."""
        while not stop.is_set():
            self._wake.clear()  # before dispatching, so a wake-up during it is not lost
            try:
                await self.dispatch_due()
            except Exception:  # keep delivering after a database hiccup
                log.exception("outbox dispatch failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_seconds)
