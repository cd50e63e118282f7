"""The Triton backend end to end (under the interpreter): training steps of the digits
examples match the reference backend's trajectory, the structure targets of the kernel
plan hold, and `dlc train/eval/predict --backend triton` work."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import dlc
from dlc.cli import main
from dlc.compiler.emit import train_plan
from dlc.compiler.pipeline import build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state
from dlc.runtime.triton_backend import TritonProgram

ROOT = Path(__file__).resolve().parents[2]
DEVICE = os.environ.get("DLC_TEST_DEVICE", "cpu")   # cuda: benchmarks/gpu_run.sh
EX = ROOT / "examples"


def trajectory(program, graph, state, batches):
    losses = []
    for x, y, lr in batches:
        (loss, *_), updates, _ = program.run(state, {"x": x.to(DEVICE), "y": y.to(DEVICE),
                                                      "lr": torch.tensor(lr, device=DEVICE)})
        state.update(updates)
        losses.append(float(loss))
    return losses, state


def compare_steps(spec, steps: int, batch: int, rtol: float):
    g = build_train_graph(spec.graph, spec.config)
    shape = tuple(spec.graph.inputs[0].type.shape[1:])
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(batch, *shape, generator=gen),
                torch.randint(0, 10, (batch,), generator=gen), 1e-3 * (1 + i % 3))
               for i in range(steps)]
    ref_state = init_state(g, 0, DEVICE)
    tri_state = {k: v.clone() for k, v in ref_state.items()}
    ref, ref_state = trajectory(ReferenceProgram(g, training=True, device=DEVICE), g,
                                ref_state, batches)
    tri, tri_state = trajectory(TritonProgram(g, training=True, device=DEVICE), g,
                                tri_state, batches)
    np.testing.assert_allclose(tri, ref, rtol=rtol)
    # Adam divides by sqrt(v): where a gradient is ~0, the float32 summation order of the
    # two backends moves an update by up to ~lr/10, so the state is compared at that scale
    for name in g.updates:                        # every parameter, slot and statistic
        torch.testing.assert_close(tri_state[name], ref_state[name], rtol=1e-3, atol=1e-3,
                                   msg=lambda m: f"@{name}: {m}")
    return ref


def test_digits_mlp_steps_match_reference():
    spec = dlc.compile_spec(EX / "digits_mlp.dls")
    losses = compare_steps(spec, steps=6, batch=24, rtol=2e-5)
    assert losses[-1] < losses[0]


def test_digits_cnn_steps_match_reference(tmp_path):
    src = (EX / "digits_cnn.dls").read_text().replace("dropout(0.3)", "dropout(0.0)")
    path = tmp_path / "cnn.dls"
    path.write_text(src)
    spec = dlc.compile_spec(path, ["model.width=8"])
    compare_steps(spec, steps=3, batch=6, rtol=1e-4)


def test_structure_targets():
    mlp = train_plan(dlc.compile_spec(EX / "digits_mlp.dls"), 32)
    assert mlp.launches <= 12
    assert mlp.arena_bytes <= mlp.naive_peak
    res = train_plan(dlc.compile_spec(EX / "resnet18_cifar.dls"), 8)
    assert res.launches <= 130, res.launches
    updates = [k for k in res.kernels if k.multi or k.scalar_updates]
    assert len(updates) <= 2
    covered = {id(n) for k in updates for n in k.multi}
    assert all(id(n) in covered for n in res.nodes
               if n.op.endswith("_update"))       # every parameter and statistic update
    assert res.arena_bytes <= res.naive_peak


def test_cli_train_eval_predict_triton(tmp_path, capsys, monkeypatch):
    from dlc.runtime import backends
    monkeypatch.setattr(backends, "_ANNOUNCED", False)    # said once per process: say it here
    out = tmp_path / "run"
    code = main(["train", str(EX / "digits_mlp.dls"), "--backend", "triton", "--out", str(out),
                 "--quiet", "--set", "train.epochs=2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "interpreter" in err                   # said once, at start
    final = json.loads((out / "final.json").read_text())
    assert final["backend"] == "triton" and final["test_acc"] > 0.85
    ref = tmp_path / "ref"
    assert main(["train", str(EX / "digits_mlp.dls"), "--backend", "reference", "--out", str(ref),
                 "--quiet", "--set", "train.epochs=2"]) == 0
    ref_final = json.loads((ref / "final.json").read_text())
    assert abs(final["test_acc"] - ref_final["test_acc"]) <= 0.02
    capsys.readouterr()
    assert main(["eval", str(EX / "digits_mlp.dls"), "--checkpoint",
                 str(out / "checkpoint.safetensors"), "--backend", "triton"]) == 0
    shown = capsys.readouterr().out
    assert f"{final['test_acc']:.4f}"[:5] in shown or "acc" in shown
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    for backend in ("triton", "reference"):
        assert main(["predict", str(EX / "digits_mlp.dls"), "--checkpoint",
                     str(out / "checkpoint.safetensors"), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / f"{backend}.npy"), "--backend", backend]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "triton.npy"),
                               np.load(tmp_path / "reference.npy"), rtol=1e-5, atol=1e-5)


def test_uncovered_op_is_a_located_error(tmp_path, monkeypatch, capsys):
    from dlc.compiler.ops import get
    monkeypatch.setattr(type(get("tanh")), "triton", None)
    path = tmp_path / "t.dls"
    path.write_text("model T {\n    input x: f32[64]\n    linear(10) -> tanh\n}\n")
    assert main(["train", str(path), "--backend", "triton", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no kernels for op 'tanh'" in err and "t.dls:3:" in err


def test_profile_names_every_kernel_and_its_layers():
    spec = dlc.compile_spec(EX / "digits_mlp.dls")
    g = build_train_graph(spec.graph, spec.config)
    prog = TritonProgram(g, training=True)
    ins = {"x": torch.rand(8, 64), "y": torch.randint(0, 10, (8,)), "lr": torch.tensor(1e-3)}
    times = prog.profile(init_state(g, 0), ins)
    assert len(times) == prog.launches_per_step == 11
    covers = [t.covers for t in times]
    assert "linear, relu [linear1]" in covers and "adam_update x6" in covers
    assert "@optimizer.step" in covers and all(t.seconds > 0 for t in times)
