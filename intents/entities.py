"""Entities in customer messages: order numbers, products, quantities, incoterms, places,
e-mail and phone. Patterns cover the eight supported languages; place names come from
``intents/data/places.yaml``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import phonenumbers

from intents.datafiles import read_yaml
from intents.text import has_cjk, normalise

DATA_DIR = Path(__file__).parent / "data"

_ORDER_WORDS = (
    r"orders?|po|p\.o\.|purchase\s+order|订单号?|单号|合同号?|заказ(?:а|у|ом|е|ы|ов|ам)?|"
    r"pedidos?|encomendas?|commandes?|bestellung(?:en)?|bestellnummer|auftrag(?:s|es)?|"
    r"auftragsnummer|"
    r"(?:ال)?طلب(?:ية)?|رقم\s+الطلب"
)
_ORDER_PREFIXED = re.compile(r"(?<![A-Za-z0-9])((?:PO|SO|ORD|OR)[-\s#№]?\d{3,10})(?![0-9])",
                             re.IGNORECASE)
_ORDER_AFTER_WORD = re.compile(
    rf"(?:{_ORDER_WORDS})\s*(?:no\.?|nr\.?|n[°º]\.?|number|num\.?|#|№|номер|número|numéro|nummer|号|رقم)?"
    r"\s*(?:is|es|est|ist|é|是|-)?\s*[:：#№]?\s*(\d{4,10})(?![0-9])(?![.,]?\d)(?!\s*(?:m2|m²|㎡|sqm|sq|平|方|кв|м2|м²|pcs|"
    r"containers?|x|×|мм|mm))", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])")
_LINK = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_NUM = r"(\d{1,3}(?:[ ,.]\d{3})+|\d+(?:[.,]\d+)?)"
_AREA_UNITS = (
    r"m²|m2|㎡|sqm|sq\.?\s?m(?:eters?|etres?)?|square\s+met(?:er|re)s?|平方米?|平米|方|"
    r"кв\.?\s?м(?:етр[а-я]*)?\.?|м2|м²|квадратн[а-я]*\s+метр[а-я]*|"
    r"metros?\s+cuadrados?|mètres?\s+carrés?|metres?\s+carres?|quadratmeter[n]?|qm|"
    r"metros?\s+quadrados?|متر(?:ا)?\s+مربع|م2|م²"
)
_AREA = re.compile(rf"{_NUM}\s*(?:{_AREA_UNITS})(?![A-Za-z])", re.IGNORECASE)
_CONTAINER_TYPES = r"20\s?GP|40\s?GP|40\s?HQ|40\s?HC|20'|40'|20\s?ft|40\s?ft"
_CONTAINERS = re.compile(
    rf"(?:(\d+)\s*(?:x|×|\*|个|个?柜|)\s*)?({_CONTAINER_TYPES})(?![A-Za-z0-9])", re.IGNORECASE)
_CONTAINER_COUNT = re.compile(
    r"(\d+)\s*(?:containers?|个柜|柜|个集装箱|集装箱|контейнер[а-я]*|contenedor(?:es)?|"
    r"conteneurs?|container|contêineres|contentores?|حاويات|حاوية)", re.IGNORECASE)
_THICKNESS = re.compile(r"(\d+(?:[.,]\d+)?)\s*(?:mm|毫米|мм|مم|ملم)(?![a-z])", re.IGNORECASE)
_WEAR = (r"wear(?:\s*layer)?|耐磨层|耐磨|защитн[а-я]*\s+сло[а-я]*|износостойк[а-я]*\s+сло[а-я]*|"
         r"capa\s+de\s+uso|couche\s+d.usure|nutzschicht|verschleißschicht|camada\s+de\s+uso|"
         r"طبقة\s+(?:ال)?(?:تآكل|اهتراء)")
# "0.5 mm wear layer", "0.5 wear", "wear layer 0.5mm", "耐磨层0.5"; wear layers are thin,
# so a bigger number next to the words is the plank's thickness, not its wear layer.
_WEAR_BEFORE = re.compile(rf"(\d+(?:[.,]\d+)?)\s*(?:mm|毫米|мм|مم)?\s*(?:{_WEAR})", re.IGNORECASE)
_WEAR_AFTER = re.compile(rf"(?:{_WEAR})\s*(?:of|de|von|:)?\s*(\d+(?:[.,]\d+)?)", re.IGNORECASE)
MAX_WEAR_LAYER_MM = Decimal("1.5")
_INCOTERMS = {
    "fob": "FOB", "cif": "CIF", "cfr": "CFR", "c&f": "CFR", "cnf": "CFR", "ddp": "DDP",
    "exw": "EXW", "dap": "DAP", "fca": "FCA", "cpt": "CPT", "cip": "CIP",
    "离岸价": "FOB", "到岸价": "CIF", "出厂价": "EXW", "完税后交货": "DDP",
    "فوب": "FOB", "سيف": "CIF",
}
_INCOTERM = re.compile(
    r"(?<![A-Za-z])(FOB|CIF|CFR|C&F|CNF|DDP|EXW|DAP|FCA|CPT|CIP)(?![A-Za-z])|"
    r"(离岸价|到岸价|出厂价|完税后交货)|(?<!\w)(فوب|سيف)(?!\w)", re.IGNORECASE)
_PRODUCT_TYPES = [
    ("SPC", re.compile(r"(?<![A-Za-z])spc(?![A-Za-z])|石塑|石晶", re.IGNORECASE)),
    ("WPC", re.compile(r"(?<![A-Za-z])wpc(?![A-Za-z])|木塑", re.IGNORECASE)),
    ("PVC", re.compile(r"(?<![A-Za-z])(?:pvc|lvt|vinyl|vinilo|vinyle|vinil|винил[а-я]*)"
                       r"(?![A-Za-z])|塑胶地板|地胶|ПВХ|فينيل", re.IGNORECASE)),
    ("laminate", re.compile(r"laminat[a-z]*|stratifi[ée]|强化地板|复合地板|强化木地板|"
                            r"ламинат[а-я]*|لامينيت|رقائقي", re.IGNORECASE)),
]
_DOCUMENTS = [
    ("pi", re.compile(r"(?<!\w)p\.?\s?i(?!\w)|pro\s?-?forma|形式发票|проформ[а-я]*|"
                      r"فاتورة\s+(?:مبدئية|أولية|اولية)", re.IGNORECASE)),
    ("commercial_invoice", re.compile(r"commercial\s+invoice|(?<!pro forma )(?<!proforma )invoice|"
                                      r"商业发票|инвойс|коммерческ[а-я]*\s+сч[её]т|сч[её]т-фактур[а-я]*|"
                                      r"factura\s+comercial|facture\s+commerciale|handelsrechnung|"
                                      r"fatura\s+comercial|فاتورة\s+تجارية", re.IGNORECASE)),
    ("packing_list", re.compile(r"packing\s*list|装箱单|箱单|упаковочн[а-я]*\s+лист|"
                                r"lista\s+de\s+empaque|liste\s+de\s+colisage|packliste|romaneio|"
                                r"قائمة\s+(?:ال)?تعبئة", re.IGNORECASE)),
    ("bl", re.compile(r"(?<!\w)b\s?/\s?l(?!\w)|bill\s+of\s+lading|提单|коносамент[а-я]*|"
                      r"conocimiento\s+de\s+embarque|connaissement|konnossement|"
                      r"conhecimento\s+de\s+embarque|بوليص[ةه]\s+(?:ال)?شحن", re.IGNORECASE)),
    ("certificate_of_origin", re.compile(
        r"certificate\s+of\s+origin|(?<![\w-])(?-i:C\.?O)(?![\w-])|(?<!\w)form[\s-][ae](?!\w)|"
        r"原产地证|产地证|"
        r"сертификат[а-я]*\s+происхождени[а-я]*|certificado\s+de\s+orige[nm]|"
        r"certificat\s+d.origine|ursprungszeugnis|شهاد[ةه]\s+(?:ال)?منشأ", re.IGNORECASE)),
    ("inspection_report", re.compile(
        r"inspection\s+report|sgs\s+report|验货报告|检验报告|отч[её]т[а-я]*\s+(?:об?\s+)?инспекци[а-я]*|"
        r"informe\s+de\s+inspecci[oó]n|rapport\s+d.inspection|inspektionsbericht|pr[üu]fbericht|"
        r"relat[óo]rio\s+de\s+inspe[çc][ãa]o|تقرير\s+(?:ال)?فحص", re.IGNORECASE)),
]
_DIGIT = re.compile(r"\d")
_PHONE_HINT = re.compile(r"\+\s?\d")  # international numbers only: "+49 40 ..."
_SKU = re.compile(r"(?<![A-Za-z])((?:SPC|WPC|PVC|LAM)-\d+(?:-[A-Z0-9]+)*)", re.IGNORECASE)


def _number(text: str) -> Decimal | None:
    cleaned = text.replace(" ", "")
    if re.fullmatch(r"\d{1,3}(?:[,.]\d{3})+", cleaned):
        cleaned = re.sub(r"[,.]", "", cleaned)  # thousands separators: 1,500 / 1.500
    try:
        return Decimal(cleaned.replace(",", "."))
    except InvalidOperation:
        return None


@dataclass
class Places:
    """Ports and countries by their names in every supported language."""

    ports: dict[str, str]  # normalised name -> canonical port
    countries: dict[str, str]  # normalised name -> ISO code
    port_countries: dict[str, str]  # canonical port -> ISO code

    @classmethod
    def load(cls, path: Path = DATA_DIR / "places.yaml") -> Places:
        raw = read_yaml(path) or {}
        ports, countries, port_countries = {}, {}, {}
        for canonical, spec in (raw.get("ports") or {}).items():
            port_countries[canonical] = spec["country"]
            for name in [canonical, *spec.get("names", [])]:
                ports[normalise(name, mask_numbers=False)] = canonical
        for code, names in (raw.get("countries") or {}).items():
            for name in names:
                countries[normalise(name, mask_numbers=False)] = code
        return cls(ports, countries, port_countries)

    def find(self, text: str) -> tuple[list[str], list[str]]:
        """Ports and countries named in ``text``, in order of appearance. Chinese names
        match inside text (no spaces); all others match whole words, looked up as word
        n-grams so the cost grows with the message, not with the gazetteer."""
        folded = normalise(text, mask_numbers=False)
        words = folded.split()
        ports: list[tuple[int, str]] = []
        countries: list[tuple[int, str]] = []
        for start in range(len(words)):
            for size in range(1, min(self._longest, len(words) - start) + 1):
                name = " ".join(words[start:start + size])
                if name in self.ports:
                    ports.append((start, self.ports[name]))
                if name in self.countries:
                    countries.append((start, self.countries[name]))
        if has_cjk(folded):
            for name, port in self._cjk_ports:
                if (at := folded.find(name)) >= 0:
                    ports.append((at, port))
            for name, code in self._cjk_countries:
                if (at := folded.find(name)) >= 0:
                    countries.append((at, code))
        return ([p for _, p in sorted(set(ports))], [c for _, c in sorted(set(countries))])

    def __post_init__(self) -> None:
        names = [*self.ports, *self.countries]
        self._longest = max((len(n.split()) for n in names), default=1)
        self._cjk_ports = [(n, p) for n, p in self.ports.items() if has_cjk(n)]
        self._cjk_countries = [(n, c) for n, c in self.countries.items() if has_cjk(n)]


class EntityExtractor:
    def __init__(self, places: Places | None = None) -> None:
        self.places = places or Places.load()

    def extract(self, text: str) -> dict[str, Any]:
        entities: dict[str, Any] = {}
        emails = _EMAIL.findall(text) if "@" in text else []
        if emails:
            entities["emails"] = emails
            text = _EMAIL.sub(" ", text)  # "john@example.co.uk" names no country
        text = _LINK.sub(" ", text)
        # Most chat messages have no digits: skip every pattern that needs one.
        numeric = _DIGIT.search(text) is not None
        if numeric:
            self._orders(text, entities)
        self._product(text, entities, numeric)
        if numeric:
            self._quantities(text, entities)
        self._terms_and_places(text, entities)
        documents = [name for name, pattern in _DOCUMENTS if pattern.search(text)]
        if documents:
            entities["documents"] = documents
        phones = [phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164)
                  for m in phonenumbers.PhoneNumberMatcher(text, None)
                  ] if numeric and _PHONE_HINT.search(text) else []
        if phones:
            entities["phones"] = phones
        return entities

    @staticmethod
    def _orders(text: str, entities: dict[str, Any]) -> None:
        orders: list[str] = []
        for match in _ORDER_PREFIXED.finditer(text):
            orders.append(re.sub(r"[\s#№]+", "-", match.group(1).upper()).replace("--", "-"))
        for match in _ORDER_AFTER_WORD.finditer(text):
            number = match.group(1)
            if not any(o.endswith(number) for o in orders):
                orders.append(number)
        if orders:
            entities["order_numbers"] = list(dict.fromkeys(orders))

    @staticmethod
    def _product(text: str, entities: dict[str, Any], numeric: bool) -> None:
        skus = [m.group(1).upper() for m in _SKU.finditer(text)] if numeric else []
        types = [name for name, pattern in _PRODUCT_TYPES if pattern.search(text)]
        product: dict[str, Any] = {}
        if types:
            product["type"] = types[0]
        if skus:
            product["sku"] = skus[0]
        for pattern in (_WEAR_AFTER, _WEAR_BEFORE) if numeric else ():
            for match in pattern.finditer(text):
                value = _number(match.group(1))
                if value is not None and value < MAX_WEAR_LAYER_MM:
                    product.setdefault("wear_layer_mm", str(value))
        for match in _THICKNESS.finditer(text) if numeric else ():
            value = _number(match.group(1))
            if value is None or str(value) == product.get("wear_layer_mm"):
                continue
            if value < MAX_WEAR_LAYER_MM:
                product.setdefault("wear_layer_mm", str(value))
            else:
                product.setdefault("thickness_mm", str(value))
        if product:
            entities["product"] = product

    @staticmethod
    def _quantities(text: str, entities: dict[str, Any]) -> None:
        quantities: list[dict[str, Any]] = []
        for match in _AREA.finditer(text):
            value = _number(match.group(1))
            if value is not None:
                quantities.append({"value": str(value), "unit": "m2"})
        counts = [m.group(1) for m in _CONTAINER_COUNT.finditer(text)]
        for match in _CONTAINERS.finditer(text):
            kind = re.sub(r"\s", "", match.group(2).upper()).replace("'", "FT")
            kind = {"40HC": "40HQ", "20FT": "20GP", "40FT": "40GP"}.get(kind, kind)
            # "2 containers of 40HQ": the count may stand apart from the container type
            count = match.group(1) or (counts.pop(0) if counts else "1")
            quantities.append({"value": count, "unit": kind})
        if not any(q["unit"] != "m2" for q in quantities):
            quantities += [{"value": count, "unit": "container"} for count in counts]
        if quantities:
            entities["quantities"] = quantities

    def _terms_and_places(self, text: str, entities: dict[str, Any]) -> None:
        incoterms = [_INCOTERMS[next(g for g in m.groups() if g).lower()]
                     for m in _INCOTERM.finditer(text)]
        if incoterms:
            entities["incoterm"] = incoterms[0]

        ports, countries = self.places.find(text)
        origin = None
        if ports and entities.get("incoterm") in ("FOB", "EXW", "FCA"):
            origin = ports[0]  # "FOB Shanghai" names the port of loading
            entities["origin_port"] = origin
        destinations = [p for p in ports if p != origin]
        if destinations:
            entities["destination_port"] = destinations[0]
            entities["destination_country"] = self.places.port_countries[destinations[0]]
        elif countries:
            entities["destination_country"] = countries[0]

