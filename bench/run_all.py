"""Every benchmark, each in its own process so start-up time and memory are its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    [sys.executable, str(HERE / "intents_bench.py")],
    [sys.executable, str(HERE / "intents_bench.py"), "--detector", "langdetect"],
    [sys.executable, str(HERE / "sla_sweep_bench.py"), "--postgres"],
    [sys.executable, str(HERE / "report_bench.py")],
    [sys.executable, str(HERE / "load_bench.py")],
]


def main() -> int:
    failed = 0
    for command in BENCHMARKS:
        print(f"$ {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(command))}",
              flush=True)
        failed += subprocess.call(command) != 0
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
