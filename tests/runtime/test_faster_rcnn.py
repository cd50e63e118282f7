"""Faster R-CNN end to end: the RPN and the RoI head trained jointly from the data's boxes,
the proposals made in the graph (no `proposals` setting, no proposals input), scored by mAP,
`dlc eval` and `dlc predict` on images alone; and the same training step on the Triton
backend (the RPN loss and its gradient kernels, anchors, proposals and target assignment torch
steps between the kernels) against the reference."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dlc.cli import main

pytest.importorskip("pycocotools")

TINY = """
model TinyFaster(classes=3, A=2, P=6) {
    input x: f32[3, 16, 16]
    features = x -> conv(8, 3, stride=2) -> relu                  # 8x8, stride 2
    rpn = features -> conv(8, 3) -> relu
    objectness = rpn -> conv(A, 1) -> per_anchor(1)
    rpn_deltas = rpn -> conv(4 * A, 1) -> per_anchor(4)
    anchors = anchors(features, sizes=[4, 8], ratios=[1], stride=2)
    proposals = propose(objectness, rpn_deltas, anchors, count=P, size=16, pre_nms=40)
    head = roi_pool(features, proposals, output=2, spatial_scale=0.5) -> flatten -> linear(16) -> relu
    scores = head -> linear(classes + 1)
    deltas = head -> linear(4 * (classes + 1))
    output scores, deltas, proposals, objectness
}
train {
    data      shapes(n=30, size=16, max_shapes=2, val=0.2, test=0.2)
    loss      (scores = fast_rcnn_loss(deltas=deltas, rois=proposals),
               objectness = rpn_loss(deltas=rpn_deltas, anchors=anchors, batch=32))
    optimizer adam(lr=3e-3)
    batch     8
    epochs    2
}
"""


def _spec(tmp_path, text=TINY):
    spec = tmp_path / "faster.dls"
    spec.write_text(text)
    return spec


def test_faster_rcnn_trains_both_losses_scores_and_predicts_from_images(tmp_path, capsys):
    spec, run = _spec(tmp_path), tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        terms = r["train_losses"]
        assert set(terms) == {"scores", "objectness"}
        assert r["train_loss"] == pytest.approx(terms["scores"] + terms["objectness"])
        assert 0 <= r["val_map"] <= r["val_map50"] <= 1
    final = json.loads((run / "final.json").read_text())
    assert set(final["test_ap"]) == {"square", "circle", "triangle"}
    assert (run / "detections.png").is_file()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["map50"] == pytest.approx(final["test_map50"])

    x = np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)                       # images only
    assert main(["predict", str(run), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npz")]) == 0
    outs = np.load(tmp_path / "y.npz")
    props = outs["proposals"]
    assert props.shape == (2, 6, 4)
    assert (props >= 0).all() and (props[..., 2:] <= 16).all()           # clipped to the image
    assert (props[..., 2:] >= props[..., :2]).all()
    doc = json.loads((tmp_path / "y.detections.json").read_text())
    assert len(doc) == 2


def test_the_rpn_learns_objectness(tmp_path):
    """Gradients reach the RPN through per_anchor and rpn_loss: trained for 8 epochs on the
    tiny data its loss term falls well below where it starts (about ln 2, an untrained
    binary classifier's)."""
    text = TINY.replace("epochs    2", "epochs    8").replace("adam(lr=3e-3)", "adam(lr=1e-2)")
    spec, run = _spec(tmp_path, text), tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0]["train_losses"], records[-1]["train_losses"]
    assert first["objectness"] > 0.6
    assert last["objectness"] < 0.75 * first["objectness"]


def test_a_step_on_triton_equals_the_reference(tmp_path, trained_alike):
    text = TINY.replace("epochs    2", "epochs    1").replace("n=30", "n=12")
    spec = _spec(tmp_path, text)
    for backend in ("reference", "triton"):
        assert main(["train", str(spec), "--out", str(tmp_path / backend), "--quiet",
                     "--backend", backend]) == 0
    trained_alike(tmp_path / "reference", tmp_path / "triton")


def test_resume_on_triton_continues_the_anchor_sampling(tmp_path, monkeypatch,
                                                        interrupt_at_validation):
    """assign_targets samples anchors from the program's generator; a checkpoint keeps its
    state, so a run cut after epoch 1 and resumed ends bitwise where an uncut run does."""
    text = TINY.replace("n=30", "n=12")
    spec = _spec(tmp_path, text)
    args = ["train", str(spec), "--quiet", "--backend", "triton"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    interrupt_at_validation(2)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130        # Ctrl-C in epoch 2
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "final.json").read_text())["epochs_run"] == 1
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    whole = load_file(tmp_path / "whole" / "last.safetensors")
    cut = load_file(tmp_path / "cut" / "last.safetensors")
    assert whole.keys() == cut.keys()
    for k in whole:
        assert torch.equal(whole[k], cut[k]), k
