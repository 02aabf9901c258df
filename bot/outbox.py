"""The outbox dispatcher: every reply waits in the database until its platform accepts it.

Retries use exponential backoff with jitter and honour a platform's ``retry_after``; a reply
that can never be delivered is marked ``failed`` (never dropped silently). Replies to one
chat go out in order: a chat's later replies wait while its oldest pending one is retried.
Each attempt first claims its row with a conditional update (a lease: ``attempts + 1`` and
``next_attempt_at`` pushed to the lease end), so several dispatchers, in one process or
many, never send the same reply twice, and no database transaction stays open while a
platform is called. A claimed row stays its chat's head and is not due until its outcome
is written, so the chat's next reply cannot be claimed before that. A send is cut off (a
temporary failure) at 0.8 of the lease, so its lease cannot run out under it; the loop
never claims its own rows again while they are sent or wait to be written; and an outcome
is written only while the row is still that attempt's claim (same ``attempts``, still
pending), never over a later attempt's or an erasure.

Statements. ``serve`` (one loop per channel) does, per turn of its loop (a turn is started
by a send finishing, a reply being queued, or the poll for retries), one transaction:

* first, writing the outcomes of the sends that finished since the last turn, one
  ``executemany`` UPDATE per kind of outcome (usually one: all sent);
* then one statement finding and claiming (``CLAIM_DUE``): ``WITH
  due_heads (the due heads of this channel), claimable (the oldest of them, LIMIT free
  send slots, FOR UPDATE SKIP LOCKED) UPDATE outbox SET attempts = attempts + 1,
  next_attempt_at = lease end WHERE id IN (SELECT id FROM claimable) AND status =
  'pending' AND next_attempt_at <= now RETURNING *``. The conditions on the updated row
  are checked again on its latest version, so under PostgreSQL's READ COMMITTED a row
  another process claimed meanwhile is simply not returned; there ``SKIP LOCKED`` also
  passes over rows another process is claiming right now rather than waiting for them.

So a busy loop costs about two statements and one transaction per turn whatever the
number of replies in the turn, instead of three statements and two transactions per reply
(one transaction rather than two per turn: PostgreSQL 63–78 → 80–100 messages a second
end to end in the load benchmark, four runs each, alternated). Claiming after the writes
sees them, so a chat whose reply was just recorded can have its next one claimed in the
same turn. If the transaction fails, nothing was claimed and the outcomes are written
again on their own (the claim may be what failed); if that fails too (the database is
away), they are logged and dropped: their rows stay claimed and are sent again when the
lease ends (at-least-once).
``dispatch_due`` (replay, console, the web chat's request) stays one row at a time in id
order: a select of the due heads, then a claim and an outcome per row.

A platform asking to wait (a 429 with ``retry_after``) pauses the whole channel in this
dispatcher (``serve``'s loop and ``dispatch_due``) until then, at most
``PAUSE_CAP_SECONDS``, not only the refused chat, as python-telegram-bot's own rate
limiter does: with many sends in flight, a flood limit is met once rather than by every
send.

Back-pressure: the backlog lives in the database, never in memory. ``serve`` runs one loop
per channel (a slow platform holds up only its own replies); each loop claims at most as
many rows as it has free send slots (``[outbox] concurrency``, and never more than
``[outbox] batch_size`` at once), so every claimed row starts sending at once and no lease
runs while a row waits for a slot. A row is held in memory from its claim until its
outcome is written (and, just written, while its outcome is reported), so however many
rows wait and however slow the platform, a process holds at most channels × concurrency
rows in ``serve``, twice that for the moment a turn reports (and ``batch_size`` ids in
``dispatch_due``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
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


_NOW = bindparam("now", type_=OutboxItem.next_attempt_at.type)
_LEASE_END = bindparam("lease_end", type_=OutboxItem.next_attempt_at.type)


def _due_head_ids(channels: Callable[[Any], ColumnElement[bool]]) -> Select[Any]:
    """Ids of the due rows that are the oldest pending row of their chat, in no order. A
    row scheduled for later and never tried (a proactive message waiting out quiet hours)
    does not hold back the chat's replies; a row being retried, or claimed and being sent,
    does, to keep the order. So per chat, the head is the smallest id among the pending
    rows that are due or were tried, and it is due when it is also the smallest among the
    due ones (``HAVING``).

    One pass over the pending rows, grouped: a correlated "is there an older one" probe
    per due row cost about ten times more (5 ms against 0.6 ms with 300 rows waiting on
    PostgreSQL, 38 ms against 3 ms with 10,000), and the dispatcher looks for heads once
    per claim."""
    older = aliased(OutboxItem, name="blocking")
    return (
        select(func.min(older.id).label("id"))
        .where(older.status == "pending", channels(older),
               or_(older.next_attempt_at <= _NOW, older.attempts > 0))
        .group_by(older.channel, older.chat)
        .having(func.min(older.id) == func.min(case((older.next_attempt_at <= _NOW, older.id))))
    )


# The statements are built once: constructing them costs more than running them (about
# 1 ms of CPU for the ORM aliases), and the dispatcher runs them for every reply or batch.
_HEADS = _due_head_ids(
    lambda older: older.channel.in_(bindparam("channels", expanding=True))).subquery("heads")
# A send may take this share of the lease at most (then it is a temporary failure).
SEND_SHARE_OF_LEASE = 0.8
# The longest a platform's 429 pauses a whole channel: a long retry_after that one busy
# chat earned must not stop every customer's replies for longer.
PAUSE_CAP_SECONDS = 60.0
DUE_HEADS: Select[Any] = (
    select(_HEADS.c.id).order_by(_HEADS.c.id).limit(bindparam("limit", type_=Integer)))


def _claim_due_statement() -> Any:
    """Find and claim up to ``limit`` due heads of ``claim_channel``, oldest first, in one
    statement. The conditions repeated on the updated row are what makes the claim safe
    with several processes: PostgreSQL checks them again on the row's latest version after
    waiting for a concurrent update (READ COMMITTED), so a row claimed or delivered
    meanwhile is not returned. ``SKIP LOCKED`` (PostgreSQL; SQLite has one writer at a
    time and renders nothing) lets a process pass over the rows another one is claiming at
    that moment instead of queueing behind them; it claims fewer rows this turn, and the
    chat of a skipped row is not served out of order, as that row is still its head.

    Both steps are ``MATERIALIZED`` common table expressions, each evaluated once. Inside
    a plain ``IN (sub-select)`` PostgreSQL may run a locking sub-select again for every
    row it looks at (a nested-loop semi-join), each run skipping the rows the statement
    has just claimed and yielding the next ones, so ``LIMIT`` no longer bounds the claim
    (seen: 50 rows claimed for a limit of 4). And ``ORDER BY id LIMIT`` is taken over the
    heads alone, never over the table, where PostgreSQL may walk the primary key through
    all the sent rows first. SQLite (3.35+) accepts the same statement."""
    heads = _due_head_ids(lambda older: older.channel == bindparam("claim_channel")) \
        .cte("due_heads").prefix_with("MATERIALIZED")
    head = aliased(OutboxItem, name="head")
    claimable = (
        select(head.id)
        .where(head.id.in_(select(heads.c.id)
                           # This loop's own rows still being sent, or sent and not
                           # yet written (outside the transaction that claims):
                           # their lease may have run out, but they are not free, and
                           # as their chat's heads they keep the chat waiting.
                           .where(heads.c.id.not_in(bindparam("busy", expanding=True)))
                           .order_by(heads.c.id)
                           .limit(bindparam("limit", type_=Integer))),
               head.status == "pending", head.next_attempt_at <= _NOW)
        .with_for_update(skip_locked=True)
        .cte("claimable").prefix_with("MATERIALIZED")
    )
    return (
        update(OutboxItem)
        .where(OutboxItem.id.in_(select(claimable.c.id)), OutboxItem.status == "pending",
               OutboxItem.next_attempt_at <= _NOW)
        .values(attempts=OutboxItem.attempts + 1, next_attempt_at=_LEASE_END)
        .returning(*OutboxItem.__table__.columns)
    )


CLAIM_DUE = _claim_due_statement()
# One row, for dispatch_due: the same conditional update by id.
CLAIM_ONE = (
    update(OutboxItem)
    .where(OutboxItem.id == bindparam("outbox_id"), OutboxItem.status == "pending",
           OutboxItem.next_attempt_at <= _NOW)
    .values(attempts=OutboxItem.attempts + 1, next_attempt_at=_LEASE_END)
    .returning(*OutboxItem.__table__.columns)
)
# An attempt's outcome. The columns set are the keys of the parameters (the same for a
# whole executemany), besides ``outbox_id`` and ``claimed_attempts``. Only while the row is
# still this attempt's claim: not after the lease ran out and another attempt claimed it
# (its outcome counts), nor after an erasure gave the row up.
MARK = update(OutboxItem).where(OutboxItem.id == bindparam("outbox_id"),
                                OutboxItem.attempts == bindparam("claimed_attempts"),
                                OutboxItem.status == "pending")


@dataclass(slots=True)
class _Outcome:
    """One delivery attempt ended: what to write on its row, then report."""

    item: OutboxItem
    values: dict[str, Any]  # the columns to write, exactly
    error: str | None
    now: datetime
    retry_after: float | None = None  # the platform asked to wait this long (429)

    @property
    def status(self) -> str:
        return str(self.values["status"])


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
        # Channels whose platform asked to wait (a 429 with retry_after): until when. As
        # python-telegram-bot's own rate limiter does, nothing new is sent on the channel
        # meanwhile, so that many sends in flight meet a flood limit once rather than each
        # using up attempts on it; the sends under way finish, outcomes are still written.
        self._paused_until: dict[str, datetime] = {}
        # Told about every message that could not be delivered, or is held until the
        # customer writes again (the service tells the conversation's agents); nothing
        # fails silently.
        self.on_failed: Callable[[OutboxItem, str, str], Awaitable[None]] | None = None

    def _pause(self, channel: str, outcome: _Outcome) -> None:
        """The platform asked to wait (a 429 with ``retry_after``): nothing new is sent
        on the channel until then, at most ``PAUSE_CAP_SECONDS`` (the refused row itself
        waits its whole ``retry_after``)."""
        if outcome.retry_after is None or outcome.retry_after <= 0:
            return
        seconds = min(outcome.retry_after, PAUSE_CAP_SECONDS)
        until = outcome.now + timedelta(seconds=seconds)
        current = self._paused_until.get(channel)
        if current is None:
            log.warning("outbox: %s asked to wait %.1f s; sending nothing more on it until "
                        "then", channel, seconds)
            metrics.paused(channel, True)
        if current is None or until > current:
            self._paused_until[channel] = until

    def pause_left(self, channel: str) -> float:
        """Seconds the channel still waits for its platform (0: not paused); a pause that
        is over ends here."""
        until = self._paused_until.get(channel)
        if until is None:
            return 0.0
        left = (until - self.clock.now()).total_seconds()
        if left > 0:
            return left
        del self._paused_until[channel]
        metrics.paused(channel, False)
        log.info("outbox: sending on %s again", channel)
        return 0.0

    def wake(self) -> None:
        self._wake.set()
        for event in self._wakes.values():
            event.set()

    async def _due_heads(self, limit: int, channel: str | None = None) -> list[int]:
        """Ids of due rows that are the oldest pending row of their chat. A row scheduled
        for later and never tried (a proactive message waiting out quiet hours) does not
        hold back the chat's replies; a row being retried does, to keep the order."""
        channels = [c for c in ([channel] if channel else self.channels)
                    if self.pause_left(c) == 0]
        if not channels:
            return []
        async with self.db.engine.connect() as connection:
            result = await connection.execute(DUE_HEADS, {
                "now": self.clock.now(), "channels": channels, "limit": limit})
            return list(result.scalars())

    async def dispatch_due(self, limit: int | None = None, channel: str | None = None) -> int:
        """Send everything that is due now (of ``channel`` only, given one), one row at a
        time in id order (replay, chat and the web chat's request, whose output is
        deterministic); returns how many rows were delivered. At most ``limit`` (default
        ``[outbox] batch_size``) ids are held at once. A channel whose platform asked to
        wait (``serve``'s pause) is left alone until then."""
        limit = limit or self.settings.batch_size
        delivered = 0
        while True:
            heads = await self._due_heads(limit, channel)
            progressed, paused = 0, False
            for outbox_id in heads:
                outcome = await self._deliver(outbox_id)
                if outcome is None:
                    continue
                if outcome.status == "sent":
                    progressed += 1
                if outcome.item.channel in self._paused_until:
                    # The platform asked to wait: the heads again, without its channel
                    # (each pause takes one channel out, so this ends).
                    paused = True
                    break
            delivered += progressed
            if not heads or (progressed == 0 and not paused):
                return delivered

    async def _claim(self, outbox_id: int) -> OutboxItem | None:
        """Take the row for one delivery attempt: a conditional update that only one
        process or task can win. The claim is a lease: if this process dies while
        sending, the row becomes due again when the lease ends (at-least-once)."""
        now = self.clock.now()
        # Core, not the ORM session: a third of the cost, and the dispatcher does this for
        # every reply. The row comes back detached, as a plain OutboxItem.
        async with self.db.writing(), self.db.engine.begin() as connection:
            claimed = (await connection.execute(CLAIM_ONE, {
                "outbox_id": outbox_id, "now": now, "lease_end": self._lease_end(now)})).first()
        if claimed is None:
            return None  # delivered meanwhile, or claimed by another dispatcher
        return OutboxItem(**claimed._mapping)

    async def _claim_due(self, channel: str, limit: int, look_first: bool = False,
                         busy: Iterable[int] = (),
                         connection: AsyncConnection | None = None) -> list[OutboxItem]:
        """Find and claim, in one statement, up to ``limit`` due heads of ``channel`` (each
        the oldest pending row of its chat), oldest first; rows another dispatcher claims
        meanwhile are left out, and so are the ``busy`` ones (this loop's sends under way or
        not yet written). Each comes back with its lease, like ``_claim``.

        ``look_first``: read whether anything is due before claiming. SQLite has one writer
        at a time and an UPDATE takes the write lock even when it changes nothing, so an
        idle loop claiming on every poll would make the pipeline's writes wait (and wait
        itself, in the busy handler's growing sleeps); a read takes no lock there.

        ``connection``: claim in the caller's transaction (committed by the caller)."""
        now = self.clock.now()
        if look_first:
            async with self.db.engine.connect() as reading:
                if (await reading.execute(DUE_HEADS, {
                        "now": now, "channels": [channel], "limit": 1})).first() is None:
                    return []
        parameters = {"now": now, "lease_end": self._lease_end(now), "claim_channel": channel,
                      "limit": limit, "busy": list(busy)}
        async with contextlib.AsyncExitStack() as stack:
            if connection is None:
                await stack.enter_async_context(self.db.writing())
                connection = await stack.enter_async_context(self.db.engine.begin())
            rows = (await connection.execute(CLAIM_DUE, parameters)).all()
        items = [OutboxItem(**row._mapping) for row in rows]
        items.sort(key=lambda item: item.id)  # RETURNING has no order
        return items

    def _lease_end(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.lease_seconds)

    async def _deliver(self, outbox_id: int) -> _Outcome | None:
        """One row's attempt for ``dispatch_due``: claim, send, write the outcome, report.
        None when the row was not claimed (delivered or claimed meanwhile)."""
        item = await self._claim(outbox_id)
        if item is None:
            return None
        outcome = await self._send(item)
        self._pause(item.channel, outcome)
        await self._write_outcomes([outcome])
        await self._report(outcome)
        return outcome

    async def _send(self, item: OutboxItem) -> _Outcome:
        """Hand a claimed row to its platform and work out what its row becomes; no
        database work, so the outcomes of several sends can be written together."""
        delivery = Delivery.from_payload(item.id, item.chat, item.payload)
        status, error, external_id, retry_after = "sent", None, None, None
        parts_sent: int | None = None
        try:
            # Well inside the lease: a send still under way when its lease ends could be
            # claimed again by another process and go out twice.
            async with asyncio.timeout(self.settings.lease_seconds * SEND_SHARE_OF_LEASE):
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
        except Exception as exc:  # a bug or an unforeseen error: retried, then failed and
            # reported after max_attempts, rather than claimed again forever
            status, error = "pending", f"{type(exc).__name__}: {exc}"[:500]
            log.exception("outbox %d to %s: unexpected error while sending", item.id,
                          item.channel)
        now = self.clock.now()
        values: dict[str, Any] = {"status": status, "last_error": error}
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
        return _Outcome(item, values, error, now,
                        float(retry_after) if retry_after is not None else None)

    async def _write_outcomes(self, outcomes: Iterable[_Outcome],
                              connection: AsyncConnection | None = None) -> None:
        """Write the outcomes of finished sends in one transaction (the caller's, given
        ``connection``): one executemany UPDATE per set of columns written (sent, retry,
        failed or held: usually one)."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for outcome in outcomes:
            groups.setdefault(tuple(sorted(outcome.values)), []).append(
                {"outbox_id": outcome.item.id, "claimed_attempts": outcome.item.attempts,
                 **outcome.values})
        if not groups:
            return
        async with contextlib.AsyncExitStack() as stack:
            if connection is None:
                await stack.enter_async_context(self.db.writing())
                connection = await stack.enter_async_context(self.db.engine.begin())
            for params in groups.values():
                await connection.execute(MARK, params)

    async def _report(self, outcome: _Outcome) -> None:
        """After the outcome is written: the metrics, and the agents told of a reply that
        failed or is held."""
        item, status = outcome.item, outcome.status
        metrics.delivered(item.channel, status, item.created_at, outcome.now)
        if status in ("failed", "held") and self.on_failed is not None:
            try:
                await self.on_failed(item, status, outcome.error or "")
            except Exception:  # the failure itself is recorded on the row and logged
                log.exception("outbox %d: could not report the failed delivery", item.id)

    async def _record(self, channel: str, outcomes: list[_Outcome]) -> None:
        """``serve``, stopping: write the outcomes gathered since the last turn (the list
        is emptied), then report them; a turn that claims nothing."""
        _, written = await self._turn(channel, outcomes, free=0, busy=[], look_first=False)
        for outcome in written:
            await self._report(outcome)

    async def _turn(self, channel: str, outcomes: list[_Outcome], free: int,
                    busy: list[int], look_first: bool) -> tuple[list[OutboxItem],
                                                                list[_Outcome]]:
        """``serve``, one turn of a channel's loop: write the outcomes gathered since the
        last turn (the list is emptied) and claim up to ``free`` due heads other than the
        ``busy`` ones, in one transaction (one BEGIN and COMMIT fewer per turn, and a chat
        whose reply is recorded can have its next one claimed in the same turn). Returns
        the rows claimed and the outcomes written, to report once the sends are started.
        If the claim fails, nothing is claimed and the outcomes are written on their own;
        if they cannot be written, nothing is lost: their rows stay claimed and go out
        again when their lease ends (at-least-once)."""
        batch = outcomes.copy()
        outcomes.clear()
        if not batch:
            if free <= 0:
                return [], []
            try:
                return await self._claim_due(channel, free, look_first=look_first,
                                             busy=busy), []
            except Exception:  # keep delivering after a database hiccup
                log.exception("outbox: cannot claim the due rows of %s; retrying", channel)
                return [], []
        claimed: list[OutboxItem] = []
        written = False
        try:
            async with self.db.writing(), self.db.engine.begin() as connection:
                await self._write_outcomes(batch, connection)
                written = True
                if free > 0:
                    claimed = await self._claim_due(channel, free, busy=busy,
                                                    connection=connection)
            return claimed, batch
        except Exception as exc:
            if not written:
                return self._outcomes_lost(channel, batch, exc)
            log.exception("outbox: cannot claim the due rows of %s; writing the outcomes of "
                          "%d deliveries alone", channel, len(batch))
        # The claim (or the commit) failed, a statement timeout say: the outcomes must not
        # be lost with it, or their replies would go out again after the lease.
        try:
            await self._write_outcomes(batch)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback by _outcomes_lost
            return self._outcomes_lost(channel, batch, exc)
        return [], batch

    @staticmethod
    def _outcomes_lost(channel: str, batch: list[_Outcome],
                       error: Exception) -> tuple[list[OutboxItem], list[_Outcome]]:
        """The database is away: keep delivering, the leases repair it."""
        log.error("outbox: cannot record the outcome of %d deliveries to %s (ids %s); "
                  "they are retried when their lease ends", len(batch), channel,
                  ", ".join(str(outcome.item.id) for outcome in batch), exc_info=error)
        return [], []

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: one loop per channel, each on every wake-up and
        every poll interval for retries."""
        async with asyncio.TaskGroup() as group:
            for channel in self.channels:
                group.create_task(self._run_channel(channel, stop), name=f"outbox-{channel}")

    async def _run_channel(self, channel: str, stop: asyncio.Event) -> None:
        """One channel's deliveries in ``serve``, with up to ``[outbox] concurrency`` sends in
        flight. Each turn, in one transaction, writes the outcomes of the sends that
        finished and claims as many due heads as there are free send slots (``_turn``),
        starts sending them all at once, then reports the outcomes written. Memory stays
        bounded however slow the platform: one claimed row per send slot, from its claim
        until its outcome is written, and for the moment they are reported the rows just
        written (at most as many again); the rest of the backlog waits in the database.
        The rows claimed are the heads of different chats, and a claimed row stays its
        chat's head until its outcome is written, so concurrent sends keep each chat's
        order."""
        wake = self._wakes.setdefault(channel, asyncio.Event())
        in_flight: dict[int, asyncio.Task[_Outcome]] = {}
        finished: list[_Outcome] = []  # sent, not yet written: at most concurrency
        # SQLite: while the claims come back short (idle, or a reply now and then), look
        # before claiming, so an idle loop takes no write lock (see _claim_due).
        idle = True

        def done(outbox_id: int, task: asyncio.Task[_Outcome]) -> None:
            in_flight.pop(outbox_id, None)
            wake.set()  # write the outcome; the chat's next reply may be due then
            if task.cancelled():
                return
            if (error := task.exception()) is not None:
                log.error("outbox %d to %s: delivery failed; retrying when its lease ends",
                          outbox_id, channel, exc_info=error)
                return
            outcome = task.result()
            finished.append(outcome)
            self._pause(channel, outcome)

        async def turn() -> None:
            """A function of its own so that nothing of a turn (the rows written and
            reported, the last one claimed) stays referenced while the loop waits."""
            nonlocal idle
            # The finished sends are written this turn, so their slots are free; a send
            # finishing during the turn moves from in_flight to finished and keeps its slot
            # (and its row, busy) until the next turn writes it.
            free = min(self.settings.concurrency - len(in_flight), self.settings.batch_size)
            if self.pause_left(channel) > 0:
                free = 0
            claimed, written = await self._turn(channel, finished, free, busy=list(in_flight),
                                                look_first=idle and self.db.is_sqlite)
            if free > 0:
                idle = len(claimed) < free
            for item in claimed:
                task = asyncio.create_task(self._send(item))
                in_flight[item.id] = task
                task.add_done_callback(functools.partial(done, item.id))
            for outcome in written:
                await self._report(outcome)

        try:
            while not stop.is_set():
                wake.clear()  # before looking, so a wake-up meanwhile is not lost
                await turn()
                # Until a send finishes, a reply is queued, the poll for retries, or the
                # end of a pause (a pause that ended during the turn: claim at once).
                timeout = self.settings.poll_seconds
                if channel in self._paused_until:
                    if (left := self.pause_left(channel)) == 0:
                        continue
                    timeout = min(timeout, left)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=timeout)
        finally:
            if in_flight:  # let the sends under way finish and record their outcome
                await asyncio.gather(*in_flight.values(), return_exceptions=True)
            await self._record(channel, finished)
            if self._paused_until.pop(channel, None) is not None:
                metrics.paused(channel, False)
