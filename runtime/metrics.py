"""Test-split metrics beyond loss and accuracy, from the model's outputs and the targets.

    regression(pred, y)         mae, rmse, r2 (over every target value)
    classification(pred, y, k)  per-class precision, recall, f1 and support, their macro
                                means, and the k x k confusion matrix (rows: true class,
                                columns: predicted class)

Each is a small NumPy transcription of its textbook definition (tests check them against
scikit-learn's)."""
from __future__ import annotations

import numpy as np


def regression(pred: np.ndarray, y: np.ndarray) -> dict:
    """Mean absolute error, root mean squared error and R² = 1 - SS_res / SS_tot."""
    pred = pred.reshape(len(pred), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    err = pred - y
    ss_res = float((err ** 2).sum())
    ss_tot = float(((y - y.mean(axis=0)) ** 2).sum())
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None}


def confusion(labels: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts: [true, predicted]."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (y.astype(np.int64), labels.astype(np.int64)), 1)
    return m


def classification(logits: np.ndarray, y: np.ndarray, classes: int) -> dict:
    """Per-class precision, recall and F1 (0 where undefined), supports, macro means and
    the confusion matrix."""
    m = confusion(logits[:, :classes].argmax(axis=1), y, classes)
    tp = np.diag(m).astype(np.float64)
    predicted, support = m.sum(axis=0), m.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(classes), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(classes), where=both > 0)
    return {"per_class": {"precision": precision.tolist(), "recall": recall.tolist(),
                          "f1": f1.tolist(), "support": support.tolist()},
            "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean())},
            "confusion": m.tolist()}
