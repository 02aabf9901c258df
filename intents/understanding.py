"""Understanding a message: language, intent, entities and urgency, in one call."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from intents.classifier import DATA_DIR, INTENTS, IntentClassifier
from intents.datafiles import read_yaml
from intents.entities import EntityExtractor
from intents.keywords import KeywordMatcher
from intents.language import LanguageDetector, LanguageGuess
from intents.text import normalise

__all__ = ["INTENTS", "Understander", "Understanding"]
MAX_CLASSIFIED_CHARS = 2000  # longer text is understood from its beginning
CANCEL_MAX_WORDS = 4  # "cancel my order and refund me" is a request, not leaving a flow


@dataclass
class Understanding:
    text: str
    lang: str | None
    intent: str
    confidence: float
    entities: dict[str, Any] = field(default_factory=dict)
    urgent: bool = False
    lang_strong: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The shape of ``supportbot classify`` (contract)."""
        return {"text": self.text, "lang": self.lang, "intent": self.intent,
                "confidence": round(self.confidence, 3), "entities": self.entities,
                "urgent": self.urgent}


@functools.lru_cache(maxsize=4)
def shared_understander(languages: tuple[str, ...], detector: str = "lingua") -> Understander:
    """One Understander per process and configuration: its models take seconds to load and
    never change afterwards, so every service and command in the process shares it."""
    return Understander(list(languages), detector)


class Understander:
    """Loads every model once; ``understand`` is then cheap and never raises on text."""

    def __init__(self, languages: list[str], detector: str = "lingua") -> None:
        self.languages = list(languages)
        self.classifier = IntentClassifier(self.languages)
        self.detector = LanguageDetector(self.languages, detector,
                                         self.classifier.keyword_lexicon())
        self.entities = EntityExtractor()
        commands = read_yaml(DATA_DIR / "commands.yaml") or {}
        self._cancel = {lang: KeywordMatcher({"cancel": words}, lang == "zh")
                        for lang, words in (commands.get("cancel") or {}).items()}

    def is_cancel(self, text: str, lang: str | None, *, whole: bool = False) -> bool:
        """A short message that asks to leave the current flow, in its language or English.

        ``whole``: the message is nothing but the cancel word ("cancel", "отмена"), as
        opposed to a request that contains it ("cancel my order")."""
        folded = normalise(text)
        if not folded or len(folded.split()) > CANCEL_MAX_WORDS:
            return False
        langs = {lang, "en"} if lang else set(self._cancel)
        for code in langs & set(self._cancel):
            found = self._cancel[code].hits(folded).get("cancel", set())
            if found and (not whole or any(word.rstrip("*") == folded or
                                           (folded.startswith(word.rstrip("*"))
                                           and len(folded.split()) == len(word.split()))
                                           for word in found)):
                return True
        return False

    def understand(self, text: str, lang_hint: str | None = None) -> Understanding:
        """``lang_hint`` (the conversation's language) is used when the text shows none."""
        sample = text[:MAX_CLASSIFIED_CHARS]
        guess: LanguageGuess = self.detector.detect(sample)
        entities = self.entities.extract(sample)
        folded = normalise(sample)
        lang = guess.lang or (lang_hint if lang_hint in self.languages else None)
        scored = self.classifier.classify(folded, lang, entities)
        urgent = self.classifier.is_urgent(folded, self.classifier.candidate_languages(lang, folded))
        return Understanding(text=text, lang=guess.lang, intent=scored.intent,
                             confidence=scored.confidence, entities=entities, urgent=urgent,
                             lang_strong=guess.strong)
