"""One supportbot scheduler in a process of its own, for the multi-process test:

    python -m tests.tools.scheduler_process DATABASE_URL SECONDS

Prints ``leader <pid>`` when this process takes the advisory lock and ``run <pid> <job>
<n>`` after each job run (n = messages queued), then exits after SECONDS (or when killed).
Only the SLA sweep runs, every 0.2 s, so the test sees many chances to run twice.
"""

from __future__ import annotations

import asyncio
import os
import sys

from bot.config import load_settings
from bot.jobs import JOBS, Job
from bot.scheduler import Scheduler
from bot.service import Service


async def main(url: str, seconds: float) -> None:
    settings = load_settings(None, database={"url": url},
                             scheduler={"sweep_seconds": 0.2, "lock_retry_seconds": 0.3})
    service = await Service.start(settings, migrate=False, channels={})
    pid = os.getpid()

    def counted(job: Job) -> Job:
        async def run(service: Service) -> int:
            done = await job.run(service)
            print(f"run {pid} {job.name} {done}", flush=True)
            return done
        return Job(job.name, job.every, run)

    scheduler = Scheduler(service, [counted(j) for j in JOBS if j.name == "sla_sweep"])
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))

    async def announce() -> None:
        await scheduler.is_leader.wait()
        print(f"leader {pid}", flush=True)

    announcer = asyncio.create_task(announce())
    print(f"started {pid}", flush=True)
    await asyncio.sleep(seconds)
    stop.set()
    await task
    announcer.cancel()
    await service.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
