"""Segmentation metrics from a confusion matrix: pixel accuracy and mean IoU.

    confusion[t, p] = number of pixels of true class t predicted as p (ignored pixels left out)
    pixel_acc = trace / total
    IoU_c     = confusion[c, c] / (row_c + col_c - confusion[c, c]),  over classes with a
                non-empty union (present in the truth or in the predictions)
    miou      = mean of IoU_c
"""
from __future__ import annotations

import numpy as np
import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int,
              ignore: int | None = None) -> torch.Tensor:
    """(classes, classes) int64 counts, on pred's device; pred, target: (N, H, W) indices."""
    keep = (target >= 0) & (target < classes)
    if ignore is not None:
        keep &= target != ignore
    flat = target[keep] * classes + pred[keep]
    return torch.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def seg_scores(conf: np.ndarray) -> dict:
    """pixel_acc and miou of a confusion matrix (None when it counts no pixel)."""
    conf = np.asarray(conf, dtype=np.float64)
    total = conf.sum()
    if total == 0:
        return {"pixel_acc": None, "miou": None}
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return {"pixel_acc": float(tp.sum() / total),
            "miou": float(np.mean(tp[present] / union[present]))}
