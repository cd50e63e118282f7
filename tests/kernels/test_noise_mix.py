"""Kernels for weight noise (gaussian_noise: Philox-regenerated like a dropout mask) and for
the mixup/cutmix loss (two cross-entropies weighted by λ and 1 - λ, scalar graph inputs)."""
from __future__ import annotations

import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.config import Call, TrainConfig
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.compiler.pipeline import mixed_loss

from .kernel_check import cpu_only, run_both

gen = torch.Generator().manual_seed(0)


def noise_graph(std: float) -> Graph:
    """w (shape) -> y = w + noise, and the noise read again by a second consumer of another
    shape (a sum), so it is regenerated in two kernels."""
    g = Graph("t")
    w = g.add_input("w", TensorType((37, 53)))
    b = Builder(g)
    eps = b.emit1("gaussian_noise", [w], {"std": std})
    g.outputs = [b.emit1("add", [w, eps]), b.emit1("sum", [eps], {"dims": [0]})]
    return g


@cpu_only
def test_gaussian_noise_is_regenerated_consistently_and_has_its_std():
    from dlc.runtime.triton_backend import TritonProgram
    w = torch.randn(37, 53, generator=gen)
    prog = TritonProgram(noise_graph(0.25), training=True, seed=3)
    (y, col), _, _ = prog.run({}, {"w": w})
    eps = y - w
    assert abs(float(eps.std()) - 0.25) < 0.015 and abs(float(eps.mean())) < 0.015
    torch.testing.assert_close(col, eps.sum(0), rtol=1e-4, atol=1e-4)   # the same draw
    (y2, _), _, _ = prog.run({}, {"w": w})
    assert not torch.equal(y, y2)                              # the seed advanced
    again = TritonProgram(noise_graph(0.25), training=True, seed=3).run({}, {"w": w})[0][0]
    torch.testing.assert_close(again, y, rtol=0, atol=0)       # the same seed, the same draw
    plan = prog.compiled({"w": (37, 53)}).plan
    assert all(n.op != "gaussian_noise" for k in plan.kernels for n in k.nodes())  # not stored
    assert plan.kernels[-1].advance_seed


def test_mixed_cross_entropy_and_its_gradient_match_the_reference():
    for ls, n, v in ((0.0, 7, 10), (0.1, 33, 300)):           # one tile and several per row
        g = Graph("t")
        z = g.add_input("z", TensorType(("N", v)))
        y = g.add_input("y", TensorType(("N",), "i64"))
        g.outputs = [z]
        cfg = TrainConfig(loss=Call("cross_entropy", {"label_smoothing": ls}))
        loss = mixed_loss(g, Builder(g), cfg.loss, z, y)
        gz = backward(g, loss, [z])[id(z)]
        g.outputs = [loss, gz]
        ins = {"z": 3 * torch.randn(n, v, generator=gen),
               "y": torch.randint(0, v, (n,), generator=gen),
               "y_b": torch.randint(0, v, (n,), generator=gen),
               "lam_a": torch.tensor(0.35), "lam_b": torch.tensor(0.65)}
        run_both(g, ins, training=True)
