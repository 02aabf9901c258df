"""The dashboard's login and JSON API (the page itself is driven in a browser in
tests/test_browser_dashboard.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from bot.agent_actions import perform
from bot.clock import ManualClock
from bot.config import load_settings
from bot.service import Service
from bot.types import InboundMessage
from bot.web.app import create_app
from bot.web.dashboard import hash_password
from tests.conftest import RecordingChannel

PASSWORD = "correct horse battery"


@pytest.fixture
async def dashboard(database_url: str,
                    clock: ManualClock) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = load_settings(None, database={"url": database_url},
                             agents={"lena": {"name": "Lena Vogel",
                                              "password_hash": hash_password(PASSWORD)},
                                     "bob": {"name": "Bob Li"}},
                             web={"session_secret": "test-session-secret"})
    service = await Service.start(settings, clock=clock, migrate=True,
                                  channels={"telegram": RecordingChannel("telegram"),
                                            "slack": RecordingChannel("slack")})
    app = create_app(service, background=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://supportbot") as http:
            yield service, http
    finally:
        await service.close()


async def sign_in(http: httpx.AsyncClient, username: str = "lena",
                  password: str = PASSWORD) -> httpx.Response:
    return await http.post("/dashboard/login", data={"username": username, "password": password})


async def history(service: Service, clock: ManualClock) -> int:
    processed = await service.pipeline.handle(InboundMessage(
        channel="telegram", chat="tg-1", text="I want to talk to a person", external_id="a-1"))
    clock.advance(timedelta(minutes=5))
    await perform(service, "tg-1", "lena", "take")
    await perform(service, "tg-1", "bob", "take")
    clock.advance(timedelta(minutes=5))
    await perform(service, "tg-1", "lena", "reply", text="Hello, Lena here.")
    return processed.conversation_id


@pytest.mark.parametrize("path", ["/dashboard/api/kpis", "/dashboard/api/queue",
                                  "/dashboard/api/options", "/dashboard/api/conversations/1",
                                  "/dashboard/api/me"])
async def test_without_login_customer_data_is_refused(dashboard: Any, path: str) -> None:
    _, http = dashboard
    response = await http.get(path)
    assert response.status_code == 401 and "sign in" in response.text


async def test_the_page_redirects_to_the_login(dashboard: Any) -> None:
    _, http = dashboard
    response = await http.get("/dashboard")
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/login"
    assert (await http.get("/dashboard/login")).status_code == 200


@pytest.mark.parametrize("username, password", [
    ("lena", "wrong password"), ("nobody", PASSWORD), ("bob", PASSWORD), ("lena", "")])
async def test_wrong_credentials_are_refused(dashboard: Any, username: str, password: str) -> None:
    _, http = dashboard
    response = await sign_in(http, username, password)
    assert response.status_code in (303, 422)
    assert (await http.get("/dashboard/api/me")).status_code == 401


async def test_signed_in_the_api_gives_kpis_queue_and_timeline(dashboard: Any,
                                                               clock: ManualClock) -> None:
    service, http = dashboard
    conversation_id = await history(service, clock)
    response = await sign_in(http)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    assert (await http.get("/dashboard")).status_code == 200
    assert (await http.get("/dashboard/api/me")).json() == {"agent": "lena", "name": "Lena Vogel"}

    kpis = (await http.get("/dashboard/api/kpis")).json()
    assert kpis["conversations"]["total"] == 1
    assert kpis["first_response"]["working_minutes"]["median"] == 10
    assert kpis["conversations"]["by_channel"] == {"telegram": 1}
    filtered = (await http.get("/dashboard/api/kpis", params={"channel": "wechat"})).json()
    assert filtered["conversations"]["total"] == 0

    queue = (await http.get("/dashboard/api/queue")).json()["conversations"]
    assert [c["id"] for c in queue] == [conversation_id]
    assert queue[0]["owner"] == "lena" and queue[0]["status"] == "owned"

    timeline = (await http.get(f"/dashboard/api/conversations/{conversation_id}")).json()
    kinds = [e["type"] for e in timeline["events"]]
    assert {"message", "ownership", "sla"} <= set(kinds)
    refused = [e for e in timeline["events"] if e["type"] == "ownership" and not e["ok"]]
    assert refused and refused[0]["agent"] == "bob"
    assert any(e["type"] == "message" and e["text"] == "Hello, Lena here." for e in timeline["events"])
    assert (await http.get("/dashboard/api/conversations/999")).status_code == 404

    await http.post("/dashboard/logout")
    assert (await http.get("/dashboard/api/kpis")).status_code == 401


async def test_a_forged_session_cookie_is_refused(dashboard: Any) -> None:
    _, http = dashboard
    http.cookies.set("supportbot_session", "eyJhZ2VudCI6ICJsZW5hIn0=.forged.signature")
    assert (await http.get("/dashboard/api/me")).status_code == 401


def test_password_hash_command_makes_a_verifiable_hash() -> None:
    from argon2 import PasswordHasher
    from click.testing import CliRunner

    from bot.cli import main

    result = CliRunner().invoke(main, ["password-hash", "--password-stdin"],
                                input="a-long-password\n")
    assert result.exit_code == 0, result.output
    hashed = result.output.strip()
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, "a-long-password")
    short = CliRunner().invoke(main, ["password-hash", "--password-stdin"], input="short\n")
    assert short.exit_code == 1


async def test_changing_the_password_ends_old_sessions(dashboard: Any) -> None:
    service, http = dashboard
    assert (await sign_in(http)).status_code == 303
    assert (await http.get("/dashboard/api/me")).status_code == 200
    old = service.settings.agents["lena"].password_hash
    service.settings.agents["lena"].password_hash = type(old)(hash_password("a new password"))  # type: ignore[misc]
    try:
        assert (await http.get("/dashboard/api/me")).status_code == 401
    finally:
        service.settings.agents["lena"].password_hash = old


async def test_a_cookie_signed_with_another_key_is_refused(dashboard: Any) -> None:
    from itsdangerous import TimestampSigner

    _, http = dashboard
    import base64
    import json as json_module

    payload = base64.b64encode(json_module.dumps({"agent": "lena"}).encode())
    forged = TimestampSigner("not-the-secret").sign(payload).decode()
    http.cookies.set("supportbot_session", forged)
    assert (await http.get("/dashboard/api/me")).status_code == 401


async def test_repeated_failures_are_throttled_and_bad_dates_refused(dashboard: Any) -> None:
    _, http = dashboard
    for _ in range(5):
        await sign_in(http, "lena", "wrong")
    # Even the right password is refused while the name is throttled.
    response = await sign_in(http)
    assert response.headers["location"] == "/dashboard/login?failed=1"
    assert (await http.get("/dashboard/api/me")).status_code == 401


async def test_out_of_range_dates_are_refused_clearly(dashboard: Any) -> None:
    _, http = dashboard
    await sign_in(http)
    for value in ("9999-12-31", "0001-01-01"):
        response = await http.get("/dashboard/api/kpis", params={"from": value})
        assert response.status_code == 422, value
    assert (await http.get("/dashboard/api/kpis")).headers["cache-control"] == "no-store"
