"""KPIs (SPEC §8) computed from stored facts: conversations, SLA clocks, cases and orders.

Nothing here reads a counter: every figure is derived from the rows that record what
happened, so it can be recomputed for any period and any filter. ``compute_kpis`` is the
one entry point (``supportbot report``, the web dashboard and Slack's ``/support stats``
call it); it returns JSON-serialisable data: durations in minutes (floats), shares as
fractions in [0, 1], and None where there is no data. Definitions: ``docs/kpis.md``.

Scope: the conversations created in ``[start, end)`` that match the filters (channel,
language, owner = ``Agent.ref`` of the conversation's owner). Their SLA clocks, first
responses, resolutions and ratings count; complaint cases count when opened in the period
(and, with a filter, when their conversation matches it); orders count when delivered in
the period (orders belong to customers, not conversations: the filters do not apply).
The owners' open load is a state, not a period figure: the conversations each owns now.

Durations are given in working time (the business calendar) and in wall time. A
first-response clock's working time is the one it stored when it stopped (on its own
calendar: strategic customers' clocks run on the ``always`` calendar); every other working
time is ``calendar.working_between`` over the calendar handed in, evaluated through a
cumulative index of the same working intervals so 100,000 conversations take
milliseconds (``WorkingTime``; tests check it against ``working_between``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.business_hours import BusinessCalendar
from bot.db.models import Agent, Case, Conversation, Order, SlaClock

SATISFACTION_TARGET = 0.95  # share of 4-5 ratings, at least
ON_TIME_TARGET = 0.98  # share of orders delivered by the end of their ETA day, at least
DISPUTE_DAYS_TARGET = 3.0  # average complaint resolution in working days, at most
SATISFIED_RATINGS = (4, 5)
# Every kind of clock bot/sla.py starts (tests/test_kpis.py checks the list is complete): the
# SLA query names them so PostgreSQL reads sla_clocks through the (kind, started_at) index.
CLOCK_KINDS = ("first_response", "next_response", "unclaimed_handoff", "technical_contact",
               "complaint_solution")
TOP_CATEGORIES = 3
UNCATEGORISED = "uncategorised"


# --- small arithmetic ---------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile with linear interpolation between the closest ranks (PostgreSQL's
    ``percentile_cont``, numpy's default): the median of 1, 2, 3, 10 is 2.5, its p90 7.9."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    return {"median": _round(percentile(values, 0.5)), "p90": _round(percentile(values, 0.9))}


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60


def working_day_minutes(calendar: BusinessCalendar) -> float:
    """One working day: the working time of a normal day of the calendar's week — the most
    common daily length among the weekdays that have hours (ties: the earliest weekday),
    e.g. 540 minutes for 09:00-18:00 Monday to Friday."""
    lengths: list[float] = []
    for weekday in range(7):
        intervals = calendar.weekly.get(weekday) or []
        if not intervals:
            continue
        total = 0.0
        for begin, end, overnight in intervals:
            begin_minutes = begin.hour * 60 + begin.minute
            end_minutes = end.hour * 60 + end.minute + (24 * 60 if overnight else 0)
            total += end_minutes - begin_minutes
        lengths.append(total)
    if not lengths:
        return 24 * 60.0
    counts = Counter(lengths)
    best = max(counts.values())
    return next(length for length in lengths if counts[length] == best)


class WorkingTime:
    """``calendar.working_between`` for many pairs: the calendar's working intervals over
    ``[low, high]`` with the working time accumulated before each, so a pair costs two
    binary searches. Pairs outside the indexed span fall back to the calendar itself."""

    def __init__(self, calendar: BusinessCalendar, low: datetime, high: datetime) -> None:
        self.calendar = calendar
        self.low, self.high = low.astimezone(UTC), high.astimezone(UTC)
        first_day = self.low.astimezone(calendar.timezone).date() - timedelta(days=1)
        days = (self.high - self.low).days + 4
        self.begins: list[float] = []
        self.ends: list[float] = []
        self.before: list[float] = []  # working seconds before each interval
        total = 0.0
        for begin, end in calendar.intervals(first_day, days):
            self.begins.append(begin.timestamp())
            self.ends.append(end.timestamp())
            self.before.append(total)
            total += (end - begin).total_seconds()

    def _upto(self, instant: float) -> float:
        index = bisect_right(self.begins, instant) - 1
        if index < 0:
            return 0.0
        return self.before[index] + min(instant, self.ends[index]) - self.begins[index]

    def minutes(self, start: datetime, end: datetime) -> float:
        """Working minutes in [start, end); zero when ``end`` is not after ``start``."""
        if end <= start:
            return 0.0
        if start < self.low or end > self.high:
            return _minutes(self.calendar.working_between(start, end))
        return (self._upto(end.timestamp()) - self._upto(start.timestamp())) / 60


def _working_time(calendar: BusinessCalendar,
                  pairs: Iterable[tuple[datetime, datetime]]) -> WorkingTime | None:
    instants = [instant for pair in pairs for instant in pair]
    if not instants:
        return None
    return WorkingTime(calendar, min(instants), max(instants))


# --- the KPIs ---------------------------------------------------------------------------------

async def compute_kpis(session: AsyncSession, *, start: datetime, end: datetime,
                       calendar: BusinessCalendar, channel: str | None = None,
                       language: str | None = None,
                       owner: str | None = None) -> dict[str, Any]:
    """Every KPI of SPEC §8 for the conversations created in ``[start, end)`` that match
    the filters; see the module docstring and ``docs/kpis.md`` for the definitions."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("compute_kpis needs aware datetimes (e.g. in UTC)")
    if end < start:
        raise ValueError("the period ends before it starts")

    owner_id = (select(Agent.id).where(Agent.ref == owner).scalar_subquery()
                if owner is not None else None)
    filters: list[ColumnElement[bool]] = []
    if channel is not None:
        filters.append(Conversation.channel == channel)
    if language is not None:
        filters.append(Conversation.language == language)
    if owner_id is not None:
        filters.append(Conversation.owner_id == owner_id)
    in_scope = [Conversation.created_at >= start, Conversation.created_at < end, *filters]

    # Conversations per channel and language.
    by_channel: Counter[str] = Counter()
    by_language: Counter[str] = Counter()
    for conv_channel, conv_language, count in (await session.execute(
            select(Conversation.channel, Conversation.language, func.count())
            .where(*in_scope).group_by(Conversation.channel, Conversation.language))).all():
        by_channel[conv_channel] += count
        by_language[conv_language or "unknown"] += count

    # Resolutions: from the hand-off (or the creation, when the bot was never asked to
    # hand off) to the resolution.
    resolutions = (await session.execute(
        select(Conversation.owner_id, func.coalesce(Conversation.handed_off_at,
                                                    Conversation.created_at),
               Conversation.resolved_at)
        .where(*in_scope, Conversation.resolved_at.is_not(None)))).all()

    # SLA clocks of the conversations in scope. A clock cannot start before its
    # conversation, so ``started_at >= start`` changes nothing but lets the
    # (kind, started_at) index serve the query.
    clock_scope = [SlaClock.started_at >= start, *in_scope]
    sla_rows = (await session.execute(
        select(SlaClock.kind, SlaClock.status, SlaClock.breached_at.is_not(None), func.count())
        .join(Conversation, Conversation.id == SlaClock.conversation_id)
        .where(SlaClock.kind.in_(CLOCK_KINDS), *clock_scope)
        .group_by(SlaClock.kind, SlaClock.status, SlaClock.breached_at.is_not(None)))).all()
    first_responses = (await session.execute(
        select(Conversation.owner_id, SlaClock.working_minutes, SlaClock.started_at,
               SlaClock.stopped_at)
        .join(Conversation, Conversation.id == SlaClock.conversation_id)
        .where(SlaClock.kind == "first_response", *clock_scope,
               SlaClock.stopped_at.is_not(None),
               # answered by a person (closed clocks ended without an answer)
               SlaClock.status.in_(("met", "breached"))))).all()

    ratings = {int(rating): count for rating, count in (await session.execute(
        select(Conversation.satisfaction, func.count())
        .where(*in_scope, Conversation.satisfaction.is_not(None))
        .group_by(Conversation.satisfaction))).all() if rating is not None}

    # Complaint cases opened in the period (through their conversation when filtered).
    case_query = select(Case.category, Case.opened_at, Case.resolved_at).where(
        Case.kind == "complaint", Case.opened_at >= start, Case.opened_at < end)
    if filters:
        case_query = case_query.join(Conversation, Conversation.id == Case.conversation_id) \
            .where(*filters)
    complaints = (await session.execute(case_query)).all()

    deliveries = (await session.execute(
        select(Order.eta, Order.delivered_at)
        .where(Order.delivered_at >= start, Order.delivered_at < end))).all()

    # Owners' load now: the conversations each owns at this moment (channel and language
    # filters apply, the period does not).
    load_filters = [Conversation.status == "owned", Conversation.owner_id.is_not(None),
                    *filters]
    open_owned = {int(agent_id): count for agent_id, count in (await session.execute(
        select(Conversation.owner_id, func.count()).where(*load_filters)
        .group_by(Conversation.owner_id))).all() if agent_id is not None}

    resolved_cases: list[tuple[datetime, datetime]] = [
        (opened, resolved) for _, opened, resolved in complaints if resolved is not None]
    working = _working_time(calendar, [(since, done) for _, since, done in resolutions
                                       if done is not None] + resolved_cases)

    figures: dict[str, Any] = {
        "period": {"start": start.astimezone(UTC).isoformat(),
                   "end": end.astimezone(UTC).isoformat(),
                   "timezone": calendar.timezone.key, "calendar": calendar.name},
        "filters": {"channel": channel, "language": language, "owner": owner},
        "conversations": {"total": sum(by_channel.values()),
                          "resolved": len(resolutions),
                          "by_channel": dict(sorted(by_channel.items())),
                          "by_language": dict(sorted(by_language.items()))},
    }
    figures["first_response"] = _first_response(first_responses, sla_rows)
    figures["resolution"] = _resolution(resolutions, working)
    figures["sla"] = _sla(sla_rows)
    figures["satisfaction"] = _satisfaction(ratings)
    figures["disputes"] = _disputes(complaints, working, calendar)
    figures["delivery"] = _delivery(deliveries, calendar)
    figures["complaints"] = _complaints(complaints)
    figures["owners"] = await _owners(session, resolutions, first_responses, open_owned)
    figures["targets"] = _targets(figures)
    return figures


def _first_response(rows: Sequence[Any], sla_rows: Sequence[Any]) -> dict[str, Any]:
    working = [float(row.working_minutes or 0) for row in rows]
    wall = [_minutes(row.stopped_at - row.started_at) for row in rows]
    waiting = sum(count for kind, status, _, count in sla_rows
                  if kind == "first_response" and status in ("running", "paused"))
    return {"count": len(rows), "waiting": waiting,
            "working_minutes": _summary(working), "wall_minutes": _summary(wall)}


def _resolution(rows: Sequence[Any], working: WorkingTime | None) -> dict[str, Any]:
    wall = [_minutes(resolved - since) for _, since, resolved in rows]
    work = [working.minutes(since, resolved) for _, since, resolved in rows] if working else []
    return {"count": len(rows), "working_minutes": _summary(work), "wall_minutes": _summary(wall)}


def _sla(rows: Sequence[Any]) -> dict[str, Any]:
    """Per clock kind: met, breached (stopped late, or still open past its deadline),
    running and paused (open, not late yet); breach rate = breached / (met + breached)."""
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, status, breached, count in rows:
        if status == "breached" or breached:
            outcome = "breached"
        elif status in ("met", "running", "paused"):
            outcome = status
        else:
            continue
        kinds[kind][outcome] += count
        kinds["all"][outcome] += count

    def entry(counts: Counter[str]) -> dict[str, Any]:
        decided = counts["met"] + counts["breached"]
        return {"met": counts["met"], "breached": counts["breached"],
                "running": counts["running"], "paused": counts["paused"],
                "breach_rate": _share(counts["breached"], decided)}

    ordered = [k for k in CLOCK_KINDS if k in kinds] + sorted(
        k for k in kinds if k not in CLOCK_KINDS and k != "all")
    result = {kind: entry(kinds[kind]) for kind in ordered}
    result["all"] = entry(kinds["all"])
    return result


def _satisfaction(ratings: dict[int, int]) -> dict[str, Any]:
    count = sum(ratings.values())
    satisfied = sum(n for rating, n in ratings.items() if rating in SATISFIED_RATINGS)
    average = sum(rating * n for rating, n in ratings.items()) / count if count else None
    return {"ratings": count, "satisfied": satisfied, "share": _share(satisfied, count),
            "average": _round(average), "target": SATISFACTION_TARGET}


def _disputes(rows: Sequence[Any], working: WorkingTime | None,
              calendar: BusinessCalendar) -> dict[str, Any]:
    day = working_day_minutes(calendar)
    resolved = [(opened, done) for _, opened, done in rows if done is not None]
    work_days = [working.minutes(opened, done) / day for opened, done in resolved] \
        if working else []
    wall_days = [(done - opened).total_seconds() / 86400 for opened, done in resolved]
    return {"opened": len(rows), "resolved": len(resolved), "open": len(rows) - len(resolved),
            "average_working_days": _round(sum(work_days) / len(work_days), 3)
            if work_days else None,
            "average_wall_days": _round(sum(wall_days) / len(wall_days), 3)
            if wall_days else None,
            "working_day_minutes": day, "target": DISPUTE_DAYS_TARGET}


def _delivery(rows: Sequence[Any], calendar: BusinessCalendar) -> dict[str, Any]:
    """On time: delivered before the end of the ETA day in the company's timezone. Orders
    without an ETA cannot be judged and are counted apart."""
    judged = on_time = 0
    for eta, delivered_at in rows:
        if eta is None:
            continue
        judged += 1
        day_end = datetime.combine(eta + timedelta(days=1), time(0), tzinfo=calendar.timezone)
        on_time += delivered_at < day_end
    return {"delivered": len(rows), "judged": judged, "without_eta": len(rows) - judged,
            "on_time": on_time, "share": _share(on_time, judged), "target": ON_TIME_TARGET,
            "filtered": False}


def _complaints(rows: Sequence[Any]) -> dict[str, Any]:
    counts = Counter(category or UNCATEGORISED for category, _, _ in rows)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_CATEGORIES]
    return {"total": len(rows),
            "top_categories": [{"category": category, "count": count} for category, count in top]}


async def _owners(session: AsyncSession, resolutions: Sequence[Any],
                  first_responses: Sequence[Any], open_owned: dict[int, int]) -> dict[str, Any]:
    resolved = Counter(owner_id for owner_id, _, _ in resolutions if owner_id is not None)
    working: dict[int, list[float]] = defaultdict(list)
    wall: dict[int, list[float]] = defaultdict(list)
    for row in first_responses:
        if row.owner_id is not None:
            working[row.owner_id].append(float(row.working_minutes or 0))
            wall[row.owner_id].append(_minutes(row.stopped_at - row.started_at))
    ids = set(resolved) | set(working) | set(open_owned)
    if not ids:
        return {}
    agents = {agent_id: (ref, name) for agent_id, ref, name in (await session.execute(
        select(Agent.id, Agent.ref, Agent.name).where(Agent.id.in_(ids)))).all()}
    owners: dict[str, Any] = {}
    for agent_id in sorted(ids, key=lambda i: agents.get(i, (str(i), None))[0]):
        ref, name = agents.get(agent_id, (str(agent_id), None))
        owners[ref] = {
            "name": name, "open_owned": open_owned.get(agent_id, 0),
            "resolved": resolved.get(agent_id, 0),
            "first_responses": len(working.get(agent_id, [])),
            "first_response_median_working_minutes": _round(
                percentile(working.get(agent_id, []), 0.5)),
            "first_response_median_wall_minutes": _round(percentile(wall.get(agent_id, []), 0.5)),
        }
    return owners


def _targets(figures: dict[str, Any]) -> dict[str, Any]:
    def target(value: float | None, goal: float, at_least: bool) -> dict[str, Any]:
        met = None if value is None else (value >= goal if at_least else value <= goal)
        return {"value": value, "target": goal, "rule": "at least" if at_least else "at most",
                "met": met}

    return {
        "satisfaction_share": target(figures["satisfaction"]["share"], SATISFACTION_TARGET, True),
        "on_time_delivery_share": target(figures["delivery"]["share"], ON_TIME_TARGET, True),
        "dispute_resolution_working_days": target(
            figures["disputes"]["average_working_days"], DISPUTE_DAYS_TARGET, False),
    }


def minutes_text(value: float | None, none: str = "–") -> str:
    """95.5 -> "1 h 36 min"; 12.25 -> "12.2 min"."""
    if value is None:
        return none
    if value < 60:
        return f"{value:.1f} min"
    hours, rest = divmod(round(value), 60)
    return f"{hours} h {rest:02d} min"


def share_text(value: float | None, none: str = "–") -> str:
    return none if value is None else f"{value * 100:.1f} %"


def headline(figures: dict[str, Any]) -> dict[str, float | None]:
    """The three figures a busy reader wants first (Slack's ``/support stats``)."""
    return {"first_response_median_working_minutes":
            figures["first_response"]["working_minutes"]["median"],
            "sla_breach_rate": figures["sla"]["all"]["breach_rate"],
            "satisfaction_share": figures["satisfaction"]["share"]}
