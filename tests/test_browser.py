"""End to end: a real ``supportbot serve`` process and Debian's chromium driven by Playwright.

SQLite only (the PostgreSQL run of ``make test`` deselects the ``browser`` mark). The sync
Playwright API is used from plain test functions, so no asyncio loop is involved.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 15_000
TOKEN_KEY = "supportbot.webchat.token"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"Debian's chromium is not installed ({CHROMIUM} missing); "
                              "install it with: apt-get install -y chromium"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
expect = sync_api.expect


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def supportbot_command() -> list[str]:
    script = Path(sys.executable).with_name("supportbot")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bot.cli"]


class Server:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``supportbot serve`` on a free port with a fresh SQLite file; always stopped."""
    workdir = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    env["SUPPORTBOT_DATABASE__URL"] = f"sqlite:///{workdir / 'browser.db'}"
    # The server runs on the real clock; the after-hours notice would make the number of
    # replies depend on the time of day the suite runs.
    env["SUPPORTBOT_AFTER_HOURS__ENABLED"] = "false"
    stderr = workdir / "stderr.txt"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [*supportbot_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=env, stdout=err, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{stderr.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve was not healthy within 30 s:\n{stderr.read_text()}")
            time.sleep(0.2)
        yield Server(base, stderr)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """A chat page that remembers every page error and failed API call."""

    def __init__(self, browser: Any, base: str, locale: str) -> None:
        self.context = browser.new_context(locale=locale, base_url=base)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("response", self._check)

    def _check(self, response: Any) -> None:
        if "/api/" in response.url and response.status >= 400:
            self.errors.append(f"{response.status} {response.request.method} {response.url}")

    def say(self, text: str) -> None:
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")

    def replies(self) -> Any:
        return self.page.locator("#log .msg.bot:not(.welcome)")

    def customer(self) -> Any:
        return self.page.locator("#log .msg.customer")


@pytest.fixture
def chat(browser: Any, server: Server) -> Iterator[Any]:
    """Opens chat pages; the server's log of the test is printed (shown if it fails)."""
    def open_page(locale: str = "en-US") -> Page:
        page = Page(browser, server.base, locale)
        opened.append(page)
        page.page.goto("/")
        return page

    opened: list[Page] = []
    offset = server.log_size()
    try:
        yield open_page
    finally:
        for page in opened:
            page.context.close()
        print(f"--- server log during the test ---\n{server.log_since(offset)}")


def test_a_conversation_in_the_browser_survives_a_reload(chat: Any, tmp_path: Path) -> None:
    web = chat("en-US")
    page = web.page
    expect(page.locator("#title")).to_contain_text("Customer Support")
    expect(page.locator(".msg.welcome")).to_contain_text("support assistant")
    expect(page.locator("#input")).to_have_attribute("placeholder", "Type your message…")

    web.say("hello")
    expect(web.customer()).to_have_text(["hello"])
    greeting = web.replies().filter(has_text="Hello, and thank you")
    expect(greeting).to_have_count(1)
    expect(greeting).to_contain_text("support assistant")
    expect(page.locator("#input")).to_have_value("")

    web.say("你好")
    expect(web.customer()).to_have_text(["hello", "你好"])
    expect(web.replies().filter(has_text="您好")).to_have_count(1)
    expect(web.replies()).to_have_count(2)
    token = page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})")
    assert token

    page.reload()
    expect(web.customer()).to_have_text(["hello", "你好"])
    expect(web.replies()).to_have_count(2)
    expect(web.replies().nth(0)).to_contain_text("support assistant")
    expect(web.replies().nth(1)).to_contain_text("您好")
    expect(page.locator(".msg.welcome")).to_have_count(0)
    assert page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})") == token
    ids = page.locator("#log .msg").evaluate_all("items => items.map(i => Number(i.dataset.id))")
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 4

    # A reply's button sends its label as the customer's next message, and gets a reply.
    buttons = web.replies().nth(0).locator(".buttons button")
    expect(buttons).to_have_count(6)
    button = buttons.filter(has_text="Talk to a person")
    expect(button).to_have_count(1)
    button.click()
    expect(web.customer()).to_have_text(["hello", "你好", "Talk to a person"])
    expect(web.replies()).to_have_count(3)

    page.screenshot(path=str(tmp_path / "webchat.png"), full_page=True)
    assert web.errors == []


def test_a_chinese_browser_gets_chinese_ui_and_its_own_conversation(chat: Any) -> None:
    web = chat("zh-CN")
    page = web.page
    expect(page.locator("#title")).to_contain_text("在线客服")
    expect(page.locator("#send")).to_have_text("发送")
    expect(page.locator(".msg.welcome")).to_contain_text("欢迎")
    assert page.evaluate("document.documentElement.lang") == "zh"
    # A new browser profile has its own token: none of the other test's conversation.
    expect(web.customer()).to_have_count(0)

    web.say("你好")
    expect(web.customer()).to_have_text(["你好"])
    expect(web.replies().filter(has_text="您好")).to_have_count(1)
    assert web.errors == []
