"""The load benchmark in reduced form: real ``supportbot serve`` processes take Telegram
webhooks at a steady rate and flat out, and every acknowledged message gets exactly one
reply at the Bot API stand-in (bench/load_bench.py --check). The figures it prints are
for ``make bench``; nothing here is judged by time."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import BACKEND, PG_ADMIN_URL, REPO, pg_reachable


def test_every_acknowledged_message_is_answered_once_under_load() -> None:
    if BACKEND == "sqlite":
        configs, processes = "sqlite:1", 1
    else:
        if not pg_reachable():
            pytest.skip(f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string()}")
        configs, processes = "postgresql:2", 2  # two processes on one database, requests spread over both
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "load_bench.py"), "--configs", configs,
         "--messages", "60", "--rates", "40", "--concurrency", "4", "--breakdown", "0",
         "--bare-rounds", "50", "--pg-admin", PG_ADMIN_URL, "--check"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "every acknowledged message answered exactly once" in output, output[-4000:]
    # Three runs (saturated, paced, 70 % of capacity) of 60 messages per process.
    assert f"check: {3 * 60 * processes} messages in 3 runs" in output, output[-4000:]
    assert "capacity" in output and "bare INSERT + COMMIT" in output, output[-4000:]
