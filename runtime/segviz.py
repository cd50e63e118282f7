"""Pictures of segmentations: class indices as coloured PNG masks (Pascal VOC's palette),
and an overlay sheet of a few images beside their true and predicted masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: Pascal VOC's colour map (bit-interleaved class index); 255 is white."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    if n > 255:
        out[255] = (255, 255, 255)
    return out


def colour(masks: np.ndarray) -> np.ndarray:
    """(..., H, W) class indices -> (..., H, W, 3) uint8 colours."""
    return palette()[np.clip(masks, 0, 255).astype(np.int64)]


def save_masks(masks: np.ndarray, folder: Path) -> list[Path]:
    """One palette PNG per mask (N, H, W) in `folder`: 00000.png, 00001.png, ..."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, m in enumerate(masks):
        img = Image.fromarray(np.clip(m, 0, 255).astype(np.uint8), mode="P")
        img.putpalette(palette().reshape(-1).tolist())
        paths.append(folder / f"{i:05d}.png")
        img.save(paths[-1])
    return paths


def _rgb(x: np.ndarray) -> np.ndarray:
    """(C, H, W) floats -> (H, W, 3) uint8, stretched to [0, 255] (grey for one channel)."""
    x = x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, axis=0)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return (x.transpose(1, 2, 0) * 255).astype(np.uint8)


def overlay_sheet(images: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: Path,
                  alpha: float = 0.5) -> None:
    """A PNG with one row per image: the image, the truth over it, the prediction over it."""
    from PIL import Image
    rows = []
    for x, t, p in zip(images, truth, pred):
        base = _rgb(x).astype(np.float32)
        cells = [base] + [(1 - alpha) * base + alpha * colour(m).astype(np.float32)
                          for m in (t, p)]
        rows.append(np.concatenate(cells, axis=1))
    sheet = np.concatenate(rows, axis=0).astype(np.uint8)
    scale = max(1, 128 // images.shape[2])          # small images drawn larger
    img = Image.fromarray(sheet)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
