"""Understanding a message: language, intent, entities and urgency.

This is the keyword-level classifier: greetings and goodbyes are matched against the
lexicons in ``intents/data/<lang>.yaml``; everything else is ``unknown``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from intents.language import LanguageDetector, strip_accents

DATA_DIR = Path(__file__).parent / "data"
INTENTS = (
    "greeting", "goodbye", "order_status", "quote_request", "complaint", "return_refund",
    "human_agent", "documents", "product_info", "technical_support", "unknown",
)
MAX_CLASSIFIED_CHARS = 2000  # longer text is classified on its beginning
_PUNCTUATION = re.compile(r"[\s\W_]+", re.UNICODE)
_ORDER_NUMBER = re.compile(r"\b(?:PO|SO|ORD)[-\s#]?\d{3,8}\b", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")


@dataclass
class Understanding:
    text: str
    lang: str | None
    intent: str
    confidence: float
    entities: dict[str, Any] = field(default_factory=dict)
    urgent: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "lang": self.lang, "intent": self.intent,
                "confidence": round(self.confidence, 3), "entities": self.entities,
                "urgent": self.urgent}


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return _PUNCTUATION.sub(" ", strip_accents(text)).strip()


class IntentData:
    """Keyword lexicons per language and intent, loaded once."""

    def __init__(self, by_language: dict[str, dict[str, list[str]]]):
        self.by_language = by_language

    @classmethod
    def load(cls, languages: list[str], directory: Path = DATA_DIR) -> IntentData:
        by_language: dict[str, dict[str, list[str]]] = {}
        for lang in languages:
            path = directory / f"{lang}.yaml"
            with path.open(encoding="utf-8") as handle:
                raw = yaml.safe_load(handle) or {}
            by_language[lang] = {
                intent: [normalise(k) for k in (spec or {}).get("keywords", []) if normalise(k)]
                for intent, spec in raw.items()
            }
        return cls(by_language)

    def words(self) -> dict[str, set[str]]:
        return {lang: {k for keys in intents.values() for k in keys}
                for lang, intents in self.by_language.items()}


class Understander:
    def __init__(self, languages: list[str], data: IntentData | None = None) -> None:
        self.languages = languages
        self.data = data or IntentData.load(languages)
        self.detector = LanguageDetector(languages, self.data.words())

    def understand(self, text: str) -> Understanding:
        sample = text[:MAX_CLASSIFIED_CHARS]
        lang = self.detector.detect(sample)
        normalised = normalise(sample)
        intent, confidence = self._keyword_intent(normalised, lang)
        return Understanding(text=text, lang=lang, intent=intent, confidence=confidence,
                             entities=extract_entities(sample))

    def _keyword_intent(self, normalised: str, lang: str | None) -> tuple[str, float]:
        if not normalised:
            return "unknown", 0.0
        words = normalised.split()
        languages = [lang] if lang else self.languages
        best: tuple[str, float] = ("unknown", 0.0)
        for language in languages:
            for intent, keywords in self.data.by_language.get(language, {}).items():
                for keyword in keywords:
                    if normalised == keyword:
                        return intent, 0.95
                    if _contains(normalised, words, keyword):
                        # A keyword in a short message is a strong hint; in a long one, weak.
                        score = 0.85 if len(words) <= 4 else 0.5
                        if score > best[1]:
                            best = (intent, score)
        return best if best[1] >= 0.5 else ("unknown", best[1])


def _contains(normalised: str, words: list[str], keyword: str) -> bool:
    if " " in keyword:
        return f" {keyword} " in f" {normalised} "
    if keyword.isascii():
        return keyword in words
    return keyword in normalised  # CJK and other scripts are written without spaces


def extract_entities(text: str) -> dict[str, Any]:
    entities: dict[str, Any] = {}
    orders = [re.sub(r"[\s#]", "-", m.group(0).upper()).replace("--", "-")
              for m in _ORDER_NUMBER.finditer(text)]
    if orders:
        entities["order_numbers"] = orders
    emails = _EMAIL.findall(text)
    if emails:
        entities["emails"] = emails
    return entities
