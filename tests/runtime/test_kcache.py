"""The kernel cache: a rendered module is written once per key, reused warm, and a miss
says why (new graph, changed source, another Triton or device)."""
from __future__ import annotations

import torch

from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.runtime import kcache
from dlc.runtime.triton_backend import TritonProgram


def relu_graph(op="relu"):
    g = Graph("cached")
    x = g.add_input("x", TensorType(("N", 5)))
    g.outputs = [Builder(g).emit1(op, [x])]
    return g


def test_cold_then_warm_then_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path))
    x = torch.randn(3, 5)
    cold = TritonProgram(relu_graph(), training=False)
    (y,), _, _ = cold.run({}, {"x": x})
    torch.testing.assert_close(y, x.relu())
    assert cold.cache_hits == 0 and cold.cache_misses == ["first compile of this graph at these sizes"]
    files = list((tmp_path / "kernels").glob("dlc_kernels_*.py"))
    assert len(files) == 1 and "@triton.jit" in files[0].read_text()

    warm = TritonProgram(relu_graph(), training=False)
    warm.run({}, {"x": x})
    assert warm.cache_hits == 1 and warm.cache_misses == []

    other = TritonProgram(relu_graph("sigmoid"), training=False)   # same name and sizes
    (y,), _, _ = other.run({}, {"x": x})
    torch.testing.assert_close(y, x.sigmoid())
    assert other.cache_misses and other.cache_misses[0].startswith("changed: source")

    batch = TritonProgram(relu_graph(), training=False)            # another batch size
    batch.run({}, {"x": torch.randn(4, 5)})
    assert batch.cache_misses == ["first compile of this graph at these sizes"]


def test_miss_reason_names_the_triton_version():
    old = {"source": "a", "triton": "3.6.0", "device": "cpu", "interpreter": True}
    new = dict(old, triton="3.9.0")
    assert kcache._why(old, new) == "changed: triton 3.6.0 -> 3.9.0"
