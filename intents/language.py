"""Language detection for short chat messages, behind one interface with two backends.

Script evidence comes first (Han without kana is Chinese, Cyrillic Russian, Arabic
Arabic). Latin-script text is judged on its words: trade codes ("PO-118", "FOB", "SPC",
"40HQ", "m2") are no evidence of a language; the intent lexicons' words are; then the
backend (lingua by default, langdetect as the alternative). Text with too little evidence
("ok", "PO-118", "👍", digits) gets no language, and a guess is marked ``strong`` only when
the evidence would justify switching a conversation's language.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from intents.datafiles import read_yaml
from intents.keywords import KeywordMatcher
from intents.text import normalise

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_ARABIC = re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]")
_LATIN_WORD = re.compile(r"[A-Za-zÀ-ÖØ-öø-ÿĀ-ž]+(?:['’-][A-Za-zÀ-ÖØ-öø-ÿĀ-ž]+)*")
# Words shared by every language in this trade: they say nothing about the language.
_TRADE_TOKEN = re.compile(
    r"^(?:po|so|spc|wpc|pvc|lvt|lam|fob|cif|cfr|ddp|exw|dap|fca|cpt|cip|gp|hq|hc|mm|m|sqm|"
    r"kg|pcs|pi|ci|bl|coa|sgs|bv|id|ok|okay|okey|thx|ty|pls|plz|lol|hmm|ah|oh|eh|ha|haha|"
    r"iphone|email|e|mail|usd|eur|rmb|cny)$", re.IGNORECASE)
_NOT_LANGUAGE = re.compile(r"\S+@\S+|https?://\S+|www\.\S+|\b[\w-]+\.(?:com|net|org|example)\b")
MIN_LATIN_LETTERS = 3
CLOSE_CALL = 0.15  # backend confidences this close are settled by function words
MARKERS_FILE = Path(__file__).parent / "data" / "language_markers.yaml"
NON_LATIN = ("zh", "ru", "ar")  # recognised by their script, never by Latin words
STRONG_LATIN_LETTERS = 12
LINGUA_CODES = {"en": "ENGLISH", "zh": "CHINESE", "ru": "RUSSIAN", "es": "SPANISH",
                "fr": "FRENCH", "de": "GERMAN", "pt": "PORTUGUESE", "ar": "ARABIC"}


@dataclass(frozen=True)
class LanguageGuess:
    lang: str | None
    confidence: float = 0.0
    strong: bool = False


NO_LANGUAGE = LanguageGuess(None)


class LanguageBackend(Protocol):
    name: str

    def confidences(self, text: str) -> list[tuple[str, float]]:
        """(language, confidence) pairs, best first; empty when the backend cannot tell."""
        ...


class LinguaBackend:
    """lingua, restricted to the supported languages; models are loaded once, up front."""

    name = "lingua"

    def __init__(self, supported: tuple[str, ...]) -> None:
        from lingua import Language, LanguageDetectorBuilder

        languages = [getattr(Language, LINGUA_CODES[code]) for code in supported]
        self._codes = {getattr(Language, LINGUA_CODES[code]): code for code in supported}
        builder = LanguageDetectorBuilder.from_languages(*languages) if len(languages) > 1 \
            else LanguageDetectorBuilder.from_languages(*languages, Language.ENGLISH)
        self._detector = builder.with_preloaded_language_models().build()

    def confidences(self, text: str) -> list[tuple[str, float]]:
        values = self._detector.compute_language_confidence_values(text)
        return [(self._codes[v.language], v.value) for v in values if v.language in self._codes]


class LangdetectBackend:
    """langdetect, seeded so that the same text always gets the same answer."""

    name = "langdetect"
    _codes: ClassVar[dict[str, str]] = {"zh-cn": "zh", "zh-tw": "zh"}

    def __init__(self, supported: tuple[str, ...]) -> None:
        from langdetect import DetectorFactory

        DetectorFactory.seed = 0
        self.supported = supported

    def confidences(self, text: str) -> list[tuple[str, float]]:
        from langdetect import detect_langs
        from langdetect.lang_detect_exception import LangDetectException

        try:
            found = detect_langs(text)
        except LangDetectException:
            return []
        pairs = [(self._codes.get(c.lang, c.lang), c.prob) for c in found]
        return [(code, prob) for code, prob in pairs if code in self.supported]


BACKENDS: dict[str, Callable[[tuple[str, ...]], LanguageBackend]] = {
    "lingua": LinguaBackend, "langdetect": LangdetectBackend}


class LanguageDetector:
    def __init__(self, supported: list[str] | tuple[str, ...], backend: str = "lingua",
                 lexicon: dict[str, KeywordMatcher] | None = None) -> None:
        self.supported = tuple(supported)
        self.backend: LanguageBackend = BACKENDS[backend](self.supported)
        markers = read_yaml(MARKERS_FILE) or {}
        self._markers = {lang: {normalise(w) for w in words} for lang, words in markers.items()}
        self._lexicon = {lang: matcher for lang, matcher in (lexicon or {}).items()
                         if lang in self.supported}

    def detect(self, text: str) -> LanguageGuess:
        text = _NOT_LANGUAGE.sub(" ", text)  # e-mail addresses and links are no evidence
        letters = sum(1 for c in text if c.isalpha())
        if not letters:
            return NO_LANGUAGE
        han = 0 if _KANA.search(text) else len(_HAN.findall(text))
        scripts = {"zh": han * 3, "ru": len(_CYRILLIC.findall(text)),
                   "ar": len(_ARABIC.findall(text))}
        words = [w for w in _LATIN_WORD.findall(text) if not _TRADE_TOKEN.match(w)]
        latin = sum(len(w) for w in words)
        script_lang, script_weight = max(scripts.items(), key=lambda item: item[1])
        if script_weight and script_weight >= latin:
            if script_lang not in self.supported:
                return NO_LANGUAGE
            raw_count = script_weight // 3 if script_lang == "zh" else script_weight
            return LanguageGuess(script_lang, 1.0, strong=raw_count >= 2)
        if latin < MIN_LATIN_LETTERS:
            return NO_LANGUAGE
        return self._latin(" ".join(words), latin)

    def _latin(self, text: str, latin_letters: int) -> LanguageGuess:
        folded = normalise(text)
        votes = {lang: len(matcher.hits(folded)) for lang, matcher in self._lexicon.items()
                 if lang not in NON_LATIN}
        best_vote = max(votes.values(), default=0)
        voted = [lang for lang, n in votes.items() if n == best_vote and n > 0]
        # Words of the lexicons decide short messages ("hola", "danke"), and sentences whose
        # words only one language knows: no need to ask the backend. Otherwise, in a
        # sentence, its judgement of the whole text outweighs one keyword.
        runner_up = sorted(votes.values(), reverse=True)[1] if len(votes) > 1 else 0
        if len(voted) == 1 and (latin_letters < STRONG_LATIN_LETTERS
                                or (best_vote >= 2 and runner_up == 0)):
            return LanguageGuess(voted[0], 0.8, strong=True)
        candidates = self.backend.confidences(text)
        backend_best, backend_conf = candidates[0] if candidates else (None, 0.0)
        if len(voted) == 1 and (backend_best == voted[0] or backend_conf < 0.5):
            return LanguageGuess(voted[0], max(backend_conf, 0.8), strong=True)
        if len(voted) > 1:
            # Several languages know the words ("hello" is French chat too): the backend
            # decides among them, English first on a tie as the trade's common language.
            confidence = dict(candidates)
            chosen = max(voted, key=lambda lang: (confidence.get(lang, 0.0), lang == "en"))
            return LanguageGuess(chosen, confidence.get(chosen, 0.0),
                                 strong=latin_letters >= STRONG_LATIN_LETTERS)
        if backend_best is None or backend_best in NON_LATIN:
            return NO_LANGUAGE
        if len(candidates) > 1 and backend_conf - candidates[1][1] < CLOSE_CALL:
            # A close call between two languages: their own function words decide.
            words = set(folded.split())
            second = candidates[1][0]
            mine = len(words & self._markers.get(backend_best, set()))
            theirs = len(words & self._markers.get(second, set()))
            if theirs > mine:
                backend_best, backend_conf = second, candidates[1][1]
        strong = latin_letters >= STRONG_LATIN_LETTERS and backend_conf >= 0.6
        return LanguageGuess(backend_best, backend_conf, strong=strong)
