"""Faster R-CNN's own ops: the RPN's per-anchor view against a loop transcription of
torchvision's `permute_and_flatten` and its gradient against torch.autograd; the proposal
layer against a NumPy transcription of torchvision's RPN filtering (top-k, decode, clip,
small boxes, NMS, top-n); the RPN loss of a train section, lowered to assign_targets ->
rpn_loss, and its located errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from det_refs import iou_np, nms_np, run_op
from dlc.cli import main
from dlc.compiler.ir import TensorType
from dlc.compiler.ops import ShapeError, get
from dlc.compiler.ops.boxes import make_anchors


def test_per_anchor_is_torchvisions_permute_and_flatten():
    """Channel a*k + j at cell (h, w) is value j of anchor (h*W + w)*A + a."""
    n, a, k, h, w = 2, 3, 4, 2, 5
    x = torch.randn(n, a * k, h, w, dtype=torch.float64)
    got = run_op("per_anchor", {"x": x}, {"values": k})[0]
    want = np.zeros((n, h * w * a, k))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for aa in range(a):
                    for v in range(k):
                        want[b, (i * w + j) * a + aa, v] = x[b, aa * k + v, i, j]
    np.testing.assert_array_equal(got.numpy(), want)
    one = run_op("per_anchor", {"x": x[:, :a]}, {"values": 1})[0]
    assert one.shape == (n, h * w * a)
    np.testing.assert_array_equal(one.numpy(), want[..., 0] * 0 + np.stack(
        [x[:, aa, i, j].numpy() for i in range(h) for j in range(w) for aa in range(a)], 1))


@pytest.mark.parametrize("k", [1, 4])
def test_per_anchor_gradient_is_autograds(k):
    x = torch.randn(2, 3 * k, 3, 2, dtype=torch.float64, requires_grad=True)
    op = get("per_anchor")
    y = op.forward([x], {"values": k}, None)[0]
    gy = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, x, gy)
    got = get("per_anchor_bwd").forward([gy, x.detach()], {"values": k}, None)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_per_anchor_shape_errors():
    op = get("per_anchor")
    with pytest.raises(ShapeError, match="not a multiple of 4"):
        op.infer([TensorType(("N", 6, 4, 4))], {"values": 4})
    with pytest.raises(ShapeError, match=r"\[N, A\*k, H, W\]"):
        op.infer([TensorType(("N", 16))], {"values": 4})


def propose_np(obj, deltas, anchors, count, pre, iou_t, size, min_size):
    """torchvision's RegionProposalNetwork.filter_proposals for one image and one level,
    transcribed: top `pre` by objectness, BoxCoder.decode (weights 1, dw and dh clamped at
    log(1000/16)), clip_boxes_to_image, remove_small_boxes, nms, the first `count`; padded
    here with the whole image."""
    h, w = size
    order = np.argsort(-obj, kind="stable")[:pre]
    a, d = anchors[order], deltas[order]
    wa, ha = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    xa, ya = a[:, 0] + 0.5 * wa, a[:, 1] + 0.5 * ha
    clip = math.log(1000.0 / 16)
    x, y = d[:, 0] * wa + xa, d[:, 1] * ha + ya
    pw, ph = np.exp(np.minimum(d[:, 2], clip)) * wa, np.exp(np.minimum(d[:, 3], clip)) * ha
    boxes = np.stack([x - pw / 2, y - ph / 2, x + pw / 2, y + ph / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    big = np.nonzero(((boxes[:, 2] - boxes[:, 0]) >= min_size)
                     & ((boxes[:, 3] - boxes[:, 1]) >= min_size))[0]
    keep = nms_np(boxes[big], obj[order][big], iou_t)[:count]
    kept = boxes[big][keep]
    pad = np.tile([0.0, 0.0, w, h], (count - len(kept), 1))
    return np.concatenate([kept, pad])


@pytest.mark.parametrize("pre,iou_t,min_size", [(0, 0.7, 1.0), (20, 0.5, 0.0), (60, 0.3, 6.0)])
def test_propose_matches_torchvisions_filtering(pre, iou_t, min_size):
    g = torch.Generator().manual_seed(1)
    anchors = make_anchors(4, 4, (8.0, 16.0), (0.5, 1.0, 2.0), 8, torch.float64)   # K = 96
    k = anchors.shape[0]
    obj = torch.randn(3, k, generator=g, dtype=torch.float64)
    obj[0, 5] = obj[0, 7]                                  # a tie: the lower index first
    deltas = 0.5 * torch.randn(3, k, 4, generator=g, dtype=torch.float64)
    deltas[1, :, 2:] = -4.0                                # every box tiny: all dropped
    deltas[2, 0, 2:] = 20.0                                # exp clamped at log(1000/16)
    attrs = get("propose").attrs({"count": 12, "size": [30, 32], "pre_nms": pre,
                                  "iou": iou_t, "min_size": min_size}, [])
    got = run_op("propose", {"o": obj, "d": deltas, "a": anchors}, attrs)[0]
    assert got.shape == (3, 12, 4)
    for i in range(3):
        want = propose_np(obj[i].numpy(), deltas[i].numpy(), anchors.numpy(), 12,
                          pre or k, iou_t, (30, 32), min_size)
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-12, atol=1e-12)
        kept = want[~np.all(want == [0, 0, 32, 30], axis=1)]
        if len(kept) > 1:                                  # what NMS promises
            ious = iou_np(kept, kept)
            assert (ious[np.triu_indices(len(kept), 1)] <= iou_t).all()
    if min_size > 0:
        assert np.all(got[1].numpy() == [0, 0, 32, 30])    # nothing left: the whole image


def test_propose_shape_errors():
    op = get("propose")
    attrs = op.attrs({"count": 8, "size": 64}, [])
    with pytest.raises(ShapeError, match="anchors \\[K, 4\\] = \\[12, 4\\]"):
        op.infer([TensorType(("N", 12)), TensorType(("N", 12, 4)), TensorType((10, 4))], attrs)
    with pytest.raises(ShapeError, match="count >= 1"):
        op.infer([TensorType(("N", 12)), TensorType(("N", 12, 4)), TensorType((12, 4))],
                 {**attrs, "count": 0})


TINY = """
model Tiny(A=2) {
    input x: f32[3, 16, 16]
    features = x -> conv(8, 3, stride=2) -> relu
    objectness = features -> conv(A, 1) -> per_anchor(1)
    rpn_deltas = features -> conv(4 * A, 1) -> per_anchor(4)
    anchors = anchors(features, sizes=[4, 8], ratios=[1], stride=2)
    proposals = propose(objectness, rpn_deltas, anchors, count=4, size=16)
    scores = roi_pool(features, proposals, output=2, spatial_scale=0.5) -> flatten -> linear(4)
    deltas = roi_pool(features, proposals, output=2, spatial_scale=0.5) -> flatten -> linear(16)
    output scores, deltas, proposals, objectness
}
train {
    data shapes(n=8, size=16)
    loss (scores=fast_rcnn_loss(deltas=deltas, rois=proposals),
          objectness=rpn_loss(deltas=rpn_deltas, anchors=anchors, batch=32))
}
"""


def test_the_rpn_term_is_assign_targets_then_rpn_loss(tmp_path, capsys):
    spec = tmp_path / "tiny.dls"
    spec.write_text(TINY)
    assert main(["compile", str(spec), "--emit", "ir-train"]) == 0
    ir = capsys.readouterr().out
    assign = next(l for l in ir.splitlines() if "= assign_targets(" in l)
    assert "batch=32" in assign and "fg_iou=0.7" in assign and "low_quality=true" in assign
    assert "%boxes)" in assign and "tiny.dls:16:11" in assign
    assert "rpn_loss(" in ir and "rpn_loss_bwd(" in ir and "per_anchor_bwd(" in ir


@pytest.mark.parametrize("change,message,where", [
    ("anchors=anchors, batch", "rpn_loss reads anchors=anchor, but the model has no output, "
     "input or named value 'anchor'", "16:11"),
    ("sizes=[4, 8], ratios=[1]", "propose needs anchors [K, 4] = [128, 4]", "8:17"),
])
def test_rpn_term_errors_are_located(tmp_path, capsys, change, message, where):
    text = TINY
    if change.startswith("anchors="):
        text = text.replace("anchors=anchors, batch", "anchors=anchor, batch")
    else:
        text = text.replace(change, "sizes=[4, 8, 16, 32], ratios=[1]")
    spec = tmp_path / "tiny.dls"
    spec.write_text(text)
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err and f"tiny.dls:{where}" in err, err


def test_rois_a_detector_decodes_must_be_an_output(tmp_path, capsys):
    spec = tmp_path / "tiny.dls"
    spec.write_text(TINY.replace("output scores, deltas, proposals, objectness",
                                 "output scores, deltas, objectness"))
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert ("tiny.dls:15:11: error: fast_rcnn_loss reads rois=proposals to decode its "
            "detections, but 'proposals' is not an output of the model Tiny") in err
    assert "output scores, deltas, objectness, proposals" in err


def test_add_gt_boxes_puts_true_boxes_first_at_most_half():
    props = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    gt = torch.tensor([[[2, 1, 1, 5, 5], [-1, 0, 0, 0, 0], [1, 0, 0, 9, 9]],
                       [[3, 2, 2, 4, 4], [1, 3, 3, 8, 8], [2, 0, 0, 1, 1]]], dtype=torch.float32)
    got = run_op("add_gt_boxes", {"p": props, "g": gt}, {})[0]
    want = [[[1, 1, 5, 5], [0, 0, 9, 9], props[0, 0].tolist(), props[0, 1].tolist()],
            [[2, 2, 4, 4], [3, 3, 8, 8], props[1, 0].tolist(), props[1, 1].tolist()]]
    np.testing.assert_array_equal(got.numpy(), np.array(want, dtype=np.float32))


def test_gt_proposals_pass_feeds_the_roi_head_in_training_only(tmp_path, capsys):
    spec = tmp_path / "tiny.dls"
    spec.write_text(TINY)
    assert main(["compile", str(spec), "--emit", "ir-train"]) == 0
    train = capsys.readouterr().out.splitlines()
    gt = next(l for l in train if "= add_gt_boxes(" in l)
    made = gt.split(":")[0].strip()                          # %k
    readers = [l for l in train if "= roi_pool(" in l or "= fast_rcnn_loss(" in l]
    assert len(readers) == 3 and all(f"{made}" in l.split(" = ")[1] for l in readers)
    assert main(["compile", str(spec), "--emit", "ir"]) == 0          # the inference graph
    assert "add_gt_boxes" not in capsys.readouterr().out
    spec.write_text(TINY.replace("count=4, size=16", "count=4, size=16, gt=false"))
    assert main(["compile", str(spec), "--emit", "ir-train"]) == 0
    assert "add_gt_boxes" not in capsys.readouterr().out


def test_the_plan_of_a_detector_binds_its_boxes_per_image(capsys):
    """`--emit plan` of a detector plans for the boxes per image the data promises
    (shapes' max_shapes); the RPN's views are copy kernels, its target assignment and
    proposal layer torch steps, its loss and the loss's gradient kernels."""
    spec = Path(__file__).parents[2] / "examples" / "faster_rcnn.dls"
    assert main(["compile", str(spec), "--emit", "plan", "--batch", "4"]) == 0
    plan = capsys.readouterr().out
    assert plan.splitlines()[0] == "plan FasterRCNN.train (M=3, N=4)"
    steps = next(l for l in plan.splitlines() if l.startswith("torch steps:"))
    assert "propose" in steps and "assign_targets" in steps and "per_anchor" not in steps
    assert "rpn_loss" not in steps and "rpn_loss" in plan
    assert "per_anchor" in plan
