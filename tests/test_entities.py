"""Entities in customer messages (SPEC §2 "Entities"): order numbers, products, quantities,
incoterms, ports and countries, documents, e-mail and phone, in the supported languages."""

from __future__ import annotations

from typing import Any

import pytest

from intents.entities import EntityExtractor


@pytest.fixture(scope="module")
def extractor() -> EntityExtractor:
    return EntityExtractor()


def m2(value: str) -> dict[str, str]:
    return {"value": value, "unit": "m2"}


# --- order numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("PO-24117", ["PO-24117"]),
    ("where is PO 24117", ["PO-24117"]),
    ("po#24117 status?", ["PO-24117"]),
    ("PO24117", ["PO24117"]),
    ("order 77120", ["77120"]),
    ("order no. 77120", ["77120"]),
    ("order #77120 please", ["77120"]),
    ("订单77120", ["77120"]),
    ("请问订单 77120 到哪了", ["77120"]),
    ("订单号:77120", ["77120"]),
    ("заказ №77120", ["77120"]),
    ("номер заказа 77120", ["77120"]),
    ("pedido 77120", ["77120"]),
    ("número de pedido 77120", ["77120"]),
    ("encomenda 77120", ["77120"]),
    ("commande 77120", ["77120"]),
    ("numéro de commande 77120", ["77120"]),
    ("Bestellung 77120", ["77120"]),
    ("Auftragsnummer 77120", ["77120"]),
    ("الطلب 77120", ["77120"]),
    ("رقم الطلب 77120", ["77120"]),
    ("PO-24117 and PO-24118", ["PO-24117", "PO-24118"]),
])
def test_order_numbers_in_many_shapes(extractor: EntityExtractor, text: str,
                                      expected: list[str]) -> None:
    assert extractor.extract(text).get("order_numbers") == expected


@pytest.mark.parametrize("text", [
    "I want to order 1500 m2",
    "хочу заказать 1500 м2",
    "we need to order 2000 sqm of laminate",
    "I'd like to order 3 x 40HQ",
    "pedido de 2000 m2",
    "ordered 2000 m2 last month",
    "77120",
    "SPC 5mm",
])
def test_quantities_and_bare_numbers_are_not_order_numbers(extractor: EntityExtractor,
                                                           text: str) -> None:
    assert "order_numbers" not in extractor.extract(text)


def test_an_order_to_place_keeps_its_quantity(extractor: EntityExtractor) -> None:
    assert extractor.extract("I want to order 1500 m2")["quantities"] == [m2("1500")]
    assert extractor.extract("хочу заказать 1500 м2")["quantities"] == [m2("1500")]


def test_chinese_order_number_with_full_width_colon(extractor: EntityExtractor) -> None:
    assert extractor.extract("订单号：77120")["order_numbers"] == ["77120"]


def test_german_bestellnummer(extractor: EntityExtractor) -> None:
    assert extractor.extract("Bestellnummer 77120")["order_numbers"] == ["77120"]


def test_order_number_is_phrase(extractor: EntityExtractor) -> None:
    assert extractor.extract("my order number is 77120, thanks")["order_numbers"] == ["77120"]


# --- products --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, product", [
    ("SPC 5mm 0.5mm wear layer", {"type": "SPC", "thickness_mm": "5", "wear_layer_mm": "0.5"}),
    ("WPC flooring 6.5mm with 0.3 wear", {"type": "WPC", "thickness_mm": "6.5",
                                          "wear_layer_mm": "0.3"}),
    ("laminate 8mm AC4", {"type": "laminate", "thickness_mm": "8"}),
    ("耐磨层0.5", {"wear_layer_mm": "0.5"}),
    ("石塑地板 5毫米 耐磨层0.3", {"type": "SPC", "thickness_mm": "5", "wear_layer_mm": "0.3"}),
    ("SPC 4 мм защитный слой 0,3 мм", {"type": "SPC", "thickness_mm": "4",
                                        "wear_layer_mm": "0.3"}),
    ("8 мм ламинат", {"type": "laminate", "thickness_mm": "8"}),
    ("piso de vinilo 2mm", {"type": "PVC", "thickness_mm": "2"}),
    ("SKU SPC-4012-OAK please", {"type": "SPC", "sku": "SPC-4012-OAK"}),
])
def test_products_type_thickness_and_wear_layer(extractor: EntityExtractor, text: str,
                                                product: dict[str, str]) -> None:
    assert extractor.extract(text)["product"] == product


# --- quantities ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, quantities", [
    ("1500 m2", [m2("1500")]),
    ("1,500 sqm", [m2("1500")]),
    ("1.500 m²", [m2("1500")]),
    ("20 000 m2", [m2("20000")]),
    ("2000 square meters", [m2("2000")]),
    ("2000平方", [m2("2000")]),
    ("3000 кв.м", [m2("3000")]),
    ("2.500 metros cuadrados", [m2("2500")]),
    ("500 quadratmeter", [m2("500")]),
    ("2,5 m2 sample", [m2("2.5")]),
    ("2 x 40HQ", [{"value": "2", "unit": "40HQ"}]),
    ("2x40HQ", [{"value": "2", "unit": "40HQ"}]),
    ("1 x 40HC", [{"value": "1", "unit": "40HQ"}]),
    ("1x20GP", [{"value": "1", "unit": "20GP"}]),
    ("2个40HQ", [{"value": "2", "unit": "40HQ"}]),
    ("3 containers", [{"value": "3", "unit": "container"}]),
    ("3个柜", [{"value": "3", "unit": "container"}]),
    ("нужно 2 контейнера", [{"value": "2", "unit": "container"}]),
])
def test_quantities_with_units(extractor: EntityExtractor, text: str,
                               quantities: list[dict[str, str]]) -> None:
    assert extractor.extract(text)["quantities"] == quantities


def test_container_count_with_type_after_it(extractor: EntityExtractor) -> None:
    assert extractor.extract("we need 2 containers of 40HQ")["quantities"] == [
        {"value": "2", "unit": "40HQ"}]


# --- incoterms, ports and countries ----------------------------------------------------------

@pytest.mark.parametrize("text, incoterm", [
    ("price FOB please", "FOB"), ("CIF Hamburg", "CIF"), ("DDP Dubai", "DDP"),
    ("exw price please", "EXW"), ("C&F Lagos", "CFR"), ("cfr", "CFR"),
    ("到岸价多少", "CIF"), ("离岸价", "FOB"),
])
def test_incoterms(extractor: EntityExtractor, text: str, incoterm: str) -> None:
    assert extractor.extract(text)["incoterm"] == incoterm


@pytest.mark.parametrize("text", ["fobbed off again", "a specification sheet", "ok thanks"])
def test_no_incoterm_inside_other_words(extractor: EntityExtractor, text: str) -> None:
    assert "incoterm" not in extractor.extract(text)


@pytest.mark.parametrize("text, port, country", [
    ("CIF Hamburgo", "Hamburg", "DE"),
    ("CIF Hamburg", "Hamburg", "DE"),
    ("发到迪拜", "Jebel Ali", "AE"),
    ("DDP Dubai", "Jebel Ali", "AE"),
    ("C&F Lagos", "Lagos", "NG"),
    ("доставка в Новороссийск", "Novorossiysk", "RU"),
    ("الشحن إلى جدة", "Jeddah", "SA"),
    ("CIF Santos, Brazil", "Santos", "BR"),
])
def test_destination_ports_and_their_countries(extractor: EntityExtractor, text: str,
                                               port: str, country: str) -> None:
    entities = extractor.extract(text)
    assert (entities.get("destination_port"), entities.get("destination_country")) == (
        port, country)


def test_fob_port_is_the_origin_not_the_destination(extractor: EntityExtractor) -> None:
    entities = extractor.extract("FOB Shanghai")
    assert entities["origin_port"] == "Shanghai"
    assert "destination_port" not in entities and "destination_country" not in entities
    entities = extractor.extract("FOB Shanghai to Rotterdam")
    assert (entities["origin_port"], entities["destination_port"],
            entities["destination_country"]) == ("Shanghai", "Rotterdam", "NL")
    entities = extractor.extract("报价FOB上海到迪拜")
    assert (entities["origin_port"], entities["destination_port"]) == ("Shanghai", "Jebel Ali")


@pytest.mark.parametrize("text, country", [
    ("DDP Deutschland", "DE"), ("envio para o Brasil", "BR"),
    ("Wir brauchen Ware für Deutschland", "DE"),
])
def test_destination_country_without_a_port(extractor: EntityExtractor, text: str,
                                            country: str) -> None:
    entities = extractor.extract(text)
    assert entities["destination_country"] == country and "destination_port" not in entities


# --- documents -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, documents", [
    ("please send the PI", ["pi"]),
    ("proforma invoice please", ["pi"]),
    ("need the packing list", ["packing_list"]),
    ("提单什么时候给", ["bl"]),
    ("пришлите коносамент", ["bl"]),
    ("Kindly share the B/L copy", ["bl"]),
    ("please send invoice", ["commercial_invoice"]),
    ("SGS inspection report", ["inspection_report"]),
    ("we need Form A for the EU", ["certificate_of_origin"]),
])
def test_documents(extractor: EntityExtractor, text: str, documents: list[str]) -> None:
    assert extractor.extract(text)["documents"] == documents


@pytest.mark.parametrize("text", ["Il manque une pièce dans le colis", "voir pièce jointe",
                                  "the pieces are fine", "pipeline", "API access"])
def test_words_that_are_not_a_pi(extractor: EntityExtractor, text: str) -> None:
    assert "documents" not in extractor.extract(text)


@pytest.mark.parametrize("text", ["¿Cuál es la forma de pago?", "Qual é a forma de pagamento?",
                                  "livré sous forme de palettes", "pro forma invoice"])
def test_forma_is_not_a_form_a(extractor: EntityExtractor, text: str) -> None:
    assert "certificate_of_origin" not in extractor.extract(text).get("documents", [])


# --- e-mail and phone ------------------------------------------------------------------------

@pytest.mark.parametrize("text, emails", [
    ("contact me at john.doe+test@example.co.uk", ["john.doe+test@example.co.uk"]),
    ("my email is ANNA@Example.COM", ["ANNA@Example.COM"]),
    ("sales@floor-export.com", ["sales@floor-export.com"]),
    ("no email here @ all", None),
])
def test_email(extractor: EntityExtractor, text: str, emails: list[str] | None) -> None:
    assert extractor.extract(text).get("emails") == emails


def test_an_email_address_is_only_an_email(extractor: EntityExtractor) -> None:
    entities = extractor.extract("contact me at john.doe@example.co.uk")
    assert entities == {"emails": ["john.doe@example.co.uk"]}


@pytest.mark.parametrize("text, phones", [
    ("call me +49 40 1234567", ["+49401234567"]),
    ("my phone is +86 138 0013 8000", ["+8613800138000"]),
    ("+7 (495) 123-45-67", ["+74951234567"]),
])
def test_international_phone_numbers(extractor: EntityExtractor, text: str,
                                     phones: list[str]) -> None:
    assert extractor.extract(text)["phones"] == phones


@pytest.mark.parametrize("text", ["PO-24117 77120 two numbers", "1500 m2 FOB", "2 x 40HQ"])
def test_order_numbers_and_quantities_are_not_phones(extractor: EntityExtractor,
                                                     text: str) -> None:
    assert "phones" not in extractor.extract(text)


# --- a whole message -------------------------------------------------------------------------

def test_a_full_quote_request(extractor: EntityExtractor) -> None:
    entities: dict[str, Any] = extractor.extract(
        "Need price for SPC 5mm 0.5mm wear layer, 2 x 40HQ, CIF Hamburgo. "
        "Reply to buyer@example.com or +49 40 1234567")
    assert entities == {
        "product": {"type": "SPC", "thickness_mm": "5", "wear_layer_mm": "0.5"},
        "quantities": [{"value": "2", "unit": "40HQ"}],
        "incoterm": "CIF",
        "destination_port": "Hamburg",
        "destination_country": "DE",
        "emails": ["buyer@example.com"],
        "phones": ["+49401234567"],
    }


@pytest.mark.parametrize("text", ["", "   ", "👍", "?", "x" * 100_000])
def test_nothing_from_nothing(extractor: EntityExtractor, text: str) -> None:
    assert extractor.extract(text) == {}
