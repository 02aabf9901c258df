"""Prometheus metrics, served as text on ``GET /metrics`` by ``supportbot serve``.

Two kinds of figures, and they aggregate differently:

* **Counters, histograms and the in-flight gauge of this process**: inbound messages by
  channel (stored, duplicates, refused), processing latency (message stored → its replies
  queued), outbox deliveries by channel and result (``sent``, ``retry``, ``failed``,
  ``held``), delivery latency (reply queued → handed to the channel), sends in flight, and
  the process's own CPU, memory and file descriptors. Each ``serve`` process counts only
  its own work, so Prometheus scrapes every process (one target each) and adds them up:
  ``sum without (instance) (rate(...))``.
* **Gauges read from the database at scrape time** (back-pressure): outbox rows pending,
  due now, held and failed, the age of the oldest pending reply, inbound messages not yet
  processed. They describe the whole deployment, so every process reports the same
  figures: aggregate them with ``max``, never ``sum``. ``supportbot_database_up`` is 0 when
  they could not be read (the process figures are served anyway).

Labels are bounded: channel names and fixed result words, never a chat or a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import case, func, or_, select

from bot.db.database import Database
from bot.db.models import Message, OutboxItem

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
SCRAPE_TIMEOUT_SECONDS = 5.0

# The process's own metrics: one registry for the module, never the library's global one,
# so nothing else registered in the process leaks into /metrics.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, cpu seconds, fds
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

INBOUND = Counter(
    "supportbot_inbound_messages", "Customer messages stored (new, not duplicates).",
    ["channel"], registry=REGISTRY)
INBOUND_DUPLICATES = Counter(
    "supportbot_inbound_duplicates",
    "Redelivered platform messages recognised as duplicates (nothing stored).",
    ["channel"], registry=REGISTRY)
INBOUND_REJECTED = Counter(
    "supportbot_inbound_rejected",
    "Customer messages refused before storage (empty, too long, invalid text).",
    ["channel"], registry=REGISTRY)
PROCESSING = Histogram(
    "supportbot_processing_seconds",
    "From a customer message stored to its replies queued in the outbox.",
    ["channel"], registry=REGISTRY,
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0))
DELIVERIES = Counter(
    "supportbot_outbox_deliveries",
    "Delivery attempts by channel and result: sent, retry (rescheduled), failed, held.",
    ["channel", "result"], registry=REGISTRY)
DELIVERY_LATENCY = Histogram(
    "supportbot_outbox_delivery_seconds",
    "From a reply queued to the channel accepting it (retries and scheduled waits such as "
    "quiet hours included).",
    ["channel"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
             300.0, 1800.0, 3600.0))
IN_FLIGHT = Gauge(
    "supportbot_outbox_in_flight",
    "Sends this process has handed to a channel and not yet seen answered.",
    ["channel"], registry=REGISTRY)

PAUSED = Gauge(
    "supportbot_outbox_paused",
    "1 while this process sends nothing on the channel because the platform asked it to "
    "wait (a 429 with retry_after), else 0.",
    ["channel"], registry=REGISTRY)

DELIVERY_RESULTS = ("sent", "retry", "failed", "held")


def inbound(channel: str, *, duplicate: bool) -> None:
    (INBOUND_DUPLICATES if duplicate else INBOUND).labels(channel).inc()


def inbound_rejected(channel: str) -> None:
    INBOUND_REJECTED.labels(channel).inc()


def processed(channel: str, stored_at: datetime, now: datetime) -> None:
    PROCESSING.labels(channel).observe(max(0.0, (now - stored_at).total_seconds()))


@contextlib.contextmanager
def sending(channel: str) -> Iterator[None]:
    gauge = IN_FLIGHT.labels(channel)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def paused(channel: str, pausing: bool) -> None:
    PAUSED.labels(channel).set(1 if pausing else 0)


def delivered(channel: str, status: str, queued_at: datetime, now: datetime) -> None:
    """One delivery attempt ended; ``status`` is the row's new status (``pending`` is a
    retry)."""
    result = "retry" if status == "pending" else status
    DELIVERIES.labels(channel, result).inc()
    if result == "sent":
        DELIVERY_LATENCY.labels(channel).observe(max(0.0, (now - queued_at).total_seconds()))


async def database_metrics(db: Database, now: datetime,
                           channels: Iterable[str] = ()) -> list[Metric]:
    """The back-pressure gauges, read now. ``channels`` always get a series (0 when idle)."""
    waiting = or_(OutboxItem.next_attempt_at <= now, OutboxItem.attempts > 0)
    outbox = (
        select(OutboxItem.channel, OutboxItem.status, func.count(),
               func.sum(case((OutboxItem.next_attempt_at <= now, 1), else_=0)),
               func.min(case((waiting, OutboxItem.created_at))))
        .where(OutboxItem.status.in_(("pending", "held", "failed")))
        .group_by(OutboxItem.channel, OutboxItem.status)
    )
    unprocessed = (select(func.count(), func.min(Message.created_at))
                   .where(Message.direction == "in", Message.processed_at.is_(None)))
    async with db.sessions() as session:
        rows = (await session.execute(outbox)).all()
        inbound_row = (await session.execute(unprocessed)).one()

    names = sorted(set(channels) | {row[0] for row in rows})
    pending = dict.fromkeys(names, 0)
    due = dict.fromkeys(names, 0)
    held = dict.fromkeys(names, 0)
    failed = dict.fromkeys(names, 0)
    oldest: dict[str, float] = dict.fromkeys(names, 0.0)
    for channel, status, count, due_count, first in rows:
        if status == "pending":
            pending[channel] = count
            due[channel] = int(due_count or 0)
            if first is not None:
                oldest[channel] = max(0.0, (now - first).total_seconds())
        elif status == "held":
            held[channel] = count
        else:
            failed[channel] = count

    def family(name: str, doc: str, values: dict[str, int] | dict[str, float]) -> Metric:
        metric = GaugeMetricFamily(name, doc, labels=["channel"])
        for channel in names:
            metric.add_metric([channel], values[channel])
        return metric

    count, first_unprocessed = inbound_row
    return [
        family("supportbot_outbox_pending_rows",
               "Replies waiting in the outbox (due now, scheduled later, being sent or "
               "waiting for a retry); deployment-wide.", pending),
        family("supportbot_outbox_due_rows",
               "Pending replies whose time has come and that no dispatcher holds: the "
               "delivery backlog; deployment-wide.", due),
        family("supportbot_outbox_oldest_pending_age_seconds",
               "Age of the oldest pending reply that is due or being retried (0 when none); "
               "deployment-wide.", oldest),
        family("supportbot_outbox_held_rows",
               "Replies held until the customer writes again (WeChat's 48-hour window); "
               "deployment-wide.", held),
        family("supportbot_outbox_failed_rows",
               "Replies that can never be delivered, kept for the operator; "
               "deployment-wide.", failed),
        GaugeMetricFamily("supportbot_inbound_unprocessed_messages",
                          "Stored customer messages not processed yet; deployment-wide.",
                          value=count or 0),
        GaugeMetricFamily("supportbot_inbound_unprocessed_oldest_age_seconds",
                          "Age of the oldest unprocessed customer message (0 when none); "
                          "deployment-wide.",
                          value=max(0.0, (now - first_unprocessed).total_seconds())
                          if first_unprocessed is not None else 0.0),
    ]


class _Scrape:
    """What one scrape shows: the process's registry plus the gauges just read."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()
        yield from self.families


async def render(db: Database, now: datetime, channels: Iterable[str] = (),
                 timeout: float = SCRAPE_TIMEOUT_SECONDS) -> bytes:
    """The text exposition for ``GET /metrics``. A database that does not answer within
    ``timeout`` gives ``supportbot_database_up 0`` instead of the database gauges."""
    started = time.perf_counter()
    families: list[Metric] = []
    up = 1
    try:
        async with asyncio.timeout(timeout):
            families = await database_metrics(db, now, channels)
    except Exception as exc:  # noqa: BLE001 - the process figures are served anyway
        up = 0
        log.warning("metrics: cannot read the backlog from the database: %s",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    families.append(GaugeMetricFamily(
        "supportbot_database_up", "1 when the database gauges could be read for this scrape.",
        value=up))
    families.append(GaugeMetricFamily(
        "supportbot_metrics_database_seconds",
        "Time this scrape spent reading the database gauges.",
        value=time.perf_counter() - started))
    return generate_latest(_Scrape(families))  # type: ignore[arg-type]
