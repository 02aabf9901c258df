"""The ``supportbot`` command line (contract of DESIGN.md).

Exit codes: 0 success, 1 bad input data (import, replay, classify), 2 usage or configuration
error, 3 database unavailable or knowledge invalid, 4 an internal failure (a bug).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from bot.business_hours import CalendarError
from bot.config import ConfigError, Settings, load_settings
from bot.db.database import DatabaseUnavailable
from bot.knowledge import KnowledgeError
from bot.logging_setup import configure_logging

T = TypeVar("T")
EXIT_DATA, EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_INTERNAL = 1, 2, 3, 4


class CliError(click.ClickException):
    """A clear one-line error and the exit status that classifies it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        vars(self)["exit_code"] = exit_code  # click exits with this; it is per error here

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (default: $SUPPORTBOT_CONFIG or ./supportbot.toml).")


def settings_from(ctx: click.Context, config_path: Path | None) -> Settings:
    path = config_path or (ctx.find_root().params.get("config_path"))
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    configure_logging(ctx.find_root().params.get("log_level") or "INFO", settings)
    return settings


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency everywhere but Windows): the same asyncio
    API with a faster loop, which matters for ``serve`` under load. None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(coro_fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body; turn start-up failures into clear errors."""
    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                return runner.run(coro_fn(*args, **kwargs))
        except DatabaseUnavailable as exc:
            raise CliError(str(exc), EXIT_UNAVAILABLE) from None
        except KnowledgeError as exc:
            raise CliError(f"knowledge base: {exc}", EXIT_UNAVAILABLE) from None
        except CalendarError as exc:
            raise CliError(f"invalid configuration: {exc}", EXIT_CONFIG) from None
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="supportbot")
def main(config_path: Path | None, log_level: str) -> None:
    """supportbot: multilingual customer support for exporters."""


@main.command()
@config_option
@click.option("--host", help="Listen address (default from [web] host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default from [web] port).")
@click.pass_context
def serve(ctx: click.Context, config_path: Path | None, host: str | None, port: int | None) -> None:
    """Run the whole service: web chat, webhooks, outbox."""
    from bot.web.server import serve as run_server

    settings = settings_from(ctx, config_path)
    run_async(run_server)(settings, host or settings.web.host, port or settings.web.port)


@main.command()
@config_option
@click.option("--chat", "chat_id", default="console", show_default=True,
              help="Chat id of this console conversation (reuse it to continue).")
@click.pass_context
def chat(ctx: click.Context, config_path: Path | None, chat_id: str) -> None:
    """Talk to the bot as a customer in the terminal (Ctrl-D or /quit to leave)."""
    from bot.console import run_console

    settings = settings_from(ctx, config_path)
    run_async(run_console)(settings, chat_id, sys.stdin, click.echo)


@main.command()
@config_option
@click.pass_context
def classify(ctx: click.Context, config_path: Path | None) -> None:
    """Read one message per line on stdin; print one JSON object per line."""
    from intents.understanding import shared_understander

    settings = settings_from(ctx, config_path)
    understander = shared_understander(tuple(settings.languages.supported),
                                       settings.languages.detector)
    bad_lines = 0
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            bad_lines += 1
            result: dict[str, Any] = {"line": number,
                                      "error": f"not valid UTF-8 (byte {exc.start})"}
        else:
            result = understander.understand(text).as_dict()
        click.echo(json.dumps(result, ensure_ascii=False))
    if bad_lines:
        raise CliError(f"{bad_lines} line(s) were not valid UTF-8", EXIT_DATA)


@main.command("eval")
@config_option
@click.argument("tsv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def eval_command(ctx: click.Context, config_path: Path | None, tsv: Path, as_json: bool) -> None:
    """Measure intent and language accuracy on a labelled TSV (header: lang intent text)."""
    from intents.evaluation import EvalFileError, evaluate_file, format_report

    settings = settings_from(ctx, config_path)
    try:
        report = evaluate_file(tsv, settings.languages.supported, settings.languages.detector)
    except EvalFileError as exc:
        raise CliError(str(exc), EXIT_DATA) from None
    click.echo(json.dumps(report, ensure_ascii=False, indent=2) if as_json
               else format_report(report))


@main.command()
@config_option
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--database", "database_url",
              help="Keep the run in this database (default: a fresh temporary one).")
@click.pass_context
def replay(ctx: click.Context, config_path: Path | None, scenario: Path,
           database_url: str | None) -> None:
    """Run a JSON Lines scenario on a simulated clock; print what the bot sends and decides."""
    from bot.replay import ReplayFailure, ScenarioError, parse_scenario, run_replay

    settings = settings_from(ctx, config_path)
    try:
        text = scenario.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{scenario}: cannot read scenario ({exc})", EXIT_DATA) from None
    try:
        events = parse_scenario(text)
    except ScenarioError as exc:
        raise CliError(f"{scenario}: {exc}", EXIT_DATA) from None
    if database_url:
        try:
            settings = load_settings(config_path or ctx.find_root().params.get("config_path"),
                                     database={"url": database_url})
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_CONFIG) from None
    with tempfile.TemporaryDirectory(prefix="supportbot-replay-") as tmp:
        url = settings.database.url if database_url else f"sqlite+aiosqlite:///{tmp}/replay.db"
        try:
            run_async(run_replay)(settings, events, url, click.echo,
                                  lambda m: click.echo(f"warning: {m}", err=True))
        except ScenarioError as exc:
            raise CliError(f"{scenario}: {exc}", EXIT_DATA) from None
        except ReplayFailure as exc:
            logging.getLogger(__name__).debug("replay failure", exc_info=True)
            raise CliError(f"{scenario}: the bot failed on {exc} (run with --log-level DEBUG "
                           "for details)", EXIT_INTERNAL) from None


@main.command("import")
@config_option
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=True, path_type=Path))
@click.option("--kind", type=click.Choice(["customer", "order", "order_event"]),
              help="Record type, when it cannot be told from the fields.")
@click.option("--dry-run", is_flag=True, help="Check the files; write nothing.")
@click.pass_context
def import_command(ctx: click.Context, config_path: Path | None, files: tuple[Path, ...],
                   kind: str | None, dry_run: bool) -> None:
    """Load customers, orders and order events from JSON Lines or CSV (all or nothing)."""
    from bot.importer import ImportError_, import_files

    settings = settings_from(ctx, config_path)
    try:
        summary = run_async(import_files)(settings, list(files), kind, dry_run)
    except ImportError_ as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise CliError(f"nothing imported: {len(exc.problems)} problem(s)", EXIT_DATA) from None
    click.echo(f"{'checked' if dry_run else 'imported'} {summary}")


@main.command()
@config_option
@click.option("--from", "from_text", metavar="DATE",
              help="Start: ISO date or datetime, company time unless an offset is given "
                   "(default: 30 days before --to).")
@click.option("--to", "to_text", metavar="DATE",
              help="End: an ISO date includes that day; a datetime is the exclusive end "
                   "(default: now).")
@click.option("--channel", help="Only conversations on this channel (telegram, webchat, ...).")
@click.option("--language", help="Only conversations in this language (en, zh, ...).")
@click.option("--owner", help="Only conversations owned by this agent (its ref).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per metric: section, metric, value.")
@click.pass_context
def report(ctx: click.Context, config_path: Path | None, from_text: str | None,
           to_text: str | None, channel: str | None, language: str | None, owner: str | None,
           as_json: bool, as_csv: bool) -> None:
    """KPIs of a period: first response, resolution, SLA, satisfaction, disputes, delivery,
    complaint categories, owners (definitions: docs/kpis.md)."""
    from zoneinfo import ZoneInfo

    from rich.console import Console

    from bot.reporting import PeriodError, collect_report, format_csv, parse_period, render_report

    if as_json and as_csv:
        raise CliError("--json and --csv: choose one", EXIT_CONFIG)
    settings = settings_from(ctx, config_path)
    try:
        start, end = parse_period(from_text, to_text, ZoneInfo(settings.hours.timezone),
                                  datetime.now(UTC))
    except PeriodError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    figures = run_async(collect_report)(settings, start, end, channel=channel,
                                        language=language, owner=owner)
    if as_json:
        click.echo(json.dumps(figures, ensure_ascii=False, indent=2))
    elif as_csv:
        click.echo(format_csv(figures), nl=False)
    else:
        render_report(figures, Console(file=sys.stdout))


@main.command("password-hash")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input instead of asking.")
def password_hash(password_stdin: bool) -> None:
    """An Argon2 hash for an agent's dashboard password ([agents.REF] password_hash)."""
    from bot.web.dashboard import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise CliError("the password needs at least 8 characters", EXIT_DATA)
    click.echo(hash_password(password))


def _instant(text: str | None, option: str) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option}: not an ISO 8601 time: {text!r}", EXIT_CONFIG) from None
    if value.utcoffset() is None:
        raise CliError(f"{option}: needs a timezone offset, e.g. 2026-12-04T18:30+08:00",
                       EXIT_CONFIG)
    return value


@main.command()
@config_option
@click.option("--at", "at_text", metavar="TIME", help="The instant to ask about (default: now).")
@click.option("--between", nargs=2, metavar="START END",
              help="Also print the working time between two instants.")
@click.option("--calendar", "calendar_name", default="default", show_default=True,
              help="Which calendar ([hours] is 'default'; others from [calendars.NAME]).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def hours(ctx: click.Context, config_path: Path | None, at_text: str | None,
          between: tuple[str, str] | None, calendar_name: str, as_json: bool) -> None:
    """Is the desk open now, when does it open next, and working time between two instants."""
    from bot.business_hours import build_calendars

    settings = settings_from(ctx, config_path)
    try:
        calendars = build_calendars(settings.hours, settings.calendars)
    except CalendarError as exc:
        raise CliError(f"invalid configuration: {exc}", EXIT_CONFIG) from None
    if calendar_name not in calendars:
        raise CliError(f"--calendar: unknown calendar {calendar_name!r}; configured: "
                       f"{', '.join(calendars)}", EXIT_CONFIG)
    calendar = calendars[calendar_name]
    at = _instant(at_text, "--at")
    local = at.astimezone(calendar.timezone)
    try:
        opening = calendar.next_opening(at).astimezone(calendar.timezone)
    except CalendarError as exc:
        raise CliError(f"invalid configuration: {exc}", EXIT_CONFIG) from None
    result: dict[str, Any] = {
        "calendar": calendar.name, "timezone": calendar.timezone.key, "at": local.isoformat(),
        "open": calendar.is_open(at), "next_opening": opening.isoformat(),
        "holiday": calendar.holiday_name(local.date()),
    }
    if between:
        start, end = _instant(between[0], "--between"), _instant(between[1], "--between")
        minutes = int(calendar.working_between(start, end).total_seconds() // 60)
        result["working_minutes"] = minutes
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    click.echo(f"calendar {result['calendar']} ({result['timezone']}) at {result['at']}: "
               f"{'open' if result['open'] else 'closed'}"
               + (f" — {result['holiday']}" if result["holiday"] else ""))
    click.echo(f"next opening: {result['next_opening']}")
    if between:
        minutes = result["working_minutes"]
        click.echo(f"working time between: {minutes // 60} h {minutes % 60:02d} min "
                   f"({minutes} minutes)")


@main.group()
def customer() -> None:
    """A customer's data rights: export everything stored about them, or erase it."""


@customer.command("export")
@config_option
@click.argument("ref", metavar="ID")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the JSON to this file (readable by its owner only) instead of stdout.")
@click.pass_context
def customer_export(ctx: click.Context, config_path: Path | None, ref: str,
                    output: Path | None) -> None:
    """Everything stored about customer ID (e.g. C-100), as JSON."""
    from bot.privacy import CustomerNotFound, run_export

    settings = settings_from(ctx, config_path)
    try:
        data = run_async(run_export)(settings, ref)
    except CustomerNotFound as exc:
        raise CliError(str(exc), EXIT_DATA) from None
    text = json.dumps(data, ensure_ascii=False, indent=2)
    if output is None:
        click.echo(text)
        return
    try:
        with open(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  "w", encoding="utf-8") as file:
            file.write(text + "\n")
    except OSError as exc:
        raise CliError(f"{output}: cannot write ({exc.strerror})", EXIT_DATA) from None
    click.echo(f"customer {ref}: written to {output}", err=True)


@customer.command("erase")
@config_option
@click.argument("ref", metavar="ID")
@click.option("--yes", is_flag=True, help="Confirm the erasure; it cannot be undone.")
@click.pass_context
def customer_erase(ctx: click.Context, config_path: Path | None, ref: str, yes: bool) -> None:
    """Erase customer ID's personal data for good; the figures stay computable."""
    from bot.privacy import CustomerNotFound, run_erase

    if not yes:
        raise CliError(
            f"erasing customer {ref} is irreversible: their name, e-mail, phone, company name, "
            "chat ids and everything they wrote are removed for good (export first with "
            f"'supportbot customer export {ref} --output FILE'); add --yes to erase", EXIT_DATA)
    settings = settings_from(ctx, config_path)
    try:
        summary = run_async(run_erase)(settings, ref)
    except CustomerNotFound as exc:
        raise CliError(str(exc), EXIT_DATA) from None
    changed = summary["changed"]
    if summary["already_erased"]:
        click.echo(f"customer {ref}: already erased on {summary['erased_at']}; nothing left")
        return
    click.echo(f"customer {ref} erased: {summary['contacts']} chat(s), "
               f"{summary['conversations']} conversation(s), {changed['messages']} message(s), "
               f"{changed['cases']} case(s), {changed['outbox']} outbox row(s) "
               f"({changed['outbox_given_up']} undelivered, now failed); "
               "rows, times and ratings kept for the figures")


@main.group()
def db() -> None:
    """Database schema management."""


@db.command()
@config_option
@click.pass_context
def upgrade(ctx: click.Context, config_path: Path | None) -> None:
    """Apply migrations up to the newest schema."""
    from bot.db.database import Database, safe_url

    settings = settings_from(ctx, config_path)

    async def _upgrade() -> str | None:
        database = Database(settings.database.url)
        try:
            await database.check()
            await database.upgrade()
            return await database.current_revision()
        finally:
            await database.dispose()

    revision = run_async(_upgrade)()
    click.echo(f"database {safe_url(settings.database.url)} is at revision {revision}")


if __name__ == "__main__":  # pragma: no cover
    main()
