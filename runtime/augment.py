"""Data augmentation: the train section's `augment` chain, applied to every training batch.

    augment crop(padding=4) -> flip -> mixup(0.2)

Each transform is a batched tensor function on the device that trains (no Python loop
over images). Per-example choices (offsets, flips, factors, boxes) come from a
`torch.Generator` on that device; the per-batch λ of mixup/cutmix (and cutmix's box,
one per batch as in the paper) from a numpy generator, so nothing waits for the device.
Both are seeded from the run's seed: the same seed gives the same batches. Evaluation
never augments — only `TrainStep` (runtime/train_step.py) calls an `Augmenter`.

`mixup` and `cutmix` also return the permutation that paired the examples and λ: the
train graph then scores λ·CE(z, y) + (1 − λ)·CE(z, y[perm]) (compiler/pipeline.py).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from ..compiler.config import Call
from ..compiler.limits import MAX_WINDOW
from ..compiler.ops._lazy import F, torch
from ..compiler.ops.registry import Arg

AUGMENTS: dict[str, tuple[Arg, ...]] = {
    "crop": (Arg("padding", 4, kind="int", doc="zeros added on each side before cropping"),),
    "flip": (Arg("p", 0.5, kind="float", doc="probability of mirroring left-right"),),
    "resized_crop": (Arg("scale", [0.08, 1.0], kind="floats", doc="area fraction range"),
                     Arg("ratio", [3 / 4, 4 / 3], kind="floats", doc="aspect ratio range")),
    "jitter": (Arg("brightness", 0.2, kind="float"), Arg("contrast", 0.2, kind="float"),
               Arg("saturation", 0.2, kind="float")),
    "cutout": (Arg("size", 8, kind="int", doc="side of the erased square"),
               Arg("p", 1.0, kind="float", doc="probability of erasing")),
    "noise": (Arg("std", 0.1, kind="float", doc="standard deviation of the added noise"),),
    "mixup": (Arg("alpha", 0.2, kind="float", doc="λ ~ Beta(alpha, alpha)"),),
    "cutmix": (Arg("alpha", 1.0, kind="float", doc="λ ~ Beta(alpha, alpha)"),),
}
IMAGE_ONLY = ("crop", "flip", "resized_crop", "jitter", "cutout", "cutmix")
LABEL_MIXERS = ("mixup", "cutmix")
# transforms that move pixels, and so move a segmentation mask with them (f(x, a, d, masks,
# fill) -> (x, masks)); the others change pixel values only and leave a mask as it is
GEOMETRIC = ("crop", "flip", "resized_crop")
MASK_SAFE = GEOMETRIC + ("jitter", "noise", "cutout")
BOX_SAFE = MASK_SAFE        # ground-truth boxes move alike (move_boxes); no label mixing


def move_boxes(boxes, scale_x, shift_x, scale_y, shift_y, w: int, h: int):
    """Ground-truth boxes (N, M, 5) under the per-example map x -> scale_x x + shift_x,
    y -> scale_y y + shift_y (N,) of an augmentation: corners mapped (a negative scale
    mirrors), clipped to the w x h image; a box left without area becomes padding (class
    -1, zeros), as are padding rows."""
    if boxes is None:
        return None
    xs = boxes[..., 1:5:2] * scale_x[:, None, None] + shift_x[:, None, None]     # (N, M, 2)
    ys = boxes[..., 2:5:2] * scale_y[:, None, None] + shift_y[:, None, None]
    x0, x1 = xs.min(-1).values.clamp(0, w), xs.max(-1).values.clamp(0, w)
    y0, y1 = ys.min(-1).values.clamp(0, h), ys.max(-1).values.clamp(0, h)
    keep = (boxes[..., 0] > 0) & (x1 > x0) & (y1 > y0)
    out = torch.stack([boxes[..., 0], x0, y0, x1, y1], -1)
    pad = torch.tensor([-1.0, 0, 0, 0, 0], dtype=boxes.dtype, device=boxes.device)
    return torch.where(keep[..., None], out, pad)


def check_augment(call: Call) -> tuple[str, str] | None:
    """(the argument at fault, what is wrong) for a transform's arguments, or None."""
    a = call.args
    for key in ("p",):
        if key in a and not 0.0 <= a[key] <= 1.0:
            return key, f"p must be in [0, 1], got {a[key]}"
    for key in ("padding", "size", "std", "alpha", "brightness", "contrast", "saturation"):
        if key in a and not 0 <= a[key] < math.inf:
            return key, f"{key} must be a number >= 0, got {a[key]}"
    for key in ("padding", "size"):                  # pixels: absurd sizes refused at check
        if key in a and isinstance(a[key], int) and a[key] > MAX_WINDOW:
            return key, f"{key} must be at most {MAX_WINDOW:,} pixels, got {a[key]:,}"
    for key in ("brightness", "contrast", "saturation"):
        if key in a and a[key] >= 1:
            return key, f"{key} must be below 1 (a factor in [1 - {key}, 1 + {key}])"
    if call.name == "resized_crop":
        for key, hi in (("scale", 1.0), ("ratio", math.inf)):
            lo_hi = a[key]
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= hi:
                return key, f"{key} must be [low, high] with 0 < low <= high" + \
                    (" <= 1" if hi == 1.0 else "") + f", got {lo_hi}"
    return None


class Augmented(NamedTuple):
    """An augmented batch: the examples, and for a label mixer the partner of each example
    (`perm`, indices into the batch) and the weight λ of the example's own label."""
    x: "torch.Tensor"
    perm: "torch.Tensor | None" = None
    lam: float = 1.0
    masks: "torch.Tensor | None" = None     # (N, H, W) per-pixel classes, moved as x was
    boxes: "torch.Tensor | None" = None     # (N, M, 5) (class, x0, y0, x1, y1), moved as x was


class Draw:
    """The random sources of one run: `gen` (torch, on the device) for per-example
    choices, `rng` (numpy, on the host) for the per-batch λ and cutmix box."""

    def __init__(self, seed: int, device):
        self.gen = torch.Generator(device=device).manual_seed(seed + 0x5A17)
        self.rng = np.random.default_rng([seed, 0xA06])

    def uniform(self, n: int, lo: float, hi: float, like) -> "torch.Tensor":   # (n,)
        u = torch.rand(n, generator=self.gen, device=like.device, dtype=like.dtype)
        return lo + (hi - lo) * u

    def ints(self, n: int, high: int, like) -> "torch.Tensor":                 # (n,) in [0, high)
        return torch.randint(0, high, (n,), generator=self.gen, device=like.device)

    def lam(self, alpha: float) -> float:
        """λ ~ Beta(alpha, alpha); alpha 0 is no mixing (λ = 1)."""
        return float(self.rng.beta(alpha, alpha)) if alpha > 0 else 1.0


def crop(x, a, d: Draw, masks=None, fill: int = 255, boxes=None):
    """Pad each side with `padding` zeros, cut a random window of the original size; a
    mask is padded with `fill` (the loss's ignore label) and cut alike, boxes shifted and
    clipped."""
    n, c, h, w = x.shape                                           # (N, C, H, W)
    p = a["padding"]
    if p == 0:
        return x, masks, boxes
    xp = F.pad(x, (p, p, p, p))                                    # (N, C, H+2p, W+2p)
    top, left = d.ints(n, 2 * p + 1, x), d.ints(n, 2 * p + 1, x)
    rows = top[:, None] + torch.arange(h, device=x.device)         # (N, H)
    cols = left[:, None] + torch.arange(w, device=x.device)        # (N, W)
    if boxes is not None:                      # pixel v of the window is v + offset - p
        one = torch.ones(n, dtype=boxes.dtype, device=boxes.device)
        boxes = move_boxes(boxes, one, (p - left).to(boxes.dtype), one,
                           (p - top).to(boxes.dtype), w, h)
    ni = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    out = xp[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]           # (N, C, H, W)
    if masks is not None:
        mp = F.pad(masks, (p, p, p, p), value=fill)                # (N, H+2p, W+2p)
        masks = mp[ni[:, 0], rows[:, :, None], cols[:, None, :]]   # (N, H, W)
    return out, masks, boxes


def flip(x, a, d: Draw, masks=None, fill: int = 255, boxes=None):
    """Mirror each image (its mask, its boxes) left-right with probability p."""
    hit = d.uniform(x.shape[0], 0.0, 1.0, x) < a["p"]              # (N,)
    if masks is not None:
        masks = torch.where(hit[:, None, None], masks.flip(2), masks)
    if boxes is not None:                                          # x -> w - x when hit
        w = x.shape[3]
        sx = torch.where(hit, -1.0, 1.0).to(boxes.dtype)
        one, zero = torch.ones_like(sx), torch.zeros_like(sx)
        boxes = move_boxes(boxes, sx, torch.where(hit, float(w), 0.0).to(boxes.dtype),
                           one, zero, w, x.shape[2])
    return torch.where(hit[:, None, None, None], x.flip(3), x), masks, boxes


def resized_crop(x, a, d: Draw, masks=None, fill: int = 255, boxes=None):
    """A box of area fraction s ~ U(scale) and aspect w/h = exp(U(log ratio)), clipped to
    the image, at a uniform position, resampled bilinearly to the full size (a mask: by
    its nearest pixel, so classes stay classes; ground-truth boxes: mapped by the same
    affine map, x_out = (x_in - left) w / bw, and clipped)."""
    n, c, h, w = x.shape
    s = d.uniform(n, *a["scale"], x)                               # (N,) area fractions
    r = torch.exp(d.uniform(n, math.log(a["ratio"][0]), math.log(a["ratio"][1]), x))
    bw = torch.sqrt(s * h * w * r).clamp(max=w)                    # (N,) box width, pixels
    bh = torch.sqrt(s * h * w / r).clamp(max=h)
    cx = (bw / 2 + d.uniform(n, 0.0, 1.0, x) * (w - bw)) * (2 / w) - 1    # centre, in [-1, 1]
    cy = (bh / 2 + d.uniform(n, 0.0, 1.0, x) * (h - bh)) * (2 / h) - 1
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([bw / w, zero, cx], 1),
                         torch.stack([zero, bh / h, cy], 1)], 1)           # (N, 2, 3)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks[:, None].to(x.dtype), grid, mode="nearest",
                              padding_mode="border", align_corners=False)[:, 0].to(masks.dtype)
    if boxes is not None:          # the crop's left edge (cx + 1) w/2 - bw/2 goes to 0
        sx, sy = (w / bw).to(boxes.dtype), (h / bh).to(boxes.dtype)
        left, top = (cx + 1) * (w / 2) - bw / 2, (cy + 1) * (h / 2) - bh / 2
        boxes = move_boxes(boxes, sx, -left.to(boxes.dtype) * sx, sy,
                           -top.to(boxes.dtype) * sy, w, h)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                         align_corners=False), masks, boxes


def _gray(x):
    """(N, 1, H, W): ITU-R 601 luma for 3 channels, else the channel mean."""
    if x.shape[1] == 3:
        wts = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (x * wts[None, :, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def jitter(x, a, d: Draw):
    """Brightness x·f, contrast (x − mean gray)·f + mean gray, saturation (x − gray)·f +
    gray, each factor f ~ U(1 − s, 1 + s) per image, in that order; no clamping."""
    n = x.shape[0]
    if a["brightness"] > 0:
        x = x * d.uniform(n, 1 - a["brightness"], 1 + a["brightness"], x)[:, None, None, None]
    if a["contrast"] > 0:
        f = d.uniform(n, 1 - a["contrast"], 1 + a["contrast"], x)[:, None, None, None]
        m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)             # (N, 1, 1, 1)
        x = (x - m) * f + m
    if a["saturation"] > 0:
        f = d.uniform(n, 1 - a["saturation"], 1 + a["saturation"], x)[:, None, None, None]
        g = _gray(x)
        x = (x - g) * f + g
    return x


def _box_mask(h: int, w: int, y0, x0, size_h, size_w, device):
    """(N, 1, H, W) bool: rows [y0, y0 + size_h) and columns [x0, x0 + size_w), clipped."""
    rows = torch.arange(h, device=device)[None, :]                 # (1, H)
    cols = torch.arange(w, device=device)[None, :]
    in_r = (rows >= y0[:, None]) & (rows < (y0 + size_h)[:, None])  # (N, H)
    in_c = (cols >= x0[:, None]) & (cols < (x0 + size_w)[:, None])  # (N, W)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def cutout(x, a, d: Draw):
    """With probability p, zero a size x size square centred at a uniform pixel (clipped
    at the borders, as DeVries & Taylor 2017)."""
    n, _, h, w = x.shape
    s = a["size"]
    cy, cx = d.ints(n, h, x), d.ints(n, w, x)
    hit = d.uniform(n, 0.0, 1.0, x) < a["p"]                       # (N,)
    mask = _box_mask(h, w, cy - s // 2, cx - s // 2, s, s, x.device)
    return torch.where(mask & hit[:, None, None, None], torch.zeros_like(x), x)


def noise(x, a, d: Draw):
    """x + std·N(0, 1), elementwise (inputs of any shape)."""
    if a["std"] == 0:
        return x
    z = torch.randn(x.shape, generator=d.gen, device=x.device, dtype=x.dtype)
    return x + a["std"] * z


def mixup(x, a, d: Draw) -> Augmented:
    """λ·x + (1 − λ)·x[perm], one λ ~ Beta(alpha, alpha) per batch (Zhang et al. 2018)."""
    lam = d.lam(a["alpha"])
    perm = torch.randperm(x.shape[0], generator=d.gen, device=x.device)
    return Augmented(lam * x + (1 - lam) * x[perm], perm, lam)


def cutmix(x, a, d: Draw) -> Augmented:
    """Paste the box of x[perm] over x: one box per batch of sides √(1 − λ)·(H, W), centre
    uniform, clipped; λ becomes the uncovered fraction (Yun et al. 2019)."""
    n, _, h, w = x.shape
    lam = d.lam(a["alpha"])
    perm = torch.randperm(n, generator=d.gen, device=x.device)
    cut = math.sqrt(1.0 - lam)
    bh, bw = int(h * cut), int(w * cut)
    cy, cx = int(d.rng.integers(h)), int(d.rng.integers(w))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return Augmented(out, perm, 1.0 - (y1 - y0) * (x1 - x0) / (h * w))


TRANSFORMS: dict[str, Callable] = {"crop": crop, "flip": flip, "resized_crop": resized_crop,
                                   "jitter": jitter, "cutout": cutout, "noise": noise,
                                   "mixup": mixup, "cutmix": cutmix}


class Augmenter:
    """The augment chain of a train section, with its seeded random sources."""

    def __init__(self, calls: list[Call], seed: int, device, mask_fill: int = 255):
        self.calls = list(calls)
        self.draw = Draw(seed, device)
        self.mask_fill = mask_fill          # what a crop pads a mask with: the ignore label

    def __bool__(self) -> bool:
        return bool(self.calls)

    def __call__(self, x, masks=None, boxes=None) -> Augmented:
        """x (N, ...) and, for segmentation, its masks (N, H, W), for detection its boxes
        (N, M, 5) -> the batch after every transform in order (masks and boxes move with
        their images; see MASK_SAFE, BOX_SAFE)."""
        perm, lam = None, 1.0
        for call in self.calls:
            if call.name in GEOMETRIC:
                x, masks, boxes = TRANSFORMS[call.name](x, call.args, self.draw, masks,
                                                        self.mask_fill, boxes)
                continue
            out = TRANSFORMS[call.name](x, call.args, self.draw)
            if isinstance(out, Augmented):
                x, perm, lam = out.x, out.perm, out.lam
            else:
                x = out
        return Augmented(x, perm, lam, masks, boxes)
