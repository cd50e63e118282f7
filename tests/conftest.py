"""Shared test configuration: the --update-golden flag and common paths."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Triton kernels run in its CPU interpreter in tests; it must be chosen before any kernel
# module is made. Generated kernels are cached in a folder of this test session.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DLC_CACHE_DIR", tempfile.mkdtemp(prefix="dlc-test-cache-"))

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files from the current output (review the diff!)")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def interrupt_at_validation(monkeypatch):
    """`interrupt_at_validation(n)`: Ctrl-C during a run's n-th evaluation (epoch n's
    validation), so epoch n-1 is the last saved; `monkeypatch.undo()` lets runs finish."""
    from dlc.runtime import model as model_mod
    real = model_mod.Model.evaluate_arrays

    def arm(n: int) -> None:
        calls = {"n": 0}

        def interrupted(self, x, y, batch=512, **kw):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(self, x, y, batch, **kw)

        monkeypatch.setattr(model_mod.Model, "evaluate_arrays", interrupted)
    return arm


@pytest.fixture
def fed_inputs(monkeypatch):
    """Spies on training: a list that gets, for every optimizer step, {"step": the
    TrainStep, "idx": the batch's example indices, "inputs": copies of what the train
    program was fed}."""
    from dlc.runtime.train_step import TrainStep
    seen, real = [], TrainStep.run

    def spy(self, idx, lr):
        program_run = self.program.run

        def capture(state, inputs):
            seen.append({"step": self, "idx": idx,
                         "inputs": {k: v.clone() for k, v in inputs.items()}})
            return program_run(state, inputs)
        self.program.run = capture
        try:
            real(self, idx, lr)
        finally:
            self.program.run = program_run

    monkeypatch.setattr(TrainStep, "run", spy)
    return seen


@pytest.fixture
def trained_alike():
    """`trained_alike(run_a, run_b)`: the two runs' last.safetensors hold the same tensors
    (all but the random state, which each backend keeps in its own kind) within tolerance."""
    import torch
    from safetensors.torch import load_file

    def check(a: Path, b: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
        want, got = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
        assert want.keys() == got.keys()
        for k in want:
            if not k.startswith("rng/"):
                torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=k)
    return check
