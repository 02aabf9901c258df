"""The dashboard in a real browser: a real ``supportbot serve`` on a database filled by
``supportbot replay``, Debian's chromium driven by Playwright. Sign in, see the charts and
a conversation's timeline; without signing in, nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, free_port, supportbot_command

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"Debian's chromium is not installed ({CHROMIUM} missing); "
                              "install it with: apt-get install -y chromium"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
expect = sync_api.expect
PASSWORD = "dashboard-password-1"


def scenario(path: Path) -> None:
    """Yesterday: a hand-off taken by Lena (Bob too late), answered, and a second chat."""
    day = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    at = lambda minute: f"{day}T10:{minute:02d}:00+08:00"  # noqa: E731
    events = [
        {"setup": {"customers": [{"id": "C-1", "company": "Nordic Floors GmbH", "language": "de",
                                  "contacts": [{"channel": "telegram", "chat": "tg-1"}]}]}},
        {"at": at(0), "from": "customer", "channel": "telegram", "chat": "tg-1",
         "text": "Ich möchte mit einem Mitarbeiter sprechen"},
        {"at": at(5), "from": "agent", "agent": "lena", "action": "take", "chat": "tg-1"},
        {"at": at(6), "from": "agent", "agent": "bob", "action": "take", "chat": "tg-1"},
        {"at": at(9), "from": "agent", "agent": "lena", "action": "reply", "chat": "tg-1",
         "text": "Guten Tag, hier ist Lena."},
        {"at": at(20), "from": "customer", "channel": "webchat", "chat": "w-2",
         "text": "I want to talk to a person"},
    ]
    path.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in events),
                    encoding="utf-8")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("dashboard")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    env["SUPPORTBOT_DATABASE__URL"] = f"sqlite:///{workdir / 'dashboard.db'}"
    env["SUPPORTBOT_AFTER_HOURS__ENABLED"] = "false"
    hashed = subprocess.run([*supportbot_command(), "password-hash", "--password-stdin"],
                            input=PASSWORD + "\n", capture_output=True, text=True, env=env,
                            check=True).stdout.strip()
    (workdir / "supportbot.toml").write_text(
        f'[web]\nsession_secret = "browser-test-secret"\n\n'
        f'[agents.lena]\nname = "Lena Vogel"\npassword_hash = "{hashed}"\n\n'
        f'[agents.bob]\nname = "Bob Li"\n', encoding="utf-8")
    scenario(workdir / "history.jsonl")
    subprocess.run([*supportbot_command(), "replay", "history.jsonl", "--database",
                    env["SUPPORTBOT_DATABASE__URL"]], cwd=workdir, env=env, check=True,
                   capture_output=True)
    port = free_port()
    log = workdir / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*supportbot_command(), "serve", "--port", str(port)],
                                   cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve not healthy:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def test_without_login_the_dashboard_shows_nothing(server: str, browser: Any) -> None:
    context = browser.new_context(base_url=server)
    try:
        page = context.new_page()
        page.goto("/dashboard")
        expect(page).to_have_url(f"{server}/dashboard/login")
        assert context.request.get("/dashboard/api/kpis").status == 401
        assert context.request.get("/dashboard/api/conversations/1").status == 401
        page.fill("input[name=username]", "lena")
        page.fill("input[name=password]", "not the password")
        page.click("button[type=submit]")
        expect(page.locator("#failed")).to_be_visible()
        assert context.request.get("/dashboard/api/queue").status == 401
    finally:
        context.close()


def test_signed_in_the_dashboard_shows_charts_queue_and_a_timeline(server: str,
                                                                   browser: Any) -> None:
    context = browser.new_context(base_url=server)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("/dashboard")
        page.fill("input[name=username]", "lena")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{server}/dashboard")
        expect(page.locator("body[data-loaded=true]")).to_have_count(1)
        expect(page.locator("#me")).to_have_text("Lena Vogel")
        expect(page.locator(".tile").first).to_contain_text("Conversations")
        expect(page.locator(".tile").first).to_contain_text("2")
        for chart in ("chart-sla", "chart-channels", "chart-languages", "chart-owners"):
            drawn = page.evaluate(f"Chart.getChart(document.getElementById('{chart}')) !== undefined")
            assert drawn, chart
        channels = page.evaluate("Chart.getChart(document.getElementById('chart-channels'))"
                                 ".data.labels")
        assert sorted(channels) == ["telegram", "webchat"]
        rows = page.locator("#queue tbody tr")
        expect(rows).to_have_count(2)
        page.locator("#queue tbody tr", has_text="Nordic Floors").click()
        timeline = page.locator("#timeline-events li")
        expect(timeline.filter(has_text="lena take")).to_have_count(1)
        expect(timeline.filter(has_text="bob take (refused")).to_have_count(1)
        expect(timeline.filter(has_text="Guten Tag, hier ist Lena.")).to_have_count(1)
        expect(timeline.filter(has_text="SLA first_response")).to_have_count(1)
        # Filters: only the web chat.
        page.select_option("select[name=channel]", "webchat")
        page.click("#filters button[type=submit]")
        expect(page.locator(".tile").first).to_contain_text("1")
        page.screenshot(path=str(Path(os.environ.get("PYTEST_TMP", "/tmp")) / "dashboard.png"),
                        full_page=True)
        assert errors == []
    finally:
        context.close()
