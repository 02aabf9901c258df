"""``supportbot report``: the KPIs of a period (``bot/kpis.py``), counted from stored facts,
never from counters, as terminal tables, JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from bot.business_hours import build_calendars
from bot.config import Settings
from bot.kpis import compute_kpis, minutes_text, share_text
from bot.service import open_database

DEFAULT_DAYS = 30


class PeriodError(ValueError):
    pass


def _bound(text: str, option: str, timezone: ZoneInfo, inclusive_end: bool) -> datetime:
    """An ISO date (midnight in the company's timezone; as an end, the whole day counts) or
    an ISO datetime (without an offset: company time)."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if inclusive_end:
                day += timedelta(days=1)
            return datetime.combine(day, time(0), tzinfo=timezone)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise PeriodError(f"{option}: not an ISO date or datetime: {text!r} "
                          "(e.g. 2026-12-01 or 2026-12-01T09:00+08:00)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone)


def parse_period(start_text: str | None, end_text: str | None, timezone: ZoneInfo,
                 now: datetime) -> tuple[datetime, datetime]:
    """``--from`` / ``--to``: by default the last 30 days up to now. A date as ``--to``
    includes that day; a datetime is the exclusive end."""
    end = _bound(end_text, "--to", timezone, True) if end_text else now
    start = (_bound(start_text, "--from", timezone, False) if start_text
             else end - timedelta(days=DEFAULT_DAYS))
    if end <= start:
        raise PeriodError("--to: the period must end after it starts")
    return start.astimezone(UTC), end.astimezone(UTC)


async def collect_report(settings: Settings, start: datetime, end: datetime, *,
                         channel: str | None = None, language: str | None = None,
                         owner: str | None = None) -> dict[str, Any]:
    calendar = build_calendars(settings.hours, settings.calendars)["default"]
    db = await open_database(settings)
    try:
        async with db.sessions() as session:
            return await compute_kpis(session, start=start, end=end, calendar=calendar,
                                      channel=channel, language=language, owner=owner)
    finally:
        await db.dispose()


# --- CSV: one row per metric ------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        if not value:
            return
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for number, item in enumerate(value, start=1):
            yield from _flatten(item, f"{prefix}.{number}" if prefix else str(number))
    else:
        yield prefix, value


def csv_rows(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(section, metric, _cell(value)) for section, content in figures.items()
            for metric, value in _flatten(content, "")]


def format_csv(figures: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("section", "metric", "value"))
    writer.writerows(csv_rows(figures))
    return out.getvalue()


# --- terminal tables --------------------------------------------------------------------------

def _number(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:g}{unit}"


def render_report(figures: dict[str, Any], console: Console) -> None:
    period = figures["period"]
    zone = ZoneInfo(period["timezone"])

    def local(text: str) -> str:
        return datetime.fromisoformat(text).astimezone(zone).strftime("%Y-%m-%d %H:%M")

    filters = ", ".join(f"{k} {v}" for k, v in figures["filters"].items() if v) or "none"
    conversations = figures["conversations"]
    console.print(f"[bold]KPIs[/bold] {local(period['start'])} – {local(period['end'])} "
                  f"({period['timezone']}); filters: {filters}; "
                  f"{conversations['total']} conversation(s), "
                  f"{conversations['resolved']} resolved")

    targets = Table(title="Targets (SPEC §8)", title_justify="left")
    for column in ("KPI", "value", "target", ""):
        targets.add_column(column)
    names = {"satisfaction_share": ("customer satisfaction (4–5 ratings)", share_text),
             "on_time_delivery_share": ("on-time delivery", share_text),
             "dispute_resolution_working_days": ("average dispute resolution",
                                                 lambda v: _number(v, " working days"))}
    for key, entry in figures["targets"].items():
        label, show = names.get(key, (key, _number))
        rule = "≥" if entry["rule"] == "at least" else "≤"
        status = ("[green]met[/green]" if entry["met"] else "[red]missed[/red]") \
            if entry["met"] is not None else "no data"
        targets.add_row(label, show(entry["value"]), f"{rule} {show(entry['target'])}", status)
    console.print(targets)

    durations = Table(title="Response and resolution times", title_justify="left")
    for column in ("", "count", "working median", "working p90", "wall median", "wall p90"):
        durations.add_column(column, justify="right" if column else "left")
    for key, label in (("first_response", "first response"), ("resolution", "resolution")):
        entry = figures[key]
        durations.add_row(label, str(entry["count"]),
                          minutes_text(entry["working_minutes"]["median"]),
                          minutes_text(entry["working_minutes"]["p90"]),
                          minutes_text(entry["wall_minutes"]["median"]),
                          minutes_text(entry["wall_minutes"]["p90"]))
    console.print(durations)

    sla = Table(title="SLA clocks", title_justify="left")
    for column in ("clock", "met", "breached", "running", "paused", "breach rate"):
        sla.add_column(column, justify="left" if column == "clock" else "right")
    for kind, entry in figures["sla"].items():
        sla.add_row(kind, *(str(entry[k]) for k in ("met", "breached", "running", "paused")),
                    share_text(entry["breach_rate"]))
    console.print(sla)

    quality = Table(title="Satisfaction, disputes, delivery", title_justify="left")
    quality.add_column("")
    quality.add_column("value", justify="right")
    satisfaction, disputes, delivery = (figures["satisfaction"], figures["disputes"],
                                        figures["delivery"])
    quality.add_row("ratings (1–5)", str(satisfaction["ratings"]))
    quality.add_row("share of 4–5", share_text(satisfaction["share"]))
    quality.add_row("average rating", _number(satisfaction["average"]))
    quality.add_row("complaints opened / resolved",
                    f"{disputes['opened']} / {disputes['resolved']}")
    quality.add_row("average resolution, working days",
                    _number(disputes["average_working_days"]))
    quality.add_row("average resolution, calendar days", _number(disputes["average_wall_days"]))
    quality.add_row("orders delivered (with an ETA)",
                    f"{delivery['delivered']} ({delivery['judged']})")
    quality.add_row("delivered on time", share_text(delivery["share"]))
    console.print(quality)

    complaints = Table(title="Top complaint categories", title_justify="left")
    complaints.add_column("category")
    complaints.add_column("cases", justify="right")
    for entry in figures["complaints"]["top_categories"]:
        complaints.add_row(entry["category"], str(entry["count"]))
    if not figures["complaints"]["top_categories"]:
        complaints.add_row("(none)", "0")
    console.print(complaints)

    owners = Table(title="Owners", title_justify="left")
    for column in ("owner", "open now", "resolved", "first responses",
                   "median first response (working)", "(wall)"):
        owners.add_column(column, justify="left" if column == "owner" else "right")
    for ref, entry in figures["owners"].items():
        owners.add_row(ref, str(entry["open_owned"]), str(entry["resolved"]),
                       str(entry["first_responses"]),
                       minutes_text(entry["first_response_median_working_minutes"]),
                       minutes_text(entry["first_response_median_wall_minutes"]))
    if not figures["owners"]:
        owners.add_row("(none)", "", "", "", "", "")
    console.print(owners)

    spread = Table(title="Conversations", title_justify="left")
    for column in ("channel", "count", "language", "count"):
        spread.add_column(column, justify="right" if column == "count" else "left")
    channels = list(conversations["by_channel"].items())
    languages = list(conversations["by_language"].items())
    for index in range(max(len(channels), len(languages))):
        left = channels[index] if index < len(channels) else ("", "")
        right = languages[index] if index < len(languages) else ("", "")
        spread.add_row(left[0], str(left[1]), right[0], str(right[1]))
    console.print(spread)
