"""Understanding benchmark: intent accuracy, language accuracy, speed, latency, start-up
time and peak memory, printed as figures. Run by ``make bench`` (bench/run_all.py)."""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LANGS = ["en", "zh", "ru", "es", "fr", "de", "pt", "ar"]


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detector", default="lingua", choices=["lingua", "langdetect"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    from intents.evaluation import evaluate, read_labelled
    from intents.text import normalise
    from intents.understanding import Understander

    understander = Understander(LANGS, args.detector)
    startup = time.perf_counter() - started
    figures: dict[str, object] = {"detector": args.detector,
                                  "startup_seconds": round(startup, 3)}

    dev = REPO.parent / "shared" / "eval" / "intents-dev.tsv"
    sets = {"dev": dev} if dev.exists() else {}
    sets |= {p.stem: p for p in sorted((REPO / "bench" / "data").glob("intents-*.tsv"))}
    sentences: list[tuple[str, str]] = []
    for name, path in sets.items():
        samples = read_labelled(path)
        report = evaluate(samples, understander)
        figures[f"intent_accuracy[{name}]"] = report["intent_accuracy"]
        if name != "dev":
            sentences += [(lang, text) for lang, _, text in samples
                          if len(text.split()) >= 4 or (lang == "zh" and len(text) >= 6)]
    if sentences:
        hits = sum(understander.understand(t).lang == lang for lang, t in sentences)
        figures["language_accuracy[sentences]"] = round(hits / len(sentences), 4)
        figures["language_sentences"] = len(sentences)
    short = read_tsv(REPO / "bench" / "data" / "language-short.tsv")
    short_hits = [understander.understand(r["text"]).lang == r["lang"] for r in short]
    figures["language_accuracy[two_words]"] = round(sum(short_hits) / len(short), 4)
    misses = [r for r, ok in zip(short, short_hits, strict=True) if not ok]
    figures["language_two_word_misses"] = [
        f"{r['lang']}: {r['text']} -> {understander.understand(r['text']).lang}" for r in misses]
    no_evidence = (REPO / "bench" / "data" / "language-no-evidence.txt").read_text(
        encoding="utf-8").split("\n")
    flips = [t for t in no_evidence if t and understander.understand(t).lang is not None]
    figures["language_no_evidence_flips"] = flips

    corpus = [r["text"] for r in short] + [t for _, t in sentences] or ["hello"]
    for text in corpus[:50]:
        understander.understand(text)  # warm-up
    # Wall-clock figures include whatever else the machine is doing; CPU-time figures are
    # this process's own work on one core, and repeatable on a busy machine.
    rounds = max(1, 6000 // len(corpus))
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(rounds):  # throughput: nothing but the work in the loop
        normalise.cache_clear()  # each round sees the messages as new text
        for text in corpus:
            understander.understand(text)
    wall_elapsed = time.perf_counter() - wall_start
    cpu_elapsed = time.process_time() - cpu_start
    wall, cpu = [], []
    normalise.cache_clear()
    for text in corpus:  # latency: each message timed on its own
        w0, c0 = time.perf_counter(), time.thread_time()
        understander.understand(text)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    wall.sort()
    cpu.sort()
    classified = rounds * len(corpus)
    figures["messages_timed"] = classified
    figures["classifications_per_second[cpu]"] = round(classified / cpu_elapsed, 1)
    figures["classifications_per_second[wall]"] = round(classified / wall_elapsed, 1)
    figures["latency_p50_ms[cpu]"] = round(statistics.median(cpu) * 1000, 3)
    figures["latency_p99_ms[cpu]"] = round(cpu[int(len(cpu) * 0.99) - 1] * 1000, 3)
    figures["latency_p50_ms[wall]"] = round(statistics.median(wall) * 1000, 3)
    figures["latency_p99_ms[wall]"] = round(wall[int(len(wall) * 0.99) - 1] * 1000, 3)
    figures["peak_memory_mb"] = round(peak_rss_mb(), 1)

    if args.json:
        print(json.dumps(figures, ensure_ascii=False, indent=2))
    else:
        print("== understanding benchmark ==")
        for key, value in figures.items():
            print(f"{key:<36} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
