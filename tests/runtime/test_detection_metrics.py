"""mAP through pycocotools on a hand-made case whose AP is worked out by hand below."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dlc.runtime.detection_metrics import score_detections

pytest.importorskip("pycocotools")

NAMES = ("square", "triangle", "circle")

# Two images.  square (1): one box in each; triangle (2): one box, never detected; circle (3):
# no ground truth, one (false) detection.
GT = [np.array([[1, 0, 0, 10, 10], [2, 40, 40, 50, 50], [-1, 0, 0, 0, 0]], float),
      np.array([[1, 20, 20, 30, 30]], float)]
DETS = [np.array([[1, 0.9, 0, 0, 10, 10],             # square: exact, IoU 1
                  [3, 0.5, 5, 5, 9, 9]], float),      # circle: no such object
        np.array([[1, 0.8, 0, 0, 5, 5],               # square: misses everything
                  [1, 0.7, 20, 20, 30, 27.2]], float)]  # square: IoU 72/100 with its box


def coco_ap(recall_precision: list[tuple[float, float]]) -> float:
    """COCO's AP from the (recall, precision) after each detection, by its definition: the
    precision made non-increasing from the right, read at the 101 recalls 0, 0.01, .., 1."""
    envelope = [max(p for _, p in recall_precision[i:]) for i in range(len(recall_precision))]
    total = 0.0
    for r in (i / 100 for i in range(101)):
        reached = [i for i, (rc, _) in enumerate(recall_precision) if rc >= r - 1e-12]
        total += envelope[reached[0]] if reached else 0.0
    return total / 101


def test_map_on_a_hand_made_case():
    got = score_detections(GT, DETS, NAMES)
    # square, ranked 0.9 (hit), 0.8 (miss), 0.7 (hit while the IoU threshold t <= 0.72):
    hit = coco_ap([(0.5, 1.0), (0.5, 0.5), (1.0, 2 / 3)])    # = (51 + 50 * 2/3) / 101
    miss = coco_ap([(0.5, 1.0), (0.5, 0.5), (0.5, 1 / 3)])   # = 51 / 101
    assert math.isclose(hit, (51 + 50 * 2 / 3) / 101) and math.isclose(miss, 51 / 101)
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    square_ap = sum(hit if t <= 0.72 else miss for t in thresholds) / 10   # 5 hits, 5 misses
    sq = got["per_class"]["square"]
    assert math.isclose(sq["ap50"], hit, rel_tol=1e-9)
    assert math.isclose(sq["ap"], square_ap, rel_tol=1e-9)
    assert got["per_class"]["triangle"] == {"ap50": 0.0, "ap": 0.0}      # never detected
    assert got["per_class"]["circle"] == {"ap50": None, "ap": None}     # no ground truth
    assert math.isclose(got["map50"], hit / 2, rel_tol=1e-9)             # square and triangle
    assert math.isclose(got["map"], square_ap / 2, rel_tol=1e-9)


def test_perfect_and_empty_detections():
    perfect = [np.array([[r[0], 1.0, *r[1:]] for r in g if r[0] > 0]) for g in GT]
    got = score_detections(GT, perfect, NAMES)
    assert math.isclose(got["map50"], 1.0) and math.isclose(got["map"], 1.0)
    none = score_detections(GT, [np.zeros((0, 6)), np.zeros((0, 6))], NAMES)
    assert none["map50"] == 0.0 and none["per_class"]["circle"]["ap"] is None
    with pytest.raises(ValueError, match="2 images of ground truth but 1"):
        score_detections(GT, DETS[:1], NAMES)
