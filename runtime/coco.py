"""A folder with a COCO-format instances file, read with json and Pillow (pycocotools is not
needed to read it):

    ROOT/annotations.json     {"images": [{"id", "file_name", ...}, ...],
                               "annotations": [{"id", "image_id", "category_id",
                                                "bbox": [x, y, w, h], "iscrowd": 0}, ...],
                               "categories": [{"id", "name"}, ...]}
    ROOT/images/FILE_NAME     the images it lists

Every listed image is read, in the order of the image ids, and resized to `size` (bilinear;
boxes scaled), giving the fields of voc(...) but the masks (runtime/voc.py):

    x      (n, 3, h, w) float32 in [0, 1]
    y      (n,) int64          the class of the largest box (0 when there is none)
    boxes  (n, B, 5) float32   [class, x0, y0, x1, y1] in resized pixels (x1 = x + w);
                               B the most boxes of any image, unused rows class -1

Classes are 1..C in the order of the sorted category ids; `names` is ["background", the
categories' names in that order]. Annotations marked `iscrowd` (a region of many objects,
which COCO's own evaluation ignores too) are skipped. Every error is a UserError naming the
file (and the annotation or image id) at `where`, the spec's data setting.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..spec.diagnostics import Span, UserError
from .voc import images_array, pack_boxes


class _Reader:
    """One instances file, its errors located at `where`."""

    def __init__(self, path: Path, where: Span | None):
        self.path, self.where = path, where

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.path}: {message}", self.where)

    def document(self) -> dict:
        """The file's object, with its three lists checked."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise UserError(f"coco: no annotation file {self.path}", self.where) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self.fail(f"not a readable COCO annotation file ({e})") from None
        if not isinstance(doc, dict):
            raise self.fail("a COCO annotation file holds one object with the lists images, "
                            "annotations and categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(doc.get(key), list):
                raise self.fail(f"a COCO annotation file needs a list '{key}'")
        return doc

    def by_id(self, doc: dict, name: str, key: str) -> dict:
        """id -> entry of the list `name` (images, categories); each entry has a whole-number
        id and `key`."""
        out = {}
        for k, entry in enumerate(doc[name]):
            if not isinstance(entry, dict) or not _whole(entry.get("id")) or key not in entry:
                raise self.fail(f"entry {k} (counting from 0) of the {name} list needs a "
                                f"whole-number 'id' and '{key}'")
            if entry["id"] in out:
                raise self.fail(f"two entries of the {name} list have the id {entry['id']}")
            out[entry["id"]] = entry
        return out

    def box(self, ann: dict) -> tuple[float, float, float, float]:
        """An annotation's bbox [x, y, w, h] as (x0, y0, x1, y1)."""
        bbox = ann.get("bbox")
        ok = isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)
        if not ok or bbox[2] <= 0 or bbox[3] <= 0:
            raise self.fail(f"annotation {ann.get('id')!r} has the box {bbox!r}; a box is "
                            "[x, y, width, height] with a positive width and height")
        x, y, w, h = bbox
        return x, y, x + w, y + h

    def objects(self, annotations: list, images: dict, classes: dict) -> dict:
        """image id -> [(class, x0, y0, x1, y1), ...] in the image's own pixels."""
        out: dict = {i: [] for i in images}
        for k, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise self.fail(f"annotation {k} (counting from 0) is not an object")
            name = ann.get("id", f"{k} (counting from 0)")
            if ann.get("image_id") not in images:
                raise self.fail(f"annotation {name} names the image {ann.get('image_id')!r}, "
                                "which the images list does not hold")
            if ann.get("category_id") not in classes:
                raise self.fail(f"annotation {name} names the category "
                                f"{ann.get('category_id')!r}, which the categories list "
                                "does not hold")
            if ann.get("iscrowd"):
                continue
            out[ann["image_id"]].append((classes[ann["category_id"]], *self.box(ann)))
        return out

    def image(self, folder: Path, entry: dict, size: tuple[int, int]):
        """A listed image resized to size (h, w): (h, w, 3) uint8 pixels, its scale (sx, sy)."""
        from PIL import Image, UnidentifiedImageError
        h, w = size
        file = folder / str(entry["file_name"])
        try:
            with Image.open(file) as im:
                scale = (w / im.width, h / im.height)
                return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR)), scale
        except FileNotFoundError:
            raise self.fail(f"image {entry['id']} has no file {file}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise self.fail(f"cannot read image {entry['id']} ({file}): {e}") from None


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_coco(annotations: Path, folder: Path, size: tuple[int, int],
              where: Span | None = None) -> dict:
    """x, y, boxes (see above) and the class names of a COCO instances file."""
    r = _Reader(annotations, where)
    doc = r.document()
    images = r.by_id(doc, "images", "file_name")
    categories = r.by_id(doc, "categories", "name")
    if not images:
        raise r.fail("the images list is empty")
    order = sorted(categories)
    classes = {cid: k + 1 for k, cid in enumerate(order)}           # category id -> 1..C
    objects = r.objects(doc["annotations"], images, classes)
    pixels, boxes = [], []
    for i in sorted(images):
        image, (sx, sy) = r.image(folder, images[i], size)
        pixels.append(image)
        boxes.append([(c, x0 * sx, y0 * sy, x1 * sx, y1 * sy)
                      for c, x0, y0, x1, y1 in objects[i]])
    box, labels = pack_boxes(boxes)
    return {"x": images_array(pixels), "y": labels, "boxes": box,
            "names": ["background", *(str(categories[c]["name"]) for c in order)]}
