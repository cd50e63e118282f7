"""Fuzz the RoI kernels (templates/roi.py) against the reference backend:
`nice python scripts/fuzz_roi_kernels.py --cases 300 --seed 1`.

Each case draws an op (roi_pool, roi_spp, roi_align), a small map, a RoI layout ([R, 5] in
any image order, or [N, P, 4]), RoIs anywhere from off the map to past it, reversed, on half
pixels or smaller than a cell, a spatial scale, bins, levels, a sampling ratio and `aligned`,
and compares the forward and its gradient on the Triton backend (the interpreter unless
TRITON_INTERPRET=0) with the reference backend: max pooling exactly, RoI align within float32
summation order. Prints each failing case and the count; exit status 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRITON_INTERPRET", "1")


def draw_case(rng: random.Random) -> dict:
    op = rng.choice(["roi_pool", "roi_spp", "roi_align"])
    n, c, h, w = rng.randint(1, 2), rng.randint(1, 2), rng.randint(1, 9), rng.randint(1, 9)
    scale = rng.choice([1.0, 0.5, 0.25, 1 / 3])
    size_h, size_w = h / scale, w / scale
    per_image = rng.randint(0, 4)
    boxes = []
    for _ in range(n * per_image):
        x0 = rng.uniform(-0.4, 1.2) * size_w
        y0 = rng.uniform(-0.4, 1.2) * size_h
        x1 = x0 + rng.uniform(-0.2, 1.0) * size_w       # sometimes reversed
        y1 = y0 + rng.uniform(-0.2, 1.0) * size_h
        box = [x0, y0, x1, y1]
        if rng.random() < 0.5:                          # whole or half pixels
            box = [round(v * 2) / 2 for v in box]
        boxes.append(box)
    if op == "roi_spp":
        attrs = {"levels": tuple(sorted(rng.sample(range(1, 5), rng.randint(1, 3)))),
                 "spatial_scale": scale}
    else:
        attrs = {"output": (rng.randint(1, 4), rng.randint(1, 4)), "spatial_scale": scale}
    if op == "roi_align":
        attrs |= {"sampling_ratio": rng.choice([-1, 0, 1, 2, 3]),
                  "aligned": rng.random() < 0.5}
    return {"op": op, "shape": (n, c, h, w), "boxes": boxes, "per_image": per_image,
            "layout": rng.choice(["rois", "boxes"]) if per_image else "rois", "attrs": attrs,
            "seed": rng.randrange(1 << 30)}


def rois_of(case: dict):
    import torch
    n = case["shape"][0]
    boxes = torch.tensor(case["boxes"], dtype=torch.float32).reshape(n * case["per_image"], 4)
    if case["layout"] == "boxes":
        return boxes.reshape(n, case["per_image"], 4)
    index = torch.arange(float(n)).repeat_interleave(case["per_image"])[:, None]
    rois = torch.cat([index, boxes], 1)
    order = random.Random(case["seed"]).sample(range(len(rois)), len(rois))
    return rois[order]


def run_case(case: dict) -> None:
    import torch
    from tests.kernels.kernel_check import op_graph, run_both
    rois = rois_of(case)
    g = op_graph(case["op"], [case["shape"], tuple(rois.shape)], case["attrs"], grad_wrt=(0,))
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["shape"], generator=gen)
    r = torch.randn(g.inputs[2].type.shape, generator=gen)
    exact = case["op"] != "roi_align"
    plan = run_both(g, {"x0": x, "x1": rois, "r": r}, rtol=0 if exact else 1e-5,
                    atol=0 if exact else 1e-5)
    assert plan.torch_steps == 0, plan.torch_steps


def main() -> int:
    return fuzz(draw_case, run_case, __doc__)


def fuzz(draw_case, run_case, doc: str) -> int:
    """Draws and runs --cases cases from --seed; prints the failures and the count."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    failed, t0 = 0, time.time()
    for k in range(args.cases):
        case = draw_case(rng)
        try:
            run_case(case)
        except Exception as exc:                        # report and go on
            failed += 1
            print(f"case {k}: {case}\n  {type(exc).__name__}: {str(exc)[:400]}", flush=True)
    print(f"{args.cases} cases, {failed} failed, {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
