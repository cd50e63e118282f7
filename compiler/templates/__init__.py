"""Kernel templates, one module per family; each exposes `render(ctx: KernelCtx)`.

    elementwise   fused elementwise chains, multi-tensor updates (elementwise.py)
    matmul        matmul / linear with a fused epilogue and bias-gradient sibling (matmul.py)
    conv          implicit-GEMM convolution: forward, input and weight gradients (conv.py)
    pool          max/avg pooling, global average pooling, nearest upsampling (pool.py)
    reduce        sums over dimensions, penalties, softmax (reduce.py)
    norm          batch norm statistics and gradients, local response norm (norm.py)
    loss          cross-entropy with its gradient in one kernel, mean squared error (loss.py)
    copy          concat, slice and per_anchor (copy.py)
    dense         crop, bilinear resizing, adaptive average pooling, per-pixel cross-entropy,
                  and their gradients (dense.py)
    roi           spatial pyramid pooling, RoI pooling, RoI align and their gradients (roi.py)
    detection     the YOLO v1, RPN and Fast R-CNN losses and their gradients (detection.py)
"""
from __future__ import annotations

import importlib

from ..ir import numel  # noqa: F401  (templates import it from here)

FAMILIES = ("elementwise", "matmul", "conv", "pool", "reduce", "norm", "loss", "copy", "dense",
            "roi", "detection")


def template(family: str):
    if family not in FAMILIES:
        raise KeyError(f"no kernel template family {family!r}")
    return importlib.import_module(f"{__name__}.{family}").render


def cdiv(a: int, b: int) -> int:
    return -(-a // b)




def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (max(n, 1) - 1).bit_length()
