"""The autotuning mechanism (runtime/autotune.py), exercised under the interpreter with
DLC_AUTOTUNE=1: every configuration is rendered and timed once, the choice is cached on
disk and reused, and the tuned program computes the same values."""
from __future__ import annotations

import json

import torch

from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.runtime import autotune
from dlc.runtime.triton_backend import TritonProgram


def graph():
    g = Graph("tuned")
    x = g.add_input("x", TensorType(("N", 300)))
    b = Builder(g)
    g.outputs = [b.emit1("sigmoid", [b.emit1("relu", [x])])]
    return g


def test_tuning_is_cached_and_correct(tmp_path, monkeypatch):
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DLC_AUTOTUNE", "1")
    timed = []
    real = autotune._time
    monkeypatch.setattr(autotune, "_time",
                        lambda fn, grid, args, dev, reps: timed.append(grid) or real(fn, grid, args, dev, 1))
    x = torch.randn(3, 300)
    (y,), _, _ = TritonProgram(graph(), training=False).run({}, {"x": x})
    torch.testing.assert_close(y, torch.sigmoid(x.relu()))
    assert sorted(g[0] for g in timed) == [1, 1, 2, 4]          # BLOCK 2048, 1024, 512, 256
    cache = json.loads((tmp_path / "tuning.json").read_text())
    (choice,) = cache.values()
    assert choice["BLOCK"] in (256, 512, 1024, 2048)
    timed.clear()
    again = TritonProgram(graph(), training=False)
    (y2,), _, _ = again.run({}, {"x": x})
    assert timed == []                                          # warm: nothing timed
    torch.testing.assert_close(y2, y)
    k = again.compiled({"x": (3, 300)}).plan.kernels[0]
    assert k.config == choice


def test_interpreter_keeps_defaults(monkeypatch):
    monkeypatch.delenv("DLC_AUTOTUNE", raising=False)
    assert not autotune.enabled(torch.device("cpu"))
