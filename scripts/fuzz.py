"""Fuzz the compiler for a long time: `nice python scripts/fuzz.py --cases 50000 --seed 1`.

Generated and mutated specs (tests/spec/fuzzing.py) go through compile_spec and every
`--emit` view under a CPU-time limit; each crash, hang or unlocated error is saved under
tests/spec/fuzz_regressions/ and counted.  The suite runs the same harness with a fixed
number of cases (tests/spec/test_fuzz.py, DLC_FUZZ_CASES).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "spec"))
os.environ.setdefault("TRITON_INTERPRET", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=None, help="default: derandomized")
    p.add_argument("--limit", type=float, default=5.0, help="CPU seconds per case")
    p.add_argument("--no-save", action="store_true", help="do not write regression files")
    args = p.parse_args()
    from fuzzing import fuzz
    t0 = time.time()
    stats = fuzz(args.cases, seed=args.seed, limit=args.limit, save=not args.no_save,
                 report=lambda line: print(line, flush=True))
    print(" ".join(f"{k}={v}" for k, v in stats.items() if k != "failures"),
          f"wall={time.time() - t0:.0f}s", flush=True)
    return 1 if stats["crash"] or stats["hang"] or stats["unlocated"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
