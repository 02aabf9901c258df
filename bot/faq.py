"""The FAQ: questions and answers per language, searched fuzzily (rapidfuzz)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rapidfuzz import fuzz, process

from bot.knowledge import KnowledgeError
from intents.datafiles import compose_yaml_text, load_yaml_text
from intents.text import has_cjk, normalise

TOPICS = ("product_info", "technical_support")
MIN_COVERAGE = 0.5
FUZZY_WORD = 85  # a typo ("waterprof") still counts as the word


@dataclass(frozen=True)
class FaqEntry:
    id: str
    topic: str
    questions: tuple[str, ...]
    answer: str


def tokens(text: str) -> list[str]:
    """Words; Chinese, written without spaces, as single characters and pairs."""
    result: list[str] = []
    for word in normalise(text).split():
        if has_cjk(word):
            result += list(word) + [word[i:i + 2] for i in range(len(word) - 1)]
        elif word != "0":
            result.append(word)
    return result


@dataclass
class LanguageIndex:
    """Which entries use which words, and how informative each word is (IDF)."""

    entries: list[FaqEntry]
    words_of: list[set[str]]
    idf: dict[str, float]
    vocabulary: list[str]

    @classmethod
    def build(cls, entries: list[FaqEntry]) -> LanguageIndex:
        """Questions are what a message is matched against; how informative a word is
        comes from questions and answers together, so a common word ("floors") that
        happens to be in one entry's questions does not look rare."""
        words_of = [{t for q in (*e.questions, e.id.replace("_", " ")) for t in tokens(q)}
                    for e in entries]
        frequency: dict[str, int] = {}
        for words, entry in zip(words_of, entries, strict=True):
            for word in words | set(tokens(entry.answer)):
                frequency[word] = frequency.get(word, 0) + 1
        idf = {w: math.log((1 + len(entries)) / n) for w, n in frequency.items()}
        return cls(entries, words_of, idf, list(idf))

    def canonical(self, word: str) -> str | None:
        if word in self.idf:
            return word
        if len(word) < 4 or has_cjk(word):
            return None
        found = process.extractOne(word, self.vocabulary, scorer=fuzz.ratio,
                                   score_cutoff=FUZZY_WORD)
        return found[0] if found else None

    def search(self, text: str, topic: str | None) -> FaqEntry | None:
        # A word the FAQ has never seen ("fire") is the most informative of all: an entry
        # that explains everything else in the question still does not answer it.
        unknown_weight = 1.25 * max(self.idf.values(), default=1.0)
        query = []
        for word in dict.fromkeys(tokens(text)):
            known = self.canonical(word)
            query.append((known, self.idf[known] if known else unknown_weight))
        total = sum(weight for _, weight in query)
        if not total:
            return None
        best: tuple[float, FaqEntry] | None = None
        for entry, words in zip(self.entries, self.words_of, strict=True):
            covered = sum(weight for word, weight in query if word in words)
            score = covered / total + (0.05 if topic and entry.topic == topic else 0.0)
            if best is None or score > best[0]:
                best = (score, entry)
        return best[1] if best and best[0] >= MIN_COVERAGE else None


@dataclass
class Faq:
    entries: dict[str, list[FaqEntry]] = field(default_factory=dict)
    _index: dict[str, LanguageIndex] = field(default_factory=dict)

    def search(self, text: str, lang: str, topic: str | None = None) -> FaqEntry | None:
        """The entry that explains most of what ``text`` asks, in ``lang``, if one does."""
        index = self._index.get(lang)
        return index.search(text, topic) if index else None


def load_faq(directory: Path, languages: list[str]) -> Faq:
    faq = Faq()
    reference_ids: list[str] | None = None
    for lang in languages:
        path = directory / f"{lang}.yaml"
        try:
            text = path.read_text(encoding="utf-8")
            raw = load_yaml_text(text)
            nodes = compose_yaml_text(text)
        except FileNotFoundError:
            raise KnowledgeError(f"{path}: file not found") from None
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
            raise KnowledgeError(f"{path}: line {line}: {exc.problem}") from None
        if not isinstance(raw, list):
            raise KnowledgeError(f"{path}: line 1: expected a list of questions and answers")
        entries = []
        for position, item in enumerate(raw):
            line = nodes.value[position].start_mark.line + 1  # type: ignore[union-attr]
            if not isinstance(item, dict):
                raise KnowledgeError(f"{path}: line {line}: expected an entry with id, topic, "
                                     "questions and answer")
            missing = [k for k in ("id", "topic", "questions", "answer") if not item.get(k)]
            if missing:
                raise KnowledgeError(f"{path}: line {line}: missing {', '.join(missing)}")
            if item["topic"] not in TOPICS:
                raise KnowledgeError(f"{path}: line {line}: topic must be one of {TOPICS}")
            entries.append(FaqEntry(str(item["id"]), item["topic"],
                                    tuple(str(q) for q in item["questions"]),
                                    str(item["answer"]).strip()))
        ids = [e.id for e in entries]
        if reference_ids is None:
            reference_ids = ids
        elif set(ids) != set(reference_ids):
            missing_ids = sorted(set(reference_ids) - set(ids))
            extra_ids = sorted(set(ids) - set(reference_ids))
            raise KnowledgeError(f"{path}: entries differ from {languages[0]}.yaml: "
                                 f"missing {missing_ids}, extra {extra_ids}")
        faq.entries[lang] = entries
        faq._index[lang] = LanguageIndex.build(entries)
    return faq
