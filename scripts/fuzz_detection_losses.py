"""Fuzz the detection loss kernels (templates/detection.py) against the reference backend:
`nice python scripts/fuzz_detection_losses.py --cases 300 --seed 1`.

Each case draws an op (yolo_loss, rpn_loss, fast_rcnn_loss) and small random inputs: for
YOLO a grid size, boxes per cell, classes, image size and gt rows (padding, several in one
cell, centres on grid lines, boxes past the border, images without any); for the RPN labels
-1/0/positive in any mix (none sampled, no positive); for Fast R-CNN RoIs on, near and far
from the gt, thresholds and images without gt. The loss and its gradients on the Triton
backend (the interpreter unless TRITON_INTERPRET=0) are compared with the reference backend
within float32 summation order. Prints each failing case and the count; exit status 1 if any
failed.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRITON_INTERPRET", "1")

from fuzz_roi_kernels import fuzz  # noqa: E402


def _gt_rows(rng: random.Random, n: int, m: int, classes: int, h: int, w: int) -> list:
    rows = []
    for _ in range(n * m):
        if rng.random() < 0.25:
            rows.append([-1.0, 0.0, 0.0, 0.0, 0.0])
            continue
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        box = [x0, y0, x0 + rng.uniform(0, 0.8) * w, y0 + rng.uniform(0, 0.8) * h]
        if rng.random() < 0.5:                          # whole pixels: centres on grid lines
            box = [float(round(v)) for v in box]
        rows.append([float(rng.randint(1, classes)), *box])
    if rows and rng.random() < 0.3:                     # a second box in an earlier one's cell
        rows[-1] = [rows[0][0] if rows[0][0] > 0 else 1.0, *rows[0][1:]]
    return rows


def draw_case(rng: random.Random) -> dict:
    op = rng.choice(["yolo_loss", "rpn_loss", "fast_rcnn_loss"])
    n, seed = rng.randint(1, 3), rng.randrange(1 << 30)
    if op == "yolo_loss":
        s, b, c = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 4)
        h, w = rng.randint(8, 64), rng.randint(8, 64)
        m = rng.randint(0, 5)
        return {"op": op, "n": n, "seed": seed, "shape": (n, s, s, 5 * b + c),
                "gt": _gt_rows(rng, n, m, c, h, w), "m": m,
                "attrs": {"boxes": b, "size": (h, w), "coord": rng.choice([5.0, 1.0]),
                          "noobj": rng.choice([0.5, 0.1])}}
    if op == "rpn_loss":
        k = rng.randint(1, 40)
        weights = rng.choice([(1, 1, 1), (1, 0, 0), (0, 1, 0), (3, 3, 1)])
        labels = rng.choices([-1, 0, 1], weights=weights, k=n * k)
        return {"op": op, "n": n, "seed": seed, "k": k, "labels": labels,
                "attrs": {"beta": rng.choice([1 / 9, 0.0, 1.0]),
                          "box_weight": rng.choice([1.0, 2.5])}}
    c, p, m = rng.randint(1, 4), rng.randint(1, 6), rng.randint(0, 4)
    # boxes with an area (a positive's log(w / wa) target is -inf or NaN on both backends else)
    gt = [[k, x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)]
          for k, x0, y0, x1, y1 in _gt_rows(rng, n, m, c, 48, 48)]
    rois = []
    for i in range(n * p):
        img = gt[(i // p) * m:(i // p + 1) * m]
        if img and rng.random() < 0.5:                  # near one of its image's gt rows
            x0, y0, x1, y1 = (v + rng.uniform(-4, 4) for v in rng.choice(img)[1:])
            rois.append([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)])
        else:
            x0, y0 = rng.uniform(0, 40), rng.uniform(0, 40)
            rois.append([x0, y0, x0 + rng.uniform(1, 30), y0 + rng.uniform(1, 30)])
    low = rng.choice([0.0, 0.1, 0.3])
    return {"op": op, "n": n, "seed": seed, "classes": c, "p": p, "m": m, "gt": gt,
            "rois": rois, "attrs": {"fg_iou": rng.choice([0.3, 0.5, 0.7]), "bg_low": low,
                                    "box_weight": rng.choice([1.0, 2.0])}}


def _inputs(case: dict):
    """(input shapes, dtypes, inputs without r, inputs differentiated)."""
    import torch
    gen = torch.Generator().manual_seed(case["seed"])
    n = case["n"]
    if case["op"] == "yolo_loss":
        gt = torch.tensor(case["gt"], dtype=torch.float32).reshape(n, case["m"], 5)
        pred = torch.rand(*case["shape"], generator=gen) * 1.2 - 0.1
        return [case["shape"], tuple(gt.shape)], (), {"x0": pred, "x1": gt}, (0,)
    if case["op"] == "rpn_loss":
        k = case["k"]
        labels = torch.tensor(case["labels"]).reshape(n, k)
        ins = {"x0": torch.randn(n, k, generator=gen) * 3,
               "x1": torch.randn(n, k, 4, generator=gen), "x2": labels,
               "x3": torch.randn(n, k, 4, generator=gen) * 0.5}
        return ([(n, k), (n, k, 4), (n, k), (n, k, 4)], ("f32", "f32", "i64", "f32"), ins,
                (0, 1))
    r, v, m = n * case["p"], case["classes"] + 1, case["m"]
    rois = torch.tensor(case["rois"], dtype=torch.float32).reshape(n, case["p"], 4)
    gt = torch.tensor(case["gt"], dtype=torch.float32).reshape(n, m, 5)
    ins = {"x0": torch.randn(r, v, generator=gen), "x1": torch.randn(r, 4 * v, generator=gen),
           "x2": rois, "x3": gt}
    return [(r, v), (r, 4 * v), tuple(rois.shape), tuple(gt.shape)], (), ins, (0, 1)


def run_case(case: dict) -> None:
    import torch
    from tests.kernels.kernel_check import op_graph, run_both
    shapes, dtypes, ins, wrt = _inputs(case)
    g = op_graph(case["op"], shapes, case["attrs"], grad_wrt=wrt, dtypes=dtypes)
    plan = run_both(g, {**ins, "r": torch.tensor(0.8)}, rtol=1e-5, atol=1e-5)
    assert plan.torch_steps == 0, plan.torch_steps


def main() -> int:
    return fuzz(draw_case, run_case, __doc__)


if __name__ == "__main__":
    sys.exit(main())
