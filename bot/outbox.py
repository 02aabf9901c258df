"""The outbox dispatcher: every reply waits in the database until its platform accepts it.

Retries use exponential backoff with jitter and honour a platform's ``retry_after``; a reply
that can never be delivered is marked ``failed`` (never dropped silently). Replies to one
chat go out in order: a chat's later replies wait while its oldest pending one is retried.
Each attempt first claims its row with a conditional update (a lease), so several
dispatchers, in one process or many, never send the same reply twice, and no database
transaction stays open while a platform is called.

Back-pressure: the backlog lives in the database, never in memory. ``serve`` runs one loop
per channel (a slow platform holds up only its own replies); each loop takes at most
``[outbox] batch_size`` due row ids at a time and has at most ``[outbox] concurrency`` sends
in flight, each holding one claimed row. However many rows wait and however slow the
platform, a process holds at most channels × (batch_size ids + concurrency rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Integer, Select, bindparam, func, or_, select, update
from sqlalchemy.orm import aliased

from bot import metrics
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


def _due_heads_query() -> Select[Any]:
    """Built once: constructing it costs more than running it (about 1 ms of CPU for the
    ORM alias), and the dispatcher runs it about twice per reply."""
    older = aliased(OutboxItem)
    now = bindparam("now", type_=OutboxItem.next_attempt_at.type)
    oldest_pending = (
        select(func.min(older.id))
        .where(older.status == "pending", older.channel == OutboxItem.channel,
               older.chat == OutboxItem.chat,
               or_(older.next_attempt_at <= now, older.attempts > 0))
        .scalar_subquery()
    )
    return (
        select(OutboxItem.id)
        .where(OutboxItem.status == "pending",
               OutboxItem.next_attempt_at <= now,
               OutboxItem.channel.in_(bindparam("channels", expanding=True)),
               OutboxItem.id == oldest_pending)
        .order_by(OutboxItem.id).limit(bindparam("limit", type_=Integer))
    )


DUE_HEADS = _due_heads_query()


class OutboxDispatcher:
    def __init__(self, db: Database, clock: Clock, channels: dict[str, Channel],
                 settings: OutboxSettings, jitter: Callable[[], float] = random.random) -> None:
        self.db = db
        self.clock = clock
        self.channels = channels
        self.settings = settings
        self._jitter = jitter
        self._wake = asyncio.Event()
        self._wakes: dict[str, asyncio.Event] = {}  # one per channel loop of run()
        # Told about every message that could not be delivered, or is held until the
        # customer writes again (the service tells the conversation's agents); nothing
        # fails silently.
        self.on_failed: Callable[[OutboxItem, str, str], Awaitable[None]] | None = None

    def wake(self) -> None:
        self._wake.set()
        for event in self._wakes.values():
            event.set()

    async def _due_heads(self, limit: int, channel: str | None = None) -> list[int]:
        """Ids of due rows that are the oldest pending row of their chat. A row scheduled
        for later and never tried (a proactive message waiting out quiet hours) does not
        hold back the chat's replies; a row being retried does, to keep the order."""
        channels = [channel] if channel else list(self.channels)
        if not channels:
            return []
        async with self.db.engine.connect() as connection:
            result = await connection.execute(DUE_HEADS, {
                "now": self.clock.now(), "channels": channels, "limit": limit})
            return list(result.scalars())

    async def dispatch_due(self, limit: int | None = None) -> int:
        """Send everything that is due now, one row at a time in id order (replay, chat and
        the web chat's request, whose output is deterministic); returns how many rows were
        delivered. At most ``limit`` (default ``[outbox] batch_size``) ids are held at once."""
        limit = limit or self.settings.batch_size
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
        # Core, not the ORM session: a third of the cost, and the dispatcher does this for
        # every reply. The row comes back detached, as a plain OutboxItem.
        async with self.db.engine.begin() as connection:
            claimed = (await connection.execute(
                update(OutboxItem)
                .where(OutboxItem.id == outbox_id, OutboxItem.status == "pending",
                       OutboxItem.next_attempt_at <= now)
                .values(attempts=OutboxItem.attempts + 1,
                        next_attempt_at=now + timedelta(seconds=self.settings.lease_seconds))
                .returning(*OutboxItem.__table__.columns))).first()
        if claimed is None:
            return None  # delivered meanwhile, or claimed by another dispatcher
        return OutboxItem(**claimed._mapping)

    async def _deliver(self, outbox_id: int) -> bool:
        item = await self._claim(outbox_id)
        if item is None:
            return False
        delivery = Delivery.from_payload(item.id, item.chat, item.payload)
        status, error, external_id, retry_after = "sent", None, None, None
        parts_sent: int | None = None
        try:
            with metrics.sending(item.channel):
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
        async with self.db.engine.begin() as connection:
            await connection.execute(update(OutboxItem).where(OutboxItem.id == item.id)
                                     .values(**values))
        metrics.delivered(item.channel, str(values["status"]), item.created_at, now)
        if values["status"] in ("failed", "held") and self.on_failed is not None:
            try:
                await self.on_failed(item, str(values["status"]), error or "")
            except Exception:  # the failure itself is recorded on the row and logged
                log.exception("outbox %d: could not report the failed delivery", item.id)
        return status == "sent"

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: one loop per channel, each on every wake-up and
        every poll interval for retries."""
        async with asyncio.TaskGroup() as group:
            for channel in self.channels:
                group.create_task(self._run_channel(channel, stop), name=f"outbox-{channel}")

    async def _run_channel(self, channel: str, stop: asyncio.Event) -> None:
        """One channel's deliveries in ``serve``, with up to ``[outbox] concurrency`` sends in
        flight. Memory stays bounded however slow the platform: one batch of at most
        ``[outbox] batch_size`` row ids, and one task with its claimed row per send in
        flight; the rest of the backlog waits in the database. The rows of a batch are the
        heads of different chats, and a row being sent stays its chat's head until it is
        done, so concurrent sends keep each chat's order."""
        wake = self._wakes.setdefault(channel, asyncio.Event())
        slots = asyncio.Semaphore(self.settings.concurrency)
        in_flight: dict[int, asyncio.Task[bool]] = {}

        def finished(outbox_id: int, task: asyncio.Task[bool]) -> None:
            in_flight.pop(outbox_id, None)
            slots.release()
            wake.set()  # the chat's next reply may be due now
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error("outbox %d to %s: delivery failed; retrying later", outbox_id,
                          channel, exc_info=error)

        try:
            while not stop.is_set():
                wake.clear()  # before looking, so a wake-up meanwhile is not lost
                try:
                    heads = await self._due_heads(self.settings.batch_size, channel)
                except Exception:  # keep delivering after a database hiccup
                    log.exception("outbox: cannot read the due rows of %s; retrying", channel)
                    heads = []
                started = 0
                for outbox_id in heads:
                    if outbox_id in in_flight:
                        continue
                    await slots.acquire()  # back-pressure: wait for a send to finish
                    if stop.is_set():
                        slots.release()
                        break
                    task = asyncio.create_task(self._deliver(outbox_id))
                    in_flight[outbox_id] = task
                    task.add_done_callback(functools.partial(finished, outbox_id))
                    started += 1
                if started and len(heads) == self.settings.batch_size:
                    continue  # a full batch: more rows may be due, take the next one at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=self.settings.poll_seconds)
        finally:
            if in_flight:  # let the sends under way finish and record their outcome
                await asyncio.gather(*in_flight.values(), return_exceptions=True)
