"""The compiler under fuzzing (tests/spec/fuzzing.py): generated and mutated specs go through
compile_spec and every `--emit` view; each must end in a result or a located error within a
CPU-time limit — never an internal error, an unlocated error or a hang.

A fixed, derandomized number of cases runs here (DLC_FUZZ_CASES, default 250: about a
minute on 2 cores); `nice python scripts/fuzz.py --cases 50000` runs a long one.  A failing
spec is saved under tests/spec/fuzz_regressions/, and test_regression replays every file
there, so a fixed failure stays fixed.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fuzzing import REGRESSIONS, Failure, run_case, save_regression, specs

CASES = int(os.environ.get("DLC_FUZZ_CASES", "250"))


@settings(max_examples=CASES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(specs())
def test_fuzz(text):
    try:
        run_case(text, limit=5.0)
    except Failure as f:
        path = save_regression(text, f)
        pytest.fail(f"{f}\n(spec saved as {path})")


def _regressions() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.dls")) if REGRESSIONS.exists() else []


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_regression(path):
    """A spec the fuzzer once broke: now a result or a located error, within 2 s of CPU."""
    text = path.read_text(encoding="utf-8", errors="surrogatepass")
    try:
        assert run_case(text, limit=2.0) in ("ok", "error")
    except Failure as f:
        pytest.fail(str(f))
