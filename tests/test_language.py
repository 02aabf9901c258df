"""Language detection (SPEC §2 "Language"): the detector on its own, both backends behind one
interface, and the conversation's reply language through the whole pipeline."""

from __future__ import annotations

from typing import Any

import pytest

from bot.config import ALL_LANGUAGES
from bot.db.models import Contact, Customer
from bot.service import Service
from intents.language import LanguageDetector, LanguageGuess
from intents.understanding import Understander, shared_understander

LANGS = tuple(ALL_LANGUAGES)

# One ordinary, unambiguous customer sentence per language (written for these tests).
SENTENCES = {
    "en": "Could you please tell me when the shipment will leave the port?",
    "zh": "请问这批货什么时候能从港口发出？",
    "ru": "Подскажите, пожалуйста, когда груз выйдет из порта?",
    "es": "¿Podría decirme cuándo saldrá el envío del puerto?",
    "fr": "Pourriez-vous me dire quand l'expédition quittera le port ?",
    "de": "Können Sie mir bitte sagen, wann die Sendung den Hafen verlässt?",
    "pt": "Você poderia me dizer quando a remessa vai sair do porto?",
    "ar": "هل يمكنك أن تخبرني متى ستغادر الشحنة الميناء؟",
}
TWO_WORDS = {
    "es": "muchas gracias", "pt": "bom dia", "de": "guten Abend", "fr": "merci beaucoup",
    "ru": "спасибо большое", "zh": "谢谢您", "ar": "شكرا جزيلا", "en": "thank you",
}
NO_EVIDENCE = ["ok", "OK!", "👍", "PO-118", "77120", "?", "SPC 5mm", "2x40HQ", "", "   ",
               "FOB", "40HQ x2 PO-5512 m2", "Ok thx"]
WITH_KANA = ["東京の天気はどうですか", "漢字とひらがなとカタカナ", "注文の状況を教えてください"]


@pytest.fixture(scope="module")
def understander() -> Understander:
    return shared_understander(LANGS, "lingua")


@pytest.fixture(scope="module", params=["lingua", "langdetect"])
def detector(request: pytest.FixtureRequest) -> LanguageDetector:
    """A bare detector (no intent lexicon), one per backend: the same interface for both."""
    return LanguageDetector(LANGS, request.param)


# --- the detector ----------------------------------------------------------------------------

@pytest.mark.parametrize("lang", LANGS)
def test_a_sentence_in_each_language_is_detected_strongly(understander: Understander,
                                                          lang: str) -> None:
    guess = understander.detector.detect(SENTENCES[lang])
    assert (guess.lang, guess.strong) == (lang, True)
    assert 0.0 < guess.confidence <= 1.0


@pytest.mark.parametrize("lang", LANGS)
def test_a_two_word_message_in_each_language_is_detected(understander: Understander,
                                                         lang: str) -> None:
    assert understander.understand(TWO_WORDS[lang]).lang == lang


@pytest.mark.parametrize("lang", [code for code in LANGS if code != "en"])
def test_a_two_word_message_other_than_english_is_strong_enough_to_switch(
        understander: Understander, lang: str) -> None:
    # "muchas gracias" in an English conversation is a customer who writes Spanish.
    assert understander.understand(TWO_WORDS[lang]).lang_strong is True


@pytest.mark.parametrize("text", NO_EVIDENCE)
def test_messages_without_language_evidence_get_no_language(understander: Understander,
                                                            text: str) -> None:
    result = understander.understand(text)
    assert (result.lang, result.lang_strong) == (None, False)


@pytest.mark.parametrize("text", NO_EVIDENCE)
def test_both_backends_give_no_language_without_evidence(detector: LanguageDetector,
                                                         text: str) -> None:
    assert detector.detect(text) == LanguageGuess(None, 0.0, False)


@pytest.mark.parametrize("text", WITH_KANA)
def test_han_text_with_kana_is_not_chinese(detector: LanguageDetector,
                                           understander: Understander, text: str) -> None:
    assert detector.detect(text).lang != "zh"
    assert understander.understand(text).lang != "zh"


def test_han_text_without_kana_is_chinese(detector: LanguageDetector) -> None:
    guess = detector.detect("东京的天气怎么样")
    assert (guess.lang, guess.strong) == ("zh", True)


@pytest.mark.parametrize("text, lang", [
    ("PO-24117 где?", "ru"),
    ("iPhone 15 价格", "zh"),
    ("SPC 5mm 多少钱", "zh"),
    ("FOB Jeddah كم السعر", "ar"),
])
def test_mixed_messages_take_the_language_of_their_words(detector: LanguageDetector,
                                                         understander: Understander,
                                                         text: str, lang: str) -> None:
    assert detector.detect(text).lang == lang
    assert understander.understand(text).lang == lang


def test_a_single_foreign_character_is_not_strong_evidence(detector: LanguageDetector) -> None:
    assert detector.detect("好") == LanguageGuess("zh", 1.0, strong=False)
    assert detector.detect("да").strong is True
    assert detector.detect("я").strong is False


@pytest.mark.parametrize("lang", LANGS)
def test_both_backends_detect_sentences_behind_one_interface(detector: LanguageDetector,
                                                             lang: str) -> None:
    guess = detector.detect(SENTENCES[lang])
    assert isinstance(guess, LanguageGuess)
    assert guess.lang == lang and guess.strong
    assert 0.0 < guess.confidence <= 1.0
    candidates = detector.backend.confidences(SENTENCES[lang])
    assert all(code in LANGS and 0.0 <= value <= 1.0 for code, value in candidates)


def test_backends_report_their_names() -> None:
    assert LanguageDetector(LANGS, "lingua").backend.name == "lingua"
    assert LanguageDetector(LANGS, "langdetect").backend.name == "langdetect"
    with pytest.raises(KeyError):
        LanguageDetector(LANGS, "no-such-backend")


def test_langdetect_is_deterministic() -> None:
    texts = [*SENTENCES.values(), *TWO_WORDS.values(), "bom dia", "merci", "hola amigo",
             "ciao", "ja"]
    first = LanguageDetector(LANGS, "langdetect")
    answers = [first.detect(text) for text in texts]
    assert [first.detect(text) for text in texts] == answers  # same detector, again
    second = LanguageDetector(LANGS, "langdetect")
    assert [second.detect(text) for text in texts] == answers  # a new detector
    again = [first.backend.confidences(text) for text in texts]
    assert [first.backend.confidences(text) for text in texts] == again


def test_lingua_gives_the_same_language_every_time() -> None:
    # lingua's confidences may differ in the last float digits from run to run; the
    # decision (language and strength) must not.
    detector = LanguageDetector(LANGS, "lingua")
    for text in [*SENTENCES.values(), *TWO_WORDS.values()]:
        decisions = {(g.lang, g.strong) for g in (detector.detect(text) for _ in range(5))}
        assert len(decisions) == 1, text


def test_langdetect_understander_works_like_the_default() -> None:
    langdetect = shared_understander(LANGS, "langdetect")
    for lang, text in SENTENCES.items():
        assert langdetect.understand(text).lang == lang
    for text in ("ok", "👍", "PO-118", ""):
        assert langdetect.understand(text).lang is None


def test_a_detector_only_answers_with_its_supported_languages() -> None:
    detector = LanguageDetector(("en", "es"), "lingua")
    assert detector.detect(SENTENCES["ru"]).lang is None  # Cyrillic, but ru is not offered
    assert detector.detect(SENTENCES["es"]).lang == "es"
    assert detector.detect(SENTENCES["de"]).lang in ("en", "es", None)


# --- the conversation's language, through the pipeline ---------------------------------------

async def test_a_russian_conversation_does_not_flip_on_short_messages(chat: Any) -> None:
    replies = await chat.say("Добрый день, подскажите, где мой заказ?")
    assert replies[0].lang == "ru"
    for text in ("ok", "👍", "PO-118", "OK!", "77120", "SPC 5mm"):
        replies = await chat.say(text)
        assert replies and all(r.lang == "ru" for r in replies), text


async def test_strong_evidence_does_switch_the_conversation(chat: Any) -> None:
    await chat.say("Здравствуйте")
    replies = await chat.say("Could you please tell me when the shipment will leave the port?")
    assert replies[0].lang == "en"
    replies = await chat.say("ok")
    assert replies[0].lang == "en"


async def test_lang_command_locks_german(chat: Any, service: Service) -> None:
    replies = await chat.say("/lang de")
    assert [(r.lang, r.text) for r in replies] == [
        ("de", service.knowledge.templates.render("language_set", "de"))]
    for text in (SENTENCES["fr"], SENTENCES["en"], "Здравствуйте", "hello", "👍"):
        replies = await chat.say(text)
        assert replies and all(r.lang == "de" for r in replies), text


async def test_lang_command_with_an_unsupported_code_changes_nothing(chat: Any) -> None:
    await chat.say("Bonjour")
    replies = await chat.say("/lang ja")
    assert replies[0].lang == "fr"
    replies = await chat.say("ok")
    assert replies[0].lang == "fr"


async def test_stored_customer_language_is_used_when_the_message_shows_none(
        service: Service, chat: Any) -> None:
    async with service.db.sessions.begin() as session:
        customer = Customer(ref="C-DE", language="de", created_at=service.clock.now(),
                            updated_at=service.clock.now())
        session.add(customer)
        await session.flush()
        session.add(Contact(channel="telegram", chat=chat.chat, customer_id=customer.id,
                            created_at=service.clock.now()))
    replies = await chat.say("PO-24117?")
    assert replies and all(r.lang == "de" for r in replies)


async def test_a_platform_language_hint_is_used_without_evidence(make_chat: Any) -> None:
    driver = make_chat("tg-hint")
    replies = await driver.say("👍", language_hint="pt-BR")
    assert replies and all(r.lang == "pt" for r in replies)
    replies = await driver.say("PO-118", language_hint="pt-BR")
    assert replies and all(r.lang == "pt" for r in replies)


async def test_the_message_outweighs_the_platform_hint(make_chat: Any) -> None:
    replies = await make_chat("tg-hint-ru").say("Подскажите, где мой заказ?",
                                                language_hint="pt-BR")
    assert replies[0].lang == "ru"


async def test_without_any_evidence_the_default_language_is_used(make_chat: Any,
                                                                 service: Service) -> None:
    replies = await make_chat("tg-nothing").say("👍")
    assert replies[0].lang == service.settings.languages.default == "en"
