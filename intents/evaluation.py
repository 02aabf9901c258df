"""``supportbot eval``: intent and language accuracy on a labelled TSV, and speed."""

from __future__ import annotations

import csv
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from intents.understanding import INTENTS, Understander

HEADER = ["lang", "intent", "text"]


class EvalFileError(Exception):
    pass


def read_labelled(path: Path) -> list[tuple[str, str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvalFileError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        raise EvalFileError(f"{path}: line 1: header must be 'lang<TAB>intent<TAB>text'")
    samples = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            raise EvalFileError(f"{path}: line {number}: expected 3 tab-separated columns")
        lang, intent, message = (c.strip() for c in row)
        if intent not in INTENTS:
            raise EvalFileError(f"{path}: line {number}: unknown intent {intent!r}")
        samples.append((lang, intent, message))
    if not samples:
        raise EvalFileError(f"{path}: no labelled messages")
    return samples


def evaluate(samples: list[tuple[str, str, str]], understander: Understander) -> dict[str, Any]:
    per_lang: dict[str, Counter[str]] = defaultdict(Counter)
    per_intent: dict[str, Counter[str]] = defaultdict(Counter)
    confusion: Counter[tuple[str, str]] = Counter()
    lang_hits = 0
    errors = []
    started = time.perf_counter()
    results = [understander.understand(text) for _, _, text in samples]
    elapsed = time.perf_counter() - started
    for (lang, intent, text), result in zip(samples, results, strict=True):
        hit = result.intent == intent
        per_lang[lang]["total"] += 1
        per_lang[lang]["correct"] += hit
        per_intent[intent]["total"] += 1
        per_intent[intent]["correct"] += hit
        lang_hits += result.lang == lang
        if not hit:
            confusion[(intent, result.intent)] += 1
            errors.append({"lang": lang, "expected": intent, "got": result.intent,
                           "text": text})

    def table(counts: dict[str, Counter[str]]) -> dict[str, dict[str, float]]:
        return {key: {"total": c["total"], "accuracy": round(c["correct"] / c["total"], 4)}
                for key, c in sorted(counts.items())}

    correct = sum(c["correct"] for c in per_lang.values())
    return {
        "samples": len(samples),
        "intent_accuracy": round(correct / len(samples), 4),
        "language_accuracy": round(lang_hits / len(samples), 4),
        "per_language": table(per_lang),
        "per_intent": table(per_intent),
        "confusion": [{"expected": e, "got": g, "count": n}
                      for (e, g), n in confusion.most_common()],
        "errors": errors,
        "classifications_per_second": round(len(samples) / elapsed, 1) if elapsed else None,
    }


def evaluate_file(path: Path, languages: list[str], detector: str = "lingua") -> dict[str, Any]:
    return evaluate(read_labelled(path), Understander(languages, detector))


def format_report(report: dict[str, Any]) -> str:
    lines = [f"messages: {report['samples']}",
             f"intent accuracy: {report['intent_accuracy']:.1%}",
             f"language accuracy: {report['language_accuracy']:.1%}",
             f"speed: {report['classifications_per_second']} classifications/s", "",
             "per language:"]
    lines += [f"  {k:<20} {v['accuracy']:>7.1%}  ({v['total']})"
              for k, v in report["per_language"].items()]
    lines += ["", "per intent:"]
    lines += [f"  {k:<20} {v['accuracy']:>7.1%}  ({v['total']})"
              for k, v in report["per_intent"].items()]
    lines += ["", "confusion (expected -> got):"]
    lines += [f"  {c['expected']:<18} -> {c['got']:<18} {c['count']}"
              for c in report["confusion"]] or ["  (none)"]
    return "\n".join(lines)
