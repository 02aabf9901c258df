"""One scheduler per deployment: APScheduler runs the jobs of ``bot.jobs`` in the process
that holds a PostgreSQL advisory lock.

Every ``supportbot serve`` process starts a ``Scheduler``; each tries to take the lock on a
connection of its own. The one that gets it runs the jobs; the others retry every
``[scheduler] lock_retry_seconds``. When the leader dies its connection closes, PostgreSQL
releases the lock, and the next process to try takes over. With SQLite (one process) the
process simply runs the jobs. The jobs themselves are idempotent, so even an overlap at a
hand-over (a leader that lost its connection but was still finishing a run) sends nothing
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.jobs import JOBS, Job
from bot.service import Service

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: any constant shared by every process of one deployment.
LOCK_KEY = 0x53555050_4F52  # "SUPPOR"
MINUTELY = timedelta(minutes=1)
# Server-side TCP keepalive on the lock's connection: a vanished leader is dropped, and its
# lock released, after about 30 + 3 x 10 seconds.
KEEPALIVE_SETTINGS = ("SET tcp_keepalives_idle = 30", "SET tcp_keepalives_interval = 10",
                      "SET tcp_keepalives_count = 3")
# At shutdown (or when the lock is lost) the jobs already running get this long to finish
# before they are cancelled; a cancelled run is redone by the next one (the jobs are
# idempotent), so the wait only spares the work, it guards nothing.
JOB_STOP_GRACE_SECONDS = 5.0


class Scheduler:
    def __init__(self, service: Service, jobs: Sequence[Job] = JOBS) -> None:
        self.service = service
        self.jobs = jobs
        self.settings = service.settings.scheduler
        self.is_leader = asyncio.Event()
        self._lock_connection: AsyncConnection | None = None
        self._running_jobs: set[asyncio.Task[object]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Take part in leader election until ``stop``; run the jobs while leading."""
        while not stop.is_set():
            if await self._acquire():
                log.info("scheduler: this process (pid %d) runs the jobs", os.getpid())
                scheduler = self._start_jobs()
                self.is_leader.set()
                try:
                    await self._hold(stop)
                finally:
                    self.is_leader.clear()
                    await self._stop_jobs(scheduler)
                    await self._release()
                if not stop.is_set():
                    log.warning("scheduler: lost the lock; another process may take over")
            await _wait(stop, self.settings.lock_retry_seconds)

    def _start_jobs(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone="UTC")
        for job in self.jobs:
            seconds = self.settings.sweep_seconds if job.every <= MINUTELY \
                else job.every.total_seconds()
            # Each job runs once right away, then on its interval.
            scheduler.add_job(self._run_job, IntervalTrigger(seconds=seconds), args=[job],
                              id=job.name, max_instances=1, coalesce=True,
                              misfire_grace_time=None, next_run_time=datetime.now(UTC))
        scheduler.start()
        return scheduler

    async def _stop_jobs(self, scheduler: AsyncIOScheduler) -> None:
        """Start no more runs, give the running ones ``JOB_STOP_GRACE_SECONDS`` to finish,
        then cancel what is left (APScheduler's shutdown cancels its pending tasks)."""
        scheduler.pause()
        if self._running_jobs:
            await asyncio.wait(set(self._running_jobs), timeout=JOB_STOP_GRACE_SECONDS)
        scheduler.shutdown(wait=False)

    async def _run_job(self, job: Job) -> None:
        task = asyncio.current_task()
        assert task is not None  # APScheduler runs coroutine jobs as tasks
        self._running_jobs.add(task)
        try:
            done = await job.run(self.service)
        except asyncio.CancelledError:
            # Only _stop_jobs cancels a run (shutdown, or the lock lost), after the grace
            # period; the run's transaction is rolled back and the next run does its work. Ending the
            # task normally keeps APScheduler from reporting the cancel as a job error.
            log.warning("scheduler: job %s stopped unfinished (this process stops running "
                        "the jobs); its next run does the rest", job.name)
            return
        except Exception:  # one failed run must not stop the schedule; the next run retries
            log.exception("scheduler: job %s failed", job.name)
            return
        finally:
            self._running_jobs.discard(task)
        if done:
            log.info("scheduler: %s: %d", job.name, done)

    async def _acquire(self) -> bool:
        db = self.service.db
        if not db.is_postgres:
            return True
        connection: AsyncConnection | None = None
        try:
            connection = await db.engine.connect()
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            # If this host dies without closing the socket, the server must notice soon
            # (not after the system's default two hours) so another process takes over.
            for setting in KEEPALIVE_SETTINGS:
                await connection.execute(text(setting))
            got = await connection.scalar(text("SELECT pg_try_advisory_lock(:key)"),
                                          {"key": LOCK_KEY})
        except (SQLAlchemyError, OSError) as exc:
            log.warning("scheduler: cannot reach the database for the lock: %s", exc)
            got = False
        if not got:
            if connection is not None:
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await connection.close()
            return False
        self._lock_connection = connection
        return True

    async def _hold(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set or the lock's connection is gone."""
        while not stop.is_set():
            await _wait(stop, self.settings.lock_retry_seconds)
            if self._lock_connection is None:
                continue
            try:
                await self._lock_connection.scalar(text("SELECT 1"))
            except (SQLAlchemyError, OSError):
                return

    async def _release(self) -> None:
        connection, self._lock_connection = self._lock_connection, None
        if connection is None:
            return
        with contextlib.suppress(SQLAlchemyError, OSError):
            await connection.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        with contextlib.suppress(SQLAlchemyError, OSError):
            await connection.close()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
