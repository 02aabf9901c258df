"""Keyword matching by word lookup, so its cost grows with the message, not the word lists.

Keyword syntax (intent data, complaint categories, commands): ``word`` is a whole word,
``word*`` a word starting with it, ``*word*`` a word containing it, ``*word`` a word ending
with it; several words make a phrase (only its last word may end with ``*``). Chinese
keywords match anywhere in the text, which has no spaces between words.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from intents.text import has_cjk, normalise

PREFIX_KEY = 2  # prefixes are indexed by this many first letters (none are shorter)


class KeywordMatcher:
    def __init__(self, keywords: Mapping[str, Iterable[str]], cjk: bool = False) -> None:
        self.exact: dict[str, set[str]] = defaultdict(set)
        self.prefixes: dict[str, set[str]] = defaultdict(set)
        self.infixes: list[tuple[str, str]] = []
        self.suffixes: list[tuple[str, str]] = []
        self.substrings: list[tuple[str, str]] = []
        # phrase: first word -> [(rest of the words, last word is a prefix, label, text)]
        self.phrases: dict[str, list[tuple[tuple[str, ...], bool, str, str]]] = defaultdict(list)
        self.labels: set[str] = set()
        for label, words in keywords.items():
            for raw in words:
                self._add(label, str(raw).strip(), cjk)
        # Prefixes grouped by their first letters, so a word is compared with a few only.
        self._prefix_index: dict[str, list[tuple[str, set[str]]]] = defaultdict(list)
        for prefix, labels in self.prefixes.items():
            self._prefix_index[prefix[:PREFIX_KEY]].append((prefix, labels))
        self._recent: dict[str, dict[str, set[str]]] = {}

    def _add(self, label: str, raw: str, cjk: bool) -> None:
        leading, trailing = raw.startswith("*"), raw.endswith("*")
        core = normalise(raw.strip("*"), mask_numbers=False)
        if not core:
            return
        self.labels.add(label)
        if has_cjk(core):  # Latin words in the Chinese data still match as words
            self.substrings.append((core.replace(" ", ""), label))
            return
        words = core.split()
        if len(words) > 1:
            self.phrases[words[0]].append((tuple(words[1:]), trailing, label, core))
        elif leading and trailing:
            self.infixes.append((core, label))
        elif leading:
            self.suffixes.append((core, label))
        elif trailing and len(core) >= PREFIX_KEY:
            self.prefixes[core].add(label)
        else:
            self.exact[core].add(label)

    def hits(self, folded: str) -> dict[str, set[str]]:
        """Label -> the distinct keywords of that label found in normalised text.

        The last few answers are remembered: language detection and intent
        classification ask the same matcher about the same message."""
        cached = self._recent.get(folded)
        if cached is None:
            if len(self._recent) >= 64:
                self._recent.clear()
            cached = self._recent[folded] = self._hits(folded)
        return cached

    def _hits(self, folded: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = defaultdict(set)
        words = folded.split()
        for index, word in enumerate(words):
            for label in self.exact.get(word, ()):
                found[label].add(word)
            for prefix, labels in self._prefix_index.get(word[:PREFIX_KEY], ()):
                if word.startswith(prefix):
                    for label in labels:
                        found[label].add(prefix + "*")
            for rest, trailing, label, text in self.phrases.get(word, ()):
                end = index + 1 + len(rest)
                if end > len(words):
                    continue
                following = words[index + 1:end]
                if following[:-1] == list(rest[:-1]) and (
                        following[-1] == rest[-1]
                        or (trailing and following[-1].startswith(rest[-1]))):
                    found[label].add(text)
        for part, label in self.infixes:
            if part in folded and any(part in word for word in words):
                found[label].add(f"*{part}*")
        for part, label in self.suffixes:
            if any(word.endswith(part) for word in words):
                found[label].add(f"*{part}")
        if self.substrings:
            compact = folded.replace(" ", "")
            for part, label in self.substrings:
                if part in compact:
                    found[label].add(part)
        return found

    def matches(self, folded: str) -> bool:
        return bool(self.hits(folded))
