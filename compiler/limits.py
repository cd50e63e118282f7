"""Static limits: how large a spec may be, checked before the work it would cause.

A spec is a program, and a small one can ask for an absurd amount of work: `relu * 10**9`,
`dense(10**9) { ... }`, blocks that each call the one before twice (2**40 layers), an input
`f32[10**300]`, a `linear` with 10**12 weights.  The front end checks these bounds as it
elaborates (spec/elaborate.py, spec/forms.py) and reports the first one crossed as a located
error with a hint, so every spec is answered in about a second.  The bounds sit far above
any real network (DenseNet-121 has ~1,000 layers and 8 M parameters; GPT-3 175 G).

Numbers are kept exact: sizes are Python ints, never floats, and `fmt_int` prints any of
them (Python refuses to print ints of more than 4,300 digits).
"""
from __future__ import annotations

import math

MAX_NODES = 20_000               # layers/nodes in the model graph after expansion
MAX_STEPS = 200_000              # elaboration steps (layers applied, bodies run, repetitions)
MAX_REPEAT = 10_000              # one repetition count: `x * n`, `repeat(n)`
MAX_DENSE = 1_000                # layers of one dense block (each concatenates all before it)
MAX_DIM = 2**31 - 1              # any one dimension
MAX_ELEMENTS = 2**32             # elements of one tensor per example, or of one parameter
MAX_PARAMS = 2**36               # parameters and buffers of a model, in total (256 GiB of f32)
MAX_ACTIVATIONS = 2**36          # activation elements per example, summed over the layers
MAX_WINDOW = 65_536              # a window that is not bounded by the input (lrn's size)
MAX_INT_DIGITS = 1_000           # an integer literal, or any integer a spec computes
MAX_INT_BITS = 3_322             # ~ 10**1000


def fmt_int(n: int) -> str:
    """`1,234,567`, or `a 5,000-digit number` for ints too long to be worth printing."""
    if abs(n) < 10**30:
        return f"{n:,}"
    digits = len(str(abs(n))) if n.bit_length() < 13_000 else int(n.bit_length() * 0.30103) + 1
    return f"a {digits:,}-digit number"


def fmt_num(v) -> str:
    """Any number as text, safely: huge ints shortened, floats as Python writes them."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v) if abs(v) < 10**30 else fmt_int(v)
    return repr(v)


def inv_sqrt(n: int) -> float:
    """1/sqrt(n) for an int of any size (0.0 when it underflows), without float overflow."""
    if n < 1:
        return 1.0
    if n.bit_length() > 1000:
        return 0.0
    return 1.0 / math.sqrt(n)
