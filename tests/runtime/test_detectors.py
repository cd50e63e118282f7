"""Detectors end to end: ground-truth boxes from the data to the loss, detections decoded and
NMS'd, mAP through pycocotools per epoch and in final.json, `dlc eval`, `dlc predict`'s JSON
and pictures, located errors for a wrong box target."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlc.cli import main
from dlc.compiler.config import Call
from dlc.runtime.detect import Detector, detection_scores, detections, keep_best
from dlc.compiler.ops import get as get_op

pytest.importorskip("pycocotools")

TINY_YOLO = """
model TinyYolo(S=2, B=1, classes=3) {
    input x: f32[3, 16, 16]
    conv(8, 3, stride=2) -> leaky_relu(0.1) -> maxpool(2)
    flatten -> linear(S * S * (5 * B + classes)) -> yolo_head(grid=S, boxes=B, classes=classes)
}
train {
    data      shapes(n=40, size=16, max_shapes=2, val=0.2, test=0.2)
    loss      yolo_loss(boxes=1, size=16)
    optimizer adam(lr=3e-3)
    batch     8
    epochs    2
}
"""


def _spec(tmp_path, text=TINY_YOLO):
    spec = tmp_path / "yolo.dls"
    spec.write_text(text)
    return spec


def test_boxes_become_a_train_graph_input(tmp_path, capsys):
    assert main(["compile", str(_spec(tmp_path)), "--emit", "ir-train"]) == 0
    ir = capsys.readouterr().out
    assert "%boxes: f32[N,M,5]" in ir.splitlines()[0]
    assert "yolo_loss(%" in ir and ", %boxes)" in ir


def test_a_box_loss_on_masks_is_a_located_error(tmp_path, capsys):
    spec = _spec(tmp_path, TINY_YOLO.replace("yolo_loss(boxes=1, size=16)",
                                             "(out=yolo_loss(boxes=1, size=16, target=masks))"))
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "yolo.dls:9:16: error: yolo_loss reads ground-truth boxes" in err
    assert "masks of shapes are [16, 16] per example" in err


def _grid(cells: dict, s=2, b=1, c=2):
    """A YOLO output grid [1, S, S, 5B+C] with the given cells set: (row, col) -> (x, y,
    sqrt w, sqrt h, confidence, class index 0-based)."""
    g = torch.zeros(1, s, s, 5 * b + c)
    for (row, col), (x, y, sw, sh, conf, cls) in cells.items():
        g[0, row, col, :5] = torch.tensor([x, y, sw, sh, conf])
        g[0, row, col, 5 + cls] = 1.0
    return g


def test_map_of_a_hand_made_case_through_the_decoder():
    """Two images of 20x20 pixels on a 2x2 grid, classes a and b. Image 0: one a at
    (0, 0, 10, 10), found exactly (score 0.9) and a duplicate of it (0.8, IoU 0.81, which NMS
    removes). Image 1: one b at (10, 10, 20, 20), missed; a false a at (10, 0, 20, 10) scoring
    0.6. So class a: one true positive ranked first, one false positive after -> AP 1;
    class b: ground truth but no detection -> AP 0; mAP@0.5 = mAP@[.5:.95] = 0.5."""
    op = get_op("yolo_loss")
    det = Detector(None, op, op.attrs({"boxes": 1, "size": 20}, []), "boxes")
    exact = (0.5, 0.5, 0.5 ** 0.5, 0.5 ** 0.5, 0.9, 0)
    pred = torch.cat([_grid({(0, 0): exact}), _grid({(0, 1): (0.5, 0.5, 0.5 ** 0.5, 0.5 ** 0.5,
                                                                0.6, 0)})])
    found = detections(det, pred)
    assert [len(f) for f in found] == [1, 1]                     # the empty cells score 0
    np.testing.assert_allclose(found[0][0], [1, 0.9, 0, 0, 10, 10], atol=1e-5)
    dup = keep_best(torch.tensor([[0., 0, 10, 10], [0, 0, 9, 9]]), torch.tensor([0.9, 0.8]),
                    torch.tensor([1, 1]))
    assert len(dup) == 1                                         # IoU 0.81 > 0.5: suppressed
    truth = [np.array([[1, 0, 0, 10, 10], [-1, 0, 0, 0, 0]]),
             np.array([[2, 10, 10, 20, 20], [-1, 0, 0, 0, 0]])]
    s = detection_scores(truth, found, ["a", "b"])
    assert s["ap"]["a"] == {"ap50": pytest.approx(1.0), "ap": pytest.approx(1.0)}
    assert s["ap"]["b"] == {"ap50": 0.0, "ap": 0.0}
    assert s["map50"] == pytest.approx(0.5) and s["map"] == pytest.approx(0.5)


def test_tiny_detector_trains_and_is_scored(tmp_path, capsys):
    spec, run = _spec(tmp_path), tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"])
        assert 0 <= r["val_map"] <= r["val_map50"] <= 1
        assert set(r["val_ap"]) == {"square", "circle", "triangle"}
    final = json.loads((run / "final.json").read_text())
    assert 0 <= final["test_map"] <= final["test_map50"] <= 1
    assert set(final["test_ap"]) == {"square", "circle", "triangle"}
    assert (run / "detections.png").is_file()
    capsys.readouterr()

    assert main(["eval", str(run)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["map50"] == pytest.approx(final["test_map50"])
    assert shown["map"] == pytest.approx(final["test_map"])

    x = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(run), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    doc = json.loads((tmp_path / "y.detections.json").read_text())
    assert [d["image"] for d in doc] == [0, 1, 2]
    for d in doc:
        for box in d["detections"]:
            assert box["name"] in ("square", "circle", "triangle") and 0 < box["score"]
            assert len(box["box"]) == 4
    pictures = sorted((tmp_path / "y_boxes").glob("*.png"))
    assert len(pictures) == 3
    from PIL import Image
    assert Image.open(pictures[0]).size == (256, 256)            # drawn 16 times larger


def test_training_lowers_the_yolo_loss(tmp_path):
    from dlc.api import compile_spec
    from dlc.runtime.loop import run_training
    spec = compile_spec(_spec(tmp_path, TINY_YOLO.replace("epochs    2", "epochs    6")), [])
    run_training(spec, tmp_path / "run", progress=False)
    losses = [json.loads(l)["train_loss"]
              for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0], losses


TINY_FAST_RCNN = """
model TinyFastRCNN(classes=3, P=8) {
    input x: f32[3, 16, 16]
    input proposals: f32[P, 4]
    features = x -> conv(8, 3) -> relu -> maxpool(2)
    head = roi_pool(features, proposals, output=2, spatial_scale=0.5) -> flatten -> linear(16) -> relu
    scores = head -> linear(classes + 1)
    deltas = head -> linear(4 * (classes + 1))
    output scores, deltas
}
train {
    data      shapes(n=30, size=16, max_shapes=2, val=0.2, test=0.2)
    proposals sliding_window(count=8)
    loss      fast_rcnn_loss(deltas=deltas, rois=proposals)
    optimizer adam(lr=3e-3)
    batch     8
    epochs    2
}
"""


def test_sliding_windows_cover_the_image_evenly():
    from dlc.runtime.proposals import sliding_windows
    boxes = sliding_windows(64, 64, 32)
    assert boxes.shape == (32, 4)
    sides = boxes[:, 2] - boxes[:, 0]
    assert (sides == boxes[:, 3] - boxes[:, 1]).all()                # squares
    assert sides.min() == 64 // 6 and sides.max() == 32              # a sixth to a half
    assert boxes.min() == 0 and boxes.max() == 64                    # corner to corner


def test_fast_rcnn_with_fallback_proposals_trains_scores_and_predicts(tmp_path, capsys):
    spec, run = _spec(tmp_path, TINY_FAST_RCNN), tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_map50"] <= 1 for r in records)
    final = json.loads((run / "final.json").read_text())
    assert 0 <= final["test_map"] <= final["test_map50"] <= 1
    assert (run / "detections.png").is_file()
    x = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)                       # images only: proposals are computed
    assert main(["predict", str(run), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npz")]) == 0
    doc = json.loads((tmp_path / "y.detections.json").read_text())
    assert len(doc) == 2 and len(sorted((tmp_path / "y_boxes").glob("*.png"))) == 2


def test_proposals_must_fit_the_input(tmp_path, capsys):
    spec = _spec(tmp_path, TINY_FAST_RCNN.replace("sliding_window(count=8)",
                                                  "sliding_window(count=6)"))
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "yolo.dls:13:30: error: sliding_window gives 6 boxes an image, but the input " \
           "proposals is f32[N,8,4]" in err


def test_a_loss_reading_a_missing_tensor_is_a_located_error(tmp_path, capsys):
    spec = _spec(tmp_path, TINY_FAST_RCNN.replace("deltas=deltas,", "deltas=delta,"))
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "yolo.dls:14:15: error: loss for the model's first output: fast_rcnn_loss reads " \
           "deltas=delta, but the model has no output, input or named value 'delta'" in err


def test_selective_search_finds_the_shapes_and_is_cached(tmp_path, monkeypatch):
    pytest.importorskip("cv2")
    from dlc.compiler.ops.boxes import iou
    from dlc.runtime import proposals
    from dlc.runtime.shapes import generate
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path))
    d = generate(3, 64, seed=3)
    found = [proposals.selective_search_boxes(x, 32) for x in d["x"]]
    assert all(f.shape == (32, 4) for f in found)
    assert len(list((tmp_path / "proposals").glob("*.npy"))) == 3
    for boxes, truth in zip(found, d["boxes"]):
        real = torch.tensor(truth[truth[:, 0] > 0][:, 1:])
        assert (iou(real, torch.tensor(boxes)).max(dim=1).values >= 0.5).all()
    monkeypatch.setattr(proposals, "_search", lambda *a: pytest.fail("not cached"))
    np.testing.assert_array_equal(proposals.selective_search_boxes(d["x"][0], 32), found[0])


def test_yolo_trains_on_triton_as_on_the_reference_without_a_torch_step(tmp_path, capsys,
                                                                          trained_alike):
    """yolo_loss and its gradient are kernels (templates/detection.py): the plan has no torch
    step (so a GPU step can be captured as a CUDA graph), and a short run on the Triton
    backend ends with the reference's losses and weights."""
    text = TINY_YOLO.replace("epochs    2", "epochs    1").replace("n=40", "n=20")
    spec = _spec(tmp_path, text)
    assert main(["compile", str(spec), "--emit", "plan"]) == 0
    plan = capsys.readouterr().out
    assert "detection_" in plan and "torch steps" not in plan
    for backend in ("reference", "triton"):
        assert main(["train", str(spec), "--out", str(tmp_path / backend), "--quiet",
                     "--backend", backend]) == 0
    runs = {b: [json.loads(l) for l in (tmp_path / b / "metrics.jsonl").read_text().splitlines()]
            for b in ("reference", "triton")}
    np.testing.assert_allclose([r["train_loss"] for r in runs["triton"]],
                               [r["train_loss"] for r in runs["reference"]], rtol=1e-5)
    trained_alike(tmp_path / "reference", tmp_path / "triton")
