"""The RoI detectors' training steps on the Triton backend (under the interpreter): every RoI
op and its gradient is a kernel (templates/roi.py), and so are the Fast R-CNN loss and its
gradient (templates/detection.py): Fast R-CNN's and SPP-Net's steps hold no torch step, and a
few steps of each example, at a smaller image, follow the reference backend's trajectory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dlc
from dlc.compiler.pipeline import build_train_graph
from dlc.compiler.plan import format_plan, make_plan
from dlc.runtime.proposals import sliding_windows
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.shapes import generate
from dlc.runtime.state import init_state
from dlc.runtime.triton_backend import TritonProgram

EX = Path(__file__).resolve().parents[2] / "examples"
SIZE, P, BATCH = 16, 8, 2


def _small(tmp_path, name: str):
    """The example at 16 x 16 pixels and 8 sliding-window proposals an image."""
    src = (EX / f"{name}.dls").read_text()
    assert "f32[3, 64, 64]" in src
    path = tmp_path / f"{name}.dls"
    path.write_text(src.replace("f32[3, 64, 64]", f"f32[3, {SIZE}, {SIZE}]"))
    spec = dlc.compile_spec(path, [f"model.P={P}",
                                   f"train.proposals=sliding_window(count={P})"])
    return build_train_graph(spec.graph, spec.config)


def _batches(steps: int):
    d = generate(BATCH * steps, SIZE, max_shapes=2, seed=3)
    windows = torch.from_numpy(sliding_windows(SIZE, SIZE, P)).float()
    for k in range(steps):
        at = slice(k * BATCH, (k + 1) * BATCH)
        yield {"x": torch.from_numpy(d["x"][at]),
               "proposals": windows.expand(BATCH, P, 4).contiguous(),
               "boxes": torch.from_numpy(d["boxes"][at]), "lr": torch.tensor(1e-3 * (k + 1))}


def _trajectory(program, state, steps):
    losses = []
    for inputs in _batches(steps):
        (loss, *_), updates, _ = program.run(state, inputs)
        state.update(updates)
        losses.append(float(loss))
    return losses, state


@pytest.mark.parametrize("name,roi", [("fast_rcnn", "roi_pool"), ("spp_net", "roi_spp")])
def test_roi_detector_steps_on_triton_match_the_reference(tmp_path, name, roi):
    g = _small(tmp_path, name)
    plan = make_plan(g, {"N": BATCH, "M": 2}, training=True)
    anchors = [k.anchor.op for k in plan.kernels if k.family == "roi"]
    assert anchors == [roi, roi + "_bwd"]
    assert "torch steps" not in format_plan(plan)
    assert [k.anchor.op for k in plan.kernels if k.family == "detection"] == [
        "fast_rcnn_loss", "fast_rcnn_loss_bwd"]
    state = init_state(g, 0, "cpu")
    ref, ref_state = _trajectory(ReferenceProgram(g, training=True), 
                                 {k: v.clone() for k, v in state.items()}, 3)
    tri, tri_state = _trajectory(TritonProgram(g, training=True), state, 3)
    np.testing.assert_allclose(tri, ref, rtol=1e-4)
    assert all(np.isfinite(ref)) and ref[0] != ref[-1]
    for key in g.updates:                # Adam: a ~0 gradient's update moves with sum order
        torch.testing.assert_close(tri_state[key], ref_state[key], rtol=1e-3, atol=1e-3,
                                   msg=lambda m: f"@{key}: {m}")
