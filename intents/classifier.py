"""Intent classification per language: similarity to example messages, keyword cues and
entity cues, with a confidence and an ``unknown`` fallback.

Data: ``intents/data/<lang>.yaml``, per intent a list of ``keywords`` (short cue phrases;
``word*`` matches words starting with ``word``, ``*word*`` any word containing it; in
Chinese every keyword matches as a substring) and ``examples`` (typical messages). The
pseudo-intent ``out_of_scope`` holds messages the bot must not pretend to understand.

Similarity is the cosine of IDF-weighted word sets, so filler words ("please", "на",
"من") weigh little and the informative ones decide; words the examples do not contain
are matched to their nearest known spelling with rapidfuzz, so typos and inflections
still count. An inverted index keeps the cost proportional to the message, not the data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rapidfuzz import fuzz, process

from intents.datafiles import read_yaml
from intents.keywords import KeywordMatcher
from intents.text import has_cjk, normalise

DATA_DIR = Path(__file__).parent / "data"
INTENTS = (
    "greeting", "goodbye", "order_status", "quote_request", "complaint", "return_refund",
    "human_agent", "documents", "product_info", "technical_support", "unknown",
)
OUT_OF_SCOPE = "out_of_scope"
SOCIAL = ("greeting", "goodbye")
SOCIAL_LEAD = 0.1  # how clearly a request must show to outrank the greeting around it
DATA_KEYS = {"keywords", "examples"}
FUZZY_WORD = 84  # rapidfuzz ratio at which an unknown word counts as a known one
NEAREST_CACHE = 50_000
COMMON_SHARE = 0.15  # words in more examples than this carry almost no information


class IntentDataError(Exception):
    pass


@dataclass(frozen=True)
class Thresholds:
    """Below ``minimum`` or within ``margin`` of the runner-up, the intent is unknown."""

    minimum: float = 0.5
    margin: float = 0.02
    keyword_weight: float = 0.6


def tokens(folded: str) -> list[str]:
    """Words of normalised text; Chinese as characters and character pairs."""
    result: list[str] = []
    for word in folded.split():
        if has_cjk(word):
            result += list(word) + [word[i:i + 2] for i in range(len(word) - 1)]
        else:
            result.append(word)
    return result


@dataclass
class LanguageModel:
    """Everything needed to classify messages of one language, prepared once."""

    lang: str
    labels: list[str] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    postings: dict[str, list[int]] = field(default_factory=dict)
    idf: dict[str, float] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)
    keywords: KeywordMatcher | None = None
    urgent: KeywordMatcher | None = None
    _nearest: dict[str, str | None] = field(default_factory=dict)
    common: frozenset[str] = frozenset()

    def index(self, examples: list[tuple[str, str]]) -> None:
        sets = [set(tokens(text)) for text, _ in examples]
        document_frequency: dict[str, int] = defaultdict(int)
        for words in sets:
            for word in words:
                document_frequency[word] += 1
        total = len(sets) or 1
        self.idf = {w: math.log(1 + total / n) for w, n in document_frequency.items()}
        self.vocabulary = [w for w in self.idf if len(w) >= 4 and not has_cjk(w)]
        postings: dict[str, list[int]] = defaultdict(list)
        for position, words in enumerate(sets):
            for word in words:
                postings[word].append(position)
        self.postings = dict(postings)
        self.common = frozenset(w for w, n in document_frequency.items()
                                if n > COMMON_SHARE * total and total > 50)
        self.labels = [intent for _, intent in examples]
        self.norms = [math.sqrt(sum(self.idf[w] ** 2 for w in words)) or 1.0 for words in sets]

    def canonical(self, word: str) -> str | None:
        """The known word this one is, allowing a typo or an inflection ("заказа")."""
        if word in self.idf:
            return word
        if len(word) < 4 or has_cjk(word) or word == "0":
            return None
        if word not in self._nearest:
            if len(self._nearest) >= NEAREST_CACHE:
                self._nearest.clear()  # bounded: unknown words are mostly one-offs
            found = process.extractOne(word, self.vocabulary, scorer=fuzz.ratio,
                                       score_cutoff=FUZZY_WORD)
            self._nearest[word] = found[0] if found else None
        return self._nearest[word]

    def similarities(self, folded: str) -> dict[str, float]:
        """Best cosine similarity to each intent's examples."""
        weights: dict[str, float] = {}
        unknown = max(self.idf.values(), default=1.0)
        query_norm = 0.0
        for word in dict.fromkeys(tokens(folded)):
            known = self.canonical(word)
            weight = self.idf[known] if known else unknown
            query_norm += weight * weight
            if known:
                weights[known] = max(weights.get(known, 0.0), weight)
        if not weights:
            return {}
        dots: dict[int, float] = defaultdict(float)
        for word, weight in weights.items():
            if word in self.common:  # "the", "на", "de": long lists, little signal
                continue
            for position in self.postings.get(word, ()):
                dots[position] += weight * weight
        best: dict[str, float] = {}
        root = math.sqrt(query_norm)
        for position, dot in dots.items():
            similarity = dot / (root * self.norms[position])
            label = self.labels[position]
            if similarity > best.get(label, 0.0):
                best[label] = similarity
        return best


def load_language_model(lang: str, path: Path) -> LanguageModel:
    try:
        raw = read_yaml(path) or {}
    except FileNotFoundError:
        raise IntentDataError(f"{path}: intent data file not found") from None
    except yaml.YAMLError as exc:
        raise IntentDataError(f"{path}: {exc}") from None
    model = LanguageModel(lang)
    cjk = lang == "zh"
    examples: list[tuple[str, str]] = []
    keywords: dict[str, list[str]] = {}
    for intent, spec in raw.items():
        if intent not in INTENTS and intent not in (OUT_OF_SCOPE, "urgent"):
            raise IntentDataError(f"{path}: unknown intent {intent!r}")
        spec = spec or {}
        unknown_keys = set(spec) - DATA_KEYS
        if unknown_keys:
            raise IntentDataError(f"{path}: {intent}: unknown key(s) {sorted(unknown_keys)}")
        if intent == "urgent":
            model.urgent = KeywordMatcher({"urgent": spec.get("keywords", [])}, cjk)
            continue
        keywords[intent] = list(spec.get("keywords", []))
        examples += [(folded, intent) for example in spec.get("examples", [])
                     if (folded := normalise(str(example)))]
    model.keywords = KeywordMatcher(keywords, cjk)
    model.index(examples)
    return model


@dataclass
class Scored:
    intent: str
    confidence: float
    scores: dict[str, float]


class IntentClassifier:
    def __init__(self, languages: list[str], directory: Path = DATA_DIR,
                 thresholds: Thresholds | None = None) -> None:
        self.languages = languages
        self.models = {lang: load_language_model(lang, directory / f"{lang}.yaml")
                       for lang in languages}
        self.thresholds = thresholds or Thresholds()

    def keyword_lexicon(self) -> dict[str, KeywordMatcher]:
        return {lang: m.keywords for lang, m in self.models.items() if m.keywords}

    def is_urgent(self, folded: str, langs: list[str]) -> bool:
        return any((matcher := self.models[lang].urgent) is not None
                   and matcher.matches(folded) for lang in langs)

    def candidate_languages(self, lang: str | None, folded: str = "") -> list[str]:
        """The message's language, plus English when the message has English words that
        the language's own data does not know: customers mix in English trade words."""
        if lang is None:
            return self.languages
        if lang == "en" or "en" not in self.models or lang not in self.models:
            return [lang]
        own, english = self.models[lang].idf, self.models["en"].idf
        if folded and not any(w in english and w not in own for w in folded.split()):
            return [lang]
        return [lang, "en"]

    def components(self, folded: str, langs: list[str]) -> tuple[dict[str, float],
                                                                 dict[str, float]]:
        """(keyword evidence, example similarity) per intent."""
        keywords: dict[str, float] = {}
        similar: dict[str, float] = {}
        for rank, lang in enumerate(langs):
            model = self.models[lang]
            weight = 1.0 if rank == 0 else 0.9
            for intent, similarity in model.similarities(folded).items():
                similar[intent] = max(similar.get(intent, 0.0), similarity * weight)
            for intent, hits in (model.keywords.hits(folded) if model.keywords else {}).items():
                if hits:
                    value = min(1.0 + 0.1 * (len(hits) - 1), 1.3) * weight
                    keywords[intent] = max(keywords.get(intent, 0.0), value)
        return keywords, similar

    def score(self, folded: str, langs: list[str], entities: dict[str, Any]) -> dict[str, float]:
        keywords, similar = self.components(folded, langs)
        weight = self.thresholds.keyword_weight
        # A keyword is strong evidence, confirmed by similar examples; close examples alone
        # are evidence too (a paraphrase without any keyword).
        scores = {intent: max(similar.get(intent, 0.0),
                              weight * keywords.get(intent, 0.0)
                              + (1 - weight) * similar.get(intent, 0.0))
                  for intent in {*keywords, *similar}}
        self._entity_cues(scores, entities, folded)
        return scores

    @staticmethod
    def _entity_cues(scores: dict[str, float], entities: dict[str, Any], folded: str) -> None:
        """Entities make some intents more likely; alone, they decide ("PO-24117?")."""
        def boost(intent: str, amount: float, floor: float) -> None:
            scores[intent] = max(scores.get(intent, 0.0) + amount, floor)

        if "documents" in entities:
            boost("documents", 0.05, 0.55)
        if "order_numbers" in entities:
            boost("order_status", 0.02, 0.55)
        quote_cues = sum(1 for key in ("quantities", "incoterm") if key in entities)
        if quote_cues:
            boost("quote_request", 0.03 * quote_cues, 0.5 + 0.05 * quote_cues)

    def classify(self, folded: str, lang: str | None, entities: dict[str, Any]) -> Scored:
        scores = self.score(folded, self.candidate_languages(lang, folded), entities) if folded else {}
        ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
        if not ranked:
            return Scored("unknown", 0.0, scores)
        # "Hello, where is my order?" is about the order: a greeting only leads when
        # nothing else in the message is understood.
        if ranked[0][0] in SOCIAL:
            substantive = [item for item in ranked[1:] if item[0] not in SOCIAL]
            if substantive and substantive[0][1] >= self.thresholds.minimum + SOCIAL_LEAD \
                    and substantive[0][0] != OUT_OF_SCOPE:
                ranked = [substantive[0], *[i for i in ranked if i != substantive[0]]]
        (best, top) = ranked[0]
        rivals = [s for i, s in ranked[1:] if i != best and (best in SOCIAL or i not in SOCIAL)]
        runner_up = rivals[0] if rivals else 0.0
        confidence = min(top, 1.0)
        if best == OUT_OF_SCOPE:
            return Scored("unknown", confidence, scores)
        if top < self.thresholds.minimum or top - runner_up < self.thresholds.margin:
            return Scored("unknown", confidence, scores)
        return Scored(best, confidence, scores)
