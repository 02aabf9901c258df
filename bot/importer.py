"""Import customers, orders and order events (contract schema of DESIGN.md).

A file is checked completely before anything is written, and then written in one
transaction: a file with a bad row loads nothing, and every bad row is reported by line.
Records are upserts keyed by customer id and order number, so importing twice is harmless.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import ALL_LANGUAGES
from bot.db.models import Contact, Customer, Order, OrderEvent

STAGES = ("confirmed", "in_production", "inspection", "booked", "shipped", "arrived",
          "delivered")
INCOTERMS = ("EXW", "FCA", "FOB", "CFR", "CIF", "CPT", "CIP", "DAP", "DPU", "DDP")
Kind = Literal["customer", "order", "order_event"]


class ImportError_(Exception):
    """The file cannot be imported; ``problems`` lists each bad row as 'line N: ...'."""

    def __init__(self, problems: list[str], batch: Batch | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.batch = batch  # the rows that were valid, to check their references too


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContactRecord(Record):
    channel: str = Field(min_length=1, max_length=32)
    chat: str = Field(min_length=1, max_length=128)


class CustomerRecord(Record):
    id: str = Field(min_length=1, max_length=64)
    company: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)
    phone: str | None = Field(default=None, max_length=40)
    language: str | None = None
    timezone: str | None = None
    strategic: bool = False
    account_manager: str | None = Field(default=None, max_length=64)
    annual_target_m2: int | None = Field(default=None, ge=0)
    annual_volume_m2: int | None = Field(default=None, ge=0)
    contacts: list[ContactRecord] = Field(default_factory=list)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_LANGUAGES:
            raise ValueError(f"unsupported language; use one of {', '.join(ALL_LANGUAGES)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. Europe/Berlin)") from None
        return value


class OrderRecord(Record):
    number: str = Field(min_length=1, max_length=64)
    customer: str = Field(min_length=1, max_length=64)
    product: str | None = Field(default=None, max_length=64)
    quantity_m2: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=2)
    incoterm: str | None = None
    destination: str | None = Field(default=None, max_length=120)
    stage: str = "confirmed"
    progress: int | None = Field(default=None, ge=0, le=100)
    etd: date | None = None
    eta: date | None = None
    vessel: str | None = Field(default=None, max_length=120)
    bl_number: str | None = Field(default=None, max_length=64)
    inspection: dict[str, Any] = Field(default_factory=dict)
    documents: dict[str, str] = Field(default_factory=dict)

    @field_validator("stage")
    @classmethod
    def _stage(cls, value: str) -> str:
        if value not in STAGES:
            raise ValueError(f"unknown stage; use one of {', '.join(STAGES)}")
        return value

    @field_validator("incoterm")
    @classmethod
    def _incoterm(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in INCOTERMS:
            raise ValueError(f"unknown incoterm; use one of {', '.join(INCOTERMS)}")
        return value.upper() if value else value


class OrderEventRecord(Record):
    """A change to an order; fields left out stay as they are."""

    number: str = Field(min_length=1, max_length=64)
    at: datetime | None = None
    stage: str | None = None
    progress: int | None = Field(default=None, ge=0, le=100)
    etd: date | None = None
    eta: date | None = None
    vessel: str | None = Field(default=None, max_length=120)
    bl_number: str | None = Field(default=None, max_length=64)
    inspection: dict[str, Any] | None = None
    documents: dict[str, str] | None = None
    note: str | None = Field(default=None, max_length=2000)

    _stage = field_validator("stage")(lambda cls, v: OrderRecord._stage(v) if v else v)

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("needs a timezone offset, e.g. 2026-12-01T10:00:00+08:00")
        return value


MODELS: dict[str, type[Record]] = {
    "customer": CustomerRecord, "order": OrderRecord, "order_event": OrderEventRecord,
}


@dataclass
class Batch:
    customers: list[tuple[int, CustomerRecord]] = field(default_factory=list)
    orders: list[tuple[int, OrderRecord]] = field(default_factory=list)
    order_events: list[tuple[int, OrderEventRecord]] = field(default_factory=list)
    # Where each record came from ("FILE: "), keyed by id(record), for problem messages.
    sources: dict[int, str] = field(default_factory=dict)
    # Customer ids and order numbers named on invalid rows: not reported again as unknown.
    unresolved: set[str] = field(default_factory=set)

    def add(self, line: int, record: Record) -> None:
        if isinstance(record, CustomerRecord):
            self.customers.append((line, record))
        elif isinstance(record, OrderRecord):
            self.orders.append((line, record))
        elif isinstance(record, OrderEventRecord):
            self.order_events.append((line, record))

    def extend(self, other: Batch) -> None:
        self.customers += other.customers
        self.orders += other.orders
        self.order_events += other.order_events
        self.sources.update(other.sources)
        self.unresolved |= other.unresolved

    def label(self, prefix: str) -> None:
        for _, record in (*self.customers, *self.orders, *self.order_events):
            self.sources[id(record)] = prefix

    def where(self, line: int, record: Record) -> str:
        return f"{self.sources.get(id(record), '')}line {line}"

    @property
    def size(self) -> int:
        return len(self.customers) + len(self.orders) + len(self.order_events)


@dataclass
class ImportSummary:
    customers: int = 0
    orders: int = 0
    order_events: int = 0

    def __str__(self) -> str:
        return (f"{self.customers} customer(s), {self.orders} order(s), "
                f"{self.order_events} order event(s)")


def infer_kind(record: dict[str, Any]) -> Kind | None:
    if "number" in record and "customer" in record:
        return "order"
    if "number" in record:
        return "order_event"
    if "id" in record:
        return "customer"
    return None


def _unwrap(raw: Any, kind: Kind | None) -> tuple[Kind | None, Any]:
    """Accept ``{"customer": {...}}`` wrappers as well as bare records."""
    if isinstance(raw, dict) and len(raw) == 1:
        (key, value), = raw.items()
        if key in MODELS and isinstance(value, dict):
            return key, value  # type: ignore[return-value]
    if isinstance(raw, dict):
        return kind or infer_kind(raw), raw
    return kind, raw


def _problem(line: int, exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "record"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        out.append(f"line {line}: {key}: {str(message).removeprefix('Value error, ')}")
    return out


def validate_records(rows: Iterable[tuple[int, Any]], kind: Kind | None = None) -> Batch:
    """Validate parsed rows; raise ImportError_ listing every bad row by line."""
    batch, problems = Batch(), []
    for line, raw in rows:
        record_kind, data = _unwrap(raw, kind)
        if not isinstance(data, dict):
            problems.append(f"line {line}: expected a JSON object")
            continue
        if record_kind is None:
            problems.append(f"line {line}: cannot tell whether this is a customer, an order or "
                            "an order event (needs 'id', or 'number' and 'customer', or 'number')")
            continue
        try:
            batch.add(line, MODELS[record_kind].model_validate(data))
        except ValidationError as exc:
            problems.extend(_problem(line, exc))
            key = "id" if record_kind == "customer" else "number"
            if isinstance(data.get(key), str):
                batch.unresolved.add(data[key].strip())
    if problems:
        raise ImportError_(problems, batch)
    return batch


def read_jsonl(text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, _Malformed(f"not valid JSON ({exc.msg} at column {exc.colno})")
        except RecursionError:
            yield number, _Malformed("not valid JSON (nested too deeply)")


@dataclass
class _Malformed:
    reason: str


_CSV_JSON_COLUMNS = ("contacts", "documents", "inspection")


def _csv_cell(column: str, value: str) -> Any:
    value = value.strip()
    if value == "":
        return None
    if column in _CSV_JSON_COLUMNS:
        if value.startswith(("[", "{")):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{column}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise ValueError(f"{column}: not valid JSON (nested too deeply)") from None
        parts = [part for part in value.split(";") if part.strip()]
        if column == "contacts":  # compact form: telegram:tg-1001;webchat:abc
            if not all(":" in part for part in parts):
                raise ValueError("contacts: expected 'channel:chat;channel:chat' or JSON")
            return [dict(zip(("channel", "chat"), part.split(":", 1), strict=True))
                    for part in parts]
        if not all("=" in part for part in parts):
            raise ValueError(f"{column}: expected 'key=value;key=value' or JSON")
        return dict(part.split("=", 1) for part in parts)
    return value  # "yes"/"no", numbers and dates are checked by the record's model


def read_csv(text: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader cannot go on after this: report the line and stop there.
            yield max(reader.reader.line_num, 1), _Malformed(_csv_problem(exc))
            return
        line = reader.line_num
        if None in row:
            yield line, _Malformed("more cells than header columns")
            continue
        try:
            yield line, {k: v for k, v in ((c, _csv_cell(c, row[c] or "")) for c in row)
                         if v is not None}
        except ValueError as exc:
            yield line, _Malformed(f"cannot read cell {exc}")


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if "field larger than field limit" in message:
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    if "new-line character seen in unquoted field" in message:
        return ("a carriage return outside quotes (old Mac line ends?); save the file with "
                "\\n or \\r\\n line ends")
    return f"not valid CSV ({message})"


def parse_text(text: str, fmt: Literal["jsonl", "csv"], kind: Kind | None = None) -> Batch:
    rows = read_jsonl(text) if fmt == "jsonl" else read_csv(text)
    problems: list[str] = []
    good: list[tuple[int, Any]] = []
    for line, raw in rows:
        if isinstance(raw, _Malformed):
            problems.append(f"line {line}: {raw.reason}")
        else:
            good.append((line, raw))
    try:
        batch = validate_records(good, kind)
    except ImportError_ as exc:
        problems.extend(exc.problems)
        batch = exc.batch or Batch()
    if problems:
        raise ImportError_(sorted(problems, key=_line_number), batch)
    if batch.size == 0:
        raise ImportError_(["the file holds no records"])
    return batch


def _line_number(problem: str) -> int:
    head = problem.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0


def read_file(path: Path, kind: Kind | None = None) -> Batch:
    """Read and validate one file; the format follows the extension (.csv, else JSON Lines)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImportError_([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise ImportError_([f"{path}: is a directory, not a file"]) from None
    except PermissionError:
        raise ImportError_([f"{path}: permission denied"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportError_([f"{path}: line {line}: not valid UTF-8 (byte {exc.start})"]) from None
    fmt: Literal["jsonl", "csv"] = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    try:
        batch = parse_text(text, fmt, kind)
    except ImportError_ as exc:
        if exc.batch is not None:
            exc.batch.label(f"{path}: ")
        raise ImportError_([f"{path}: {p}" for p in exc.problems], exc.batch) from None
    batch.label(f"{path}: ")
    return batch


async def check_references(session: AsyncSession, batch: Batch) -> list[str]:
    """Orders must name a known customer, order events a known order (here or stored)."""
    batch_customers = {r.id for _, r in batch.customers}
    order_refs = {r.customer for _, r in batch.orders} - batch_customers
    known_refs = set((await session.execute(
        select(Customer.ref).where(Customer.ref.in_(order_refs)))).scalars())
    order_numbers = {r.number for _, r in batch.orders}
    event_numbers = {r.number for _, r in batch.order_events} - order_numbers
    known_orders = set((await session.execute(
        select(Order.number).where(Order.number.in_(event_numbers)))).scalars())
    known_refs |= batch_customers | batch.unresolved
    known_orders |= order_numbers | batch.unresolved
    problems = [f"{batch.where(line, r)}: customer: {r.customer!r} is not a known customer id"
                for line, r in batch.orders if r.customer not in known_refs]
    problems += [f"{batch.where(line, r)}: number: order {r.number!r} does not exist"
                 for line, r in batch.order_events if r.number not in known_orders]
    return problems


async def apply_batch(session: AsyncSession, batch: Batch, now: datetime,
                      source: str = "import") -> ImportSummary:
    """Write a validated batch in the caller's transaction; checks references first."""
    problems = await check_references(session, batch)
    if problems:
        raise ImportError_(problems)
    customers = {c.ref: c for c in (await session.execute(
        select(Customer).where(Customer.ref.in_([r.id for _, r in batch.customers]))
    )).scalars()}

    summary = ImportSummary()
    for _, record in batch.customers:
        customers[record.id] = await _upsert_customer(session, customers.get(record.id),
                                                      record, now)
        summary.customers += 1
    for _, order_record in batch.orders:
        await _upsert_order(session, order_record, now, source)
        summary.orders += 1
    for _, event_record in batch.order_events:
        await apply_order_event(session, event_record, event_record.at or now, source)
        summary.order_events += 1
    await session.flush()
    return summary


async def _upsert_customer(session: AsyncSession, customer: Customer | None,
                           record: CustomerRecord, now: datetime) -> Customer:
    if customer is None:
        customer = Customer(ref=record.id, created_at=now)
        session.add(customer)
    customer.company = record.company
    customer.contact_name = record.name
    customer.country = record.country.upper() if record.country else None
    customer.email = record.email
    customer.phone = record.phone
    customer.language = record.language
    customer.timezone = record.timezone
    customer.strategic = record.strategic
    customer.account_manager = record.account_manager
    customer.annual_target_m2 = record.annual_target_m2
    customer.annual_volume_m2 = record.annual_volume_m2
    customer.updated_at = now
    await session.flush()
    for contact_record in record.contacts:
        contact = (await session.execute(select(Contact).where(
            Contact.channel == contact_record.channel, Contact.chat == contact_record.chat)
        )).scalar_one_or_none()
        if contact is None:
            contact = Contact(channel=contact_record.channel, chat=contact_record.chat,
                              created_at=now)
            session.add(contact)
        contact.customer_id = customer.id
    return customer


async def _upsert_order(session: AsyncSession, record: OrderRecord, now: datetime,
                        source: str) -> Order:
    customer_id = (await session.execute(
        select(Customer.id).where(Customer.ref == record.customer))).scalar_one()
    order = (await session.execute(
        select(Order).where(Order.number == record.number))).scalar_one_or_none()
    if order is None:
        order = Order(number=record.number, customer_id=customer_id, stage=record.stage,
                      created_at=now, updated_at=now)
        session.add(order)
    known = order.id is not None
    fields = record.model_dump(exclude={"number", "customer"})
    changes = {name: {"from": _jsonable(getattr(order, name)), "to": _jsonable(value)}
               for name, value in fields.items() if known and getattr(order, name) != value}
    for name, value in fields.items():
        setattr(order, name, value)
    order.customer_id = customer_id
    order.updated_at = now
    _stage_facts(order, now, entered=not known or "stage" in changes)
    await session.flush()
    if not known:
        # Recorded, but announced to nobody: a first import must not message every customer.
        session.add(OrderEvent(order_id=order.id, at=now, stage=order.stage,
                               changes={"stage": order.stage}, source=source, notified_at=now))
    elif changes:
        # A change of a known order (stage, ETA...) is an order event like any other: the
        # order-alert job tells the customer.
        session.add(OrderEvent(order_id=order.id, at=now, stage=order.stage, changes=changes,
                               source=source))
    return order


def _stage_facts(order: Order, now: datetime, entered: bool) -> None:
    """Timestamps the proactive jobs count from, set when an order enters a stage."""
    if not entered:
        return
    if order.stage == "delivered" and order.delivered_at is None:
        order.delivered_at = now
    if order.stage == "in_production":
        order.progress_noted_at = now  # the weekly note counts from here


async def apply_order_event(session: AsyncSession, record: OrderEventRecord, at: datetime,
                            source: str) -> tuple[Order, dict[str, Any]]:
    """Apply a change to an order and record it; returns the order and what changed."""
    order = (await session.execute(
        select(Order).where(Order.number == record.number))).scalar_one()
    changes: dict[str, Any] = {}
    if record.note:
        changes["note"] = record.note
    for name, value in record.model_dump(exclude={"number", "at", "note"},
                                         exclude_none=True).items():
        if getattr(order, name) != value:
            previous = getattr(order, name)
            changes[name] = {"from": _jsonable(previous), "to": _jsonable(value)}
            setattr(order, name, value)
    _stage_facts(order, at, entered="stage" in changes)
    order.updated_at = at
    session.add(OrderEvent(order_id=order.id, at=at, stage=order.stage, changes=changes,
                           source=source))
    await session.flush()
    return order, changes


def _jsonable(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


async def import_files(settings: Any, paths: list[Path], kind: Kind | None = None,
                       dry_run: bool = False) -> ImportSummary:
    """Validate every file, then write them all in one transaction (or nothing)."""
    from bot.clock import SystemClock
    from bot.service import open_database

    batch, problems = Batch(), []
    for path in paths:
        try:
            batch.extend(read_file(path, kind))
        except ImportError_ as exc:
            problems.extend(exc.problems)
            if exc.batch is not None:
                batch.extend(exc.batch)
    if problems:
        # Report the valid rows' unknown references too, so one run lists every bad row.
        problems += await _stored_reference_problems(settings, batch)
        raise ImportError_(_in_file_order(problems, paths))
    db = await open_database(settings)
    try:
        async with db.sessions() as session:
            transaction = await session.begin()
            try:
                summary = await apply_batch(session, batch, SystemClock().now())
            except BaseException:
                await transaction.rollback()
                raise
            if dry_run:
                await transaction.rollback()
            else:
                await transaction.commit()
        return summary
    finally:
        await db.dispose()


async def _stored_reference_problems(settings: Any, batch: Batch) -> list[str]:
    """Best effort: without a reachable, migrated database the other problems stand alone."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.db.database import Database, DatabaseUnavailable

    if not (batch.orders or batch.order_events):
        return []
    database = Database(settings.database.url)
    try:
        await database.check()
        async with database.sessions() as session:
            return await check_references(session, batch)
    except (DatabaseUnavailable, SQLAlchemyError):  # unreachable, or no schema yet
        return []
    finally:
        await database.dispose()


def _in_file_order(problems: list[str], paths: list[Path]) -> list[str]:
    def key(problem: str) -> tuple[int, int]:
        for index, path in enumerate(paths):
            if problem.startswith(f"{path}: "):
                return index, _line_number(problem[len(f"{path}: "):])
        return len(paths), 0
    return sorted(problems, key=key)
