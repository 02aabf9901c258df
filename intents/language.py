"""Language detection for short chat messages.

Script evidence comes first (Han without kana is Chinese, Cyrillic Russian, Arabic Arabic);
Latin-script text is identified by the words of the intent lexicons, then by langdetect.
Text with too little evidence ("ok", "PO-118", "👍", digits) gets no language, so the
conversation keeps the one it has.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from langdetect import DetectorFactory, detect_langs
from langdetect.lang_detect_exception import LangDetectException

DetectorFactory.seed = 0  # langdetect is random unless seeded

_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_ARABIC = re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_LANGDETECT_CODES = {"zh-cn": "zh", "zh-tw": "zh"}
MIN_LATIN_LETTERS = 8  # below this, langdetect guesses; a lexicon hit is needed instead


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


class LanguageDetector:
    """Detects one of the supported languages, or None when the evidence is too weak."""

    def __init__(self, supported: Iterable[str], lexicon: dict[str, set[str]] | None = None):
        self.supported = tuple(supported)
        # word -> languages that use it, for short Latin-script messages ("hola", "danke")
        self._lexicon: dict[str, set[str]] = {}
        for lang, words in (lexicon or {}).items():
            for word in words:
                self._lexicon.setdefault(strip_accents(word.lower()), set()).add(lang)

    def detect(self, text: str) -> str | None:
        letters = _LETTER.findall(text)
        if not letters:
            return None
        han, cyrillic, arabic = (len(p.findall(text)) for p in (_HAN, _CYRILLIC, _ARABIC))
        scripted = {"zh": han if not _KANA.search(text) else 0, "ru": cyrillic, "ar": arabic}
        lang, count = max(scripted.items(), key=lambda item: item[1])
        if count and count * 2 >= len(letters) - count:
            return lang if lang in self.supported else None
        if count and len(letters) - count < MIN_LATIN_LETTERS:
            return lang if lang in self.supported else None
        return self._latin(text)

    def _latin(self, text: str) -> str | None:
        normalised = strip_accents(text.lower())
        votes: dict[str, int] = {}
        for phrase, langs in self._lexicon.items():
            if " " in phrase and phrase in normalised or phrase in _WORD.findall(normalised):
                for lang in langs:
                    votes[lang] = votes.get(lang, 0) + 1
        if votes:
            best = max(votes.values())
            winners = [lang for lang, n in votes.items() if n == best and lang in self.supported]
            if len(winners) == 1:
                return winners[0]
        latin_letters = sum(1 for c in text if c.isalpha() and c.isascii() or c in "äöüßéèêàçñõãáíóú")
        if latin_letters < MIN_LATIN_LETTERS:
            return None
        try:
            candidates = detect_langs(text)
        except LangDetectException:
            return None
        for candidate in candidates:
            code = _LANGDETECT_CODES.get(candidate.lang, candidate.lang)
            if code in self.supported and candidate.prob >= 0.7:
                return code
        return None
