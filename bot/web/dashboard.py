"""The managers' dashboard at ``/dashboard``: KPIs with charts, the open queue with SLA
deadlines, and each conversation's timeline. Customer data is behind a login: agents
configured with ``[agents.<ref>] password_hash`` (Argon2) sign in; the session is a signed
cookie (Starlette's SessionMiddleware), HTTP-only and same-site.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time as time_module
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from bot.db.models import Agent, Conversation, Customer, Message, OwnershipEvent, SlaClock
from bot.service import Service

STATIC = Path(__file__).parent / "static"
NO_STORE = {"Cache-Control": "no-store"}  # customer data: never kept by browsers or proxies
HASHER = PasswordHasher()
SESSION_KEY = "agent"
FINGERPRINT_KEY = "credential"  # which password the login was made with
FAILED_LOGIN_DELAY_SECONDS = 0.5  # slows password guessing; the hash itself is slow too
# Argon2 takes ~0.2 s of CPU and 64 MiB: checks run in worker threads, a few at a time, so
# a burst of logins cannot stall webhooks and the web chat on the event loop.
CONCURRENT_CHECKS = 2
FAILURES_ALLOWED = 5  # per agent name and per client address, in FAILURE_WINDOW
FAILURE_WINDOW_SECONDS = 15 * 60
EARLIEST, LATEST = date(2000, 1, 1), date(2100, 12, 31)  # dates the KPI filters accept


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def check_password(stored: str, password: str) -> bool:
    try:
        return HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def fingerprint(stored_hash: str) -> str:
    """A short digest of the agent's password hash, kept in the session cookie."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:32]


def install(app: FastAPI, service: Service) -> None:
    settings = service.settings
    secret = settings.web.session_secret.get_secret_value() if settings.web.session_secret \
        else secrets.token_urlsafe(32)
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie="supportbot_session",
                       max_age=settings.web.session_hours * 3600, same_site="strict",
                       https_only=settings.web.secure_cookies)
    app.include_router(build_router(service))


def build_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/dashboard")
    agents = service.settings.agents
    calendar = service.calendars["default"]
    checks = asyncio.Semaphore(CONCURRENT_CHECKS)
    failures: dict[str, list[float]] = {}

    def stored_hash(ref: str) -> str | None:
        agent = agents.get(ref)
        return agent.password_hash.get_secret_value() if agent and agent.password_hash else None

    def signed_in(request: Request) -> str | None:
        """The agent of a valid session: signed, and made with the agent's current
        password (changing or removing it ends every session made with the old one)."""
        ref = request.session.get(SESSION_KEY)
        if not isinstance(ref, str) or (stored := stored_hash(ref)) is None:
            return None
        expected = fingerprint(stored)
        given = request.session.get(FINGERPRINT_KEY)
        return ref if isinstance(given, str) and secrets.compare_digest(given, expected) \
            else None

    def throttled(*keys: str) -> bool:
        now = time_module.monotonic()
        for key in keys:
            recent = [t for t in failures.get(key, []) if now - t < FAILURE_WINDOW_SECONDS]
            failures[key] = recent
            if len(recent) >= FAILURES_ALLOWED:
                return True
        return False

    def refused() -> JSONResponse:
        return JSONResponse({"error": "sign in first"}, status_code=401)

    @router.get("", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        if signed_in(request) is None:
            return RedirectResponse("/dashboard/login", status_code=303)
        return FileResponse(STATIC / "dashboard.html", media_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @router.get("/login", include_in_schema=False)
    async def login_page() -> FileResponse:
        return FileResponse(STATIC / "login.html", media_type="text/html")

    @router.post("/login", include_in_schema=False)
    async def login(request: Request, username: str = Form(...),
                    password: str = Form(...)) -> Response:
        name = username.strip()
        client = request.client.host if request.client else "?"
        keys = (f"agent:{name}", f"client:{client}")
        if throttled(*keys):
            await asyncio.sleep(FAILED_LOGIN_DELAY_SECONDS)
            return RedirectResponse("/dashboard/login?failed=1", status_code=303)
        stored = stored_hash(name)
        async with checks:
            # Verify against a real hash even for unknown names: the answer takes as long.
            ok = await run_in_threadpool(check_password, stored or DUMMY_HASH, password)
        if not ok or stored is None:
            for key in keys:
                failures.setdefault(key, []).append(time_module.monotonic())
            await asyncio.sleep(FAILED_LOGIN_DELAY_SECONDS)
            return RedirectResponse("/dashboard/login?failed=1", status_code=303)
        request.session.clear()
        request.session[SESSION_KEY] = name
        request.session[FINGERPRINT_KEY] = fingerprint(stored)
        return RedirectResponse("/dashboard", status_code=303)

    @router.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> RedirectResponse:
        request.session.clear()
        return RedirectResponse("/dashboard/login", status_code=303)

    @router.get("/api/me")
    async def me(request: Request) -> JSONResponse:
        ref = signed_in(request)
        if ref is None:
            return refused()
        return JSONResponse({"agent": ref, "name": agents[ref].name or ref}, headers=NO_STORE)

    @router.get("/api/kpis")
    async def kpis(request: Request,
                   start: Annotated[date | None, Query(alias="from")] = None,
                   end: Annotated[date | None, Query(alias="to")] = None,
                   channel: str | None = None, language: str | None = None,
                   owner: str | None = None) -> JSONResponse:
        if signed_in(request) is None:
            return refused()
        from bot.kpis import compute_kpis

        if any(d is not None and not EARLIEST <= d <= LATEST for d in (start, end)):
            return JSONResponse({"error": f"dates must be between {EARLIEST} and {LATEST}"},
                                status_code=422)
        first, last = date_range(start, end, service.clock.now(), calendar.timezone)
        async with service.db.sessions() as session:
            figures = await compute_kpis(session, start=first, end=last, calendar=calendar,
                                         channel=channel or None, language=language or None,
                                         owner=owner or None)
        return JSONResponse(figures, headers=NO_STORE)

    @router.get("/api/options")
    async def options(request: Request) -> JSONResponse:
        if signed_in(request) is None:
            return refused()
        async with service.db.sessions() as session:
            channels = sorted(set((await session.execute(
                select(Conversation.channel).distinct())).scalars()))
            languages = sorted(x for x in set((await session.execute(
                select(Conversation.language).distinct())).scalars()) if x)
            owners = sorted(set((await session.execute(select(Agent.ref))).scalars()))
        return JSONResponse({"channels": channels, "languages": languages, "owners": owners},
                            headers=NO_STORE)

    @router.get("/api/queue")
    async def queue(request: Request) -> JSONResponse:
        """Open conversations, the most urgent deadline first."""
        if signed_in(request) is None:
            return refused()
        async with service.db.sessions() as session:
            # The most urgent first, in SQL, so the limit never drops an urgent one.
            next_deadline = (select(func.min(SlaClock.deadline_at))
                             .where(SlaClock.conversation_id == Conversation.id,
                                    SlaClock.status == "running")
                             .correlate(Conversation).scalar_subquery())
            rows = (await session.execute(
                select(Conversation, Customer.company, Agent.ref)
                .outerjoin(Customer, Customer.id == Conversation.customer_id)
                .outerjoin(Agent, Agent.id == Conversation.owner_id)
                .where(Conversation.status.in_(("handed_off", "owned")))
                .order_by(next_deadline.is_(None), next_deadline, Conversation.id)
                .limit(500))).all()
            deadlines: dict[int, list[tuple[str, datetime]]] = {}
            clocks = (await session.execute(
                select(SlaClock.conversation_id, SlaClock.kind, SlaClock.deadline_at)
                .where(SlaClock.status == "running",
                       SlaClock.conversation_id.in_([r[0].id for r in rows])))).all()
            for conversation_id, kind, deadline in clocks:
                if deadline is not None:
                    deadlines.setdefault(conversation_id, []).append((kind, deadline))
        entries = []
        for conversation, company, owner in rows:
            due = sorted(deadlines.get(conversation.id, []), key=lambda item: item[1])
            entries.append({
                "id": conversation.id, "channel": conversation.channel,
                "chat": conversation.chat, "status": conversation.status,
                "priority": conversation.priority, "language": conversation.language,
                "customer": company, "owner": owner,
                "waiting_since": iso(conversation.handed_off_at),
                "next_deadline": iso(due[0][1]) if due else None,
                "next_clock": due[0][0] if due else None,
                "overdue": bool(due and due[0][1] <= service.clock.now()),
            })
        entries.sort(key=lambda e: (e["next_deadline"] is None, e["next_deadline"] or ""))
        return JSONResponse({"now": iso(service.clock.now()), "conversations": entries},
                            headers=NO_STORE)

    @router.get("/api/conversations/{conversation_id}")
    async def timeline(request: Request, conversation_id: int) -> JSONResponse:
        """Everything that happened in one conversation, in time order."""
        if signed_in(request) is None:
            return refused()
        async with service.db.sessions() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                return JSONResponse({"error": "no such conversation"}, status_code=404)
            agent_refs: dict[int | None, str] = {
                agent_id: ref for agent_id, ref in (await session.execute(
                    select(Agent.id, Agent.ref))).all()}
            events: list[dict[str, Any]] = []
            for message in (await session.execute(
                    select(Message).where(Message.conversation_id == conversation_id)
                    .order_by(Message.id))).scalars():
                events.append({"at": iso(message.created_at), "type": "message",
                               "direction": message.direction, "sender": message.sender,
                               "audience": message.audience, "kind": message.kind,
                               "agent": agent_refs.get(message.agent_id),
                               "intent": message.intent, "text": message.text})
            for event in (await session.execute(
                    select(OwnershipEvent).where(OwnershipEvent.conversation_id == conversation_id)
                    .order_by(OwnershipEvent.id))).scalars():
                events.append({"at": iso(event.at), "type": "ownership", "action": event.action,
                               "agent": agent_refs.get(event.agent_id), "ok": event.ok,
                               "target": agent_refs.get(event.target_agent_id),
                               "reason": event.reason})
            for clock in (await session.execute(
                    select(SlaClock).where(SlaClock.conversation_id == conversation_id)
                    .order_by(SlaClock.id))).scalars():
                events.append({"at": iso(clock.started_at), "type": "sla", "clock": clock.kind,
                               "status": clock.status, "deadline": iso(clock.deadline_at),
                               "target_minutes": clock.target_minutes,
                               "working_minutes": clock.working_minutes,
                               "breached_at": iso(clock.breached_at),
                               "stopped_at": iso(clock.stopped_at)})
        events.sort(key=lambda e: e["at"] or "")
        return JSONResponse({
            "conversation": {"id": conversation.id, "channel": conversation.channel,
                             "chat": conversation.chat, "status": conversation.status,
                             "priority": conversation.priority,
                             "language": conversation.language,
                             "owner": agent_refs.get(conversation.owner_id),
                             "satisfaction": conversation.satisfaction},
            "events": events}, headers=NO_STORE)

    return router


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def date_range(start: date | None, end: date | None, now: datetime,
               tz: Any) -> tuple[datetime, datetime]:
    """[start 00:00, end + 1 day 00:00) in the company's timezone; the last 30 days by
    default. A reversed range is swapped rather than refused."""
    today = now.astimezone(tz).date()
    last = end or today
    first = start or (last - timedelta(days=29))
    if first > last:
        first, last = last, first
    return (datetime.combine(first, time(0), tzinfo=tz),
            datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz))


# A hash to verify unknown user names against, so a wrong name costs as much as a wrong
# password (no timing hint about which agents exist).
DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))
