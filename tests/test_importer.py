"""The importer: JSON Lines and CSV, upserts, order events, and all-or-nothing loading."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.config import Settings
from bot.db.database import Database
from bot.db.models import Contact, Customer, Order, OrderEvent
from bot.importer import (
    Batch,
    ImportError_,
    ImportSummary,
    apply_batch,
    import_files,
    parse_text,
    read_file,
)

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
ALL_MODELS = (Customer, Contact, Order, OrderEvent)

CUSTOMER = {"id": "C-100", "company": "Nordic Floors GmbH", "country": "de",
            "email": "buyer@nordicfloors.example", "language": "de", "strategic": True,
            "account_manager": "agent-1", "annual_target_m2": 50000,
            "annual_volume_m2": 61000,
            "contacts": [{"channel": "telegram", "chat": "tg-1001"},
                         {"channel": "webchat", "chat": "w-1001"}]}
ORDER = {"number": "PO-24117", "customer": "C-100", "product": "SPC-5-05",
         "quantity_m2": 2000.5, "incoterm": "cif", "destination": "Hamburg",
         "stage": "in_production", "progress": 60, "etd": "2026-12-01", "eta": "2027-01-05",
         "vessel": None, "bl_number": None, "documents": {"pi": "PI-24117.pdf"}}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database, without the rest of the service: the importer needs no more."""
    database = Database(database_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.dispose()


def jsonl(*records: Any) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def count(db: Database, model: Any) -> int:
    async with db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


async def counts(db: Database) -> dict[str, int]:
    return {m.__name__: await count(db, m) for m in ALL_MODELS}


async def load(db: Database, batch: Batch, now: datetime = NOW) -> ImportSummary:
    async with db.sessions.begin() as session:
        return await apply_batch(session, batch, now)


async def customer(db: Database, ref: str) -> Customer:
    async with db.sessions() as session:
        return (await session.execute(select(Customer).where(Customer.ref == ref))).scalar_one()


async def order(db: Database, number: str) -> Order:
    async with db.sessions() as session:
        return (await session.execute(select(Order).where(Order.number == number))).scalar_one()


async def contacts_of(db: Database, ref: str) -> set[tuple[str, str]]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(Contact.channel, Contact.chat).join(Customer, Contact.customer_id == Customer.id)
            .where(Customer.ref == ref))
        return {(r.channel, r.chat) for r in rows}


async def events_of(db: Database, number: str) -> list[OrderEvent]:
    async with db.sessions() as session:
        return list((await session.execute(
            select(OrderEvent).join(Order, OrderEvent.order_id == Order.id)
            .where(Order.number == number).order_by(OrderEvent.id))).scalars())


# --- loading -----------------------------------------------------------------------------

async def test_jsonl_customers_and_orders_are_loaded(db: Database, tmp_path: Path) -> None:
    customers = read_file(write(tmp_path / "customers.jsonl", jsonl(
        CUSTOMER, {"id": "C-200", "company": "PolTrade", "language": "ru"})))
    orders = read_file(write(tmp_path / "orders.jsonl", jsonl(ORDER)))
    batch = Batch()
    batch.extend(customers)
    batch.extend(orders)
    summary = await load(db, batch)

    assert (summary.customers, summary.orders, summary.order_events) == (2, 1, 0)
    assert str(summary) == "2 customer(s), 1 order(s), 0 order event(s)"
    c100 = await customer(db, "C-100")
    assert (c100.company, c100.country, c100.language, c100.strategic) == (
        "Nordic Floors GmbH", "DE", "de", True)
    assert (c100.annual_target_m2, c100.annual_volume_m2, c100.account_manager) == (
        50000, 61000, "agent-1")
    assert (await customer(db, "C-200")).strategic is False
    assert await contacts_of(db, "C-100") == {("telegram", "tg-1001"), ("webchat", "w-1001")}
    po = await order(db, "PO-24117")
    assert po.customer_id == c100.id
    assert (po.product, po.incoterm, po.destination, po.stage, po.progress) == (
        "SPC-5-05", "CIF", "Hamburg", "in_production", 60)
    assert po.quantity_m2 == Decimal("2000.50")
    assert (po.etd, po.eta) == (date(2026, 12, 1), date(2027, 1, 5))
    assert po.documents == {"pi": "PI-24117.pdf"}
    # A new order records its first stage.
    assert [(e.stage, e.source) for e in await events_of(db, "PO-24117")] == [
        ("in_production", "import")]


async def test_csv_customers_and_orders_are_loaded(db: Database, tmp_path: Path) -> None:
    customers_csv = write(tmp_path / "customers.csv", (
        "id,company,country,language,strategic,annual_target_m2,contacts\n"
        "C-1,Alpha Tiles,FR,fr,yes,1000,telegram:tg-1;webchat:w-1\n"
        'C-2,"Beta, Inc.",ES,es,false,,"[{""channel"": ""telegram"", ""chat"": ""tg-2""}]"\n'
    ))
    orders_csv = write(tmp_path / "orders.csv", (
        "number,customer,product,quantity_m2,stage,etd,documents\n"
        "PO-1,C-1,SPC-5-05,1500,booked,2026-12-20,pi=PI-1.pdf;packing_list=PL-1.pdf\n"
        'PO-2,C-2,LAM-8-AC4,300,confirmed,,"{""pi"": ""PI-2.pdf""}"\n'
    ))
    customers = read_file(customers_csv)
    assert [line for line, _ in customers.customers] == [2, 3]
    batch = Batch()
    batch.extend(customers)
    batch.extend(read_file(orders_csv))
    summary = await load(db, batch)

    assert (summary.customers, summary.orders) == (2, 2)
    alpha, beta = await customer(db, "C-1"), await customer(db, "C-2")
    assert (alpha.company, alpha.strategic, alpha.annual_target_m2) == ("Alpha Tiles", True, 1000)
    assert (beta.company, beta.strategic, beta.annual_target_m2) == ("Beta, Inc.", False, None)
    assert await contacts_of(db, "C-1") == {("telegram", "tg-1"), ("webchat", "w-1")}
    assert await contacts_of(db, "C-2") == {("telegram", "tg-2")}
    po1, po2 = await order(db, "PO-1"), await order(db, "PO-2")
    assert po1.documents == {"pi": "PI-1.pdf", "packing_list": "PL-1.pdf"}
    assert (po1.stage, po1.etd, po1.quantity_m2) == ("booked", date(2026, 12, 20), Decimal(1500))
    assert (po2.documents, po2.etd, po2.customer_id) == ({"pi": "PI-2.pdf"}, None, beta.id)


async def test_importing_twice_is_idempotent_and_updates_values(db: Database) -> None:
    contact_c200 = {"id": "C-200", "contacts": [{"channel": "telegram", "chat": "tg-2"}]}
    await load(db, parse_text(jsonl(CUSTOMER, contact_c200, ORDER), "jsonl"))
    first = await counts(db)
    assert first == {"Customer": 2, "Contact": 3, "Order": 1, "OrderEvent": 1}

    changed_customer = {**CUSTOMER, "company": "Nordic Floors AG", "annual_volume_m2": 70000}
    changed_order = {**ORDER, "progress": 80, "destination": "Bremen"}
    # The telegram chat moves to the other customer.
    moved = {**contact_c200, "contacts": [{"channel": "telegram", "chat": "tg-1001"}]}
    summary = await load(db, parse_text(jsonl(changed_customer, moved, changed_order),
                                             "jsonl"))
    assert (summary.customers, summary.orders) == (2, 1)
    # Same rows, no duplicates; the order's changes are one order event.
    assert await counts(db) == {**first, "OrderEvent": 2}
    changes = (await events_of(db, "PO-24117"))[-1].changes
    assert changes["progress"] == {"from": 60, "to": 80} and changes["destination"]["to"] == "Bremen"
    await load(db, parse_text(jsonl(changed_customer, moved, changed_order), "jsonl"))
    assert await counts(db) == {**first, "OrderEvent": 2}  # the same data again: nothing new
    c100 = await customer(db, "C-100")
    assert (c100.company, c100.annual_volume_m2) == ("Nordic Floors AG", 70000)
    po = await order(db, "PO-24117")
    assert (po.progress, po.destination) == (80, "Bremen")
    assert await contacts_of(db, "C-200") == {("telegram", "tg-2"), ("telegram", "tg-1001")}
    assert await contacts_of(db, "C-100") == {("webchat", "w-1001")}

    # A stage change on re-import is recorded as an event.
    await load(db, parse_text(jsonl({**ORDER, "stage": "inspection"}), "jsonl"))
    assert [e.stage for e in await events_of(db, "PO-24117")] == [
        "in_production", "in_production", "inspection"]


async def test_wrapped_records_are_accepted(db: Database) -> None:
    text = jsonl({"customer": {"id": "C-7", "company": "Wrapped Ltd"}},
                 {"order": {"number": "PO-7", "customer": "C-7", "stage": "confirmed"}},
                 {"order_event": {"number": "PO-7", "stage": "in_production", "progress": 10}})
    batch = parse_text(text, "jsonl")
    assert (len(batch.customers), len(batch.orders), len(batch.order_events)) == (1, 1, 1)
    summary = await load(db, batch)
    assert (summary.customers, summary.orders, summary.order_events) == (1, 1, 1)
    assert (await customer(db, "C-7")).company == "Wrapped Ltd"
    po = await order(db, "PO-7")
    assert (po.stage, po.progress) == ("in_production", 10)


async def test_order_events_update_the_order_and_are_recorded(db: Database) -> None:
    await load(db, parse_text(jsonl(CUSTOMER, ORDER), "jsonl"))
    event = {"number": "PO-24117", "at": "2026-12-10T09:30:00+08:00", "stage": "shipped",
             "vessel": "Pacific Harmony V.045W", "eta": "2027-01-09", "progress": 100}
    summary = await load(db, parse_text(jsonl(event), "jsonl"))
    assert summary.order_events == 1

    po = await order(db, "PO-24117")
    assert (po.stage, po.vessel, po.eta, po.progress) == (
        "shipped", "Pacific Harmony V.045W", date(2027, 1, 9), 100)
    assert po.etd == date(2026, 12, 1)  # fields left out stay as they were
    assert po.documents == {"pi": "PI-24117.pdf"}
    assert po.delivered_at is None
    events = await events_of(db, "PO-24117")
    assert len(events) == 2
    last = events[-1]
    assert last.stage == "shipped"
    assert last.at == datetime(2026, 12, 10, 1, 30, tzinfo=UTC)
    assert last.changes["stage"] == {"from": "in_production", "to": "shipped"}
    assert last.changes["eta"] == {"from": "2027-01-05", "to": "2027-01-09"}
    assert last.changes["vessel"] == {"from": None, "to": "Pacific Harmony V.045W"}
    assert "etd" not in last.changes

    # Without its own time an event takes the import time; delivery is stamped.
    await load(db, parse_text(jsonl({"number": "PO-24117", "stage": "delivered"}),
                                   "jsonl"))
    po = await order(db, "PO-24117")
    assert po.stage == "delivered" and po.delivered_at == NOW
    assert (await events_of(db, "PO-24117"))[-1].at == NOW


async def test_order_and_its_events_in_one_file_apply_in_order(db: Database) -> None:
    text = jsonl(CUSTOMER, ORDER,
                 {"number": "PO-24117", "stage": "inspection"},
                 {"number": "PO-24117", "stage": "booked", "vessel": "Jade Horizon"})
    await load(db, parse_text(text, "jsonl"))
    po = await order(db, "PO-24117")
    assert (po.stage, po.vessel) == ("booked", "Jade Horizon")
    assert [e.stage for e in await events_of(db, "PO-24117")] == [
        "in_production", "inspection", "booked"]


# --- bad rows -----------------------------------------------------------------------------

BAD_FILE = "\n".join([
    json.dumps({"id": "C-1", "company": "Good Customer"}),                      # 1 good
    '{"id": "C-2", "company": "broken" ',                                       # 2 bad JSON
    json.dumps({"id": "C-3", "compnay": "Typo Ltd"}),                           # 3 unknown field
    json.dumps({"number": "PO-1", "customer": "C-1", "stage": "sailing"}),      # 4 bad stage
    "",                                                                         # 5 blank
    json.dumps({"number": "PO-2", "customer": "C-1", "quantity_m2": -5}),       # 6 negative
    json.dumps({"number": "PO-3", "customer": "C-404"}),                        # 7 unknown ref
    json.dumps({"number": "PO-4", "customer": "C-1", "stage": "confirmed"}),    # 8 good
]) + "\n"


def test_every_bad_row_is_reported_with_its_line() -> None:
    with pytest.raises(ImportError_) as info:
        parse_text(BAD_FILE, "jsonl")
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4", "line 6"]
    assert "not valid JSON" in problems[0]
    assert problems[1] == "line 3: compnay: unknown field"
    assert "line 4: stage: unknown stage" in problems[2]
    assert "line 6: quantity_m2:" in problems[3] and "greater than or equal to 0" in problems[3]


async def test_bad_file_reports_every_bad_row_and_loads_nothing(
        db: Database, settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.jsonl", BAD_FILE)
    with pytest.raises(ImportError_) as info:
        await import_files(settings, [path])
    problems = info.value.problems
    assert all(p.startswith(f"{path}: line ") for p in problems), problems
    lines = [int(p.removeprefix(f"{path}: line ").split(":")[0]) for p in problems]
    # The reference to an unknown customer (line 7) is reported together with the rest.
    assert lines == [2, 3, 4, 6, 7]
    assert "'C-404' is not a known customer id" in problems[-1]
    assert await counts(db) == dict.fromkeys(("Customer", "Contact", "Order",
                                                   "OrderEvent"), 0)


async def test_unknown_references_load_nothing(db: Database) -> None:
    batch = parse_text(jsonl({"id": "C-1"},
                             {"number": "PO-1", "customer": "C-1"},
                             {"number": "PO-2", "customer": "C-999"},
                             {"number": "PO-404", "stage": "shipped"}), "jsonl")
    with pytest.raises(ImportError_) as info:
        await load(db, batch)
    assert info.value.problems == [
        "line 3: customer: 'C-999' is not a known customer id",
        "line 4: number: order 'PO-404' does not exist",
    ]
    assert await counts(db) == dict.fromkeys(("Customer", "Contact", "Order",
                                                   "OrderEvent"), 0)


async def test_references_to_earlier_imports_are_accepted(db: Database) -> None:
    await load(db, parse_text(jsonl({"id": "C-1"}), "jsonl"))
    await load(db, parse_text(jsonl({"number": "PO-1", "customer": "C-1"}), "jsonl"))
    await load(db, parse_text(jsonl({"number": "PO-1", "progress": 5}), "jsonl"))
    assert (await order(db, "PO-1")).progress == 5


@pytest.mark.parametrize("text, expected", [
    ("id,contacts\nC-1,telegram-without-colon\n", "line 2: "),
    ("number,customer,documents\nPO-1,C-1,pi\n", "line 2: "),
    ("id,company\nC-1,Acme,surplus\n", "line 2: more cells than header columns"),
    ("id,strategic\nC-1,maybe\n", "line 2: strategic:"),
    ("id,country\nC-1,Germany\nC-2,DE\nC-3,\n", "line 2: country:"),
])
def test_bad_csv_rows_name_their_line(text: str, expected: str) -> None:
    with pytest.raises(ImportError_) as info:
        parse_text(text, "csv")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(expected), info.value.problems


def test_bad_csv_cells_name_the_column() -> None:
    with pytest.raises(ImportError_) as info:
        parse_text("id,contacts\nC-1,telegram-without-colon\n", "csv")
    assert "contacts" in info.value.problems[0]
    with pytest.raises(ImportError_) as info:
        parse_text("number,customer,documents\nPO-1,C-1,pi\n", "csv")
    assert "documents" in info.value.problems[0]


@pytest.mark.parametrize("value, expected", [("true", True), ("Yes", True), ("1", True),
                                             ("no", False), ("0", False), ("FALSE", False)])
def test_csv_booleans(value: str, expected: bool) -> None:
    batch = parse_text(f"id,strategic\nC-1,{value}\n", "csv")
    assert batch.customers[0][1].strategic is expected


def test_record_of_unknown_kind_is_reported() -> None:
    with pytest.raises(ImportError_) as info:
        parse_text(jsonl({"company": "No id"}, [1, 2]), "jsonl")
    assert [p.split(":")[0] for p in info.value.problems] == ["line 1", "line 2"]
    assert "cannot tell" in info.value.problems[0]
    assert "expected a JSON object" in info.value.problems[1]


# --- unreadable files -----------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImportError_) as info:
        read_file(tmp_path / "nope.jsonl")
    assert info.value.problems == [f"{tmp_path / 'nope.jsonl'}: file not found"]


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ImportError_) as info:
        read_file(tmp_path)
    assert "is a directory" in info.value.problems[0]


@pytest.mark.parametrize("name, content, expected", [
    ("deep.jsonl", '{"id": "C-1"}\n' + "[" * 100_000 + "]" * 100_000 + "\n",
     "line 2: not valid JSON (nested too deeply)"),
    ("deep.csv", "id,contacts\nC-1,\"" + "[" * 5_000 + "]" * 5_000 + "\"\n",
     "line 2: cannot read cell contacts: not valid JSON (nested too deeply)"),
    ("huge.csv", "id,company\nC-1,Acme\nC-2," + "x" * 200_000 + "\n",
     "line 3: a cell is longer than 131,072 characters"),
    ("mac.csv", "id,company\rC-1,Acme\r", "line 1: a carriage return outside quotes"),
    ("mac-later.csv", "id,company\nC-1,Acme\nC-2,Beta\rC-3,Gamma\n",
     "line 3: a carriage return outside quotes"),
])
def test_unparseable_lines_are_reported_with_file_and_line(
        tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content, newline="")
    with pytest.raises(ImportError_) as info:
        read_file(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: {expected}"), problem


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "C-1"}\n{"id": "C-2"}\n{"id": "C-3", "company": "M\xfcller"}\n')
    with pytest.raises(ImportError_) as info:
        read_file(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: line 3: not valid UTF-8")


@pytest.mark.parametrize("content", ["", "\n\n  \n", "id,company\n"])
def test_empty_file_has_no_records(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / ("empty.csv" if content.startswith("id") else "empty.jsonl"), content)
    with pytest.raises(ImportError_) as info:
        read_file(path)
    assert info.value.problems == [f"{path}: the file holds no records"]


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffid,company\nC-1,Excel GmbH\n".encode())
    assert read_file(path).customers[0][1].company == "Excel GmbH"


# --- several files: all or nothing ---------------------------------------------------------

async def test_several_files_load_together(db: Database, settings: Settings,
                                           tmp_path: Path) -> None:
    customers = write(tmp_path / "customers.jsonl", jsonl(CUSTOMER))
    orders = write(tmp_path / "orders.csv",
                   "number,customer,stage\nPO-1,C-100,confirmed\nPO-2,C-100,booked\n")
    summary = await import_files(settings, [customers, orders])
    assert str(summary) == "1 customer(s), 2 order(s), 0 order event(s)"
    assert (await counts(db))["Order"] == 2


async def test_second_file_bad_means_first_is_not_loaded(db: Database, settings: Settings,
                                                         tmp_path: Path) -> None:
    good = write(tmp_path / "customers.jsonl", jsonl(CUSTOMER))
    bad = write(tmp_path / "orders.jsonl", jsonl(ORDER, {**ORDER, "number": "PO-9",
                                                         "stage": "lost"}))
    with pytest.raises(ImportError_) as info:
        await import_files(settings, [good, bad])
    assert [p.split(": stage")[0] for p in info.value.problems] == [f"{bad}: line 2"]
    assert await count(db, Customer) == 0


async def test_reference_error_in_second_file_rolls_back_the_first(
        db: Database, settings: Settings, tmp_path: Path) -> None:
    good = write(tmp_path / "customers.jsonl", jsonl(CUSTOMER))
    bad = write(tmp_path / "orders.jsonl", jsonl(ORDER, {**ORDER, "number": "PO-9",
                                                         "customer": "C-9"}))
    with pytest.raises(ImportError_) as info:
        await import_files(settings, [good, bad])
    assert info.value.problems == [f"{bad}: line 2: customer: 'C-9' is not a known customer id"]
    assert await counts(db) == dict.fromkeys(("Customer", "Contact", "Order",
                                                   "OrderEvent"), 0)


async def test_problems_of_every_file_are_reported(settings: Settings, tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", jsonl({"id": "C-1", "language": "xx"}))
    missing = tmp_path / "b.jsonl"
    with pytest.raises(ImportError_) as info:
        await import_files(settings, [first, missing])
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith(f"{first}: line 1: language:")
    assert info.value.problems[1] == f"{missing}: file not found"


async def test_dry_run_checks_but_writes_nothing(db: Database, settings: Settings,
                                                 tmp_path: Path) -> None:
    path = write(tmp_path / "all.jsonl", jsonl(CUSTOMER, ORDER))
    summary = await import_files(settings, [path], dry_run=True)
    assert (summary.customers, summary.orders) == (1, 1)
    assert await counts(db) == dict.fromkeys(("Customer", "Contact", "Order",
                                                   "OrderEvent"), 0)


async def test_references_to_invalid_rows_are_not_reported_twice(
        db: Database, settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "all.jsonl", jsonl(
        {"id": "C-1", "country": "Germany"},                    # 1 bad country
        {"number": "PO-1", "customer": "C-1"},                  # 2 fine once line 1 is fixed
        {"number": "PO-2", "customer": "C-1", "progress": 101},  # 3 bad progress
        {"number": "PO-2", "stage": "shipped"},                 # 4 fine once line 3 is fixed
        {"number": "PO-3", "customer": "C-2"},                  # 5 unknown customer
    ))
    with pytest.raises(ImportError_) as info:
        await import_files(settings, [path])
    assert [p.removeprefix(f"{path}: ").split(":")[0] for p in info.value.problems] == [
        "line 1", "line 3", "line 5"]


async def test_bad_file_is_reported_even_when_the_database_is_down(tmp_path: Path) -> None:
    from bot.config import load_settings

    unreachable = load_settings(None, database={"url": "postgresql://postgres@127.0.0.1:1/nope"})
    path = write(tmp_path / "orders.jsonl", jsonl({**ORDER, "stage": "lost"},
                                                  {**ORDER, "number": "PO-2"}))
    with pytest.raises(ImportError_) as info:
        await import_files(unreachable, [path])
    assert [p.split(": stage")[0] for p in info.value.problems] == [f"{path}: line 1"]


def test_an_unknown_timezone_is_refused_with_its_line() -> None:
    import pytest

    from bot.importer import ImportError_

    with pytest.raises(ImportError_) as failure:
        parse_text(jsonl({"id": "C-9", "timezone": "Mars/Olympus_Mons"}), "jsonl")
    assert failure.value.problems == [
        "line 1: timezone: unknown IANA timezone 'Mars/Olympus_Mons' (e.g. Europe/Berlin)"]
