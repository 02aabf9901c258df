"""One scheduler per deployment: two processes on one PostgreSQL, the jobs run in one of
them, and the other takes over when it dies."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bot.clock import ManualClock
from bot.config import load_settings
from bot.db.models import OutboxItem, SlaClock
from bot.jobs import Job
from bot.scheduler import Scheduler
from bot.service import Service
from bot.types import InboundMessage
from tests.conftest import RecordingChannel

REPO = Path(__file__).resolve().parent.parent
HANDOFFS = 8


def start_process(url: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.tools.scheduler_process", url, str(seconds)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_for_line(process: subprocess.Popen[str], prefix: str, timeout: float) -> list[str]:
    """Lines the process printed up to and including the first starting with ``prefix``."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no {prefix!r} line within {timeout}s: {seen}")


async def handoffs(url: str) -> list[int]:
    """Hand-offs whose clocks the test makes due when it wants (see ``make_due``)."""
    service = await Service.start(load_settings(None, database={"url": url}),
                                  migrate=True, channels={"telegram": RecordingChannel("telegram")})
    try:
        for n in range(HANDOFFS):
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=f"tg-{n}", text="/human", external_id=f"m-{n}"))
        async with service.db.sessions.begin() as session:
            far = datetime.now(UTC) + timedelta(days=30)
            await session.execute(update(SlaClock).values(
                deadline_at=far, warn_at=far, next_check_at=far))
            return list((await session.execute(
                select(SlaClock.id).order_by(SlaClock.id))).scalars())
    finally:
        await service.close()


async def make_due(url: str, clock_ids: list[int]) -> None:
    """These clocks' deadlines are now: the leading scheduler breaches them next sweep."""
    service = await Service.start(load_settings(None, database={"url": url}), migrate=False,
                                  channels={})
    try:
        async with service.db.sessions.begin() as session:
            now = datetime.now(UTC)
            await session.execute(update(SlaClock).where(SlaClock.id.in_(clock_ids)).values(
                deadline_at=now, warn_at=now, next_check_at=now))
    finally:
        await service.close()


async def queued_kinds(url: str) -> list[str]:
    service = await Service.start(load_settings(None, database={"url": url}), migrate=False,
                                  channels={})
    try:
        async with service.db.sessions() as session:
            payloads = (await session.execute(select(OutboxItem.payload))).scalars().all()
        return sorted(p["kind"] for p in payloads if p["kind"] in ("sla_breach", "escalation"))
    finally:
        await service.close()


def runs_with_work(lines: list[str], pid: int) -> int:
    return sum(int(line.split()[-1]) for line in lines if line.startswith(f"run {pid} "))


def test_two_scheduler_processes_run_each_job_once_and_hand_over(postgres_url: str) -> None:
    clock_ids = asyncio.run(handoffs(postgres_url))  # two clocks per hand-off
    half = len(clock_ids) // 2
    first = start_process(postgres_url, 120)
    second = None
    try:
        first_lines = wait_for_line(first, "leader", 60)
        second = start_process(postgres_url, 120)
        second_lines = wait_for_line(second, "started", 60)
        asyncio.run(make_due(postgres_url, clock_ids[:half]))
        time.sleep(2.0)  # both alive; the sweep runs every 0.2 s, in the leader only
        first.send_signal(signal.SIGKILL)  # the leader dies without releasing anything
        first.wait(10)
        assert first.stdout is not None
        first_lines += [line.strip() for line in first.stdout.read().splitlines()]
        second_lines += wait_for_line(second, "leader", 30)
        asyncio.run(make_due(postgres_url, clock_ids[half:]))
        time.sleep(2.0)
        second.send_signal(signal.SIGTERM)
        second.wait(20)
        assert second.stdout is not None
        second_lines += [line.strip() for line in second.stdout.read().splitlines()]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert second is not None
    before_takeover = second_lines[:second_lines.index(f"leader {second.pid}")]
    assert not any(line.startswith("run") for line in before_takeover), second_lines
    # Each leader did the work that fell due while it led; none of it twice.
    assert runs_with_work(first_lines, first.pid) == half, first_lines
    assert runs_with_work(second_lines, second.pid) == len(clock_ids) - half, second_lines
    kinds = asyncio.run(queued_kinds(postgres_url))
    assert kinds == ["escalation"] * HANDOFFS + ["sla_breach"] * HANDOFFS


async def test_the_sweep_and_agents_replying_at_the_deadline_do_not_deadlock(
        postgres_url: str) -> None:
    """On PostgreSQL the sweep and agents' replies lock the same rows; taken in the same
    order (conversation, then clock) they never deadlock, and every clock ends once."""
    from bot.agent_actions import perform
    from bot.jobs import sla_sweep

    clock = ManualClock(datetime(2026, 12, 7, 2, 0, tzinfo=UTC))  # Monday 10:00 Shanghai
    service = await Service.start(load_settings(None, database={"url": postgres_url}),
                                  clock=clock, migrate=True,
                                  channels={"telegram": RecordingChannel("telegram")})
    try:
        chats = [f"tg-{n}" for n in range(20)]
        for n, chat in enumerate(chats):
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=chat, text="/human", external_id=f"m-{n}"))
            await perform(service, chat, "agent-1", "take")
        clock.advance(timedelta(hours=2))  # exactly at the first-response deadlines
        results = await asyncio.gather(
            sla_sweep(service), sla_sweep(service),
            *(perform(service, chat, "agent-1", "reply", text="Here I am.") for chat in chats))
        assert all(r.result["ok"] for r in results[2:])
        async with service.db.sessions() as session:
            clocks = (await session.execute(select(SlaClock).where(
                SlaClock.kind == "first_response"))).scalars().all()
            breaches = (await session.execute(select(OutboxItem.payload))).scalars().all()
        assert len(clocks) == 20 and all(c.status in ("met", "breached") for c in clocks)
        breached = [c for c in clocks if c.breached_at is not None]
        assert len([p for p in breaches if p["kind"] == "sla_breach"]) == len(breached)
    finally:
        await service.close()


# --- stopping: the running jobs finish, or end quietly after the grace period ------------------

async def run_scheduler_with(service: Service, job: Job, started: asyncio.Event,
                             ) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(Scheduler(service, [job]).run(stop))
    await asyncio.wait_for(started.wait(), 10)
    return stop, task


async def test_a_job_running_at_shutdown_finishes_before_the_scheduler_stops(
        service: Service, caplog: pytest.LogCaptureFixture) -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow(_: Service) -> int:
        started.set()
        await release.wait()
        finished.set()
        return 0

    stop, task = await run_scheduler_with(service, Job("slow", timedelta(hours=1), slow), started)
    stop.set()
    await asyncio.sleep(0.2)
    assert not task.done()  # waiting for the run, not cancelling it
    release.set()
    await asyncio.wait_for(task, 10)
    assert finished.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_a_job_outlasting_the_grace_period_is_stopped_with_a_warning_not_an_error(
        service: Service, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """APScheduler cancels what is still running at shutdown and would log the cancel as a
    job error with a traceback; a planned stop is not an error."""
    monkeypatch.setattr("bot.scheduler.JOB_STOP_GRACE_SECONDS", 0.3)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(_: Service) -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    stop, task = await run_scheduler_with(service, Job("endless", timedelta(hours=1), endless),
                                          started)
    stop.set()
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(cancelled.wait(), 5)
    await asyncio.sleep(0.05)  # APScheduler's done-callback runs after the task ends
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    assert "job endless stopped unfinished (this process stops running the jobs)" \
        in caplog.text
