"""A detector's detections: the model's outputs decoded into boxes, non-maximum suppression,
and their scores (VOC mAP@0.5 and COCO mAP@[.5:.95] through runtime/detection_metrics.py).

A spec is a detector when a loss term's op reads the data's ground-truth boxes (its class has
`box_target`, e.g. `yolo_loss`). That op also says how the output it scores becomes boxes
(its `detect` method: boxes [N, K, 4] in pixels, scores [N, K], classes [N, K] 1..C, before
NMS); this file keeps the boxes scoring at least SCORE_MIN, runs per-class greedy NMS at
NMS_IOU (compiler/ops/boxes.py `nms_keep`) and keeps the MAX_DETS best per image:

    rows (class, score, x0, y0, x1, y1) per image, best first
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..compiler.ops import get as get_op
from ..compiler.ops.boxes import nms_keep

SCORE_MIN = 0.01          # detections scoring less are dropped before NMS
NMS_IOU = 0.5             # a box overlapping a kept box of its class above this is suppressed
MAX_DETS = 100            # at most this many detections per image (COCO's maxDets)


@dataclass
class Detector:
    """The loss term that makes a spec a detector: the output it scores and its op."""
    output: str | None        # the model output (None: the first)
    op: object                # the loss op (its `detect` decodes the output)
    attrs: dict               # the loss's arguments
    target: str               # the data field holding the ground truth (boxes)

    def classes(self, graph) -> int:
        """C, the number of object classes the output predicts."""
        out = graph.outputs[graph.output_names.index(self.output) if self.output else 0]
        return self.op.num_classes(out.type, self.attrs)


def detector_of(config) -> Detector | None:
    """The spec's detection term: the first loss term that reads ground-truth boxes and can
    decode its output into boxes (Faster R-CNN's rpn_loss reads boxes but decodes nothing);
    None when there is none."""
    for term in config.loss_terms():
        op = get_op(term.call.name)
        if getattr(op, "box_target", False) and hasattr(op, "detect"):
            attrs = op.attrs(dict(term.call.args), [])
            return Detector(term.output, op, attrs, term.target)
    return None


def keep_best(boxes, scores, classes, score_min: float = SCORE_MIN, iou: float = NMS_IOU,
              max_dets: int = MAX_DETS) -> np.ndarray:
    """One image's detections as rows (class, score, x0, y0, x1, y1), best first: boxes
    [K, 4], scores [K], classes [K] thresholded, NMS'd per class and cut to max_dets."""
    ok = scores >= score_min
    boxes, scores, classes = boxes[ok], scores[ok], classes[ok]
    keep = nms_keep(boxes, scores, classes, iou)
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    order = torch.argsort(scores, descending=True, stable=True)[:max_dets]
    rows = torch.cat([classes[order, None].to(boxes.dtype), scores[order, None], boxes[order]],
                     dim=1)
    return rows.detach().cpu().numpy().astype(np.float64)


def detections(det: Detector, pred: torch.Tensor, tensors: dict | None = None) -> list:
    """Every image's detection rows (see keep_best) from the output the detector scores."""
    boxes, scores, classes = det.op.detect(pred, det.attrs, tensors)
    return [keep_best(b, s, c) for b, s, c in zip(boxes, scores, classes)]


def class_names(names, classes: int) -> list[str]:
    """The names of object classes 1..C: the data's (index 0 is the background) or 'class k'."""
    if names is not None and len(names) > classes:
        return [str(n) for n in names[1:classes + 1]]
    return [f"class {k}" for k in range(1, classes + 1)]


def detection_scores(ground_truth, found: list, names: list[str]) -> dict:
    """map50, map and ap (per class: ap50, ap) of the detections against the ground truth."""
    from .detection_metrics import score_detections
    s = score_detections(list(ground_truth), found, names, max_dets=MAX_DETS)
    return {"map50": s["map50"], "map": s["map"], "ap": s["per_class"]}
