"""`shapes(...)`: a seeded synthetic data set for segmentation and detection.

Each image is a noisy dark background with 1..max_shapes filled shapes of random size,
position and bright colour that do not overlap:

    x      (n, 3, size, size) float32 in [0, 1]
    y      (n,) int64          the image's class: the class of its largest shape
    masks  (n, size, size) int64   0 background, 1 square, 2 circle, 3 triangle
    boxes  (n, max_shapes, 5) float32  [class, x0, y0, x1, y1] in pixels, x1/y1 exclusive:
           the tight box of each shape's pixels; unused rows are [-1, 0, 0, 0, 0]

Masks and boxes agree by construction: a box is computed from the pixels its shape paints.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("background", "square", "circle", "triangle")


def _shape_mask(kind: int, x0: int, y0: int, s: int, yy, xx) -> np.ndarray:
    """Boolean (size, size) pixels of a shape of class `kind` inside the s x s box at (x0, y0)."""
    inside = (xx >= x0) & (xx < x0 + s) & (yy >= y0) & (yy < y0 + s)
    if kind == 1:
        return inside
    if kind == 2:
        c, r = (s - 1) / 2.0, s / 2.0
        return (xx - x0 - c) ** 2 + (yy - y0 - c) ** 2 <= r * r
    rows = yy - y0 + 1                                       # an upright triangle: apex at top
    return inside & (np.abs(xx - x0 - (s - 1) / 2.0) <= rows * s / (2.0 * s))


def _place(rng, size: int, sides: list[int]) -> list[tuple[int, int]] | None:
    """Non-overlapping (x0, y0) boxes (one pixel apart) for the given sides, or None."""
    placed: list[tuple[int, int, int]] = []
    for s in sides:
        for _ in range(30):
            x0, y0 = rng.integers(0, size - s + 1, size=2)
            if all(x0 + s + 1 <= px or px + ps + 1 <= x0 or y0 + s + 1 <= py or py + ps + 1 <= y0
                   for px, py, ps in placed):
                placed.append((int(x0), int(y0), s))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def generate(n: int, size: int = 32, max_shapes: int = 3, noise: float = 0.05,
             seed: int = 0) -> dict[str, np.ndarray]:
    """x, y, masks, boxes of n images (see the module docstring); deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    x = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    boxes = np.zeros((n, max_shapes, 5), np.float32)
    boxes[:, :, 0] = -1
    labels = np.zeros(n, np.int64)
    lo, hi = max(4, size // 6), max(5, size // 2)
    for i in range(n):
        count = int(rng.integers(1, max_shapes + 1))
        sides = sorted((int(s) for s in rng.integers(lo, hi + 1, size=count)), reverse=True)
        spots = _place(rng, size, sides)
        while spots is None:                                 # too crowded: one shape fewer
            sides = sides[:-1]
            spots = _place(rng, size, sides)
        back = rng.uniform(0.0, 0.3, size=3).astype(np.float32)
        img = back[:, None, None] + noise * rng.standard_normal((3, size, size)).astype(np.float32)
        best = 0
        for j, (s, (x0, y0)) in enumerate(zip(sides, spots)):
            kind = int(rng.integers(1, 4))
            pix = _shape_mask(kind, x0, y0, s, yy, xx)
            colour = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
            img[:, pix] = colour[:, None] + noise * rng.standard_normal(
                (3, int(pix.sum()))).astype(np.float32)
            masks[i][pix] = kind
            rows, cols = np.nonzero(pix)
            boxes[i, j] = (kind, cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            if pix.sum() > best:
                best, labels[i] = int(pix.sum()), kind
        x[i] = np.clip(img, 0.0, 1.0)
    return {"x": x, "y": labels, "masks": masks, "boxes": boxes}
