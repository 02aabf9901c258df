"""The knowledge base: reply templates per language and the product catalogue.

All customer-facing sentences live in ``knowledge/`` files that business users edit, so
everything is validated at load and every error names the file, the line and the key.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from string import Formatter
from typing import Any

import yaml

import knowledge as knowledge_package
from intents.datafiles import compose_yaml_text, load_yaml_text

BUNDLED_KNOWLEDGE = Path(knowledge_package.__file__).parent


class KnowledgeError(Exception):
    """A knowledge file is missing or wrong; the message names the file, line and key."""


def load_yaml_mapping(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Load a YAML mapping and remember the line of each top-level key (1-based)."""
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KnowledgeError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise KnowledgeError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    try:
        node = compose_yaml_text(source)
        data = load_yaml_text(source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"line {mark.line + 1}: " if mark else ""
        raise KnowledgeError(f"{path}: {line}{exc.problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise KnowledgeError(f"{path}: line 1: expected a mapping of keys to values")
    lines = {key_node.value: key_node.start_mark.line + 1 for key_node, _ in node.value}
    return data, lines


@dataclass(frozen=True)
class Product:
    sku: str
    type: str
    name: str
    thickness_mm: Decimal
    wear_layer_mm: Decimal | None
    price_usd_m2: Decimal
    hs_code: str
    m2_per_carton: Decimal
    cartons_per_pallet: int
    m2_per_20gp: int
    m2_per_40hq: int
    moq_m2: int
    colors: tuple[str, ...]


CATALOGUE_COLUMNS = (
    "sku", "type", "name", "thickness_mm", "wear_layer_mm", "price_usd_m2", "hs_code",
    "m2_per_carton", "cartons_per_pallet", "m2_per_20gp", "m2_per_40hq", "moq_m2", "colors",
)


def parse_decimal(value: str, column: str) -> Decimal:
    """A non-negative number from a knowledge file; ValueError names the column."""
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{column}: {value!r} is not a number") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{column}: {value!r} must be a non-negative number")
    return number


def load_catalogue(path: Path) -> dict[str, Product]:
    try:
        handle = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise KnowledgeError(f"{path}: file not found") from None
    products: dict[str, Product] = {}
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CATALOGUE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise KnowledgeError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        for row in reader:
            line = reader.line_num
            try:
                sku = row["sku"].strip()
                if not sku:
                    raise ValueError("sku: empty")
                if sku in products:
                    raise ValueError(f"sku: {sku!r} appears twice")
                wear = row["wear_layer_mm"].strip()
                products[sku] = Product(
                    sku=sku,
                    type=row["type"].strip(),
                    name=row["name"].strip(),
                    thickness_mm=parse_decimal(row["thickness_mm"], "thickness_mm"),
                    wear_layer_mm=parse_decimal(wear, "wear_layer_mm") if wear else None,
                    price_usd_m2=parse_decimal(row["price_usd_m2"], "price_usd_m2"),
                    hs_code=row["hs_code"].strip(),
                    m2_per_carton=parse_decimal(row["m2_per_carton"], "m2_per_carton"),
                    cartons_per_pallet=int(parse_decimal(row["cartons_per_pallet"], "cartons_per_pallet")),
                    m2_per_20gp=int(parse_decimal(row["m2_per_20gp"], "m2_per_20gp")),
                    m2_per_40hq=int(parse_decimal(row["m2_per_40hq"], "m2_per_40hq")),
                    moq_m2=int(parse_decimal(row["moq_m2"], "moq_m2")),
                    colors=tuple(c.strip() for c in row["colors"].split(";") if c.strip()),
                )
            except (ValueError, AttributeError) as exc:
                raise KnowledgeError(f"{path}: line {line}: {exc}") from None
    return products


@dataclass
class Templates:
    """Reply templates per language; every key exists in every supported language."""

    by_language: dict[str, dict[str, str]]
    default_language: str

    def render(self, key: str, lang: str | None, **values: Any) -> str:
        table = self.by_language.get(lang or "") or self.by_language[self.default_language]
        template = table.get(key) or self.by_language[self.default_language][key]
        return template.format_map(values)


def load_templates(directory: Path, languages: list[str], default_language: str) -> Templates:
    by_language: dict[str, dict[str, str]] = {}
    lines_by_language: dict[str, dict[str, int]] = {}
    for lang in languages:
        path = directory / f"{lang}.yaml"
        data, lines = load_yaml_mapping(path)
        for key, value in data.items():
            if not isinstance(value, str) or not value:
                raise KnowledgeError(f"{path}: line {lines.get(key, '?')}: key {key!r}: "
                                     "expected a non-empty text")
        by_language[lang], lines_by_language[lang] = data, lines
    reference_lang = default_language if default_language in by_language else languages[0]
    reference = by_language[reference_lang]
    for lang, table in by_language.items():
        path = directory / f"{lang}.yaml"
        missing = sorted(set(reference) - set(table))
        if missing:
            raise KnowledgeError(f"{path}: missing key(s) {', '.join(missing)} "
                                 f"(present in {reference_lang}.yaml)")
        extra = sorted(set(table) - set(reference))
        if extra:
            line = lines_by_language[lang][extra[0]]
            raise KnowledgeError(f"{path}: line {line}: key {extra[0]!r} is not in "
                                 f"{reference_lang}.yaml")
        for key, text in table.items():
            expected = _format_fields(reference[key])
            try:
                found = _format_fields(text)
            except ValueError as exc:
                raise KnowledgeError(f"{path}: line {lines_by_language[lang][key]}: key {key!r}: "
                                     f"{exc}") from None
            if found != expected:
                raise KnowledgeError(
                    f"{path}: line {lines_by_language[lang][key]}: key {key!r}: placeholders "
                    f"{sorted(found)} differ from {reference_lang}.yaml {sorted(expected)}")
    return Templates(by_language=by_language, default_language=reference_lang)


def _format_fields(text: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(text) if name is not None}


def load_agent_texts(path: Path) -> dict[str, str]:
    data, lines = load_yaml_mapping(path)
    for key, value in data.items():
        if not isinstance(value, str):
            raise KnowledgeError(f"{path}: line {lines.get(key, '?')}: key {key!r}: expected text")
    return data


@dataclass(frozen=True)
class ForbiddenPhrase:
    phrase: str
    alternative: str


@dataclass(frozen=True)
class Phrases:
    """House style per language: polite phrases, and forbidden ones with an alternative."""

    polite: tuple[str, ...]
    forbidden: tuple[ForbiddenPhrase, ...]


def load_phrases(directory: Path, languages: list[str]) -> dict[str, Phrases]:
    result = {}
    for lang in languages:
        path = directory / f"{lang}.yaml"
        data, lines = load_yaml_mapping(path)
        polite, forbidden = data.get("polite"), data.get("forbidden")
        if not isinstance(polite, list) or not all(isinstance(p, str) and p for p in polite):
            raise KnowledgeError(f"{path}: line {lines.get('polite', 1)}: 'polite' must be a "
                                 "list of phrases")
        if not isinstance(forbidden, list):
            raise KnowledgeError(f"{path}: line {lines.get('forbidden', 1)}: 'forbidden' must "
                                 "be a list of phrase/alternative pairs")
        entries = []
        for number, item in enumerate(forbidden, start=1):
            if (not isinstance(item, dict) or not isinstance(item.get("phrase"), str)
                    or not isinstance(item.get("alternative"), str)
                    or not item["phrase"].strip() or not item["alternative"].strip()):
                raise KnowledgeError(f"{path}: forbidden entry {number} (after line "
                                     f"{lines.get('forbidden', 1)}): needs 'phrase' and "
                                     "'alternative'")
            entries.append(ForbiddenPhrase(item["phrase"].strip(), item["alternative"].strip()))
        result[lang] = Phrases(tuple(polite), tuple(entries))
    return result


_CACHE: dict[tuple[Any, ...], tuple[tuple[Any, ...], Knowledge]] = {}


@dataclass
class Knowledge:
    root: Path
    templates: Templates
    catalogue: dict[str, Product] = field(default_factory=dict)
    agent_texts: dict[str, str] = field(default_factory=dict)
    pricing: Any = None  # bot.pricing.PriceTables
    faq: Any = None  # bot.faq.Faq
    phrases: dict[str, Phrases] = field(default_factory=dict)

    @classmethod
    def load_cached(cls, root: Path | None, languages: tuple[str, ...],
                    default_language: str) -> Knowledge:
        """Load once per process, and again only when a file in the folder has changed."""
        folder = Path(root) if root else BUNDLED_KNOWLEDGE
        signature = tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                                 for p in folder.rglob("*") if p.is_file()))
        key = (str(folder), languages, default_language)
        cached = _CACHE.get(key)
        if cached is None or cached[0] != signature:
            cached = (signature, cls.load(folder, list(languages), default_language))
            _CACHE[key] = cached
        return cached[1]

    @classmethod
    def load(cls, root: Path | None, languages: list[str], default_language: str) -> Knowledge:
        from bot.faq import load_faq
        from bot.pricing import load_price_tables

        root = Path(root) if root else BUNDLED_KNOWLEDGE
        if not root.is_dir():
            raise KnowledgeError(f"{root}: knowledge directory not found")
        templates = load_templates(root / "templates", languages, default_language)
        catalogue = load_catalogue(root / "catalogue.csv")
        return cls(root=root, templates=templates, catalogue=catalogue,
                   agent_texts=load_agent_texts(root / "agents.yaml"),
                   pricing=load_price_tables(root),
                   faq=load_faq(root / "faq", languages),
                   phrases=load_phrases(root / "phrases", languages))
