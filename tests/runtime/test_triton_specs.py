"""Whole graphs of every graph form on the Triton backend (interpreter) against the
reference backend: inception branches and concat, a dense block and transition, a
residual network with projection shortcuts, symbolic spatial sizes with ceil-mode pooling
and an mse loss, several optimizers and a penalty — two training steps each, and
inference; and the FCN-style skip with upsampling and two outputs, in inference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dlc
from dlc.compiler.pipeline import build_infer_graph, build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state
from dlc.runtime.triton_backend import TritonProgram

SPECS = Path(__file__).resolve().parents[1] / "golden" / "specs"

CASES = [  # spec, --set, input shape (one example), loss
    ("inception_dense", ["train.optimizer=sgd(lr=0.05, momentum=0.9, nesterov=true)"],
     (3, 16, 16), "ce"),
    ("residual_cnn", ["train.penalty=l2(1e-3)"], (3, 8, 8), "ce"),
    ("residual_cnn", ["train.optimizer=rmsprop(lr=1e-3, centered=true, momentum=0.5)"],
     (3, 8, 8), "ce"),
    # sgd: conv1's bias sits before a batch norm, so its gradient is ~0 and an optimizer
    # that divides by the gradient's size would amplify rounding noise
    ("fully_conv", ["train.loss=mse", "train.optimizer=sgd(lr=0.05, momentum=0.9)"],
     (3, 9, 11), "mse"),
]


def _inputs(g, shape, loss, gen, batch=3):
    x = torch.randn(batch, *shape, generator=gen)
    out = g.outputs[1].type if loss == "mse" else None
    if loss == "mse":
        from dlc.compiler.kernels import bind_inputs, concrete
        env = bind_inputs(g, {"x": tuple(x.shape)})
        y = torch.randn(*concrete(out, env), generator=gen)
    else:
        y = torch.randint(0, 4, (batch,), generator=gen)
    return x, y


@pytest.mark.parametrize("name,sets,shape,loss", CASES,
                         ids=[f"{c[0]}-{c[1][0].split('=')[1].split('(')[0]}" for c in CASES])
def test_two_training_steps_and_inference_match(name, sets, shape, loss):
    spec = dlc.compile_spec(SPECS / f"{name}.dls", sets)
    g = build_train_graph(spec.graph, spec.config)
    if shape is None:
        shape = tuple(spec.graph.inputs[0].type.shape[1:])
    gen = torch.Generator().manual_seed(0)
    ref_state = init_state(g, 0)
    tri_state = {k: v.clone() for k, v in ref_state.items()}
    ref, tri = ReferenceProgram(g, training=True), TritonProgram(g, training=True)
    for step in range(2):
        x, y = _inputs(g, shape, loss, gen)
        ins = {"x": x, "y": y, "lr": torch.tensor(0.01)}
        (rl, *_), ru, _ = ref.run(ref_state, ins)
        (tl_, *_), tu, _ = tri.run(tri_state, ins)
        ref_state.update(ru)
        tri_state.update(tu)
        np.testing.assert_allclose(float(tl_), float(rl), rtol=1e-4)
    for name_, v in ref_state.items():
        torch.testing.assert_close(tri_state[name_], v, rtol=2e-3, atol=2e-3,
                                   msg=lambda m: f"@{name_}: {m}")
    ig = build_infer_graph(spec.graph, spec.config)
    model_state = {k: v for k, v in ref_state.items() if k in ig.state}
    x, _ = _inputs(g, shape, loss, gen, batch=2)
    want, _, _ = ReferenceProgram(ig, training=False).run(model_state, {"x": x})
    got, _, _ = TritonProgram(ig, training=False).run(model_state, {"x": x})
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_skip_connection_with_two_outputs_inference():
    spec = dlc.compile_spec(SPECS / "dag_outputs.dls")
    ig = build_infer_graph(spec.graph, spec.config)
    state = init_state(ig, 1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    want, _, _ = ReferenceProgram(ig, training=False).run(state, {"x": x})
    got, _, _ = TritonProgram(ig, training=False).run(state, {"x": x})
    assert len(got) == 2
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
