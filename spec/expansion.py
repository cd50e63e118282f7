"""A static lower bound on how many layers a model expands to, checked before elaborating.

Blocks that each call the block before them twice (`B1 { B0 -> B0 }` ... 40 levels), or
`relu * 10000 * 10000`, would expand to 2**40 or 10**8 layers; elaboration stops them at
`limits.MAX_NODES`, but only after building that many.  This pass counts from the syntax
alone — literal repetition counts, every block call, the smaller arm of an `if/else`, no
optional shortcut — so the count never exceeds what elaboration would build, and a model
whose bound is already past the limit is refused at once, at the statement that crosses it.
"""
from __future__ import annotations

from ..compiler import limits
from ..compiler.ops import layer as layer_op
from . import ast
from .diagnostics import Note, UserError

_SATURATE = 10**100                      # counts stay small ints however absurd the spec


class _Counter:
    def __init__(self, blocks: dict[str, ast.BlockDef]):
        self.blocks = blocks
        self.memo: dict[str, int] = {}
        self.active: set[str] = set()

    def block(self, name: str) -> int:
        if name in self.memo:
            return self.memo[name]
        if name in self.active:                       # recursion: elaboration reports it
            return 0
        self.active.add(name)
        b = self.blocks[name]
        n = self.body(b.body, {p.name for p in b.params})
        self.active.discard(name)
        self.memo[name] = n
        return n

    def body(self, stmts: list[ast.Node] | None, params: set[str]) -> int:
        return min(_SATURATE, sum(self.stmt(s, params) for s in stmts or []))

    def stmt(self, s: ast.Node, params: set[str]) -> int:
        if isinstance(s, ast.ExprStmt):
            return self.expr(s.expr, params)
        if isinstance(s, ast.Assign):
            return self.expr(s.value, params)
        return 0

    def callee(self, name: str, params: set[str]) -> int:
        if name in params:
            return 0
        if name in self.blocks:
            return self.block(name)
        return 1 if layer_op(name) is not None else 0

    def expr(self, e: ast.Node, params: set[str]) -> int:
        n = self._expr(e, params)
        return min(n, _SATURATE)

    def _expr(self, e: ast.Node, params: set[str]) -> int:
        if isinstance(e, ast.Name):
            return self.callee(e.id, params)
        if isinstance(e, ast.Call):
            if e.body is not None:
                count = _literal_count(e)
                if e.name == "dense":
                    return max(count, 1) * (self.body(e.body, params) + 1)
                return count * self.body(e.body, params)
            return self.callee(e.name, params)
        if isinstance(e, ast.Chain):
            return sum(self.expr(x, params) for x in e.steps)
        if isinstance(e, ast.BinOp) and e.op == "*":
            left = self.expr(e.left, params)
            right = e.right.value if isinstance(e.right, ast.Literal) else 0
            ok = isinstance(right, int) and not isinstance(right, bool) and right > 0
            return left * right if ok else 0
        if isinstance(e, ast.IfElse):
            return min(self.expr(e.then, params), self.expr(e.other, params))
        if isinstance(e, ast.Group) and len(e.args) == 1:
            return self.expr(e.args[0].value, params)
        if isinstance(e, ast.Residual):
            return self.body(e.body, params) + 1
        if isinstance(e, ast.Concat):
            return sum(self.body(b, params) for b in e.branches) + 1
        return 0


def _literal_count(call: ast.Call) -> int:
    if len(call.args) == 1 and isinstance(call.args[0].value, ast.Literal):
        v = call.args[0].value.value
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return 0


def check_expansion(model: ast.BlockDef, blocks: dict[str, ast.BlockDef]) -> None:
    """Refuse a model whose static layer count is already past `limits.MAX_NODES`."""
    counter = _Counter(blocks)
    params = {p.name for p in model.params}
    total = 0
    for s in model.body:
        n = counter.stmt(s, params)
        total += n
        if total > limits.MAX_NODES:
            notes = [Note(f"block {name} expands to at least {limits.fmt_int(k)} layers",
                          blocks[name].span)
                     for name, k in sorted(counter.memo.items(), key=lambda kv: -kv[1])[:1]
                     if k > limits.MAX_NODES]
            shown = "more than 10**100" if n >= _SATURATE else f"at least {limits.fmt_int(n)}"
            raise UserError(f"this model expands to more than {limits.MAX_NODES:,} layers"
                            + (f": this line alone to {shown}" if n > limits.MAX_NODES else ""),
                            s.span, notes=notes,
                            hint="look for large repetition counts, or blocks that each call "
                                 "the block before them several times")
