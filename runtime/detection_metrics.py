"""Detection scores through pycocotools: mAP@0.5 (VOC's threshold) and COCO's mAP@[.5:.95],
per class and overall.

    score_detections(ground_truth, detections, class_names) -> {
        "map50": float, "map": float,
        "per_class": {name: {"ap50": float | None, "ap": float | None}}}

ground_truth: one array per image, rows (class, x0, y0, x1, y1) in pixels (x1, y1 exclusive;
rows of class <= 0 are padding, as in the `shapes` data set).  detections: one array per image,
rows (class, score, x0, y0, x1, y1).  Classes are 1..C; class_names[k - 1] names class k.

The scoring is pycocotools' COCOeval ("bbox", all areas, up to `max_dets` detections per image):
a detection matches an unmatched ground-truth box of its class when IoU >= t, highest score
first; AP is the mean of the interpolated precision at 101 recall points (COCO's rule; VOC 2010+
interpolates at every recall point instead, so mAP@0.5 here is COCO's AP50).  A class without
ground truth has no AP (None) and is left out of the means.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from ..spec.diagnostics import UserError


def _coco():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:                         # an optional extra: pip install dlc[detect]
        raise UserError("detection metrics need pycocotools: pip install 'dlc[detect]' "
                        "(or pip install pycocotools)") from e
    return COCO, COCOeval


def _xywh(row) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in row)
    return [x0, y0, x1 - x0, y1 - y0]


def _ground_truth(ground_truth, n_classes: int) -> dict:
    images, annotations = [], []
    for i, rows in enumerate(ground_truth):
        images.append({"id": i})
        for row in np.asarray(rows, dtype=np.float64).reshape(-1, 5):
            if row[0] <= 0:
                continue
            box = _xywh(row[1:])
            annotations.append({"id": len(annotations) + 1, "image_id": i, "bbox": box,
                                "category_id": int(row[0]), "area": box[2] * box[3],
                                "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": k} for k in range(1, n_classes + 1)]}


def _detections(detections) -> list[dict]:
    out = []
    for i, rows in enumerate(detections):
        for row in np.asarray(rows, dtype=np.float64).reshape(-1, 6):
            if row[0] > 0:
                out.append({"image_id": i, "category_id": int(row[0]), "score": float(row[1]),
                            "bbox": _xywh(row[2:])})
    return out


def _precision(ground_truth, detections, n_classes: int, max_dets: int) -> np.ndarray:
    """COCOeval's interpolated precision [T=10 IoU thresholds, R=101 recalls, K classes]
    (-1 where a class has no ground truth)."""
    COCO, COCOeval = _coco()
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints its progress
        gt = COCO()
        gt.dataset = _ground_truth(ground_truth, n_classes)
        gt.createIndex()
        dets = _detections(detections)
        if not dets:                                  # loadRes refuses an empty list
            return np.where(_has_truth(gt, n_classes)[None, None, :], 0.0, -1.0) * np.ones(
                (10, 101, 1))
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, -1]       # area "all", the largest max_dets


def _has_truth(gt, n_classes: int) -> np.ndarray:
    return np.array([bool(gt.getAnnIds(catIds=[k])) for k in range(1, n_classes + 1)])


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def score_detections(ground_truth, detections, class_names, max_dets: int = 100) -> dict:
    """mAP@0.5 and mAP@[.5:.95], overall and per class (see the module docstring)."""
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} images of ground truth but {len(detections)} "
                         "of detections")
    precision = _precision(ground_truth, detections, len(class_names), max_dets)
    per_class = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k]                        # (T, R)
        if (p < 0).all():
            per_class[name] = {"ap50": None, "ap": None}
        else:
            per_class[name] = {"ap50": float(p[0].mean()), "ap": float(p.mean())}
    return {"map50": _mean(c["ap50"] for c in per_class.values()),
            "map": _mean(c["ap"] for c in per_class.values()),
            "per_class": per_class}
