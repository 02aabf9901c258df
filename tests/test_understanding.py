"""Intent classification, urgency and the ``unknown`` fallback (SPEC §2 "Intent", "Urgency"),
the clarifying question through the pipeline, and ``supportbot classify``.

The messages below were written for these tests; ``test_messages_are_not_copied_from_the_
intent_data`` proves none of them is an example or keyword of ``intents/data``, so a pass
means the classifier generalises rather than recalls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.cli import main
from bot.config import ALL_LANGUAGES
from bot.db.models import Conversation
from bot.service import Service
from intents.classifier import DATA_DIR, INTENTS
from intents.datafiles import read_yaml
from intents.text import normalise
from intents.understanding import Understander, Understanding, shared_understander

LANGS = tuple(ALL_LANGUAGES)
CONTRACT_KEYS = {"text", "lang", "intent", "confidence", "entities", "urgent"}
REAL_INTENTS = [i for i in INTENTS if i != "unknown"]

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "greeting": "Hello! Hope your week is going well",
        "goodbye": "Thanks a lot for your help, have a nice weekend",
        "order_status": "Could you tell me when my order will be shipped?",
        "quote_request": "What is your best price for 2000 m2 of SPC flooring CIF Rotterdam?",
        "complaint": "Half of the boxes arrived broken and the planks are scratched, "
                     "I am very disappointed",
        "return_refund": "I would like to return the goods and get my money back",
        "human_agent": "Can I please talk to a real person instead of a bot?",
        "documents": "Please send me the commercial invoice and packing list for my shipment",
        "product_info": "What colours and thicknesses does your SPC flooring come in?",
        "technical_support": "How do I install the click planks over an existing tile floor?",
    },
    "zh": {
        "greeting": "你们好，打扰一下",
        "goodbye": "好的，谢谢你的帮助，再见",
        "order_status": "我的订单现在到哪里了？什么时候发货？",
        "quote_request": "请给我报一下SPC地板的价格，2000平方，到岸价",
        "complaint": "收到的货有很多破损，质量太差了，我要投诉",
        "return_refund": "这批货我想退货退款",
        "human_agent": "我要跟人工客服说话",
        "documents": "请把提单和装箱单发给我",
        "product_info": "你们的石塑地板有哪些颜色和厚度？",
        "technical_support": "地板怎么安装？需要打胶吗？",
    },
    "ru": {
        "greeting": "Добрый день, есть кто-нибудь?",
        "goodbye": "Спасибо за помощь, всего доброго!",
        "order_status": "Подскажите, где сейчас мой заказ и когда будет отгрузка?",
        "quote_request": "Сколько будет стоить 1500 м2 SPC ламината с доставкой до "
                         "Новороссийска?",
        "complaint": "Половина досок пришла с трещинами, я очень недоволен качеством",
        "return_refund": "Хочу вернуть товар и получить деньги обратно",
        "human_agent": "Соедините меня, пожалуйста, с живым оператором",
        "documents": "Пришлите, пожалуйста, коносамент и упаковочный лист",
        "product_info": "Какие цвета и толщины есть у вашего винилового пола?",
        "technical_support": "Как правильно укладывать ламинат, нужна ли подложка?",
    },
    "es": {
        "greeting": "Hola, buenas tardes, ¿hay alguien?",
        "goodbye": "Muchas gracias por todo, hasta luego",
        "order_status": "¿Dónde está mi pedido? ¿Cuándo llega?",
        "quote_request": "Necesito una cotización para 3000 metros cuadrados de piso SPC",
        "complaint": "Las cajas llegaron rotas y el piso está rayado, estoy muy molesto",
        "return_refund": "Quiero devolver la mercancía y que me reembolsen el dinero",
        "human_agent": "Quiero hablar con una persona de verdad, no con un robot",
        "documents": "¿Me pueden enviar la factura comercial y el conocimiento de embarque?",
        "product_info": "¿Qué colores y espesores tiene su piso de vinilo?",
        "technical_support": "¿Cómo se instala el piso sobre cerámica? ¿Necesito pegamento?",
    },
    "fr": {
        "greeting": "Bonjour à toute l'équipe, vous allez bien ?",
        "goodbye": "Merci beaucoup pour votre aide, bonne journée",
        "order_status": "Où en est ma commande ? Quand sera-t-elle expédiée ?",
        "quote_request": "Pouvez-vous me faire un devis pour 2000 m2 de sol SPC ?",
        "complaint": "Les cartons sont arrivés abîmés et les lames sont rayées, "
                     "je suis très mécontent",
        "return_refund": "Je souhaite retourner la marchandise et être remboursé",
        "human_agent": "Je voudrais parler à un conseiller humain s'il vous plaît",
        "documents": "Pouvez-vous m'envoyer la facture commerciale et la liste de colisage ?",
        "product_info": "Quelles couleurs et épaisseurs proposez-vous pour le sol stratifié ?",
        "technical_support": "Comment poser le parquet sur un carrelage existant ?",
    },
    "de": {
        "greeting": "Guten Tag, ist jemand da?",
        "goodbye": "Vielen Dank für Ihre Hilfe, schönes Wochenende",
        "order_status": "Wo ist meine Bestellung? Wann wird sie verschickt?",
        "quote_request": "Bitte schicken Sie mir ein Angebot für 2000 m2 SPC Boden",
        "complaint": "Die Kartons kamen beschädigt an und die Dielen sind zerkratzt, "
                     "ich bin sehr unzufrieden",
        "return_refund": "Ich möchte die Ware zurückgeben und mein Geld zurück",
        "human_agent": "Ich möchte bitte mit einem echten Mitarbeiter sprechen",
        "documents": "Können Sie mir die Handelsrechnung und die Packliste schicken?",
        "product_info": "Welche Farben und Stärken gibt es bei Ihrem Vinylboden?",
        "technical_support": "Wie verlege ich den Boden auf alten Fliesen?",
    },
    "pt": {
        "greeting": "Olá, boa tarde, tem alguém aí?",
        "goodbye": "Muito obrigado pela ajuda, até logo",
        "order_status": "Onde está o meu pedido? Quando vai ser enviado?",
        "quote_request": "Preciso de um orçamento para 2000 metros quadrados de piso SPC",
        "complaint": "As caixas chegaram danificadas e o piso está riscado, "
                     "estou muito insatisfeito",
        "return_refund": "Quero devolver a mercadoria e receber o reembolso",
        "human_agent": "Quero falar com um atendente humano, por favor",
        "documents": "Podem me enviar a fatura comercial e o conhecimento de embarque?",
        "product_info": "Quais cores e espessuras vocês têm para o piso vinílico?",
        "technical_support": "Como instalar o piso em cima do porcelanato?",
    },
    "ar": {
        "greeting": "السلام عليكم، هل يوجد أحد؟",
        "goodbye": "شكرا على مساعدتك، مع السلامة",
        "order_status": "أين طلبي؟ متى سيتم شحنه؟",
        "quote_request": "أريد عرض سعر لـ 2000 متر مربع من أرضيات SPC",
        "complaint": "وصلت الكراتين مكسورة والألواح مخدوشة، أنا غير راض",
        "return_refund": "أريد إرجاع البضاعة واسترداد أموالي",
        "human_agent": "أريد التحدث مع موظف حقيقي",
        "documents": "أرسل لي الفاتورة التجارية وقائمة التعبئة من فضلك",
        "product_info": "ما هي الألوان والسماكات المتوفرة لأرضيات الفينيل؟",
        "technical_support": "كيف أركب الأرضيات فوق البلاط القديم؟",
    },
}
CASES = [(lang, intent, text) for lang, by_intent in MESSAGES.items()
         for intent, text in by_intent.items()]

OUT_OF_SCOPE = [
    ("en", "What's the weather going to be like in Berlin tomorrow?"),
    ("en", "Can you tell me a joke about cats and dogs?"),
    ("en", "Did Arsenal win their football game on Sunday?"),
    ("en", "How do I make a lasagna?"),
    ("es", "¿Quién ganó el partido de fútbol anoche?"),
    ("ru", "Какая погода будет в Казани в выходные?"),
    ("zh", "给我讲个笑话吧"),
    ("fr", "Tu connais une bonne recette de quiche lorraine ?"),
    ("de", "Wie wird das Wetter morgen in München?"),
    ("pt", "Quem ganhou o jogo de futebol ontem?"),
    ("ar", "كيف سيكون الطقس غدا في دبي؟"),
]
URGENT = ["urgent!!", "紧急", "срочно", "urgente", "dringend", "عاجل",
          "URGENT: where is PO-24117", "это срочно, где заказ?", "请尽快发货，很急"]
CALM = ["Where is my order?", "Thanks, all good", "请问地板有哪些颜色？",
        "Подскажите цену на ламинат", "Hola, ¿qué tal?", "Guten Tag", "مرحبا"]


@pytest.fixture(scope="module")
def understander() -> Understander:
    return shared_understander(LANGS, "lingua")


def data_phrases() -> tuple[set[str], str]:
    """Every example and keyword of the intent data (normalised), and the raw file text."""
    phrases: set[str] = set()
    raw = ""
    for lang in LANGS:
        path = DATA_DIR / f"{lang}.yaml"
        raw += path.read_text(encoding="utf-8").casefold()
        for spec in (read_yaml(path) or {}).values():
            for item in [*(spec or {}).get("examples", []), *(spec or {}).get("keywords", [])]:
                phrases.add(normalise(str(item)))
    return phrases, raw


def test_messages_are_not_copied_from_the_intent_data() -> None:
    phrases, raw = data_phrases()
    written = [text for _, _, text in CASES] + [text for _, text in OUT_OF_SCOPE]
    copied = [t for t in written if normalise(t) in phrases or t.casefold() in raw]
    assert copied == []


def test_every_language_and_intent_is_covered() -> None:
    assert set(MESSAGES) == set(LANGS)
    assert all(set(by_intent) == set(REAL_INTENTS) for by_intent in MESSAGES.values())


# --- intents ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lang, intent, text", CASES, ids=[f"{l}-{i}" for l, i, _ in CASES])
def test_intent_in_every_language(understander: Understander, lang: str, intent: str,
                                  text: str) -> None:
    result = understander.understand(text)
    assert (result.intent, result.lang) == (intent, lang)
    assert 0.0 <= result.confidence <= 1.0


@pytest.mark.parametrize("lang, text", OUT_OF_SCOPE)
def test_out_of_scope_messages_are_unknown(understander: Understander, lang: str,
                                           text: str) -> None:
    result = understander.understand(text)
    assert result.intent == "unknown"
    assert result.lang == lang
    assert 0.0 <= result.confidence <= 1.0


@pytest.mark.parametrize("text, intent", [
    ("Hello, where is my order?", "order_status"),
    ("Hola, ¿dónde está mi pedido?", "order_status"),
    ("你好，请问SPC地板怎么卖？", "quote_request"),
    ("Guten Tag, ich möchte mit einem Mitarbeiter sprechen", "human_agent"),
])
def test_a_greeting_does_not_hide_the_question(understander: Understander, text: str,
                                               intent: str) -> None:
    assert understander.understand(text).intent == intent


@pytest.mark.parametrize("text, intent", [
    ("PO-24117?", "order_status"),
    ("PI please", "documents"),
    ("1500 m2 FOB", "quote_request"),
])
def test_entities_alone_decide_a_bare_message(understander: Understander, text: str,
                                              intent: str) -> None:
    assert understander.understand(text).intent == intent


def test_the_conversation_language_helps_a_message_without_evidence(
        understander: Understander) -> None:
    result = understander.understand("PO-24117", lang_hint="ru")
    assert result.lang is None  # the hint is not reported as detected
    assert result.intent == "order_status"
    assert understander.understand("PO-24117", lang_hint="xx").intent == "order_status"


# --- degenerate input ------------------------------------------------------------------------

HUGE = "Where is my order PO-24117? I have been waiting for three weeks now. " * 1500


@pytest.mark.parametrize("text", ["", " ", " \n\t ", "👍", "👍🎉🙂🙏", "?!...", "\u200b",
                                  "x" * 100_000, HUGE],
                         ids=["empty", "space", "whitespace", "thumbs", "emoji", "punctuation",
                              "zero-width", "100k-x", "100k-words"])
def test_degenerate_input_gets_a_clear_understanding(understander: Understander,
                                                     text: str) -> None:
    result = understander.understand(text)
    assert isinstance(result, Understanding)
    assert result.intent in INTENTS
    assert 0.0 <= result.confidence <= 1.0
    shape = result.as_dict()
    assert set(shape) == CONTRACT_KEYS
    assert shape["text"] == text
    assert isinstance(shape["urgent"], bool) and isinstance(shape["entities"], dict)
    json.dumps(shape, ensure_ascii=False)  # the classify contract is JSON


@pytest.mark.parametrize("text", ["", " \n\t ", "👍🎉🙂🙏", "?!..."])
def test_text_without_words_is_unknown(understander: Understander, text: str) -> None:
    result = understander.understand(text)
    assert (result.intent, result.lang, result.urgent) == ("unknown", None, False)


def test_a_long_message_is_understood_from_its_beginning(understander: Understander) -> None:
    assert len(HUGE) > 100_000
    result = understander.understand(HUGE)
    assert (result.intent, result.lang) == ("order_status", "en")
    assert result.entities.get("order_numbers") == ["PO-24117"]


# --- urgency ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", URGENT)
def test_urgent_words_mark_a_message_urgent(understander: Understander, text: str) -> None:
    result = understander.understand(text)
    assert result.urgent is True
    assert result.as_dict()["urgent"] is True


@pytest.mark.parametrize("text", CALM)
def test_a_calm_message_is_not_urgent(understander: Understander, text: str) -> None:
    assert understander.understand(text).urgent is False


async def test_an_urgent_message_raises_the_conversation_priority(service: Service,
                                                                  chat: Any) -> None:
    await chat.say("Здравствуйте")
    await chat.say("срочно! где мой заказ PO-24117?")
    async with service.db.sessions() as session:
        priorities = (await session.execute(select(Conversation.priority))).scalars().all()
    assert priorities == ["urgent"]


# --- clarification through the pipeline ------------------------------------------------------

async def test_clarify_then_offer_a_human_then_start_again(chat: Any, service: Service) -> None:
    templates = service.knowledge.templates
    replies = await chat.say("¿Quién ganó el partido de fútbol anoche?")
    assert [(r.intent, r.kind, r.lang) for r in replies] == [("unknown", "clarify", "es")]
    assert replies[0].text == templates.render("clarify", "es")
    payloads = [b["payload"] for b in replies[0].buttons]
    assert "human_agent" in payloads and {"order_status", "quote_request"} <= set(payloads)

    replies = await chat.say("¿Me cuentas un chiste de gatos?")
    assert [(r.intent, r.kind) for r in replies] == [("unknown", "clarify")]
    assert replies[0].text == templates.render("clarify_human", "es")
    assert replies[0].buttons[0]["payload"] == "human_agent"

    replies = await chat.say("Hola, buenas tardes")
    assert replies[0].intent == "greeting"
    replies = await chat.say("¿Qué tiempo hará mañana en Sevilla?")
    assert replies[0].text == templates.render("clarify", "es")  # the count restarted


async def test_two_misses_in_another_conversation_are_counted_separately(
        make_chat: Any, service: Service) -> None:
    first, second = make_chat("tg-miss-1"), make_chat("tg-miss-2")
    await first.say("Tell me a joke about penguins and polar bears")
    replies = await second.say("Who will win the next Formula 1 race?")
    assert replies[0].text == service.knowledge.templates.render("clarify", "en")


# --- supportbot classify ---------------------------------------------------------------------

def test_classify_command_prints_one_json_line_per_input_line(tmp_path: Path) -> None:
    lines = [MESSAGES[lang]["order_status"] for lang in LANGS]
    result = CliRunner().invoke(main, ["classify"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    rows = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert len(rows) == len(LANGS)
    assert [row["lang"] for row in rows] == list(LANGS)
    assert [row["text"] for row in rows] == lines
    assert all(set(row) == CONTRACT_KEYS for row in rows)
    assert [row["intent"] for row in rows] == ["order_status"] * len(LANGS)


@pytest.mark.parametrize("text", ["¿Cuál es la forma de pago?", "Qual é a forma de pagamento?"])
def test_a_payment_terms_question_is_not_about_documents(understander: Understander,
                                                         text: str) -> None:
    assert understander.understand(text).intent != "documents"
