"""Text normalisation shared by language detection, intent data and entity extraction."""

from __future__ import annotations

import functools
import re
import unicodedata

_ARABIC_FOLD = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه",
                              "ـ": None, "ؤ": "و", "ئ": "ي"})
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]")


def strip_accents(text: str) -> str:
    """Drop combining marks: "días" -> "dias", Arabic harakat removed."""
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed
                                                 if not unicodedata.combining(c)))


@functools.lru_cache(maxsize=4096)
def normalise(text: str, *, mask_numbers: bool = True) -> str:
    """Lower-case, fold accents and Arabic letter variants, numbers to "0", no punctuation.

    Customers type without accents ("dias", "bestatigung") and with any Arabic alef form, so
    both the intent data and the message are folded the same way.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = strip_accents(text).translate(_ARABIC_FOLD)
    if mask_numbers:
        text = _NUMBER.sub(" 0 ", text)
    return " ".join(_NON_WORD.sub(" ", text).split())


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None
