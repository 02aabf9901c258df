"""Scenario replay (contract of DESIGN.md): a JSON Lines scenario through the full pipeline
on a simulated clock, printing one JSON line for everything the bot sends or decides."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy import func, select

from bot.channels.base import Delivery
from bot.clock import ManualClock
from bot.config import Settings
from bot.db.models import Order, OutboxItem
from bot.importer import (
    ImportError_,
    OrderEventRecord,
    apply_batch,
    apply_order_event,
    validate_records,
)
from bot.pipeline import InvalidMessage
from bot.service import Service
from bot.types import InboundMessage

AGENT_ACTIONS = ("take", "reply", "note", "transfer", "accept", "release", "resolve")
KNOWN_CHANNELS = ("telegram", "wechat", "webchat", "console", "slack")


class ScenarioError(Exception):
    """The scenario file is malformed; the message names the line."""


class ReplayFailure(Exception):
    """The bot failed while handling an event: a bug, reported with the event's line."""


@dataclass
class Event:
    line: int
    at: datetime | None
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        for key in ("setup", "order_event", "tick"):
            if key in self.data:
                return key
        return str(self.data.get("from"))


def _parse_at(line: int, value: Any) -> datetime:
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        raise ScenarioError(f"line {line}: 'at' is not an ISO 8601 time: {value!r}") from None
    if at.utcoffset() is None:
        raise ScenarioError(f"line {line}: 'at' needs a timezone offset, e.g. +08:00")
    return at


def _require(line: int, data: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if not isinstance(data.get(k), str) or not data.get(k)]
    if missing:
        raise ScenarioError(f"line {line}: missing or empty {', '.join(repr(k) for k in missing)}")


def parse_scenario(text: str) -> list[Event]:
    events: list[Event] = []
    previous: datetime | None = None
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ScenarioError(f"line {line}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ScenarioError(f"line {line}: expected a JSON object")
        if "setup" in data:
            if not isinstance(data["setup"], dict):
                raise ScenarioError(f"line {line}: 'setup' must be an object")
            events.append(Event(line, None, data))
            continue
        if "at" not in data:
            raise ScenarioError(f"line {line}: every event except setup needs 'at'")
        at = _parse_at(line, data["at"])
        if previous is not None and at < previous:
            raise ScenarioError(f"line {line}: events must be in time order "
                                f"({data['at']} is before the previous event)")
        previous = at
        event = Event(line, at, data)
        if event.kind == "customer":
            _require(line, data, "channel", "chat", "text")
        elif event.kind == "agent":
            _require(line, data, "agent", "action", "chat")
            if data["action"] not in AGENT_ACTIONS:
                raise ScenarioError(f"line {line}: unknown agent action {data['action']!r}; "
                                    f"use one of {', '.join(AGENT_ACTIONS)}")
        elif event.kind == "order_event":
            if not isinstance(data["order_event"], dict):
                raise ScenarioError(f"line {line}: 'order_event' must be an object")
        elif event.kind != "tick":
            raise ScenarioError(f"line {line}: unknown event; expected setup, a customer or "
                                "agent message, order_event or tick")
        events.append(event)
    return events


@dataclass
class RecordingChannel:
    """Stands in for a platform: every delivery becomes an output line."""

    name: str
    emit: Callable[[dict[str, Any]], None]

    async def send(self, delivery: Delivery) -> str | None:
        line: dict[str, Any] = {"to": delivery.to}
        if delivery.to == "customer":
            line.update(channel=self.name, chat=delivery.chat, kind=delivery.kind,
                        lang=delivery.lang, intent=delivery.intent, text=delivery.text)
        else:
            line.update(chat=delivery.chat, kind=delivery.kind, text=delivery.text,
                        owner=delivery.owner)
        if delivery.buttons:
            line["buttons"] = [b["label"] for b in delivery.buttons]
        if delivery.attachments:
            line["attachments"] = [a["name"] for a in delivery.attachments]
        self.emit(line)
        return f"replay-{delivery.outbox_id}"


@dataclass
class Replayer:
    service: Service
    clock: ManualClock
    write: Callable[[str], None]
    warn: Callable[[str], None]
    output_tz: tzinfo | None = None
    lines_written: int = field(default=0)

    def emit(self, line: dict[str, Any]) -> None:
        at = self.clock.now().astimezone(self.output_tz) if self.output_tz else self.clock.now()
        self.write(json.dumps({"at": at.isoformat(), **line}, ensure_ascii=False))
        self.lines_written += 1

    async def run(self, events: list[Event]) -> None:
        for event in events:
            if event.kind == "tick" and event.at is not None:
                await self._sweep_until(event.at)
            if event.at is not None:
                self.clock.set(event.at)
                self.output_tz = event.at.tzinfo
            try:
                await getattr(self, f"_{event.kind}")(event)
            except ScenarioError:
                raise
            except Exception as exc:
                raise ReplayFailure(f"line {event.line}: {type(exc).__name__}: {exc}") from exc
            # One row per round: the output keeps the order in which replies were queued.
            await self.service.outbox.dispatch_due(limit=1)

    async def _setup(self, event: Event) -> None:
        setup = event.data["setup"]
        unknown = set(setup) - {"customers", "orders", "order_events"}
        if unknown:
            raise ScenarioError(f"line {event.line}: setup: unknown key(s) {sorted(unknown)}")
        rows = [(event.line, {kind[:-1]: record}) for kind in ("customers", "orders",
                                                               "order_events")
                for record in setup.get(kind, [])]
        try:
            batch = validate_records(rows)
            async with self.service.db.sessions.begin() as session:
                await apply_batch(session, batch, self.clock.now(), source="replay")
        except ImportError_ as exc:
            raise ScenarioError("setup: " + "; ".join(exc.problems)) from None

    async def _customer(self, event: Event) -> None:
        data = event.data
        inbound = InboundMessage(
            channel=data["channel"], chat=data["chat"], text=data["text"],
            external_id=str(data.get("id") or f"replay-{event.line}"), user=data.get("user"),
            language_hint=data.get("language_code"), received_at=event.at,
        )
        try:
            await self.service.pipeline.handle(inbound)
        except InvalidMessage as exc:
            self.emit({"event": "rejected", "channel": inbound.channel, "chat": inbound.chat,
                       "reason": exc.reason})

    async def _agent(self, event: Event) -> None:
        from bot.agent_actions import perform

        data = event.data
        outcome = await perform(self.service, data["chat"], data["agent"], data["action"],
                                text=data.get("text"), to=data.get("to"))
        for line in outcome.events:
            self.emit(line)

    async def _order_event(self, event: Event) -> None:
        try:
            batch = validate_records([(event.line, event.data["order_event"])], "order_event")
        except ImportError_ as exc:
            raise ScenarioError("; ".join(exc.problems)) from None
        record: OrderEventRecord = batch.order_events[0][1]
        async with self.service.db.sessions.begin() as session:
            if await session.scalar(select(Order.id).where(Order.number == record.number)) is None:
                raise ScenarioError(f"line {event.line}: order {record.number!r} does not exist")
            await apply_order_event(session, record, self.clock.now(), source="replay")
        # The alert job is due the moment an order changes; run it as the scheduler would.
        from bot.jobs import order_alerts

        await order_alerts(self.service)

    async def _sweep_until(self, until: datetime) -> None:
        """Before a tick, live through the time since the last event: run each job at the
        moment it had work (an SLA warning at 10:06, a breach at 10:30, a follow-up 48 h
        after delivery) and deliver each queued message when it became due (quiet hours,
        retries), so every line carries the time it happened."""
        from bot.jobs import JOBS

        for _ in range(100_000):  # each round moves time on; the bound only guards a bug
            dues = {job.name: await job.next_due(self.service) for job in JOBS if job.next_due}
            async with self.service.db.sessions() as session:
                dues["outbox"] = await session.scalar(
                    select(func.min(OutboxItem.next_attempt_at))
                    .where(OutboxItem.status == "pending"))
            due = min((t for t in dues.values() if t is not None), default=None)
            if due is None or due >= until:
                return
            moved = due > self.clock.now()
            if moved:
                self.clock.set(due)
            now = self.clock.now()
            done = 0
            for job in JOBS:
                job_due = dues.get(job.name)
                if job_due is not None and job_due <= now:
                    done += await job.run(self.service)
            done += await self.service.outbox.dispatch_due(limit=1)
            if not (moved or done):
                return  # what is due cannot be done here (e.g. a channel replay lacks)

    async def _tick(self, event: Event) -> None:
        """Run the jobs due now. The clock already stands at the tick's time; SLA warnings
        and breaches that fell due since the last event were run at their own instants
        (see ``run``), as the minutely sweep would have."""
        from bot.jobs import run_all

        await run_all(self.service)


def replay_channels(events: list[Event], emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    names = set(KNOWN_CHANNELS) | {e.data["channel"] for e in events if e.kind == "customer"}
    return {name: RecordingChannel(name, emit) for name in sorted(names)}


async def run_replay(settings: Settings, events: list[Event], database_url: str,
                     write: Callable[[str], None], warn: Callable[[str], None]) -> int:
    """Replay ``events`` on a database at ``database_url``; returns the lines written."""
    first = next((e.at for e in events if e.at is not None), None)
    clock = ManualClock(first or datetime.now(UTC))
    replayer = Replayer(service=None, clock=clock, write=write, warn=warn)  # type: ignore[arg-type]
    channels = replay_channels(events, replayer.emit)
    replayer.service = await Service.start(settings, clock=clock, channels=channels,
                                           migrate=True, database_url=database_url)
    try:
        await replayer.run(events)
    finally:
        await replayer.service.close()
    return replayer.lines_written
