"""Graph forms of the language: `residual { } shortcut { }`, `concat { branch { } }`,
`dense(n) { }` and `repeat(n) { }`.

A mixin of the `Elaborator` (spec/elaborate.py): each form evaluates to a `Step` whose
`apply(x)` builds the form's subgraph on the input `x`, with shape checks that name the
disagreeing shapes and where each came from.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import ast
from .bind import describe
from .diagnostics import Note, Span, UserError
from .values import Step, Tensor
from ..compiler import limits
from ..compiler.ops import Builder

if TYPE_CHECKING:
    from .elaborate import Env


class GraphForms:
    def body_form(self, node: ast.Call, env: Env) -> Step:
        if node.name not in ("dense", "repeat"):
            raise UserError(f"'{node.name}' does not take a body", node.name_span,
                            hint="bodies follow dense(n), repeat(n), residual, concat and branch")
        if len(node.args) != 1 or node.args[0].name not in (None, "n"):
            raise UserError(f"{node.name} takes one count: {node.name}(4) {{ ... }}", node.span)
        arg = node.args[0]

        least = 0 if node.name == "repeat" else 1      # repeat(0) is the identity

        def count(x: Tensor) -> int:
            n = self.eval(arg.value, env.child(x))
            if isinstance(n, bool) or not isinstance(n, int) or n < least:
                raise UserError(f"{node.name} needs a whole count of at least {least}, got "
                                f"{describe(n)}", arg.span)
            most = limits.MAX_REPEAT if node.name == "repeat" else limits.MAX_DENSE
            self.check_count(n, arg.span, f"a {node.name} count", most)
            return n

        if node.name == "repeat":
            def apply_repeat(x: Tensor) -> Tensor:
                for _ in range(count(x)):
                    self.tick(node.span)
                    x = self.run_body(node.body, env, x)
                return x
            return Step("repeat", node.span, apply_repeat)

        def apply_dense(x: Tensor) -> Tensor:
            n = count(x)
            name = self.instance_name("dense", span=node.span)
            saved = self.scope
            joined = x                      # the block's input and every layer's output so far
            try:
                for i in range(1, n + 1):
                    self.tick(node.span)
                    self.scope = [*name.split("."), f"layer{i}"]
                    out = self.run_body(node.body, env, joined)
                    self.scope = [*name.split("."), f"layer{i + 1}"] if i < n else saved
                    joined = self.concat([joined, out], node.span, i)
            finally:
                self.scope = saved
            return joined
        return Step("dense", node.span, apply_dense)

    def concat(self, parts: list[Tensor], span: Span, layer: int) -> Tensor:
        """Dense layer `layer`'s output joined to everything before it: one two-input concat
        per layer, so the graph (and its backward) grows linearly with the layer count."""
        self.check_concat(parts, span, "", [f"the dense block's input and layers before {layer}",
                                            f"dense layer {layer}"])
        b = Builder(self.graph, loc=span, scope=".".join(self.scope))
        v = b.emit1("concat", [p.value for p in parts], {"axis": 1})
        self.account([v.type], [], span, "a concatenation")
        return Tensor(v, span, "a concatenation")

    def check_concat(self, parts: list[Tensor], span: Span, what: str,
                     labels: list[str] | None = None) -> None:
        ref = parts[0].value.type
        labels = labels or [f"{what} {i + 1}" for i in range(len(parts))]
        for p in parts[1:]:
            t = p.value.type
            if t.rank != ref.rank or t.shape[2:] != ref.shape[2:]:
                notes = [Note(f"{label} gives {q.value.type}, {q.what}", q.origin)
                         for label, q in zip(labels, parts)]
                raise UserError("cannot concatenate tensors whose sizes differ outside the "
                                f"channel dimension: {ref} and {t}", span, notes=notes)

    def build_residual(self, node: ast.Residual, env: Env, x: Tensor) -> Tensor:
        body = self.run_body(node.body, env, x)
        shortcut = x
        if node.shortcut is not None:
            use = True
            if node.shortcut_cond is not None:
                use = self.truth(self.eval(node.shortcut_cond, env.child(x)),
                                 node.shortcut_cond.span)
            if use:
                saved = self.scope
                self.scope = self.instance_name("shortcut", span=node.shortcut_span).split(".")
                try:
                    shortcut = self.run_body(node.shortcut, env, x)
                finally:
                    self.scope = saved
        if body.value.type != shortcut.value.type:
            notes = [Note(f"the residual branch gives {body.value.type}, {body.what}", body.origin),
                     Note(f"the shortcut gives {shortcut.value.type}, {shortcut.what}",
                          shortcut.origin)]
            hint = None
            if node.shortcut is None:
                hint = ("add a projection, e.g. `shortcut { conv(%s, 1, stride=...) -> bn }`"
                        % body.value.type.shape[1]) if body.value.type.rank == 4 else \
                    "add `shortcut { linear(%s) }`" % body.value.type.shape[1]
            raise UserError(f"residual branch and shortcut disagree: {body.value.type} vs "
                            f"{shortcut.value.type}", node.span, notes=notes, hint=hint)
        b = Builder(self.graph, loc=node.span, scope=".".join(self.scope))
        return Tensor(b.emit1("add", [body.value, shortcut.value]), node.span,
                      "the output of a residual")

    def build_concat(self, node: ast.Concat, env: Env, x: Tensor) -> Tensor:
        outs = []
        for i, (branch, bspan) in enumerate(zip(node.branches, node.branch_spans)):
            saved = self.scope
            self.scope = self.instance_name("branch", span=bspan).split(".")
            try:
                out = self.run_body(branch, env, x)
            finally:
                self.scope = saved
            outs.append(Tensor(out.value, out.origin if out is not x else bspan,
                               out.what))
        self.check_concat(outs, node.span, "branch")
        b = Builder(self.graph, loc=node.span, scope=".".join(self.scope))
        v = b.emit1("concat", [t.value for t in outs], {"axis": 1})
        self.account([v.type], [], node.span, "a concat")
        return Tensor(v, node.span, "the output of a concat")
