"""``supportbot serve`` as a real process: start, health, clean stop, clear start-up errors."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SECRET = "SUPERSECRET"


def supportbot_command() -> list[str]:
    script = Path(sys.executable).with_name("supportbot")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bot.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    env.update(extra)
    return env


def run_serve(tmp_path: Path, *args: str, timeout: float,
              **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*supportbot_command(), *args], cwd=tmp_path, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def wait_healthy(process: subprocess.Popen[bytes], url: str, stderr: Path,
                 limit: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode} before it was healthy:\n"
                        f"{stderr.read_text(errors='replace')}")
        try:
            response = httpx.get(url, timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        return response
    pytest.fail(f"serve was not healthy within {limit:.0f} s:\n"
                f"{stderr.read_text(errors='replace')}")


def test_serve_answers_health_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "serve.db"
    port = free_port()
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*supportbot_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=clean_env(SUPPORTBOT_DATABASE__URL=f"sqlite:///{db}"),
            stdout=out, stderr=err)
    try:
        response = wait_healthy(process, f"http://127.0.0.1:{port}/healthz", stderr)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5.0)
        assert page.status_code == 200 and 'id="composer"' in page.text
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    log = stderr.read_text(errors="replace")
    assert returncode == 0, log
    assert "Traceback" not in log
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"messages", "conversations", "contacts", "outbox"} <= tables, tables
    assert len(revision) == 1 and revision[0][0]
    # Closed cleanly: the service disposed of its engine, so SQLite folded its WAL back.
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_serve_with_an_unreachable_database_exits_3(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "serve", "--port", str(free_port()), timeout=20,
                       SUPPORTBOT_DATABASE__URL="postgresql://postgres@127.0.0.1:1/nope")
    assert result.returncode == 3, result.stderr
    assert "cannot connect to database" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_with_a_malformed_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[web]\nport = "abc"\n', encoding="utf-8")
    result = run_serve(tmp_path, "serve", "--config", str(config), timeout=20,
                       SUPPORTBOT_TELEGRAM__TOKEN=f"123:{SECRET}")
    assert result.returncode == 2, result.stderr
    assert "web.port" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("config, extra_env, key", [
    ('[web]\nprot = 8080\n', {}, "web.prot"),
    ("", {"SUPPORTBOT_TELEGRAM__BOGUS": "1"}, "telegram.bogus"),
    ('[telegram]\ntokn = "x"\n', {"SUPPORTBOT_WEB__PORT": "abc"}, "web.port"),
], ids=["toml-key", "env-key", "env-value"])
def test_config_errors_never_show_the_telegram_token(tmp_path: Path, config: str,
                                                     extra_env: dict[str, str], key: str) -> None:
    path = tmp_path / "supportbot.toml"
    path.write_text(config, encoding="utf-8")
    result = run_serve(tmp_path, "--log-level", "DEBUG", "serve", "--config", str(path),
                       timeout=20, SUPPORTBOT_TELEGRAM__TOKEN=f"123:{SECRET}", **extra_env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert key in output
    assert SECRET not in output
    assert "Traceback" not in output


async def test_serve_hides_what_it_loaded_at_start_from_the_garbage_collector(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Knowledge, classifier and libraries live as long as the process: frozen before the
    first request, they are not walked by every full collection under load."""
    import gc

    from bot.config import load_settings
    from bot.web import server

    frozen: list[int] = []

    async def serve_nothing(self: object) -> None:
        frozen.append(gc.get_freeze_count())

    monkeypatch.setattr(server._Server, "serve", serve_nothing)
    settings = load_settings(None, database={"url": f"sqlite:///{tmp_path}/gc.db"},
                             scheduler={"enabled": False})
    try:
        await server.serve(settings, "127.0.0.1", 0)
    finally:
        gc.unfreeze()
    assert frozen and frozen[0] > 10_000
