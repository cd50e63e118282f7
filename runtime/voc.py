"""A folder in Pascal VOC's layout, read with Pillow:

    ROOT/JPEGImages/ID.jpg            the images
    ROOT/SegmentationClass/ID.png     class-index masks (palette PNGs; 255 marks borders)
    ROOT/Annotations/ID.xml           boxes: <object><name>cat</name><bndbox><xmin>...
    ROOT/ImageSets/Segmentation/trainval.txt   the IDs to read (optional: else every mask)

Every image is resized to `size` (bilinear; masks nearest, boxes scaled):

    x      (n, 3, h, w) float32 in [0, 1]
    y      (n,) int64          the class of the largest box (0 when there is none)
    masks  (n, h, w) int64     0..20, 255 where VOC leaves pixels out
    boxes  (n, B, 5) float32   [class, x0, y0, x1, y1] in resized pixels, x1/y1 exclusive;
                               B the most boxes of any image, unused rows class -1
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..spec.diagnostics import UserError

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")


def _ids(root: Path) -> list[str]:
    listed = root / "ImageSets" / "Segmentation" / "trainval.txt"
    if listed.is_file():
        return [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]
    return sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))


def _boxes(path: Path, sx: float, sy: float) -> list[tuple]:
    """[class, x0, y0, x1, y1] per object of an annotation file, scaled (VOC's 1-based,
    inclusive corners become 0-based, exclusive ones)."""
    if not path.is_file():
        return []
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise UserError(f"{path}: not a readable annotation ({e})") from None
    out = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASSES:
            raise UserError(f"{path}: unknown class {name!r}")
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"{path}: an object's bndbox needs xmin, ymin, xmax, ymax") from None
        out.append((CLASSES.index(name), (x0 - 1) * sx, (y0 - 1) * sy, x1 * sx, y1 * sy))
    return out


def read_voc(root: Path, size: tuple[int, int]) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError
    ids = _ids(root)
    if not ids:
        raise UserError(f"{root}: no masks in SegmentationClass/ (Pascal VOC's layout)")
    h, w = size
    xs, masks, boxes = [], [], []
    for i in ids:
        jpg, png = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
        try:
            with Image.open(jpg) as im:
                sx, sy = w / im.width, h / im.height
                xs.append(np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR)))
            with Image.open(png) as m:
                masks.append(np.asarray(m.resize((w, h), Image.NEAREST)))
        except FileNotFoundError as e:
            raise UserError(f"{root}: image {i} has no file {Path(e.filename).name}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{root}: cannot read image {i}: {e}") from None
        boxes.append(_boxes(root / "Annotations" / f"{i}.xml", sx, sy))
    box, labels = pack_boxes(boxes)
    return {"x": images_array(xs), "y": labels,
            "masks": np.stack(masks).astype(np.int64), "boxes": box}


def pack_boxes(per_image: list[list[tuple]]) -> tuple[np.ndarray, np.ndarray]:
    """Every image's boxes [(class, x0, y0, x1, y1), ...] as one array (n, B, 5), B the most
    of any image, unused rows class -1; and the labels (n,) int64, each image's largest box's
    class (0 when it has none)."""
    most = max(1, max(len(b) for b in per_image))
    box = np.zeros((len(per_image), most, 5), np.float32)
    box[:, :, 0] = -1
    labels = np.zeros(len(per_image), np.int64)
    for k, bs in enumerate(per_image):
        if bs:
            box[k, :len(bs)] = bs
            labels[k] = max(bs, key=lambda b: (b[3] - b[1]) * (b[4] - b[2]))[0]
    return box, labels


def images_array(pixels: list[np.ndarray]) -> np.ndarray:
    """(h, w, 3) uint8 images as one (n, 3, h, w) float32 array in [0, 1]."""
    x = (np.stack(pixels).astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)
