"""Conversations of every intent handler, replayed through the real CLI.

Each ``tests/scenarios/*.jsonl`` file is a scenario for ``supportbot replay``; every customer
message carries an ``"id"`` (its platform message id), which names the step. A file is
replayed once per test session (``CliRunner`` on ``bot.cli.main``) and the JSON lines it
prints are grouped by step: the replies to a message carry the chat and the time of that
message. Expected texts are rendered from the real templates; quote figures are checked
against the knowledge tables, read here independently of ``bot.pricing``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from bot.cli import main
from bot.config import Settings, load_settings
from bot.db.models import Case, Contact, Customer, Quote
from bot.knowledge import BUNDLED_KNOWLEDGE, Knowledge
from tests.helpers import query

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
BACKEND = os.environ.get("SUPPORTBOT_TEST_DATABASE", "sqlite")  # as in conftest
KNOWLEDGE = BUNDLED_KNOWLEDGE
LANGS = ["en", "zh", "ru", "es", "fr", "de", "pt", "ar"]
CENT = Decimal("0.01")
QUOTE_NUMBER = r"Q-\d{4}-\d{5}"
CASE_NUMBER = r"CS-\d{4}-\d{5}"


# --- knowledge, read for the expectations ------------------------------------------------------

@cache
def settings() -> Settings:
    return load_settings(None)


@cache
def knowledge() -> Knowledge:
    return Knowledge.load(None, LANGS, "en")


def render(key: str, lang: str, **values: Any) -> str:
    values.setdefault("company", settings().company.name)
    return knowledge().templates.render(key, lang, **values)


@cache
def separators(lang: str) -> tuple[str, str]:
    """(thousands, decimal) separators of a language, from its template file."""
    data = yaml.safe_load((KNOWLEDGE / "templates" / f"{lang}.yaml").read_text(encoding="utf-8"))
    return str(data["number.group"]), str(data["number.decimal"])


def amount_regex(lang: str) -> str:
    group, decimal = (re.escape(s) for s in separators(lang))
    return rf"-?\d{{1,3}}(?:{group}\d{{3}})*{decimal}\d{{2}}"


def parse_amount(text: str, lang: str) -> Decimal:
    group, decimal = separators(lang)
    return Decimal(text.replace(group, "").replace(decimal, "."))


def format_amount(value: Decimal, lang: str) -> str:
    group, decimal = separators(lang)
    whole, _, cents = f"{abs(value):,.2f}".partition(".")
    return ("-" if value < 0 else "") + whole.replace(",", group) + decimal + cents


def format_rate(value: Decimal, lang: str) -> str:
    """A percentage such as 0.15 or 6.5, written the way the language writes decimals."""
    return f"{value.normalize():f}".replace(".", separators(lang)[1])


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@cache
def pricing() -> dict[str, Any]:
    return yaml.safe_load((KNOWLEDGE / "pricing.yaml").read_text(encoding="utf-8"))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [{k: v.strip() for k, v in row.items()} for row in csv.DictReader(handle)]


@cache
def catalogue() -> dict[str, dict[str, str]]:
    return {row["sku"]: row for row in _csv(KNOWLEDGE / "catalogue.csv")}


@cache
def ocean_freight() -> dict[tuple[str, str], dict[str, str]]:
    return {(r["port"], r["container"]): r
            for r in _csv(KNOWLEDGE / "logistics" / "ocean_freight.csv")}


@cache
def duty_rates() -> list[dict[str, str]]:
    return _csv(KNOWLEDGE / "logistics" / "destinations.csv")


def duty_row(country: str, hs_code: str) -> dict[str, str] | None:
    digits = hs_code.replace(".", "")
    rows = [r for r in duty_rates() if r["country"] == country and digits.startswith(r["hs_prefix"])]
    return max(rows, key=lambda r: len(r["hs_prefix"])) if rows else None


def loyalty_percent(target: int | None, volume: int | None) -> Decimal:
    if not target or volume is None:
        return Decimal(0)
    share = Decimal(volume) / Decimal(target)
    steps = sorted(((Decimal(str(s["share_of_target"])), Decimal(str(s["percent"])))
                    for s in pricing()["loyalty_discount"]), reverse=True)
    return next((percent for minimum, percent in steps if share >= minimum), Decimal(0))


def hours(delta: timedelta) -> int:
    return int(delta.total_seconds() // 3600)


class _Open(dict):  # type: ignore[type-arg]
    """Placeholders not named when a template becomes a pattern match anything."""

    def __missing__(self, key: str) -> str:
        return "\x00ANY\x00"


def template_regex(key: str, lang: str, groups: dict[str, str] | None = None,
                   **literal: Any) -> re.Pattern[str]:
    """A template as a pattern: ``groups`` become named groups, ``literal`` values are
    filled in as they are, other placeholders match anything."""
    groups = groups or {}
    raw = knowledge().templates.by_language[lang][key]
    values = _Open(company=settings().company.name, **literal)
    values.update({name: f"\x00{name}\x00" for name in groups})
    pattern = re.escape(raw.format_map(values))
    for name, sub in groups.items():
        pattern = pattern.replace(re.escape(f"\x00{name}\x00"), f"(?P<{name}>{sub})")
    pattern = pattern.replace(re.escape("\x00ANY\x00"), ".*?")
    return re.compile(pattern, re.DOTALL)


# --- running a scenario ------------------------------------------------------------------------

@dataclass
class Step:
    id: str
    chat: str
    at: datetime
    text: str
    lines: list[dict[str, Any]]

    @property
    def customer(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("to") == "customer"]

    @property
    def agents(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("to") == "agents"]

    @property
    def texts(self) -> list[str]:
        return [line["text"] for line in self.customer]

    def explain(self) -> str:
        return f"step {self.id} ({self.chat}: {self.text!r}) gave:\n" + "\n".join(
            json.dumps(line, ensure_ascii=False) for line in self.lines)


@dataclass
class Run:
    name: str
    setup: dict[str, Any]
    steps: dict[str, Step]
    lines: list[dict[str, Any]]

    def __getitem__(self, step_id: str) -> Step:
        return self.steps[step_id]


def invoke_replay(path: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["replay", str(path), *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.stderr == "", result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def group_lines(name: str, lines: list[dict[str, Any]]) -> Run:
    setup: dict[str, Any] = {}
    steps: dict[str, Step] = {}
    by_key: dict[tuple[str, datetime], Step] = {}
    for raw in (SCENARIOS / name).read_text(encoding="utf-8").splitlines():
        event = json.loads(raw)
        if "setup" in event:
            setup = event["setup"]
            continue
        step = Step(event["id"], event["chat"], datetime.fromisoformat(event["at"]),
                    event["text"], [])
        assert step.id not in steps and (step.chat, step.at) not in by_key, step.id
        steps[step.id] = by_key[(step.chat, step.at)] = step
    for line in lines:
        key = (line.get("chat"), datetime.fromisoformat(line["at"]))
        assert key in by_key, f"{name}: a line answers no message: {line}"
        by_key[key].lines.append(line)
    return Run(name, setup, steps, lines)


_RUNS: dict[str, Run] = {}


def run(name: str) -> Run:
    """The scenario replayed on the default temporary database, once per session."""
    if name not in _RUNS:
        _RUNS[name] = group_lines(name, invoke_replay(SCENARIOS / name))
    return _RUNS[name]


def expect_reply(step: Step, lang: str, *texts: str) -> None:
    """The customer got exactly these texts, in this order, in ``lang``, and nothing went
    to the agents."""
    assert step.texts == list(texts), step.explain()
    assert {line["lang"] for line in step.customer} == {lang}, step.explain()
    assert step.agents == [], step.explain()


def expect_handoff(step: Step, lang: str, *texts: str, mentions: str | None = None) -> None:
    """These customer texts, plus exactly one ``handoff`` line for the agents."""
    assert step.texts == list(texts), step.explain()
    assert {line["lang"] for line in step.customer} == {lang}, step.explain()
    assert [line["kind"] for line in step.agents] == ["handoff"], step.explain()
    assert step.agents[0]["chat"] == step.chat
    if mentions:
        assert mentions in step.agents[0]["text"], step.explain()


def one_match(pattern: str, text: str) -> str:
    found = re.findall(pattern, text)
    assert len(found) == 1, (pattern, text)
    return found[0]


# --- quotes: the breakdown ---------------------------------------------------------------------

SECTIONS = ("EXW", "FOB", "CFR", "CIF", "DDP")


@dataclass
class Breakdown:
    number: str
    header: str
    sections: list[tuple[str, list[tuple[str, Decimal]], Decimal]]  # term, bullets, subtotal
    total: Decimal
    footer: str


def parse_breakdown(text: str, lang: str, incoterm: str, place: str) -> Breakdown:
    """Read a breakdown with the template's own shapes; amounts in the language's format."""
    currency = pricing()["currency"]
    amount = amount_regex(lang)
    header_re = template_regex("quote.header", lang, {"number": QUOTE_NUMBER},
                               incoterm=incoterm, place=place)
    line_re = template_regex("quote.line", lang, {"label": ".+", "amount": amount},
                             currency=currency)
    subtotal_re = template_regex("quote.subtotal", lang,
                                 {"term": "|".join(SECTIONS), "amount": amount},
                                 currency=currency)
    total_re = template_regex("quote.total", lang, {"amount": amount}, incoterm=incoterm,
                              place=place, currency=currency)
    lines = text.split("\n")
    header = header_re.fullmatch(lines[0])
    assert header, f"not a quote header: {lines[0]!r}"
    sections: list[tuple[str, list[tuple[str, Decimal]], Decimal]] = []
    bullets: list[tuple[str, Decimal]] = []
    for line in lines[1:-2]:
        if m := subtotal_re.fullmatch(line):
            sections.append((m["term"], bullets, parse_amount(m["amount"], lang)))
            bullets = []
        elif m := line_re.fullmatch(line):
            bullets.append((m["label"], parse_amount(m["amount"], lang)))
        else:
            raise AssertionError(f"unexpected line in the breakdown: {line!r}\n{text}")
    assert bullets == [], f"lines after the last subtotal: {bullets}"
    total = total_re.fullmatch(lines[-2])
    assert total, f"not the total line: {lines[-2]!r}"
    return Breakdown(header["number"], lines[0], sections, parse_amount(total["amount"], lang),
                     lines[-1])


def breakdown_text(step: Step) -> str:
    found = [t for t in step.texts if re.search(QUOTE_NUMBER, t.split("\n")[0])
             and t.count("\n") >= 4]
    assert len(found) == 1, step.explain()
    return found[0]


def expected_sections(sku: str, quantity: Decimal, incoterm: str, port: str | None,
                      loyalty: Decimal) -> list[tuple[str, list[Decimal], Decimal]]:
    """The breakdown computed here from the knowledge tables."""
    product = catalogue()[sku]
    tables = pricing()
    container = tables["default_container"]
    per_container = Decimal(product["m2_per_40hq"] if container == "40HQ"
                            else product["m2_per_20gp"])
    count = max(1, math.ceil(quantity / per_container))
    goods = money(quantity * Decimal(product["price_usd_m2"]))
    exw = [goods] + ([-money(goods * loyalty / 100)] if loyalty else [])
    running = sum(exw, Decimal(0))
    result = [("EXW", exw, running)]
    if incoterm == "EXW":
        return result
    fob = [money(Decimal(str(tables["export_clearance_per_shipment"]))),
           money(Decimal(str(tables["inland_freight_per_container"][container])) * count)]
    running += sum(fob)
    result.append(("FOB", fob, running))
    if incoterm == "FOB":
        return result
    assert port is not None
    cfr = [money(Decimal(ocean_freight()[(port, container)]["usd"]) * count)]
    running += sum(cfr)
    result.append(("CFR", cfr, running))
    if incoterm == "CFR":
        return result
    factor = Decimal(str(tables["insurance_cover"])) * Decimal(str(tables["insurance_rate"]))
    cif = [money(running * factor / (1 - factor))]
    running += sum(cif)
    result.append(("CIF", cif, running))
    if incoterm == "CIF":
        return result
    country = ocean_freight()[(port, container)]["country"]
    rates = duty_row(country, product["hs_code"])
    assert rates is not None
    duty = money(running * Decimal(rates["duty_percent"]) / 100)
    vat = money((running + duty) * Decimal(rates["vat_percent"]) / 100)
    ddp = [duty, vat, money(Decimal(rates["clearance_usd"])),
           money(Decimal(rates["delivery_usd_per_container"]) * count)]
    running += sum(ddp)
    result.append(("DDP", ddp, running))
    return result


def valid_until(at: datetime) -> str:
    local = at.astimezone(ZoneInfo(settings().hours.timezone)).date()
    return (local + timedelta(days=int(pricing()["quote_validity_days"]))).isoformat()


@dataclass(frozen=True)
class QuoteCase:
    step: str
    lang: str
    incoterm: str = "CIF"
    port: str = "Hamburg"
    customer: str | None = None  # the linked customer (for the loyalty discount)


QUOTE_CASES = [
    QuoteCase("loyal-2", "en", customer="C-300"),
    QuoteCase("loyal-3", "en", customer="C-300"),
    QuoteCase("small-2", "de", customer="C-301"),
    QuoteCase("fr-2", "fr"),
    QuoteCase("zh-2", "zh"),
    QuoteCase("es-2", "es"),
    QuoteCase("pt-2", "pt"),
    QuoteCase("ar-2", "ar"),
    QuoteCase("ru-4", "ru"),
    QuoteCase("ddp-1", "es", incoterm="DDP"),
]
SKU, QUANTITY = "SPC-5-05", Decimal(2000)


def customer_record(scenario: Run, ref: str | None) -> dict[str, Any] | None:
    return next((c for c in scenario.setup.get("customers", []) if c["id"] == ref), None)


@pytest.mark.parametrize("case", QUOTE_CASES, ids=lambda c: f"{c.step}-{c.lang}")
def test_quote_breakdown_adds_up_and_matches_the_price_tables(case: QuoteCase) -> None:
    scenario = run("quote.jsonl")
    step = scenario[case.step]
    assert {line["lang"] for line in step.customer} == {case.lang}, step.explain()
    assert step.agents == [], step.explain()
    quote = parse_breakdown(breakdown_text(step), case.lang, case.incoterm, case.port)

    # The printed figures add up exactly: every subtotal is the sum of the lines above it.
    running = Decimal(0)
    for _term, bullets, subtotal in quote.sections:
        running += sum((amount for _, amount in bullets), Decimal(0))
        assert subtotal == running, quote
    assert quote.total == running == quote.sections[-1][2]
    assert [term for term, _, _ in quote.sections] == list(
        SECTIONS[:SECTIONS.index(case.incoterm) + 1])

    # ... and they are the figures of the knowledge tables.
    record = customer_record(scenario, case.customer) or {}
    loyalty = loyalty_percent(record.get("annual_target_m2"), record.get("annual_volume_m2"))
    expected = expected_sections(SKU, QUANTITY, case.incoterm, case.port, loyalty)
    assert [(t, [a for _, a in b], s) for t, b, s in quote.sections] == expected
    assert quote.total == expected[-1][2]
    goods_label = quote.sections[0][1][0][0]
    assert template_regex("quote.line.goods", case.lang, quantity="2000",
                          price=format_amount(Decimal(catalogue()[SKU]["price_usd_m2"]),
                                              case.lang)).fullmatch(goods_label), goods_label
    container = pricing()["default_container"]
    freight = ocean_freight()[(case.port, container)]
    containers = math.ceil(QUANTITY / Decimal(catalogue()[SKU]["m2_per_40hq"]))
    ocean_label = next(b for t, b, _ in quote.sections if t == "CFR")[0][0]
    assert ocean_label == render("quote.line.ocean_freight", case.lang, port=case.port,
                                 containers=containers, container=container,
                                 days=freight["transit_days"])

    # Insurance, all risks on 110 %: CFR × 1.1r / (1 − 1.1r), half-up to the cent.
    assert Decimal(str(pricing()["insurance_cover"])) == Decimal("1.10")
    r = Decimal(str(pricing()["insurance_rate"]))
    cfr = next(s for t, _, s in quote.sections if t == "CFR")
    (insurance,) = next(b for t, b, _ in quote.sections if t == "CIF")
    assert insurance[1] == money(cfr * Decimal("1.1") * r / (1 - Decimal("1.1") * r)) > 0

    # A number and a validity date.
    assert quote.footer == render("quote.footer", case.lang, valid_until=valid_until(step.at))


def test_loyalty_discount_only_for_a_customer_over_target() -> None:
    scenario = run("quote.jsonl")
    loyal, small = customer_record(scenario, "C-300"), customer_record(scenario, "C-301")
    assert loyal and small
    assert loyal["annual_volume_m2"] > loyal["annual_target_m2"]
    assert small["annual_volume_m2"] < small["annual_target_m2"]
    percent = loyalty_percent(loyal["annual_target_m2"], loyal["annual_volume_m2"])
    assert Decimal(3) <= percent <= Decimal(5)  # SPEC §3: 3–5 %

    over = parse_breakdown(breakdown_text(scenario["loyal-2"]), "en", "CIF", "Hamburg")
    exw = over.sections[0][1]
    assert exw[1][0] == render("quote.line.loyalty_discount", "en",
                               percent=f"{percent.normalize():f}")
    assert exw[1][1] == -money(exw[0][1] * percent / 100) < 0

    under = parse_breakdown(breakdown_text(scenario["small-2"]), "de", "CIF", "Hamburg")
    assert len(under.sections[0][1]) == 1  # the goods, nothing else
    assert all(render("quote.line.loyalty_discount", "de", percent=p) != label
               for p in ("3", "5") for _, bullets, _ in under.sections for label, _ in bullets)


def test_quote_asks_only_for_what_is_missing() -> None:
    scenario = run("quote.jsonl")
    variants = [sku for sku, p in catalogue().items()
                if p["type"] == "SPC" and Decimal(p["thickness_mm"]) == 5]
    assert len(variants) > 1
    for first, second, lang in (("loyal-1", "loyal-2", "en"), ("small-1", "small-2", "de"),
                                ("fr-1", "fr-2", "fr"), ("zh-1", "zh-2", "zh"),
                                ("ar-1", "ar-2", "ar")):
        step = scenario[first]
        (question,) = step.texts
        assert template_regex("quote.ask_variant", lang).fullmatch(question), step.explain()
        assert all(sku in question for sku in variants), step.explain()
        # After the variant, nothing else is asked: the explanation and the quote follow.
        assert scenario[second].texts[0] == render("incoterm.CIF", lang)
        assert len(scenario[second].texts) == 2, scenario[second].explain()

    # Step by step (Russian): quantity, delivery terms, destination, then the quote.
    step = scenario["ru-1"]
    assert template_regex("quote.ask_quantity", "ru",
                          moq=catalogue()[SKU]["moq_m2"]).fullmatch(step.texts[0]), step.explain()
    expect_reply(scenario["ru-2"], "ru", render("quote.ask_incoterm", "ru"))
    expect_reply(scenario["ru-3"], "ru", render("quote.ask_destination", "ru", incoterm="CIF"))
    assert scenario["ru-4"].texts[0] == render("incoterm.CIF", "ru")


def test_incoterm_is_explained_once_per_conversation() -> None:
    scenario = run("quote.jsonl")
    explanation = render("incoterm.CIF", "en")
    first, again = scenario["loyal-2"], scenario["loyal-3"]
    assert first.texts.count(explanation) == 1 and first.texts[0] == explanation
    assert explanation not in again.texts, again.explain()
    assert len(again.texts) == 1, again.explain()  # the breakdown alone
    # Each quote has its own number.
    numbers = [parse_breakdown(breakdown_text(scenario[s]), "en", "CIF", "Hamburg").number
               for s in ("loyal-2", "loyal-3")]
    assert numbers[0] != numbers[1]
    # DDP is explained in its own words the first time it appears.
    assert scenario["ddp-1"].texts[0] == render("incoterm.DDP", "es")


def test_quote_numbers_are_unique_and_appear_in_the_header() -> None:
    scenario = run("quote.jsonl")
    numbers = []
    for case in QUOTE_CASES:
        quote = parse_breakdown(breakdown_text(scenario[case.step]), case.lang, case.incoterm,
                                case.port)
        assert quote.number in quote.header
        numbers.append(quote.number)
    assert len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("lang", ["de", "fr", "ru", "es", "pt"])
def test_rates_in_the_breakdown_use_the_language_decimal_separator(lang: str) -> None:
    step = {"de": "small-2", "fr": "fr-2", "ru": "ru-4", "es": "es-2", "pt": "pt-2"}[lang]
    quote = parse_breakdown(breakdown_text(run("quote.jsonl")[step]), lang, "CIF", "Hamburg")
    label = next(b for t, b, _ in quote.sections if t == "CIF")[0][0]
    rate = Decimal(str(pricing()["insurance_rate"])) * 100
    cover = Decimal(str(pricing()["insurance_cover"])) * 100
    assert label == render("quote.line.insurance", lang, rate=format_rate(rate, lang),
                           cover=format_rate(cover, lang))


# --- quotes that go to a colleague -------------------------------------------------------------

def pending_number(step: Step, lang: str) -> str:
    pending = [t for t in step.texts if template_regex(
        "quote.pending_approval", lang, {"number": QUOTE_NUMBER}).fullmatch(t)]
    assert len(pending) == 1, step.explain()
    number = one_match(QUOTE_NUMBER, pending[0])
    assert pending[0] == render("quote.pending_approval", lang, number=number)
    return number


@pytest.mark.parametrize("step_id, lang, country", [
    ("ddp-en", "en", "CH"), ("ddp-es", "es", "CL"), ("ddp-de", "de", "CH")])
def test_ddp_without_a_duty_rate_is_not_sent(step_id: str, lang: str, country: str) -> None:
    assert not any(r["country"] == country for r in duty_rates())  # really no duty rate
    step = run("quote_approval.jsonl")[step_id]
    assert step.texts[0] == render("incoterm.DDP", lang)
    number = pending_number(step, lang)
    assert len(step.texts) == 2, step.explain()  # no breakdown
    assert {line["lang"] for line in step.customer} == {lang}
    assert [line["kind"] for line in step.agents] == ["handoff"], step.explain()
    assert number in step.agents[0]["text"]


@pytest.mark.parametrize("step_id, lang", [("big-zh", "zh"), ("big-pt", "pt"), ("big-ar", "ar")])
def test_quote_above_the_approval_threshold_is_not_sent(step_id: str, lang: str) -> None:
    threshold = Decimal(str(pricing()["approval_threshold"]))
    would_be = expected_sections(SKU, Decimal(18000), "FOB", None, Decimal(0))[-1][2]
    assert would_be > threshold
    step = run("quote_approval.jsonl")[step_id]
    assert step.texts[0] == render("incoterm.FOB", lang)
    number = pending_number(step, lang)
    assert len(step.texts) == 2, step.explain()
    assert [line["kind"] for line in step.agents] == ["handoff"], step.explain()
    assert number in step.agents[0]["text"]


def test_quote_just_below_the_threshold_is_sent() -> None:
    threshold = Decimal(str(pricing()["approval_threshold"]))
    step = run("quote_approval.jsonl")["below-en"]
    quote = parse_breakdown(breakdown_text(step), "en", "FOB", pricing()["origin_port"])
    expected = expected_sections(SKU, Decimal(17000), "FOB", None, Decimal(0))
    assert quote.total == expected[-1][2] <= threshold
    assert step.agents == []


# --- order status ------------------------------------------------------------------------------

def order_values(order: dict[str, Any]) -> dict[str, Any]:
    return {"number": order["number"], "product": order["product"],
            "quantity": str(order["quantity_m2"]), "incoterm": order["incoterm"],
            "destination": order["destination"], "progress": order.get("progress", "—"),
            "etd": order.get("etd") or "—", "eta": order.get("eta") or "—",
            "vessel": order.get("vessel") or "—", "bl_number": order.get("bl_number") or "—",
            "inspection": "—"}


def status_text(scenario: Run, number: str, lang: str) -> str:
    order = next(o for o in scenario.setup["orders"] if o["number"] == number)
    return render(f"order.stage.{order['stage']}", lang, **order_values(order))


def test_unlinked_chat_learns_nothing_about_an_existing_order() -> None:
    scenario = run("order_status.jsonl")
    existing, absent = scenario["exist-1"], scenario["none-1"]
    ask = render("verify.ask_email", "en")
    expect_reply(existing, "en", ask)
    expect_reply(absent, "en", ask)
    assert existing.texts == absent.texts  # the same answer whether the order exists or not
    order = scenario.setup["orders"][0]
    for detail in (order["product"], str(order["progress"]), order["etd"], order["eta"],
                   scenario.setup["customers"][0]["company"]):
        assert detail not in existing.texts[0]
    # A wrong e-mail: the same refusal for an existing and for an absent order.
    expect_reply(scenario["none-2"], "en", render("verify.failed", "en"))
    expect_reply(scenario["fail-1"], "en", render("verify.failed", "en"))


def test_three_failures_lock_verification_until_the_lock_time_passes() -> None:
    scenario = run("order_status.jsonl")
    flows = settings().flows
    assert flows.verify_attempts == 3
    expect_reply(scenario["fail-2"], "en", render("verify.failed", "en"))
    expect_reply(scenario["fail-3"], "en", render("verify.locked", "en"))
    locked_at = scenario["fail-3"].at
    for step_id in ("locked-1", "locked-2"):  # even the right number and e-mail
        step = scenario[step_id]
        assert step.at - locked_at < flows.verify_lock
        expect_reply(step, "en", render("verify.locked", "en"))
    verified = scenario["verified-1"]
    assert verified.at - locked_at > flows.verify_lock
    customer = scenario.setup["customers"][0]
    expect_reply(verified, "en", render("verify.ok", "en", company_name=customer["company"]),
                 status_text(scenario, "PO-24117", "en"))
    # The chat is linked now: the status comes directly, another customer's order does not.
    expect_reply(scenario["verified-2"], "en", status_text(scenario, "PO-24117", "en"))
    expect_reply(scenario["verified-3"], "en", render("order.not_found", "en", number="PO-30001"))


@pytest.mark.parametrize("step_id, lang, number", [
    ("linked-de-1", "de", "PO-24117"), ("linked-ru-1", "ru", "PO-24117"),
    ("linked-es-1", "es", "PO-30001")])
def test_linked_chat_gets_the_status_directly(step_id: str, lang: str, number: str) -> None:
    scenario = run("order_status.jsonl")
    expect_reply(scenario[step_id], lang, status_text(scenario, number, lang))


@pytest.mark.parametrize("step_id, lang, number", [
    ("linked-de-2", "de", "PO-30001"), ("linked-de-3", "de", "PO-55555"),
    ("linked-es-2", "es", "PO-24117")])
def test_linked_customer_cannot_see_another_customers_order(step_id: str, lang: str,
                                                            number: str) -> None:
    expect_reply(run("order_status.jsonl")[step_id], lang,
                 render("order.not_found", lang, number=number))


def test_verification_in_chinese_links_the_chat_and_shows_the_status() -> None:
    scenario = run("order_status.jsonl")
    expect_reply(scenario["zh-1"], "zh", render("verify.ask_email", "zh"))
    expect_reply(scenario["zh-2"], "zh",
                 render("verify.ok", "zh", company_name=scenario.setup["customers"][1]["company"]),
                 status_text(scenario, "PO-30001", "zh"))


# --- complaints --------------------------------------------------------------------------------

COMPLAINTS = [("en-1", "en-2", "en", False), ("zh-1", "zh-2", "zh", False),
              ("ru-1", "ru-2", "ru", False), ("es-1", "es-2", "es", False),
              ("de-1", "de-2", "de", True)]


def complaint_acks(lang: str, case: str, with_order: bool) -> set[str]:
    categories = [key.split(".")[-1] for key in knowledge().templates.by_language["en"]
                  if key.startswith("complaint.category.")]
    key = "complaint.ack_with_order" if with_order else "complaint.ack"
    return {render(key, lang, case=case, hours=hours(settings().sla.complaint_solution),
                   category=render(f"complaint.category.{c}", lang)) for c in categories}


@pytest.mark.parametrize("first, follow_up, lang, with_order", COMPLAINTS,
                         ids=[c[2] for c in COMPLAINTS])
def test_complaint_gets_a_case_the_24h_promise_and_a_handoff(
        first: str, follow_up: str, lang: str, with_order: bool) -> None:
    assert hours(settings().sla.complaint_solution) == 24
    scenario = run("complaint.jsonl")
    step = scenario[first]
    (ack,) = step.texts
    case = one_match(CASE_NUMBER, ack)
    assert ack in complaint_acks(lang, case, with_order), step.explain()
    assert "24" in ack
    expect_handoff(step, lang, ack, mentions=case)
    expect_reply(scenario[follow_up], lang,
                 render("complaint.evidence_received", lang, case=case))


def test_complaint_case_numbers_are_unique() -> None:
    scenario = run("complaint.jsonl")
    numbers = [one_match(CASE_NUMBER, scenario[first].texts[0]) for first, *_ in COMPLAINTS]
    assert len(set(numbers)) == len(numbers)


# --- return / refund ---------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["fr", "de", "pt", "zh"])
def test_return_request_opens_a_case_with_inspection_in_3_days(lang: str) -> None:
    step = run("return_refund.jsonl")[lang]
    assert len(step.texts) == 2, step.explain()
    case = one_match(CASE_NUMBER, step.texts[1])
    expect_handoff(step, lang, render("return.policy", lang),
                   render("return.opened", lang, case=case, days=3), mentions=case)


# --- documents ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "de", "zh", "ru"])
def test_existing_pi_is_sent_and_a_missing_packing_list_is_handed_off(lang: str) -> None:
    scenario = run("documents.jsonl")
    expect_reply(scenario[f"{lang}-pi"], lang,
                 render("documents.sent", lang, number="PO-24117",
                        documents=render("document.pi", lang)))
    expect_handoff(scenario[f"{lang}-pl"], lang,
                   render("documents.missing", lang, number="PO-24117",
                          documents=render("document.packing_list", lang)))


def test_documents_for_an_unlinked_chat_need_verification_first() -> None:
    expect_reply(run("documents.jsonl")["unlinked"], "en", render("verify.ask_email", "en"))


# --- product info and technical support --------------------------------------------------------

def faq_answer(lang: str, entry_id: str) -> str:
    (entry,) = [e for e in knowledge().faq.entries[lang] if e.id == entry_id]
    return render("faq.answer", lang, answer=entry.answer)


@pytest.mark.parametrize("step_id, lang, entry", [
    ("en-waterproof", "en", "waterproof"), ("zh-waterproof", "zh", "waterproof"),
    ("pt-waterproof", "pt", "waterproof"), ("de-colours", "de", "colours"),
    ("es-colours", "es", "colours")])
def test_product_question_answered_from_the_faq(step_id: str, lang: str, entry: str) -> None:
    expect_reply(run("product_info.jsonl")[step_id], lang, faq_answer(lang, entry))


@pytest.mark.parametrize("step_id, lang", [
    ("en-piano", "en"), ("es-piano", "es"), ("fr-piano", "fr"), ("pt-piano", "pt")])
def test_product_question_the_faq_cannot_answer_is_handed_off(step_id: str, lang: str) -> None:
    expect_handoff(run("product_info.jsonl")[step_id], lang, render("faq.no_answer", lang))


@pytest.mark.parametrize("step_id, lang", [
    ("es-warranty", "es"), ("fr-warranty", "fr"), ("de-warranty", "de")])
def test_warranty_question_gets_the_warranty_answer(step_id: str, lang: str) -> None:
    expect_reply(run("product_info.jsonl")[step_id], lang, faq_answer(lang, "warranty"))


@pytest.mark.parametrize("lang", ["en", "ru", "fr"])
def test_technical_question_answered_from_the_faq(lang: str) -> None:
    expect_reply(run("technical_support.jsonl")[f"{lang}-heating"], lang,
                 faq_answer(lang, "underfloor_heating"), render("tech.more_help", lang))


@pytest.mark.parametrize("lang", ["en", "ru", "fr"])
def test_unknown_technical_problem_goes_to_technical_support_within_2h(lang: str) -> None:
    contact_hours = hours(settings().sla.technical_contact)
    assert contact_hours == 2
    step = run("technical_support.jsonl")[f"{lang}-squeak"]
    assert len(step.texts) == 1, step.explain()
    case = one_match(CASE_NUMBER, step.texts[0])
    target = render("duration.hours", lang, n=contact_hours)
    assert "2" in target
    expect_handoff(step, lang, render("tech.handoff", lang, case=case, target=target),
                   mentions=case)


# --- human agent, greeting, goodbye, clarify ---------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "ar", "pt", "zh"])
def test_human_agent_on_request(lang: str) -> None:
    target = render("duration.hours", lang, n=hours(settings().sla.first_response))
    expect_handoff(run("human_agent.jsonl")[lang], lang,
                   render("human.handoff", lang, target=target))


def test_asking_again_for_a_human_does_not_hand_off_twice() -> None:
    expect_reply(run("human_agent.jsonl")["en-again"], "en", render("human.already", "en"))


@pytest.mark.parametrize("step_id, lang, key", [
    ("hello-en", "en", "greeting"), ("hello-ar", "ar", "greeting"),
    ("hello-ru", "ru", "greeting"), ("hello-pt", "pt", "greeting"),
    ("bye-de", "de", "goodbye"), ("bye-zh", "zh", "goodbye"), ("bye-pt", "pt", "goodbye"),
    ("bye-es", "es", "goodbye")])
def test_greeting_and_goodbye(step_id: str, lang: str, key: str) -> None:
    step = run("greeting_goodbye.jsonl")[step_id]
    expect_reply(step, lang, render(key, lang))
    assert step.customer[0]["intent"] == key


@pytest.mark.parametrize("lang", ["en", "ru", "es"])
def test_two_misses_offer_a_colleague(lang: str) -> None:
    scenario = run("clarify.jsonl")
    first, second = scenario[f"{lang}-1"], scenario[f"{lang}-2"]
    expect_reply(first, lang, render("clarify", lang))
    expect_reply(second, lang, render("clarify_human", lang))
    assert [line["kind"] for line in first.customer + second.customer] == ["clarify", "clarify"]


# --- leaving a flow ----------------------------------------------------------------------------

def ask_quantity(step: Step, lang: str) -> None:
    (text,) = step.texts
    assert template_regex("quote.ask_quantity", lang,
                          moq=catalogue()[SKU]["moq_m2"]).fullmatch(text), step.explain()


@pytest.mark.parametrize("chat, lang", [("cancel-en", "en"), ("cancel-ru", "ru"),
                                        ("cancel-zh", "zh")])
def test_cancel_word_leaves_the_quote_flow(chat: str, lang: str) -> None:
    scenario = run("flows.jsonl")
    ask_quantity(scenario[f"{chat}-1"], lang)
    expect_reply(scenario[f"{chat}-2"], lang, render("flow.cancelled", lang))
    # The flow is gone: a bare quantity starts a new quote instead of continuing the old one.
    expect_reply(scenario[f"{chat}-3"], lang, render("quote.ask_product", lang))


def test_cancel_command_leaves_the_quote_flow() -> None:
    scenario = run("flows.jsonl")
    ask_quantity(scenario["slash-es-1"], "es")
    expect_reply(scenario["slash-es-2"], "es", render("flow.cancelled", "es"))


def test_new_question_during_a_quote_is_answered_as_that_question() -> None:
    scenario = run("flows.jsonl")
    for chat in ("switch-en", "switch-zh", "switch-ru", "switch-tech", "switch-linked"):
        ask_quantity(scenario[f"{chat}-1"], "ru" if chat == "switch-ru" else
                     "zh" if chat == "switch-zh" else "en")
    expect_reply(scenario["switch-en-2"], "en", render("verify.ask_email", "en"))
    expect_reply(scenario["switch-zh-2"], "zh", render("verify.ask_email", "zh"))
    expect_handoff(scenario["switch-ru-2"], "ru", render(
        "human.handoff", "ru", target=render("duration.hours", "ru",
                                             n=hours(settings().sla.first_response))))
    expect_reply(scenario["switch-tech-2"], "en", faq_answer("en", "underfloor_heating"),
                 render("tech.more_help", "en"))
    expect_reply(scenario["switch-linked-2"], "en", status_text(scenario, "PO-24117", "en"))


@pytest.mark.parametrize("chat, lang, entry", [("switch-faq-en", "en", "waterproof"),
                                               ("switch-faq-es", "es", "colours")])
def test_product_question_during_a_quote_is_answered(chat: str, lang: str, entry: str) -> None:
    scenario = run("flows.jsonl")
    ask_quantity(scenario[f"{chat}-1"], lang)
    expect_reply(scenario[f"{chat}-2"], lang, faq_answer(lang, entry))


@pytest.mark.parametrize("lang", ["ru", "fr", "zh"])
def test_quote_flow_times_out_after_30_minutes_of_silence(lang: str) -> None:
    scenario = run("flows.jsonl")
    timeout = settings().flows.timeout
    stay_1, stay_2 = scenario[f"stay-{lang}-1"], scenario[f"stay-{lang}-2"]
    gone_1, gone_2 = scenario[f"gone-{lang}-1"], scenario[f"gone-{lang}-2"]
    assert stay_2.at - stay_1.at < timeout < gone_2.at - gone_1.at
    ask_quantity(stay_1, lang)
    ask_quantity(gone_1, lang)
    # Within the timeout the quantity continues the quote ...
    expect_reply(stay_2, lang, render("quote.ask_incoterm", lang))
    # ... after it, the same message is handled fresh: the product is asked again.
    expect_reply(gone_2, lang, render("quote.ask_product", lang))


# --- the whole run, and the same run kept in a database ---------------------------------------

def test_every_handler_is_covered_in_three_languages() -> None:
    seen: dict[str, set[str]] = {}
    for path in sorted(SCENARIOS.glob("*.jsonl")):
        for line in run(path.name).lines:
            if line.get("to") == "customer" and line.get("intent"):
                seen.setdefault(line["intent"], set()).add(line["lang"])
    for intent in ("greeting", "goodbye", "order_status", "quote_request", "complaint",
                   "return_refund", "documents", "product_info", "technical_support",
                   "human_agent", "unknown"):
        assert len(seen.get(intent, set())) >= 3, (intent, seen.get(intent))


def test_order_status_kept_in_a_database(database_url: str) -> None:
    """``--database``: on PostgreSQL when SUPPORTBOT_TEST_DATABASE=postgresql."""
    lines = invoke_replay(SCENARIOS / "order_status.jsonl", "--database", database_url)
    assert lines == run("order_status.jsonl").lines
    customers = {c.ref: c.id for c in query(database_url, select(Customer))}
    contacts = {c.chat: c for c in query(database_url, select(Contact))}
    assert contacts["os-unlinked"].customer_id == customers["C-100"]  # verified and linked
    assert contacts["os-unlinked"].verify_failures == 0
    assert contacts["os-zh"].customer_id == customers["C-200"]
    assert contacts["os-stranger"].customer_id is None


def test_quotes_kept_in_a_database(database_url: str) -> None:
    lines = invoke_replay(SCENARIOS / "quote_approval.jsonl", "--database", database_url)
    scenario = run("quote_approval.jsonl")
    assert lines == scenario.lines
    quotes = {q.number: q for q in query(database_url, select(Quote))}
    for step_id, lang in (("ddp-en", "en"), ("ddp-es", "es"), ("big-zh", "zh")):
        assert quotes[pending_number(scenario[step_id], lang)].status == "pending_approval"
    sent = parse_breakdown(breakdown_text(scenario["below-en"]), "en", "FOB",
                           pricing()["origin_port"])
    assert quotes[sent.number].status == "sent"
    assert quotes[sent.number].total == sent.total
    assert quotes[sent.number].valid_until.isoformat() == valid_until(scenario["below-en"].at)


@pytest.mark.parametrize("name, kind", [("complaint.jsonl", "complaint"),
                                        ("return_refund.jsonl", "return"),
                                        ("technical_support.jsonl", "technical")])
def test_cases_kept_in_a_database(database_url: str, name: str, kind: str) -> None:
    lines = invoke_replay(SCENARIOS / name, "--database", database_url)
    assert lines == run(name).lines
    cases = {c.number: c for c in query(database_url, select(Case))}
    numbers = {n for line in lines if line.get("to") == "customer"
               for n in re.findall(CASE_NUMBER, line["text"])}
    assert numbers and numbers <= set(cases)
    assert {(cases[n].kind, cases[n].status) for n in numbers} == {(kind, "open")}
