"""Quote arithmetic: an itemised EXW → FOB → CFR → CIF → DDP breakdown in Decimal.

Every line is rounded to the cent (half up) and every subtotal is the sum of the rounded
lines above it, so a printed quote always adds up exactly. A quote that needs a price the
tables do not have lists it in ``missing``; the caller then sends it for approval.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from bot.knowledge import KnowledgeError, Product, load_yaml_mapping, parse_decimal

CENT = Decimal("0.01")
INCOTERM_ORDER = ("EXW", "FOB", "CFR", "CIF", "DDP")
CONTAINERS = ("20GP", "40GP", "40HQ")


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _dec(value: Any, where: str) -> Decimal:
    try:
        return parse_decimal(str(value), where)
    except ValueError as exc:
        raise KnowledgeError(str(exc)) from None


@dataclass(frozen=True)
class Freight:
    usd: Decimal
    transit_days: int


@dataclass(frozen=True)
class Destination:
    country: str
    hs_prefix: str
    duty_percent: Decimal
    vat_percent: Decimal
    clearance: Decimal
    delivery_per_container: Decimal
    main_port: str


@dataclass
class PriceTables:
    currency: str
    origin_port: str
    validity_days: int
    approval_threshold: Decimal
    export_clearance: Decimal
    inland_freight: dict[str, Decimal]
    insurance_rate: Decimal
    insurance_cover: Decimal
    loyalty: list[tuple[Decimal, Decimal]]  # (share of target, percent), highest first
    default_container: str
    freight: dict[tuple[str, str], Freight] = field(default_factory=dict)
    destinations: dict[tuple[str, str], Destination] = field(default_factory=dict)

    port_countries: dict[str, str] = field(default_factory=dict)

    def port_country(self, port: str) -> str | None:
        return self.port_countries.get(port)

    def destination(self, country: str, hs_code: str) -> Destination | None:
        digits = hs_code.replace(".", "")
        for length in range(len(digits), 1, -1):
            found = self.destinations.get((country, digits[:length]))
            if found:
                return found
        return None

    def main_port(self, country: str) -> str | None:
        return next((d.main_port for (c, _), d in self.destinations.items() if c == country),
                    None)

    def loyalty_percent(self, target_m2: int | None, volume_m2: int | None) -> Decimal:
        if not target_m2 or volume_m2 is None:
            return Decimal(0)
        share = Decimal(volume_m2) / Decimal(target_m2)
        return next((percent for minimum, percent in self.loyalty if share >= minimum),
                    Decimal(0))


def load_price_tables(root: Path) -> PriceTables:
    path = root / "pricing.yaml"
    data, lines = load_yaml_mapping(path)

    def field_(key: str) -> Any:
        if key not in data:
            raise KnowledgeError(f"{path}: missing key {key!r}")
        return data[key]

    def where(key: str) -> str:
        return f"{path}: line {lines.get(key, '?')}: {key}"

    inland = field_("inland_freight_per_container")
    if not isinstance(inland, dict):
        raise KnowledgeError(f"{where('inland_freight_per_container')}: expected container: price")
    loyalty = sorted(((_dec(step["share_of_target"], where("loyalty_discount")),
                       _dec(step["percent"], where("loyalty_discount")))
                      for step in field_("loyalty_discount")), reverse=True)
    tables = PriceTables(
        currency=str(field_("currency")),
        origin_port=str(field_("origin_port")),
        validity_days=int(_dec(field_("quote_validity_days"), where("quote_validity_days"))),
        approval_threshold=_dec(field_("approval_threshold"), where("approval_threshold")),
        export_clearance=_dec(field_("export_clearance_per_shipment"),
                              where("export_clearance_per_shipment")),
        inland_freight={str(k): _dec(v, where("inland_freight_per_container"))
                        for k, v in inland.items()},
        insurance_rate=_dec(field_("insurance_rate"), where("insurance_rate")),
        insurance_cover=_dec(field_("insurance_cover"), where("insurance_cover")),
        loyalty=loyalty,
        default_container=str(field_("default_container")),
    )
    if tables.default_container not in CONTAINERS:
        raise KnowledgeError(f"{where('default_container')}: use one of {', '.join(CONTAINERS)}")
    for line, row in _csv_rows(root / "logistics" / "ocean_freight.csv",
                               ("port", "country", "container", "usd", "transit_days")):
        at = f"{root / 'logistics' / 'ocean_freight.csv'}: line {line}"
        if row["container"] not in CONTAINERS:
            raise KnowledgeError(f"{at}: container: use one of {', '.join(CONTAINERS)}")
        tables.freight[(row["port"], row["container"])] = Freight(
            _dec(row["usd"], f"{at}: usd"), int(_dec(row["transit_days"], f"{at}: transit_days")))
        tables.port_countries[row["port"]] = row["country"]
    for line, row in _csv_rows(root / "logistics" / "destinations.csv",
                               ("country", "hs_prefix", "duty_percent", "vat_percent",
                                "clearance_usd", "delivery_usd_per_container", "main_port")):
        at = f"{root / 'logistics' / 'destinations.csv'}: line {line}"
        tables.destinations[(row["country"], row["hs_prefix"])] = Destination(
            country=row["country"], hs_prefix=row["hs_prefix"],
            duty_percent=_dec(row["duty_percent"], f"{at}: duty_percent"),
            vat_percent=_dec(row["vat_percent"], f"{at}: vat_percent"),
            clearance=_dec(row["clearance_usd"], f"{at}: clearance_usd"),
            delivery_per_container=_dec(row["delivery_usd_per_container"],
                                        f"{at}: delivery_usd_per_container"),
            main_port=row["main_port"],
        )
    return tables


def _csv_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        handle = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise KnowledgeError(f"{path}: file not found") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise KnowledgeError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        rows = []
        for row in reader:
            if None in row or any(row[c] is None or not row[c].strip() for c in columns):
                raise KnowledgeError(f"{path}: line {reader.line_num}: empty or extra cell")
            rows.append((reader.line_num, {k: v.strip() for k, v in row.items() if k}))
        return rows


@dataclass
class QuoteLine:
    """One line of the breakdown; ``key`` names its plain-words template."""

    key: str
    amount: Decimal
    values: dict[str, Any] = field(default_factory=dict)
    subtotal: bool = False


@dataclass
class QuoteRequest:
    product: Product
    quantity_m2: Decimal
    incoterm: str
    destination_port: str | None = None
    destination_country: str | None = None
    container: str | None = None
    loyalty_percent: Decimal = Decimal(0)


@dataclass
class QuoteResult:
    request: QuoteRequest
    container: str
    containers: int
    lines: list[QuoteLine]
    total: Decimal
    missing: list[str]
    port: str | None


def containers_needed(product: Product, quantity_m2: Decimal, container: str) -> int:
    capacity = {"20GP": product.m2_per_20gp, "40GP": product.m2_per_20gp * 2,
                "40HQ": product.m2_per_40hq}[container]
    return max(1, math.ceil(quantity_m2 / Decimal(capacity)))


def compute_quote(tables: PriceTables, request: QuoteRequest) -> QuoteResult:
    """The itemised breakdown up to the requested incoterm."""
    stop = INCOTERM_ORDER.index(request.incoterm)
    container = request.container or tables.default_container
    count = containers_needed(request.product, request.quantity_m2, container)
    lines: list[QuoteLine] = []
    missing: list[str] = []
    running = Decimal(0)

    def add(key: str, amount: Decimal, **values: Any) -> None:
        nonlocal running
        amount = money(amount)
        running += amount
        lines.append(QuoteLine(key, amount, values))

    def subtotal(term: str) -> None:
        lines.append(QuoteLine(f"subtotal.{term}", running, {}, subtotal=True))

    price = request.product.price_usd_m2
    add("line.goods", request.quantity_m2 * price, quantity=request.quantity_m2, price=price,
        product=request.product.sku)
    if request.loyalty_percent:
        goods = lines[0].amount
        add("line.loyalty_discount", -goods * request.loyalty_percent / 100,
            percent=request.loyalty_percent)
    subtotal("EXW")
    if stop >= INCOTERM_ORDER.index("FOB"):
        add("line.export_clearance", tables.export_clearance)
        inland = tables.inland_freight.get(container)
        if inland is None:
            missing.append(f"inland freight for {container}")
        add("line.inland_freight", (inland or Decimal(0)) * count, containers=count,
            container=container, port=tables.origin_port)
        subtotal("FOB")
    port = request.destination_port
    if port is None and request.destination_country:
        port = tables.main_port(request.destination_country)
    if stop >= INCOTERM_ORDER.index("CFR"):
        freight = tables.freight.get((port, container)) if port else None
        if freight is None:
            missing.append(f"ocean freight {tables.origin_port} to {port or '?'} ({container})")
        add("line.ocean_freight", (freight.usd if freight else Decimal(0)) * count, containers=count,
            container=container, port=port or "?",
            days=freight.transit_days if freight else "?")
        subtotal("CFR")
    if stop >= INCOTERM_ORDER.index("CIF"):
        factor = tables.insurance_cover * tables.insurance_rate
        premium = running * factor / (1 - factor)  # premium on 110 % of CIF, CIF incl. premium
        add("line.insurance", premium, rate=tables.insurance_rate * 100,
            cover=tables.insurance_cover * 100)
        subtotal("CIF")
    if stop >= INCOTERM_ORDER.index("DDP"):
        country = request.destination_country or (tables.port_country(port) if port else None)
        destination = tables.destination(country, request.product.hs_code) if country else None
        if destination is None:
            missing.append(f"import duty for {request.product.hs_code} in {country or '?'}")
        else:
            cif = running
            duty = money(cif * destination.duty_percent / 100)
            add("line.import_duty", duty, percent=destination.duty_percent,
                hs_code=request.product.hs_code, country=destination.country)
            add("line.import_vat", (cif + duty) * destination.vat_percent / 100,
                percent=destination.vat_percent, country=destination.country)
            add("line.destination_clearance", destination.clearance)
            add("line.delivery", destination.delivery_per_container * count, containers=count,
                container=container)
        subtotal("DDP")
    return QuoteResult(request, container, count, lines, running, missing, port)
