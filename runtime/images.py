"""The `images(root=...)` data source: one subfolder of images per class, decoded with
Pillow into float32 [channels, height, width] pixels in [0, 1]; the classes are the
subfolders' names in sorted order."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..spec.diagnostics import UserError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_image_folder(root: Path, size: int, gray: bool, call) -> tuple:
    """(x, y, class names) of every image under root/<class>/."""
    where = call.arg_spans.get("root", call.span)
    if not root.is_dir():
        raise UserError(f"images: no such folder {root}", where)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"images: {root} has no class subfolders", where,
                        hint="put each class's images in a folder named after the class")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UserError("the images data source needs Pillow", where,
                        hint="pip install pillow") from None
    xs, ys = [], []
    for k, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in SUFFIXES)
        for f in files:
            try:
                with Image.open(f) as img:
                    img = img.convert("L" if gray else "RGB")
                    if size:
                        img = img.resize((size, size))
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as e:
                raise UserError(f"images: cannot decode {f}: {e}", where) from None
            arr = arr[None] if gray else arr.transpose(2, 0, 1)        # (C, H, W)
            if xs and arr.shape != xs[0].shape:
                raise UserError(f"images: {f} is {arr.shape[2]}x{arr.shape[1]}, but the first "
                                f"image is {xs[0].shape[2]}x{xs[0].shape[1]}", where,
                                hint="give size=N to resize every image to N x N")
            xs.append(arr)
            ys.append(k)
    if not xs:
        raise UserError(f"images: no image files under {root}", where)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes
