"""Complaint categories by keyword, per language (``intents/data/complaint_categories.yaml``)."""

from __future__ import annotations

import functools
from pathlib import Path

from intents.datafiles import read_yaml
from intents.keywords import KeywordMatcher
from intents.text import normalise

CATEGORIES = ("transit_damage", "short_or_wrong_shipment", "delay", "document_error",
              "service_attitude", "quality_defect")
OTHER = "other"


class ComplaintCategorizer:
    @classmethod
    @functools.cache
    def shared(cls) -> ComplaintCategorizer:
        return cls()

    def __init__(self, path: Path = Path(__file__).parent / "data" / "complaint_categories.yaml"):
        raw = read_yaml(path) or {}
        unknown = set(raw) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"{path}: unknown complaint categories {sorted(unknown)}")
        self.patterns: list[tuple[str, dict[str, KeywordMatcher]]] = []
        for category in raw:
            matchers = {lang: KeywordMatcher({category: words}, lang == "zh")
                        for lang, words in (raw[category] or {}).items()}
            self.patterns.append((category, matchers))

    def categorize(self, text: str, lang: str | None) -> str:
        folded = normalise(text)
        langs = [lang, "en"] if lang and lang != "en" else ["en"] if lang else None
        for category, by_language in self.patterns:
            for code, pattern in by_language.items():
                if (langs is None or code in langs) and pattern.matches(folded):
                    return category
        return OTHER
