"""One scheduler per deployment: two processes on one PostgreSQL, the jobs run in one of
them, and the other takes over when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from bot.clock import ManualClock
from bot.config import load_settings
from bot.db.models import OutboxItem
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


async def overdue_handoffs(url: str) -> None:
    """Hand-offs made a week ago (in the past for the processes' real clocks), so every
    SLA clock is overdue the moment a scheduler looks."""
    clock = ManualClock(datetime(2026, 11, 16, 2, 0, tzinfo=UTC))  # a Monday, 10:00 Shanghai
    service = await Service.start(load_settings(None, database={"url": url}), clock=clock,
                                  migrate=True, channels={"telegram": RecordingChannel("telegram")})
    try:
        for n in range(HANDOFFS):
            await service.pipeline.handle(InboundMessage(
                channel="telegram", chat=f"tg-{n}", text="/human", external_id=f"m-{n}"))
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


def test_two_scheduler_processes_run_each_job_once_and_hand_over(postgres_url: str) -> None:
    asyncio.run(overdue_handoffs(postgres_url))
    first = start_process(postgres_url, 60)
    second = None
    try:
        before = wait_for_line(first, "leader", 30)
        second = start_process(postgres_url, 60)
        wait_for_line(second, "started", 30)
        time.sleep(2.0)  # both alive: the sweep runs every 0.2 s, in the leader only
        first.send_signal(signal.SIGKILL)  # the leader dies without releasing anything
        first.wait(10)
        assert first.stdout is not None
        first_lines = before + [line.strip() for line in first.stdout.read().splitlines()]
        taken_over = wait_for_line(second, "leader", 30)
        time.sleep(1.0)
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    first_pid, second_pid = str(first.pid), str(second.pid)
    runs_by_first = [line for line in first_lines if line.startswith(f"run {first_pid}")]
    assert runs_by_first, first_lines
    # While the first held the lock the second ran nothing: its first line after "started"
    # is its own "leader" line.
    assert not any(line.startswith("run") for line in taken_over[:-1]), taken_over
    assert taken_over[-1] == f"leader {second_pid}"
    # Every overdue clock produced exactly one message, whoever ran the sweep.
    kinds = asyncio.run(queued_kinds(postgres_url))
    assert kinds == ["escalation"] * HANDOFFS + ["sla_breach"] * HANDOFFS
