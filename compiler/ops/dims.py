"""Shape arithmetic on dimensions that are ints or symbolic strings ("H", "(H+1)//2").

Sizes of convolution and pooling outputs are integer expressions of the input size:
`(H + 2p - d(k-1) - 1) // s + 1`.  With an int the answer is an int; with a symbol the
answer is a readable, *canonical* string, so two paths that compute the same size (a 3x3
stride-2 conv and a 1x1 stride-2 shortcut) print the same text and `add`/`concat` accept
them.  The canonical form is an integer-linear sum of atoms (symbols, `(L)//s`, `min(a, b)`)
plus a constant, with every floor division's numerator constant in [0, s):

    conv_out("H", 3, 2, 1)          -> "(H+1)//2"         (3x3 / 2, padding 1)
    pool_out("(H+1)//2", 3, 2, 1)   -> "(H+3)//4"
    conv_out("H", 3, 1, 1)          -> "H"
    scale("H//2", 2)                -> "2*(H//2)"

A string that is not such an expression is kept as an opaque atom.
"""
from __future__ import annotations

import ast
import math
from typing import Union

Dim = Union[int, str]

# A linear form: (((atom, coef), ...) sorted, const).  Atoms are hashable tuples:
#   ("sym", name) | ("div", Lin, s) | ("min", (Lin, Lin))
Lin = tuple


def _lin(terms: dict, const: int) -> Lin:
    return (tuple(sorted(((a, c) for a, c in terms.items() if c), key=lambda ac: _akey(ac[0]))),
            const)


def _akey(atom) -> tuple:
    return ({"sym": 0, "div": 1, "min": 2}[atom[0]], _fmt_atom(atom))


def _add(a: Lin, b: Lin, sign: int = 1) -> Lin:
    terms = dict(a[0])
    for atom, c in b[0]:
        terms[atom] = terms.get(atom, 0) + sign * c
    return _lin(terms, a[1] + sign * b[1])


def _mul(a: Lin, k: int) -> Lin:
    return _lin({atom: c * k for atom, c in a[0]}, a[1] * k)


def _const(n: int) -> Lin:
    return ((), n)


def _floordiv(a: Lin, s: int) -> Lin:
    """floor(a / s) for an integer s >= 1, simplified to the canonical form."""
    if s < 1:
        raise ValueError(f"division by {s}")
    terms, const = a
    if s == 1:
        return a
    if all(c % s == 0 for _, c in terms):            # exact on the symbolic part
        return _lin({atom: c // s for atom, c in terms}, const // s)
    if len(terms) == 1 and terms[0][1] == 1 and terms[0][0][0] == "div":
        _, inner, s0 = terms[0][0]                    # (L//s0 + c)//s == (L + c*s0)//(s0*s)
        return _floordiv(_add(inner, _const(const * s0)), s0 * s)
    g = math.gcd(s, *(c for _, c in terms))           # (gA + c)//(gs) == (A + c//g)//s
    if g > 1:
        return _floordiv(_lin({atom: c // g for atom, c in terms}, const // g), s // g)
    whole, rest = divmod(const, s)                    # numerator constant in [0, s)
    return _lin({("div", ((terms, rest)), s): 1}, whole)


def _min(a: Lin, b: Lin) -> Lin:
    diff = _add(a, b, -1)
    if not diff[0]:                                   # they differ by a constant
        return a if diff[1] <= 0 else b
    return _lin({("min", tuple(sorted((a, b), key=_fmt_lin))): 1}, 0)


# -- parsing ----------------------------------------------------------------------------------

def _parse(d: Dim) -> Lin:
    if isinstance(d, int):
        return _const(d)
    try:
        return _from_ast(ast.parse(d.strip(), mode="eval").body)
    except (SyntaxError, ValueError):
        return _lin({("sym", d): 1}, 0)


def _from_ast(n: ast.AST) -> Lin:
    if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
        return _const(n.value)
    if isinstance(n, ast.Name):
        return _lin({("sym", n.id): 1}, 0)
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
        return _mul(_from_ast(n.operand), -1)
    if isinstance(n, ast.BinOp):
        a, b = _from_ast(n.left), _from_ast(n.right)
        if isinstance(n.op, ast.Add):
            return _add(a, b)
        if isinstance(n.op, ast.Sub):
            return _add(a, b, -1)
        if isinstance(n.op, ast.Mult) and (not a[0] or not b[0]):
            return _mul(b, a[1]) if not a[0] else _mul(a, b[1])
        if isinstance(n.op, ast.FloorDiv) and not b[0] and b[1] >= 1:
            return _floordiv(a, b[1])
    if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "min"
            and len(n.args) == 2 and not n.keywords):
        return _min(_from_ast(n.args[0]), _from_ast(n.args[1]))
    raise ValueError("not a size expression")


# -- printing ---------------------------------------------------------------------------------

def _fmt_atom(atom) -> str:
    kind = atom[0]
    if kind == "sym":
        name = atom[1]
        return name if name.isidentifier() else f"({name})"
    if kind == "div":
        inner = atom[1]
        text = _fmt_lin(inner)
        if not (len(inner[0]) == 1 and inner[0][0][1] == 1 and inner[1] == 0):
            text = f"({text})"
        return f"{text}//{atom[2]}"
    return "min(" + ", ".join(_fmt_lin(x) for x in atom[1]) + ")"


def _fmt_lin(a: Lin) -> str:
    terms, const = a
    out = ""
    for atom, c in terms:
        text = _fmt_atom(atom)
        if atom[0] == "div" and c != 1:             # -(H//2) is not -H//2 in Python
            text = f"({text})"
        mag = text if abs(c) == 1 else f"{abs(c)}*{text}"
        out += ("-" if c < 0 else ("+" if out else "")) + mag
    if const or not out:
        out += f"{const:+d}" if out else str(const)
    return out


def _to_dim(a: Lin) -> Dim:
    return a[1] if not a[0] else _fmt_lin(a)


# -- the public helpers -----------------------------------------------------------------------

def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def simplify(d: Dim) -> Dim:
    """The canonical form of d (an int when it has no symbols)."""
    return _to_dim(_parse(d))


def add(d: Dim, k: int) -> Dim:
    return _to_dim(_add(_parse(d), _const(k)))


def scale(d: Dim, k: int) -> Dim:
    """d * k (nearest-neighbour upsampling)."""
    return _to_dim(_mul(_parse(d), k))


def floordiv(d: Dim, k: int) -> Dim:
    return _to_dim(_floordiv(_parse(d), k))


def conv_out(size: Dim, kernel: int, stride: int, padding: int, dilation: int = 1) -> Dim:
    """Output size of a convolution (or a floor-mode pool) along one dimension."""
    span = dilation * (kernel - 1) + 1
    return _to_dim(_add(_floordiv(_add(_parse(size), _const(2 * padding - span)), stride),
                        _const(1)))


def pool_out(size: Dim, kernel: int, stride: int, padding: int, ceil: bool,
             dilation: int = 1) -> Dim:
    """Output size of a pool along one dimension, exactly as PyTorch computes it.

    With ceil=True the count rounds up, but the last window must start inside the input or
    the left padding: out - 1 = min(ceil((L + 2p - span) / s), (L + p - 1) // s).
    """
    if not ceil:
        return conv_out(size, kernel, stride, padding, dilation)
    span = dilation * (kernel - 1) + 1
    if isinstance(size, int):                      # PyTorch's pooling_output_shape, verbatim
        out = (size + 2 * padding - span + stride - 1) // stride + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    n = _parse(size)
    rounded_up = _floordiv(_add(n, _const(2 * padding - span + stride - 1)), stride)
    if padding + stride > span:                    # the clamp can bite for some sizes
        rounded_up = _min(rounded_up, _floordiv(_add(n, _const(padding - 1)), stride))
    return _to_dim(_add(rounded_up, _const(1)))


def fmt(d: Dim) -> str:
    return str(d)


def fmt_hw(h: Dim, w: Dim) -> str:
    """'32x32', or '(H+1)//2 x W' when symbolic."""
    if isinstance(h, int) and isinstance(w, int):
        return f"{h}x{w}"
    return f"{h} x {w}"


def below_one(d: Dim) -> bool:
    """True when d is certainly smaller than one (ints only; a symbol may be anything)."""
    return isinstance(d, int) and d < 1
