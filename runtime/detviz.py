"""Pictures and files of detections: boxes drawn on images with Pillow (the class name and
score beside each), a sheet of a few validation images, and the JSON `dlc predict` writes.

    draw(image (C, H, W), rows, names, truth=None) -> PIL image, drawn `scale` times larger
    detection_sheet(images, found, names, path, truth)  a PNG, one image per column
    save_detections(found, names, json_path, folder, images)  boxes JSON + one PNG per image

Detection rows are runtime/detect.py's: (class, score, x0, y0, x1, y1) in input pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .segviz import _rgb

TRUTH = (255, 255, 255)         # ground-truth boxes: white; detections: the class's colour
COLOURS = ((255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 224, 32), (255, 64, 255),
           (32, 255, 255), (255, 144, 32), (160, 96, 255))
MIN_SIDE = 256                  # small images are drawn at least this large


def _scale(h: int, w: int) -> int:
    return max(1, MIN_SIDE // max(h, w))


def _name(names: list[str], cls: int) -> str:
    return names[cls - 1] if 1 <= cls <= len(names) else f"class {cls}"


def draw(image: np.ndarray, rows: np.ndarray, names: list[str], truth=None,
         min_score: float = 0.3):
    """The image (C, H, W) with the detections scoring at least min_score drawn in their
    class's colour (name and score above the box), and the ground-truth rows (class, x0, y0,
    x1, y1) in white."""
    from PIL import Image, ImageDraw
    s = _scale(*image.shape[1:])
    img = Image.fromarray(_rgb(image)).resize((image.shape[2] * s, image.shape[1] * s),
                                               Image.NEAREST)
    pen = ImageDraw.Draw(img)
    for row in ([] if truth is None else np.asarray(truth).reshape(-1, 5)):
        if row[0] > 0:
            pen.rectangle([v * s for v in row[1:]], outline=TRUTH, width=1)
    for cls, score, *box in np.asarray(rows).reshape(-1, 6):
        if score < min_score:
            continue
        colour = COLOURS[(int(cls) - 1) % len(COLOURS)]
        x0, y0, x1, y1 = (v * s for v in box)
        pen.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        pen.text((x0 + 2, max(0, y0 - 11)), f"{_name(names, int(cls))} {score:.2f}", fill=colour)
    return img


def detection_sheet(images: np.ndarray, found: list, names: list[str], path: Path,
                    truth=None) -> None:
    """A PNG of the images side by side, each with its detections (and truth) drawn."""
    from PIL import Image
    pics = [draw(x, rows, names, None if truth is None else truth[i])
            for i, (x, rows) in enumerate(zip(images, found))]
    sheet = Image.new("RGB", (sum(p.width for p in pics), max(p.height for p in pics)))
    at = 0
    for p in pics:
        sheet.paste(p, (at, 0))
        at += p.width
    sheet.save(path)


def as_json(found: list, names: list[str]) -> list[dict]:
    """Per image, its detections as {"class", "name", "score", "box": [x0, y0, x1, y1]}."""
    return [{"image": i, "detections": [
        {"class": int(r[0]), "name": _name(names, int(r[0])), "score": round(float(r[1]), 5),
         "box": [round(float(v), 2) for v in r[2:]]} for r in rows]}
        for i, rows in enumerate(found)]


def save_detections(found: list, names: list[str], json_path: Path, folder: Path,
                    images: np.ndarray) -> None:
    """The detections as JSON at json_path, and each image with its boxes as folder/NNNNN.png."""
    json_path.write_text(json.dumps(as_json(found, names), indent=1) + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    for i, (x, rows) in enumerate(zip(images, found)):
        draw(x, rows, names).save(folder / f"{i:05d}.png")
