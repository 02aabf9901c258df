"""The tone guard: an agent's reply with a forbidden phrase (knowledge/phrases, every
language) is held back, and the agent gets the phrase and a polite alternative.

Matching is tolerant, because people do not type a list's wording exactly: a phrase is
found when nearly all its words appear in the reply in any order (each allowing a typo,
by rapidfuzz), or, for Chinese, when most of its character pairs appear. A single
short word ("idiot") must appear as a whole word, so innocent words that contain it pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from bot.knowledge import ForbiddenPhrase, Phrases
from intents.text import has_cjk, normalise

WORD_MATCH = 85  # rapidfuzz ratio for one word of a phrase to count as present
PHRASE_SHARE = 0.75  # share of a phrase's words that must be present ("we're" vs "we are")
CJK_SHARE = 0.7  # share of a Chinese phrase's character pairs that must be present


@dataclass(frozen=True)
class Hit:
    lang: str
    phrase: str
    alternative: str


def _pair_share(phrase: str, text: str) -> float:
    """How much of a Chinese phrase's character pairs occur in the text: word order and
    small additions ("好几遍" for "几遍") leave most pairs in place."""
    pairs = {phrase[i:i + 2] for i in range(len(phrase) - 1)}
    return sum(1 for pair in pairs if pair in text) / len(pairs)


class ToneGuard:
    def __init__(self, phrases: dict[str, Phrases]) -> None:
        self._entries: list[tuple[str, ForbiddenPhrase, list[str], str]] = []
        for lang, table in phrases.items():
            for entry in table.forbidden:
                folded = normalise(entry.phrase, mask_numbers=False)
                if folded:
                    self._entries.append((lang, entry, folded.split(), folded.replace(" ", "")))

    def check(self, text: str) -> Hit | None:
        folded = normalise(text, mask_numbers=False)
        words = folded.split()
        compact = folded.replace(" ", "")
        if not words:
            return None
        for lang, entry, phrase_words, phrase_compact in self._entries:
            if has_cjk(phrase_compact):
                found = phrase_compact in compact or (
                    len(phrase_compact) >= 4 and _pair_share(phrase_compact, compact) >= CJK_SHARE)
            elif len(phrase_words) == 1:
                found = phrase_words[0] in words
            else:
                present = sum(1 for w in phrase_words if w in words or (len(w) >= 4 and
                              process.extractOne(w, words, scorer=fuzz.ratio,
                                                 score_cutoff=WORD_MATCH) is not None))
                found = present >= max(2, math.ceil(PHRASE_SHARE * len(phrase_words)))
            if found:
                return Hit(lang, entry.phrase, entry.alternative)
        return None
