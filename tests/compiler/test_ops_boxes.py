"""Box IoU and NMS against transcriptions of torchvision.ops (det_refs.py says why not
torchvision itself), anchors against their definition, box-coding round trips, and target
assignment by IoU with seeded sampling against a NumPy transcription of Faster R-CNN's rules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from det_refs import iou_np, nms_np, run_op
from dlc.compiler.ir import TensorType
from dlc.compiler.ops import ShapeError, get

DT = torch.float64


def _boxes(k, seed, size=32.0):
    g = np.random.default_rng(seed)
    xy = g.uniform(-4, size, (k, 2))
    wh = g.uniform(1, size / 2, (k, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_box_iou_matches_definition_including_disjoint_touching_and_empty():
    a = np.concatenate([_boxes(5, 0), [[0, 0, 4, 4], [4, 0, 8, 4], [2, 2, 2, 6]]])
    b = np.concatenate([_boxes(4, 1), [[0, 0, 4, 4]]])
    got = run_op("box_iou", {"a": torch.tensor(a), "b": torch.tensor(b)}, {})[0]
    np.testing.assert_allclose(got.numpy(), iou_np(a, b), atol=1e-12)
    assert got[5, 4] == 1.0 and got[6, 4] == 0.0 and got[7, 4] == 0.0   # same, touching, flat
    none = run_op("box_iou", {"a": torch.zeros((0, 4), dtype=DT), "b": torch.tensor(b)}, {})[0]
    assert none.shape == (0, 5)


def test_box_iou_batched_and_shape_errors():
    a, b = _boxes(6, 2).reshape(2, 3, 4), _boxes(8, 3).reshape(2, 4, 4)
    got = run_op("box_iou", {"a": torch.tensor(a), "b": torch.tensor(b)}, {})[0]
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), iou_np(a[i], b[i]), atol=1e-12)
    with pytest.raises(ShapeError, match=r"boxes \[\.\.\., 4\]"):
        get("box_iou").infer([TensorType((3, 5)), TensorType((2, 4))], {})


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_encode_matches_formula_and_decode_inverts_it(weights):
    boxes, anchors = _boxes(7, 4), _boxes(7, 5)
    a = get("box_encode").attrs({"weights": weights}, [])
    d = run_op("box_encode", {"b": torch.tensor(boxes), "a": torch.tensor(anchors)}, a)[0]
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x, y = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    want = np.stack([weights[0] * (x - xa) / wa, weights[1] * (y - ya) / ha,
                     weights[2] * np.log(w / wa), weights[3] * np.log(h / ha)], axis=1)
    np.testing.assert_allclose(d.numpy(), want, rtol=1e-12)
    a = get("box_decode").attrs({"weights": weights}, [])
    back = run_op("box_decode", {"d": d, "a": torch.tensor(anchors)}, a)[0]
    np.testing.assert_allclose(back.numpy(), boxes, rtol=1e-10, atol=1e-10)


def test_box_decode_clamps_huge_sizes():
    a = get("box_decode").attrs({}, [])
    d = torch.tensor([[0.0, 0.0, 50.0, 0.0]], dtype=DT)
    out = run_op("box_decode", {"d": d, "a": torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=DT)},
                 a)[0]
    assert math.isclose(float(out[0, 2] - out[0, 0]), 2.0 * 1000 / 16, rel_tol=1e-9)


def test_anchors_follow_their_definition():
    sizes, ratios, stride, h, w = (8.0, 16.0), (0.5, 1.0, 2.0), 4, 3, 2
    a = get("anchors").attrs({"sizes": sizes, "ratios": ratios, "stride": stride}, [])
    feat = TensorType(("N", 5, h, w))
    assert get("anchors").infer([feat], a)[0].shape == (h * w * 6, 4)
    out = run_op("anchors", {"f": torch.zeros(1, 5, h, w)}, a)[0].double().numpy()
    want = []
    for i in range(h):
        for j in range(w):
            for r in ratios:
                for s in sizes:
                    bw, bh = s / math.sqrt(r), s * math.sqrt(r)
                    cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
                    want.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    np.testing.assert_allclose(out, np.array(want), rtol=1e-6)
    area = (out[:, 2] - out[:, 0]) * (out[:, 3] - out[:, 1])
    np.testing.assert_allclose(area, np.tile(np.square(sizes), h * w * 3), rtol=1e-5)
    with pytest.raises(ShapeError, match="stride"):
        get("anchors").infer([feat], get("anchors").attrs({"stride": 0}, []))
    with pytest.raises(ShapeError, match="static size"):
        get("anchors").infer([TensorType(("N", 5, "H", "W"))], a)


def _nms_case(k, seed):
    g = np.random.default_rng(seed)
    centres = g.uniform(0, 20, (k, 2))
    centres[k // 2:] = centres[:k - k // 2] + g.normal(0, 1.0, (k - k // 2, 2))   # overlaps
    wh = g.uniform(4, 9, (k, 2))
    boxes = np.concatenate([centres - wh / 2, centres + wh / 2], axis=1)
    return boxes, g.permutation(k).astype(float) / k, g.integers(1, 4, k)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_per_class_matches_torchvision_batched_nms_transcription(threshold):
    boxes, scores, classes = _nms_case(40, 7)
    keep = run_op("nms", {"b": torch.tensor(boxes), "s": torch.tensor(scores),
                          "c": torch.tensor(classes)}, {"iou": threshold})[0]
    want = np.zeros(40)
    for cls in np.unique(classes):                    # batched_nms: each class on its own
        idx = np.nonzero(classes == cls)[0]
        want[idx[nms_np(boxes[idx], scores[idx], threshold)]] = 1.0
    np.testing.assert_array_equal(keep.numpy(), want)
    assert 0 < want.sum() < 40


def test_nms_batched_padding_and_empty():
    boxes, scores, classes = _nms_case(12, 8)
    classes[-3:] = -1                                 # padding rows are never kept
    b = torch.tensor(np.stack([boxes, boxes[::-1].copy()]))
    s = torch.tensor(np.stack([scores, scores]))
    c = torch.tensor(np.stack([classes, classes[::-1].copy()]))
    keep = run_op("nms", {"b": b, "s": s, "c": c}, {"iou": 0.5})[0]
    for i in range(2):
        ci = c[i].numpy()
        want = np.zeros(12)
        for cls in set(ci.tolist()) - {-1}:
            idx = np.nonzero(ci == cls)[0]
            want[idx[nms_np(b[i].numpy()[idx], s[i].numpy()[idx], 0.5)]] = 1.0
        np.testing.assert_array_equal(keep[i].numpy(), want)
    empty = run_op("nms", {"b": torch.zeros((0, 4), dtype=DT), "s": torch.zeros(0, dtype=DT),
                           "c": torch.zeros(0, dtype=torch.int64)}, {"iou": 0.5})[0]
    assert empty.shape == (0,)


def _assign_np(anchors, gt, fg, bg, low_quality):
    """Faster R-CNN's Matcher: best gt per anchor; fg >= fg, bg < bg, between ignored; with
    low_quality each gt's best anchors (ties too) become positives of their own best gt."""
    real = gt[gt[:, 0] > 0]
    ious = iou_np(anchors, real[:, 1:])
    best, which = ious.max(axis=1), ious.argmax(axis=1)
    labels = np.full(len(anchors), -1)
    labels[best < bg] = 0
    pos = best >= fg
    if low_quality:
        for m in range(len(real)):
            pos |= (ious[:, m] == ious[:, m].max()) & (ious[:, m].max() > 0)
    labels[pos] = real[which[pos], 0]
    return labels, real[which, 1:]


def _assign_case():
    anchors = np.array([[x, y, x + s, y + s] for s in (6.0, 12.0) for y in range(0, 24, 4)
                        for x in range(0, 24, 4)])
    gt = np.array([[[2, 3, 2, 11, 9], [1, 14, 12, 25, 23], [-1, 0, 0, 0, 0]],
                   [[3, 0, 0, 7, 7], [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]]], dtype=float)
    return anchors, gt


@pytest.mark.parametrize("low_quality", [True, False])
def test_assign_targets_without_sampling_matches_transcription(low_quality):
    anchors, gt = _assign_case()
    k = len(anchors)
    a = get("assign_targets").attrs({"batch": 10 * k, "positive_fraction": 1.0,
                                     "low_quality": low_quality, "weights": (1, 1, 2, 2)}, [])
    labels, deltas = run_op("assign_targets", {"a": torch.tensor(anchors),
                                               "g": torch.tensor(gt)}, a)
    for i in range(2):
        want, matched = _assign_np(anchors, gt[i], 0.7, 0.3, low_quality)
        np.testing.assert_array_equal(labels[i].numpy(), want)
        pos = want > 0
        assert pos.any()
        back = run_op("box_decode", {"d": deltas[i][torch.tensor(pos)],
                                     "a": torch.tensor(anchors[pos])},
                      get("box_decode").attrs({"weights": (1, 1, 2, 2)}, []))[0]
        np.testing.assert_allclose(back.numpy(), matched[pos], atol=1e-9)
        assert not deltas[i][torch.tensor(~pos)].any()


def test_assign_targets_samples_a_seeded_batch():
    anchors, gt = _assign_case()
    a = get("assign_targets").attrs({"batch": 8, "positive_fraction": 0.25}, [])
    feeds = {"a": torch.tensor(anchors), "g": torch.tensor(gt)}
    l1 = run_op("assign_targets", feeds, a, seed=1)[0]
    l2 = run_op("assign_targets", feeds, a, seed=1)[0]
    l3 = run_op("assign_targets", feeds, a, seed=2)[0]
    assert torch.equal(l1, l2) and not torch.equal(l1, l3)
    for i in range(2):
        full, _ = _assign_np(anchors, gt[i], 0.7, 0.3, True)
        got = l1[i].numpy()
        chosen = got >= 0
        np.testing.assert_array_equal(got[chosen], full[chosen])       # a subset of the matches
        assert (got > 0).sum() == min(2, (full > 0).sum())
        assert chosen.sum() == min(8, (full >= 0).sum())


def test_assign_targets_per_image_proposals_and_errors():
    anchors, gt = _assign_case()
    a = get("assign_targets").attrs({"fg_iou": 0.5, "bg_iou": 0.5, "bg_low": 0.1,
                                     "low_quality": False, "batch": 1000,
                                     "positive_fraction": 1.0}, [])
    props = torch.tensor(np.stack([anchors, anchors[::-1].copy()]))
    labels, _ = run_op("assign_targets", {"p": props, "g": torch.tensor(gt)}, a)
    for i in range(2):
        ious = iou_np(props[i].numpy(), gt[i][gt[i][:, 0] > 0][:, 1:]).max(axis=1)
        got = labels[i].numpy()
        assert ((got > 0) == (ious >= 0.5)).all()
        assert ((got == 0) == ((ious >= 0.1) & (ious < 0.5))).all()
        assert ((got == -1) == (ious < 0.1)).all()
    with pytest.raises(ShapeError, match="bg_low <= bg_iou <= fg_iou"):
        get("assign_targets").infer([TensorType((5, 4)), TensorType((2, 3, 5))],
                                    get("assign_targets").attrs({"bg_iou": 0.8}, []))
    with pytest.raises(ShapeError, match=r"\[N, M, 5\]"):
        get("assign_targets").infer([TensorType((5, 4)), TensorType((2, 3, 4))], a)
