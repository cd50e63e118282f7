"""Region pooling: RoI max pooling (Fast R-CNN), RoI align (Mask R-CNN), spatial pyramid pooling
(SPP-Net) over a whole map or over RoIs.

    roi_pool(x [N, C, H, W], rois [R, 5])   -> [R, C, oh, ow]   {output, spatial_scale}
    roi_align(x, rois)                      -> [R, C, oh, ow]   {output, spatial_scale,
                                                                 sampling_ratio, aligned}
    spp(x [N, C, H, W])                     -> [N, C*sum(l*l)]  {levels}
    roi_spp(x, rois)                        -> [R, C*sum(l*l)]  {levels, spatial_scale}

A RoI is (image index, x0, y0, x1, y1) in input pixels, [R, 5] as torchvision takes them; boxes
per image [N, P, 4] (P concrete, e.g. proposals) are the same RoIs, N*P of them, image-major.
`spatial_scale` maps them onto the feature map (1/16 for a stride-16 map).  The arithmetic is torchvision.ops' exactly: roi_pool rounds the
scaled corners (half away from zero), treats the end corner as inclusive and cuts bins at
floor/ceil; roi_align averages sampling_ratio^2 bilinear samples per bin (ceil(roi/bin) when
sampling_ratio <= 0), with a -0.5 pixel offset when `aligned`.  SPP's bins are adaptive max
pooling's (floor/ceil: every cell is covered), a level's bins flattened channel-major and the
levels concatenated in order.

Gradients flow to x only (RoIs are proposals, not trained through).  Every op here and its
gradient has Triton kernels (templates/roi.py); the gradients are gathers (per pixel, over the
RoIs of its image and the bins that can hold it), deterministic, without atomics.
"""
from __future__ import annotations

import math

from ._lazy import F, torch

from ..ir import TensorType
from . import dims
from .conv import image, pair
from .registry import Arg, FirstInputGrad, FirstInputGradBwd, Op, ShapeError, register


def _rois(x: TensorType, t: TensorType, what: str):
    """The number of RoIs: R of [R, 5], or N*P of per-image boxes [N, P, 4] (P concrete)."""
    if t.rank == 2 and t.shape[1] == 5:
        return t.shape[0]
    if t.rank == 3 and t.shape[2] == 4 and isinstance(t.shape[1], int):
        if t.shape[0] != x.shape[0]:
            raise ShapeError(f"{what}: boxes per image {t} do not match the images {x}")
        return dims.scale(t.shape[0], t.shape[1])
    raise ShapeError(f"{what} expects RoIs [R, 5] (image index, x0, y0, x1, y1) or boxes per "
                     f"image [N, P, 4] with P concrete, got {t}")


def as_rois(rois):
    """[R, 5] RoIs as they are, or boxes per image [N, P, 4] as [N*P, 5], image-major."""
    if rois.dim() == 2:
        return rois
    n, p, _ = rois.shape
    index = torch.arange(n, dtype=rois.dtype, device=rois.device).repeat_interleave(p)
    return torch.cat([index[:, None], rois.reshape(n * p, 4)], dim=1)


def _levels(attrs, what: str) -> tuple[int, ...]:
    levels = attrs["levels"]
    levels = tuple(levels) if isinstance(levels, (list, tuple)) else (levels,)
    if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in levels):
        raise ShapeError(f"{what} levels must be positive integers (bins per side), got {levels}")
    return levels


# -- RoI max pooling ----------------------------------------------------------------------------

def _round_away(v):
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def _pool_bins(start, length, bins: int, limit: int):
    """[R, bins] start and end (exclusive) cells of each bin along one axis, clipped to the map."""
    size = length.to(torch.float64) / bins                            # (R,)
    i = torch.arange(bins, dtype=torch.float64, device=start.device)
    lo = torch.floor(i[None] * size[:, None]).long() + start[:, None]
    hi = torch.ceil((i[None] + 1) * size[:, None]).long() + start[:, None]
    return lo.clamp(0, limit), hi.clamp(0, limit)


def _window(lo, hi, limit: int):
    """The cells lo + t of each row's window [lo, hi), t < the widest window: indices [R, T]
    clamped into the map, and which of them are inside their window."""
    t = torch.arange(max(int((hi - lo).max()), 1), device=lo.device)
    cells = lo[:, None] + t[None]
    return cells.clamp(max=max(limit - 1, 0)), cells < hi[:, None]


def roi_pool_argmax(x, rois, output, scale):
    """(values [R, C, oh, ow], flat argmax into H*W or -1 for an empty bin).

    A bin's max is separable: over its columns for each row, then over its rows. Each step
    gathers just the cells of the widest window (not the whole map) and masks the rest with
    -inf; torch's max keeps the first maximum along the gathered (ascending) cells, so the
    argmax is the first row holding the max and its first column: row-major first."""
    rois = as_rois(rois)
    n, c, h, w = x.shape
    oh, ow = output
    corners = _round_away(rois[:, 1:].to(torch.float64) * scale).long()   # (R, 4)
    x0, y0, x1, y1 = corners.unbind(1)
    hs, he = _pool_bins(y0, (y1 - y0 + 1).clamp(min=1), oh, h)
    ws, we = _pool_bins(x0, (x1 - x0 + 1).clamp(min=1), ow, w)
    r = rois.shape[0]
    values = x.new_zeros((r, c, oh, ow))
    index = torch.full((r, c, oh, ow), -1, dtype=torch.long, device=x.device)
    if h * w == 0 or r == 0:
        return values, index
    image = rois[:, 0].long()
    for j in range(ow):
        cols, in_cols = _window(ws[:, j], we[:, j], w)                  # (R, T)
        g = x[image[:, None], :, :, cols]                                # (R, T, C, H)
        g = g.masked_fill(~in_cols[:, :, None, None], -math.inf)
        row_best, t = g.max(dim=1)                                       # (R, C, H)
        row_arg = cols.gather(1, t.reshape(r, -1)).reshape(t.shape)      # its column
        for i in range(oh):
            rows, in_rows = _window(hs[:, i], he[:, i], h)               # (R, T)
            at = rows[:, None, :].expand(r, c, rows.shape[1])
            v = row_best.gather(2, at).masked_fill(~in_rows[:, None, :], -math.inf)
            best, k = v.max(dim=2)                                       # (R, C)
            row = at.gather(2, k[..., None])[..., 0]
            arg = row * w + row_arg.gather(2, row[..., None])[..., 0]    # (R, C) flat
            empty = ~((he[:, i] > hs[:, i]) & (we[:, j] > ws[:, j]))[:, None]   # (R, 1)
            values[:, :, i, j] = torch.where(empty, torch.zeros_like(best), best)
            index[:, :, i, j] = torch.where(empty, torch.full_like(arg, -1), arg)
    return values, index


def roi_pool_grad(gy, x, rois, output, scale):
    """dL/dx: each bin's gradient added at its argmax (nothing for empty bins)."""
    rois = as_rois(rois)
    _, index = roi_pool_argmax(x, rois, output, scale)
    n, c, h, w = x.shape
    gx = torch.zeros((n * c * h * w,), dtype=gy.dtype, device=gy.device)
    b = rois[:, 0].long()[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    flat = (b * c + ch) * (h * w) + index
    used = index >= 0
    gx.index_add_(0, flat[used], gy[used])
    return gx.reshape(n, c, h, w)


# -- RoI align ----------------------------------------------------------------------------------

def _align_axis(start, length, bins: int, grid, size: int):
    """[R, bins, size] interpolation weights along one axis: the mean over a bin's `grid` sample
    points of their linear-interpolation weights onto the cells (torchvision's rules for points
    outside the map and at its last cell)."""
    r = start.shape[0]
    most = int(grid.max()) if r else 0
    out = torch.zeros((r, bins, size), dtype=start.dtype, device=start.device)
    if most == 0 or size == 0:
        return out
    step = length / bins                                              # (R,)
    i = torch.arange(bins, dtype=start.dtype, device=start.device)
    k = torch.arange(most, dtype=start.dtype, device=start.device)
    g = grid.to(start.dtype).clamp(min=1)[:, None, None]
    pos = (start[:, None, None] + i[None, :, None] * step[:, None, None]
           + (k[None, None, :] + 0.5) * step[:, None, None] / g)      # (R, bins, most)
    used = (k[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    last = low >= size - 1
    low = torch.where(last, torch.full_like(low, size - 1), low)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(pos), pos - low.to(pos.dtype))
    scale = used.to(pos.dtype) / g
    out.scatter_add_(2, low, (1 - frac) * scale)
    out.scatter_add_(2, high, frac * scale)
    return out


def align_weights(rois, h: int, w: int, output, scale: float, sampling_ratio: int,
                  aligned: bool):
    """Row and column weights Ay [R, oh, H], Ax [R, ow, W]: out[r] = Ay[r] @ x[b_r] @ Ax[r]^T.
    Bilinear interpolation is separable, so a bin's mean of gh x gw samples factors this way."""
    oh, ow = output
    offset = 0.5 if aligned else 0.0
    box = rois[:, 1:] * scale - offset                                # (R, 4)
    rw, rh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gh = torch.full_like(rh, sampling_ratio, dtype=torch.long)
        gw = torch.full_like(rw, sampling_ratio, dtype=torch.long)
    else:
        gh, gw = torch.ceil(rh / oh).long(), torch.ceil(rw / ow).long()
    return _align_axis(box[:, 1], rh, oh, gh, h), _align_axis(box[:, 0], rw, ow, gw, w)


def _align_args(x, rois, attrs):
    """(Ay, Ax, the image of each RoI) of roi_align on x."""
    rois = as_rois(rois).to(x.dtype)
    ay, ax = align_weights(rois, x.shape[2], x.shape[3], attrs["output"],
                           attrs["spatial_scale"], attrs["sampling_ratio"], attrs["aligned"])
    return ay, ax, rois[:, 0].long()


# -- spatial pyramid pooling ------------------------------------------------------------------

def spp_forward(x, levels):
    """[N, C, H, W] -> [N, C*sum(l*l)]: adaptive max pooling to l x l per level, concatenated."""
    return torch.cat([F.adaptive_max_pool2d(x, lv).flatten(1) for lv in levels], dim=1)


def spp_grad(gy, x, levels):
    gx = torch.zeros_like(x)
    at = 0
    for lv in levels:
        _, idx = F.adaptive_max_pool2d(x, lv, return_indices=True)
        part = gy[:, at:at + x.shape[1] * lv * lv].reshape(x.shape[0], x.shape[1], lv, lv)
        gx += torch.ops.aten.adaptive_max_pool2d_backward(part, x, idx)
        at += x.shape[1] * lv * lv
    return gx


# -- the ops ------------------------------------------------------------------------------------

class _RoiOp(FirstInputGrad):
    triton = "roi"                     # templates/roi.py
    n_inputs = 2
    args = (Arg("output", 7, kind="int2", doc="bins per RoI, k or [oh, ow]"),
            Arg("spatial_scale", 1.0, kind="float", doc="feature-map cells per input pixel"))

    def attrs(self, bound, in_types):
        return {"output": pair(bound.get("output", 7), f"{self.layer} output"),
                "spatial_scale": float(bound.get("spatial_scale", 1.0))}

    def infer(self, ins, attrs):
        _, c, _, _ = image(ins[0], self.layer)
        r = _rois(ins[0], ins[1], self.layer)
        if min(attrs["output"]) < 1 or attrs["spatial_scale"] <= 0:
            raise ShapeError(f"{self.layer} needs an output of at least 1x1 and a positive "
                             f"spatial_scale, got {attrs['output']} and {attrs['spatial_scale']}")
        return [TensorType((r, c, *attrs["output"]), ins[0].dtype)]


@register
class RoiPool(_RoiOp):
    name = layer = "roi_pool"
    triton = "roi"                     # templates/roi.py
    triton_epilogue = True
    doc = "Fast R-CNN's RoI max pooling (torchvision.ops.roi_pool): [R, C, oh, ow]."

    def flops(self, ins, outs, attrs):
        h, w = ins[0].shape[2:]
        return (outs[0].per_sample() or 0) * (h * w if isinstance(h * w, int) else 1)

    def forward(self, ins, attrs, ctx):
        return (roi_pool_argmax(ins[0], ins[1], attrs["output"], attrs["spatial_scale"])[0],)


@register
class RoiPoolBwd(FirstInputGradBwd):
    """dL/dx: each bin's gradient added at its argmax (recomputed from x)."""
    triton = "roi"                     # templates/roi.py: a gather, no atomics
    triton_epilogue = True

    name = "roi_pool_bwd"

    def forward(self, ins, attrs, ctx):
        gy, x, rois = ins
        return (roi_pool_grad(gy, x, rois, attrs["output"], attrs["spatial_scale"]),)


@register
class RoiAlign(_RoiOp):
    name = layer = "roi_align"
    triton = "roi"                     # templates/roi.py
    triton_epilogue = True
    args = _RoiOp.args + (
        Arg("sampling_ratio", -1, kind="int", doc="samples per bin side; <= 0: ceil(roi/bin)"),
        Arg("aligned", False, kind="bool", doc="shift by -0.5 pixel (pixel centres)"))
    doc = "Mask R-CNN's RoI align (torchvision.ops.roi_align): bilinear samples averaged per bin."

    def attrs(self, bound, in_types):
        return {**super().attrs(bound, in_types),
                "sampling_ratio": int(bound.get("sampling_ratio", -1)),
                "aligned": bool(bound.get("aligned", False))}

    def flops(self, ins, outs, attrs):
        """Four multiply-adds per sample point, sampling_ratio^2 (2^2 if adaptive) per bin."""
        s = attrs["sampling_ratio"] if attrs["sampling_ratio"] > 0 else 2
        return (outs[0].per_sample() or 0) * s * s * 8

    def forward(self, ins, attrs, ctx):
        x, rois = ins
        ay, ax, image = _align_args(x, rois, attrs)
        feats = x[image]                                              # (R, C, H, W)
        return (torch.einsum("rph,rchw,rqw->rcpq", ay, feats, ax),)


@register
class RoiAlignBwd(FirstInputGradBwd):
    """dL/dx[b] = sum over RoIs r of image b: Ay[r]^T gy[r] Ax[r]."""
    triton = "roi"                     # templates/roi.py: a gather, no atomics
    triton_epilogue = True

    name = "roi_align_bwd"

    def forward(self, ins, attrs, ctx):
        gy, x, rois = ins
        ay, ax, image = _align_args(x, rois, attrs)
        per_roi = torch.einsum("rph,rcpq,rqw->rchw", ay, gy, ax)       # (R, C, H, W)
        return (torch.zeros_like(x).index_add_(0, image, per_roi),)


def _spp_width(c: int, levels) -> int:
    return c * sum(lv * lv for lv in levels)


def _levels_attr(bound) -> tuple:
    levels = bound.get("levels") or (1, 2, 4)
    return tuple(levels) if isinstance(levels, (list, tuple)) else (levels,)


@register
class Spp(FirstInputGrad):
    name = layer = "spp"
    triton = "roi"                     # templates/roi.py
    triton_epilogue = True
    args = (Arg("levels", None, doc="bins per side of each pyramid level; [1, 2, 4]"),)
    doc = "SPP-Net's spatial pyramid max pooling of a whole map: [N, C*sum(l*l)]."

    def attrs(self, bound, in_types):
        return {"levels": _levels_attr(bound)}

    def infer(self, ins, attrs):
        n, c, _, _ = image(ins[0], "spp")
        return [TensorType((n, _spp_width(c, _levels(attrs, "spp"))), ins[0].dtype)]

    def flops(self, ins, outs, attrs):
        return len(attrs["levels"]) * (ins[0].per_sample() or 0)

    def forward(self, ins, attrs, ctx):
        return (spp_forward(ins[0], attrs["levels"]),)


@register
class SppBwd(FirstInputGradBwd):
    """dL/dx: each level's slice of gy routed to its bins' argmax, summed over levels."""

    name = "spp_bwd"
    triton = "roi"
    triton_epilogue = True
    n_inputs = 2

    def forward(self, ins, attrs, ctx):
        return (spp_grad(ins[0], ins[1], attrs["levels"]),)


@register
class RoiSpp(_RoiOp):
    name = layer = "roi_spp"
    triton = "roi"                     # templates/roi.py
    triton_epilogue = True
    args = (Arg("levels", None, doc="bins per side of each pyramid level; [1, 2, 4]"),
            Arg("spatial_scale", 1.0, kind="float", doc="feature-map cells per input pixel"))
    doc = "SPP-Net's pyramid over RoIs: roi_pool at each level, flattened and concatenated."

    def attrs(self, bound, in_types):
        return {"levels": _levels_attr(bound),
                "spatial_scale": float(bound.get("spatial_scale", 1.0))}

    def infer(self, ins, attrs):
        _, c, _, _ = image(ins[0], "roi_spp")
        r = _rois(ins[0], ins[1], "roi_spp")
        if attrs["spatial_scale"] <= 0:
            raise ShapeError(f"roi_spp needs a positive spatial_scale, got "
                             f"{attrs['spatial_scale']}")
        return [TensorType((r, _spp_width(c, _levels(attrs, "roi_spp"))), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        x, rois = ins
        return (torch.cat([roi_pool_argmax(x, rois, (lv, lv), attrs["spatial_scale"])[0]
                           .flatten(1) for lv in attrs["levels"]], dim=1),)


@register
class RoiSppBwd(FirstInputGradBwd):
    """dL/dx: roi_pool's gradient of each level's slice of gy, summed."""
    triton = "roi"                     # templates/roi.py: a gather, no atomics
    triton_epilogue = True

    name = "roi_spp_bwd"

    def forward(self, ins, attrs, ctx):
        gy, x, rois = ins
        gx, at, c = torch.zeros_like(x), 0, x.shape[1]
        for lv in attrs["levels"]:
            part = gy[:, at:at + c * lv * lv].reshape(-1, c, lv, lv)
            gx += roi_pool_grad(part, x, rois, (lv, lv), attrs["spatial_scale"])
            at += c * lv * lv
        return (gx,)
