"""Region proposals for the detectors that take them (R-CNN, SPP-Net, Fast R-CNN): the train
section's `proposals` setting fills the model's input `proposals: f32[P, 4]` with P boxes
(x0, y0, x1, y1) per image, computed once per image.

    selective_search(count, mode="fast", min_side=4)   OpenCV's ximgproc.segmentation selective
        search (Uijlings et al.; the optional extra `dlc[proposals]`, opencv-contrib-python-
        headless), its first `count` distinct boxes at least min_side pixels a side, cached
        per image in DLC_CACHE_DIR/proposals (default ~/.cache/dlc/proposals)
    sliding_window(count, min_side=0)   no dependency, the same for every image: square windows
        of sides from a sixth to a half of the image (4 scales), each slid over a k x k grid
        of positions corner to corner, `count` of them taken evenly from the list (scale by
        scale); the fallback for machines without OpenCV, and what the tests use

An image with fewer proposals than P has its list padded with the whole image.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..compiler.ops.registry import Arg
from ..spec.diagnostics import UserError

INPUT = "proposals"             # the model input the setting fills

PROPOSALS = {
    "selective_search": (Arg("count", 32, kind="int", doc="boxes per image (P)"),
                         Arg("mode", "fast", kind="name", doc="fast or quality"),
                         Arg("min_side", 4, kind="int", doc="smallest side kept, in pixels")),
    "sliding_window": (Arg("count", 32, kind="int", doc="boxes per image, about"),
                       Arg("min_side", 0, kind="int", doc="smallest window side; 0: a sixth "
                           "of the image")),
}


def _cache_dir() -> Path:
    return Path(os.environ.get("DLC_CACHE_DIR", Path.home() / ".cache" / "dlc")) / "proposals"


def _search(image: np.ndarray, mode: str):
    import cv2
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    bgr = np.ascontiguousarray((np.clip(image, 0, 1) * 255).astype(np.uint8)
                               .transpose(1, 2, 0)[:, :, ::-1])
    ss.setBaseImage(bgr)
    ss.switchToSelectiveSearchQuality() if mode == "quality" else ss.switchToSelectiveSearchFast()
    return ss.process()                                       # (K, 4) x, y, w, h


def selective_search_boxes(image: np.ndarray, count: int, mode: str = "fast",
                           min_side: int = 4) -> np.ndarray:
    """[count, 4] boxes of one image (3, H, W) in [0, 1]; cached per image and arguments."""
    key = hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()
                       + f"{count},{mode},{min_side}".encode()).hexdigest()
    path = _cache_dir() / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    rects = _search(image, mode)
    seen, boxes = set(), []
    for x, y, w, h in rects:
        if min(w, h) >= min_side and (x, y, w, h) not in seen:
            seen.add((x, y, w, h))
            boxes.append((x, y, x + w, y + h))
        if len(boxes) == count:
            break
    out = _padded(boxes, count, image.shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def sliding_windows(h: int, w: int, count: int, min_side: int = 0) -> np.ndarray:
    """About `count` square windows (at most count) over an h x w image, 4 scales."""
    lo = max(min_side, min(h, w) // 6, 1)
    hi = max(lo, min(h, w) // 2)
    sides = np.unique(np.linspace(lo, hi, 4).round().astype(int))
    k = max(1, int(np.ceil(np.sqrt(count / len(sides)))))      # k x k positions a scale
    boxes = []
    for s in sides:
        ys = np.linspace(0, h - s, k).round()
        xs = np.linspace(0, w - s, k).round()
        boxes += [(x, y, x + s, y + s) for y in ys for x in xs]
    if len(boxes) > count:                                     # every scale keeps its share
        boxes = [boxes[i] for i in np.linspace(0, len(boxes) - 1, count).round().astype(int)]
    return _padded(boxes, count, (h, w))


def _padded(boxes: list, count: int, hw) -> np.ndarray:
    h, w = hw
    boxes = list(boxes) + [(0, 0, w, h)] * (count - len(boxes))
    return np.asarray(boxes, np.float32).reshape(count, 4)


def compute(call, images: np.ndarray) -> np.ndarray:
    """[n, P, 4] proposals of images (n, 3, H, W) by the source `call`."""
    a = call.args
    n, _, h, w = images.shape
    if call.name == "sliding_window":
        return np.broadcast_to(sliding_windows(h, w, a["count"], a["min_side"]),
                               (n, a["count"], 4)).copy()
    try:
        import cv2
        cv2.ximgproc.segmentation          # noqa: B018  (the contrib build has it)
    except (ImportError, AttributeError):
        raise UserError("selective_search needs OpenCV's contrib modules: pip install "
                        "'dlc[proposals]' (opencv-contrib-python-headless)", call.span,
                        hint="or use `proposals sliding_window(count=...)`, which needs "
                             "nothing") from None
    return np.stack([selective_search_boxes(x, a["count"], a["mode"], a["min_side"])
                     for x in images])


def check(call, model_input) -> None:
    """The setting fits the model: an input `proposals: f32[P, 4]` with P = count."""
    if model_input is None:
        raise UserError(f"proposals fill the model's input '{INPUT}', but it has none",
                        call.span, hint=f"declare `input {INPUT}: f32[{call.args['count']}, 4]`")
    shape = tuple(model_input.type.shape[1:])
    if shape != (call.args["count"], 4):
        raise UserError(f"{call.name} gives {call.args['count']} boxes an image, but the input "
                        f"{INPUT} is {model_input.type}", call.arg_spans.get("count", call.span),
                        hint=f"count={shape[0]}" if len(shape) == 2 else None)


def with_proposals(data, call, graph):
    """The data set with every split's x a dict: the images under the model's first input and
    their proposals under `proposals` (unchanged when the spec has no proposals setting)."""
    if call is None:
        return data
    model_input = next((v for v in graph.inputs if v.input_name == INPUT), None)
    check(call, model_input)
    first = graph.inputs[0].input_name
    for split in (data.train, data.val, data.test):
        if not isinstance(split.x, dict):
            images = split.x
            split.x = {first: images, INPUT: compute(call, images)}
    return data
