"""Elaboration: evaluate a model's AST into a graph IR.

Expressions evaluate to numbers, strings, lists, `Tensor`s (values in the graph) or
`Step`s (a layer, block or graph form waiting for its input).  A statement that
evaluates to a `Step` applies it to the *current* tensor; `name = ...` also makes
its result current.  Arguments that mention `in` are evaluated when the step is
applied, so `conv(in.c * 2, 3)` sees the tensor flowing into it.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

from ..compiler import limits
from ..compiler.ir import Graph, StateSpec, TensorType
from ..compiler.ops import Builder, ShapeError
from ..compiler.ops import layer as layer_op
from ..compiler.ops import layer_names
from . import ast
from .bind import bind, describe
from .diagnostics import Note, Span, UserError, did_you_mean
from .expansion import check_expansion
from .forms import GraphForms
from .values import Step, Tensor

MAX_DEPTH = 48                               # block calls nested deeper than this are an error


@dataclass
class Env:
    """Lexical scope: block parameters and named tensors, chained to the enclosing scope."""

    vars: dict[str, Any] = field(default_factory=dict)
    parent: "Env | None" = None
    current: Tensor | None = None           # the tensor `in` refers to

    def lookup(self, name: str):
        e = self
        while e is not None:
            if name in e.vars:
                return e.vars[name]
            e = e.parent
        raise KeyError(name)

    def names(self) -> list[str]:
        out, e = [], self
        while e is not None:
            out.extend(e.vars)
            e = e.parent
        return out

    def child(self, current: Tensor | None = None) -> "Env":
        return Env({}, self, current if current is not None else self.current)


class Namer:
    """Stable instance names per scope: conv1, conv2, bn1, basic1, ..."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def next(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}{self.counts[kind]}"


class Elaborator(GraphForms):
    def __init__(self, blocks: dict[str, ast.BlockDef]):
        self.blocks = blocks
        self.graph: Graph | None = None
        self.scope: list[str] = []
        self.namers: dict[str, Namer] = {}
        self.block_stack: list[str] = []
        self.used_names: set[str] = set()
        self.steps = 0                       # elaboration work done, bounded by MAX_STEPS
        self.n_params = 0                    # parameters and buffers made so far
        self.n_activations = 0               # activation elements per example so far

    # -- limits (compiler/limits.py) --------------------------------------------------------------
    def tick(self, span: Span) -> None:
        """Count one step of elaboration; stop a spec that expands past the limits."""
        self.steps += 1
        if self.steps > limits.MAX_STEPS:
            raise UserError(f"this spec expands too far: more than {limits.MAX_STEPS:,} layers "
                            "and repetitions were elaborated", span,
                            hint="look for large repetition counts, or blocks that each call "
                                 "the block before them several times")
        if self.graph is not None and len(self.graph.nodes) > limits.MAX_NODES:
            raise UserError(f"this model expands to more than {limits.MAX_NODES:,} layers", span,
                            hint="look for large repetition counts, or blocks that each call "
                                 "the block before them several times")

    def check_count(self, n: int, span: Span, what: str, most: int) -> None:
        if n > most:
            raise UserError(f"{what} of {limits.fmt_int(n)} is more than the limit of "
                            f"{most:,}", span, hint="a spec must expand to a graph of a "
                            f"reasonable size (at most {limits.MAX_NODES:,} layers)")

    def check_type(self, t: TensorType, span: Span, what: str) -> None:
        """Every dimension and the per-example size of a tensor within the limits."""
        for d in t.shape:
            if isinstance(d, int) and d > limits.MAX_DIM:
                raise UserError(f"{what} has a dimension of {limits.fmt_int(d)}, more than the "
                                f"limit of {limits.MAX_DIM:,}", span,
                                hint="is a size or a scale factor much larger than intended?")
        n = t.per_sample()
        if n is not None and n > limits.MAX_ELEMENTS:
            raise UserError(f"{what} has {limits.fmt_int(n)} elements per example, more than "
                            f"the limit of {limits.MAX_ELEMENTS:,}", span,
                            hint="is a size or a scale factor much larger than intended?")

    def account(self, outs: list[TensorType], state: list, span: Span, what: str) -> None:
        """Check a new node's output types and state, and the model's running totals."""
        for t in outs:
            self.check_type(t, span, f"the output of {what}")
            self.n_activations += t.per_sample() or 0
        for st in state:
            n = TensorType(tuple(st.shape)).numel()
            if n > limits.MAX_ELEMENTS:
                raise UserError(f"{what} would have a parameter '{st.name}' of "
                                f"{limits.fmt_int(n)} values, more than the limit of "
                                f"{limits.MAX_ELEMENTS:,}", span)
            self.n_params += n
        if self.n_params > limits.MAX_PARAMS:
            raise UserError(f"the model has more than {limits.MAX_PARAMS:,} parameters by "
                            f"{what}", span, hint="is a size much larger than intended?")
        if self.n_activations > limits.MAX_ACTIVATIONS:
            raise UserError(f"the model has more than {limits.MAX_ACTIVATIONS:,} activation "
                            f"values per example by {what}", span,
                            hint="is a size much larger than intended?")

    # -- entry point ----------------------------------------------------------------------------
    def build(self, model: ast.BlockDef, overrides: dict[str, tuple[Any, Span]]) -> Graph:
        check_expansion(model, self.blocks)
        self.graph = Graph(model.name)
        env = Env()
        known = {p.name for p in model.params}
        for k, (_, s) in overrides.items():
            if k not in known:
                raise UserError(f"model {model.name} has no parameter '{k}'", s,
                                hint=did_you_mean(k, known))
        for p in model.params:
            if p.name in overrides:
                env.vars[p.name] = overrides[p.name][0]
            elif p.default is not None:
                env.vars[p.name] = self.eval(p.default, env)
            else:
                raise UserError(f"model parameter '{p.name}' has no default; give one or set it "
                                f"with --set model.{p.name}=VALUE", p.span)
        outputs: list[tuple[str, Tensor, Span]] = []
        last = self.run_body(model.body, env, None, top=True, outputs=outputs)
        if not self.graph.inputs:
            raise UserError(f"model {model.name} declares no input", model.span,
                            hint="add a line such as `input x: f32[64]`")
        if not outputs:
            if last is None or last.value.input_name is not None:
                raise UserError(f"model {model.name} has no layers", model.span)
            outputs = [("out", last, model.span)]
        self.graph.outputs = [t.value for _, t, _ in outputs]
        self.graph.output_names = [n for n, _, _ in outputs]
        return self.graph

    # -- statements -----------------------------------------------------------------------------
    def run_body(self, body: list[ast.Node], env: Env, x: Tensor | None, *, top: bool = False,
                 outputs: list | None = None) -> Tensor | None:
        env = env.child(x)
        for stmt in body:
            self.tick(stmt.span)
            if isinstance(stmt, ast.Input):
                if not top:
                    raise UserError("`input` may only appear in a model, not in a block", stmt.span)
                t = self.declare_input(stmt, env)
                env.current = env.current or t
                env.vars[stmt.name] = t
            elif isinstance(stmt, ast.Output):
                if not top:
                    raise UserError("`output` may only appear in a model, not in a block", stmt.span)
                for name, span in stmt.names:
                    t = self.lookup_tensor(name, span, env)
                    outputs.append((name, t, span))
            elif isinstance(stmt, ast.Assign):
                t = self.as_tensor(self.eval(stmt.value, env), stmt.value.span, env)
                env.vars[stmt.name] = t
                if top:                                  # a loss may read it (pipeline.py)
                    self.graph.values[stmt.name] = t.value
                env.current = t
            else:
                env.current = self.as_tensor(self.eval(stmt.expr, env), stmt.expr.span, env)
        return env.current

    def declare_input(self, stmt: ast.Input, env: Env) -> Tensor:
        if stmt.dtype != "f32":
            raise UserError(f"unsupported input type '{stmt.dtype}'", stmt.type_span,
                            hint="inputs are f32 tensors, e.g. f32[3, 32, 32]")
        if not stmt.dims:
            raise UserError("an input needs at least one dimension", stmt.type_span)
        dims = []
        for d in stmt.dims:
            if isinstance(d, ast.Name) and d.id not in env.names():
                if d.id == "N":
                    raise UserError("N is the batch size, which every input has implicitly",
                                    d.span, hint="declare only the per-example dimensions")
                dims.append(d.id)                     # a symbolic size such as H or W
                continue
            v = self.eval(d, env)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"input dimensions must be positive whole numbers or size names, "
                                f"got {describe(v)}", d.span)
            if v > limits.MAX_DIM:
                raise UserError(f"an input dimension of {limits.fmt_int(v)} is more than the "
                                f"limit of {limits.MAX_DIM:,}", d.span)
            dims.append(v)
        self.check_type(TensorType(("N", *dims)), stmt.type_span, f"the input {stmt.name}")
        v = self.graph.add_input(stmt.name, TensorType(("N", *dims)))
        self.graph.input_locs[stmt.name] = stmt.span
        return Tensor(v, stmt.span, f"the input {stmt.name}")

    def lookup_tensor(self, name: str, span: Span, env: Env) -> Tensor:
        try:
            v = env.lookup(name)
        except KeyError:
            raise UserError(f"unknown value '{name}'", span,
                            hint=did_you_mean(name, env.names())) from None
        if not isinstance(v, Tensor):
            raise UserError(f"'{name}' is {describe(v)}, not a tensor", span)
        return v

    def as_tensor(self, v: Any, span: Span, env: Env) -> Tensor:
        """A statement's value: apply a Step to the current tensor, or take a Tensor."""
        if isinstance(v, Tensor):
            return v
        if isinstance(v, Step):
            if env.current is None:
                raise UserError(f"{v.name} has no input: declare `input x: f32[...]` first", span)
            return v.apply(env.current)
        raise UserError(f"expected a layer or a tensor, got {describe(v)}", span)

    # -- expressions ----------------------------------------------------------------------------
    def eval(self, node: ast.Node, env: Env) -> Any:
        method = getattr(self, "eval_" + type(node).__name__)
        return method(node, env)

    def eval_Literal(self, node, env):
        return node.value

    def eval_ListExpr(self, node, env):
        return [self.eval(x, env) for x in node.items]

    def eval_Group(self, node, env):
        if len(node.args) == 1 and node.args[0].name is None:
            return self.eval(node.args[0].value, env)
        raise UserError("keyword arguments need a layer name before them", node.span)

    def eval_In(self, node, env):
        if env.current is None:
            raise UserError("`in` is the tensor flowing into a layer; nothing flows here yet",
                            node.span)
        return env.current

    def eval_Name(self, node, env):
        try:
            return env.lookup(node.id)
        except KeyError:
            pass
        if node.id in self.blocks or layer_op(node.id) is not None:
            return self.call_step(ast.Call(node.span, node.id, node.span, []), env)
        if node.id in ("dense", "repeat"):
            raise UserError(f"{node.id} needs a count and a body: {node.id}(4) {{ ... }}", node.span)
        candidates = env.names() + list(self.blocks) + layer_names()
        raise UserError(f"unknown layer or value '{node.id}'", node.span,
                        hint=did_you_mean(node.id, candidates) or _import_hint(node.id))

    def eval_Attr(self, node, env):
        obj = self.eval(node.obj, env)
        if isinstance(obj, Tensor):
            shape = obj.value.type.shape
            fields = {"c": 1, "h": 2, "w": 3}
            if node.name == "rank":
                return len(shape) - 1
            if node.name in fields and fields[node.name] < len(shape):
                d = shape[fields[node.name]]
                if not isinstance(d, int):
                    raise UserError(f"{node.name} of {obj.value.type} is symbolic ({d})", node.span)
                return d
            raise UserError(f"a tensor {obj.value.type} has no field '{node.name}'", node.span,
                            hint="fields: c (channels/features), h, w, rank")
        raise UserError(f"{describe(obj)} has no field '{node.name}'", node.span)

    def eval_UnOp(self, node, env):
        v = self.eval(node.operand, env)
        if node.op == "not":
            return not self.truth(v, node.operand.span)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"cannot negate {describe(v)}", node.span)
        return -v

    def truth(self, v, span) -> bool:
        if isinstance(v, bool):
            return v
        raise UserError(f"expected true or false, got {describe(v)}", span)

    def eval_IfElse(self, node, env):
        c = self.truth(self.eval(node.cond, env), node.cond.span)
        return self.eval(node.then if c else node.other, env)

    def eval_BinOp(self, node, env):
        if node.op == "and":
            return self.truth(self.eval(node.left, env), node.left.span) and \
                self.truth(self.eval(node.right, env), node.right.span)
        if node.op == "or":
            return self.truth(self.eval(node.left, env), node.left.span) or \
                self.truth(self.eval(node.right, env), node.right.span)
        a, b = self.eval(node.left, env), self.eval(node.right, env)
        if node.op == "*" and isinstance(a, Step):
            return self.repeat(a, b, node)
        if node.op in ("==", "!="):
            eq = a == b if not isinstance(a, (Step, Tensor)) else a is b
            return eq if node.op == "==" else not eq
        num = (int, float)
        if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, num) \
                or not isinstance(b, num):
            if node.op == "+" and isinstance(a, str) and isinstance(b, str):
                return a + b
            raise UserError(f"cannot apply '{node.op}' to {describe(a)} and {describe(b)}",
                            node.span)
        try:
            return self.arith(node, a, b)
        except ZeroDivisionError:
            raise UserError("division by zero", node.span) from None
        except OverflowError:
            raise UserError(f"the result of '{node.op}' is too large for a number", node.span,
                            hint="numbers in a spec must stay below about 1e308") from None

    def arith(self, node, a, b):
        if isinstance(a, int) and isinstance(b, int) and node.op == "*" and \
                a.bit_length() + b.bit_length() > limits.MAX_INT_BITS:
            raise UserError(f"the result of '*' has more than {limits.MAX_INT_DIGITS:,} digits",
                            node.span)
        return _ARITH[node.op](a, b)

    def repeat(self, step: Step, n, node) -> Step:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"a layer can be repeated a whole number of times (0 or more), "
                            f"got {describe(n)}", node.right.span)
        self.check_count(n, node.right.span, "a repetition count", limits.MAX_REPEAT)

        def apply(x: Tensor) -> Tensor:
            for _ in range(n):
                self.tick(node.span)
                x = step.apply(x)
            return x
        return Step(f"{step.name} * {n}", node.span, apply)

    def eval_Chain(self, node, env):
        head = self.eval(node.steps[0], env)
        rest = []
        for s in node.steps[1:]:
            if _mentions_in(s) and not isinstance(s, ast.Call):
                rest.append(self.lazy_step(s, env))    # `in` is this step's own input
                continue
            v = self.eval(s, env)
            if not isinstance(v, Step):
                raise UserError(f"'->' must be followed by a layer, got {describe(v)}", s.span)
            rest.append(v)
        if isinstance(head, Tensor):
            for st in rest:
                head = st.apply(head)
            return head
        if isinstance(head, Step):
            steps = [head, *rest]

            def apply(x: Tensor) -> Tensor:
                for st in steps:
                    x = st.apply(x)
                return x
            return Step(" -> ".join(s.name for s in steps), node.span, apply)
        raise UserError(f"a chain must start with a layer or a tensor, got {describe(head)}",
                        node.steps[0].span)

    def lazy_step(self, node: ast.Node, env: Env) -> Step:
        """A step whose expression is evaluated when its input is known (it mentions `in`)."""
        def apply(x: Tensor) -> Tensor:
            v = self.eval(node, env.child(x))
            if not isinstance(v, Step):
                raise UserError(f"'->' must be followed by a layer, got {describe(v)}", node.span)
            return v.apply(x)
        return Step("(...)", node.span, apply)

    def eval_Residual(self, node, env):
        return Step("residual", node.span, lambda x: self.build_residual(node, env, x))

    def eval_Concat(self, node, env):
        return Step("concat", node.span, lambda x: self.build_concat(node, env, x))

    def eval_Call(self, node, env):
        return self.call_step(node, env)

    # -- calls ------------------------------------------------------------------------------------
    def call_step(self, node: ast.Call, env: Env) -> Any:
        """A call: a layer or block applied now (tensor arguments) or later (a Step)."""
        if node.body is not None:
            return self.body_form(node, env)
        op = layer_op(node.name)
        if op is None and node.name not in self.blocks:
            try:
                v = env.lookup(node.name)
                raise UserError(f"'{node.name}' is {describe(v)}; it cannot be called",
                                node.name_span)
            except KeyError:
                pass
            raise UserError(f"unknown layer '{node.name}'", node.name_span,
                            hint=did_you_mean(node.name, list(self.blocks) + layer_names())
                            or _import_hint(node.name))
        title = _title(node)
        if any(_mentions_in(a.value) for a in node.args):
            return Step(title, node.span, lambda x: self.apply_call(node, env, x, None))
        args = self.eval_args(node, env)
        tensors = [v for v, _, name in args if isinstance(v, Tensor) and name is None]
        if tensors:
            return self.apply_call(node, env, None, args)
        return Step(title, node.span, lambda x: self.apply_call(node, env, x, args))

    def eval_args(self, node: ast.Call, env: Env) -> list[tuple[Any, Span, str | None]]:
        return [(self.eval(a.value, env), a.span, a.name) for a in node.args]

    def apply_call(self, node: ast.Call, env: Env, x: Tensor | None, args) -> Tensor:
        if args is None:
            args = self.eval_args(node, env.child(x))
        if node.name in self.blocks:
            return self.apply_block(node, env, x, args)
        return self.apply_layer(node, x, args)

    def apply_layer(self, node: ast.Call, x: Tensor | None, args) -> Tensor:
        op = layer_op(node.name)
        inputs = [v for v, _, k in args if isinstance(v, Tensor) and k is None]
        positional = [(v, s) for v, s, k in args if k is None and not isinstance(v, Tensor)]
        keyword = {k: (v, s) for v, s, k in args if k is not None}
        inst_name = _explicit_name(keyword)
        if not inputs:
            if x is None:
                raise UserError(f"{node.name} has no input", node.span)
            inputs = [x]
        if op.n_inputs is None and len(inputs) < 2:
            raise UserError(f"{node.name} combines several tensors: write {node.name}(a, b)",
                            node.span)
        if op.n_inputs is not None and len(inputs) != op.n_inputs:
            raise UserError(f"{node.name} takes {op.n_inputs} tensor input"
                            f"{'s' if op.n_inputs != 1 else ''}, got {len(inputs)}", node.span)
        bound = bind(op.args, positional, keyword, node.name, node.span)
        in_types = [t.value.type for t in inputs]
        title = _title(node)
        try:
            attrs = op.attrs(bound, in_types)
            out_types = op.infer(in_types, attrs)
            for t in out_types:                     # before state() makes any big number
                self.check_type(t, node.span, f"the output of {title}")
            local_state = op.state(in_types, attrs)
            self.account(out_types, local_state, node.span, title)
        except ShapeError as e:
            notes = [Note(f"the input {t.value.type} is {t.what}", t.origin) for t in inputs]
            msg = str(e) if str(e).startswith(node.name) else f"{node.name}: {e}"
            raise UserError(msg, node.span, notes=notes) from None
        b = Builder(self.graph, loc=node.span)
        name = ""
        if local_state or inst_name is not None:
            name = self.instance_name(inst_name or op.layer, explicit=inst_name is not None,
                                      span=node.span)
        state_vals = []
        for st in local_state:
            full = f"{name}.{st.name}"
            state_vals.append(b.state(StateSpec(full, TensorType(st.shape), st.init,
                                                st.trainable, st.kind)))
        b.scope = name or ".".join(self.scope)
        outs = b.emit(op.name, [t.value for t in inputs] + state_vals, attrs)
        return Tensor(outs[0], node.span, f"the output of {title}")

    def instance_name(self, kind: str, *, explicit: bool = False, span: Span | None = None) -> str:
        prefix = ".".join(self.scope)
        if explicit:
            local = kind
        else:
            local = self.namers.setdefault(prefix, Namer()).next(kind)
        full = f"{prefix}.{local}" if prefix else local
        if full in self.used_names:
            raise UserError(f"the name '{full}' is already used by another layer", span)
        self.used_names.add(full)
        return full

    def apply_block(self, node: ast.Call, env: Env, x: Tensor | None, args) -> Tensor:
        block = self.blocks[node.name]
        if node.name in self.block_stack or len(self.block_stack) >= MAX_DEPTH:
            raise UserError(f"block '{node.name}' calls itself (recursion is not allowed)"
                            if node.name in self.block_stack else "blocks nest too deeply",
                            node.span)
        inputs = [v for v, _, k in args if isinstance(v, Tensor) and k is None]
        if len(inputs) > 1:
            raise UserError(f"block {node.name} takes one tensor input", node.span)
        x = inputs[0] if inputs else x
        if x is None:
            raise UserError(f"{node.name} has no input", node.span)
        positional = [(v, s) for v, s, k in args if k is None and not isinstance(v, Tensor)]
        keyword = {k: (v, s) for v, s, k in args if k is not None}
        inst = _explicit_name(keyword)
        benv = Env({}, None, x)
        if len(positional) > len(block.params):
            raise UserError(f"{node.name} takes {len(block.params)} argument(s), got "
                            f"{len(positional)}", positional[len(block.params)][1],
                            notes=[Note(f"{node.name} is defined here", block.span)])
        pnames = [p.name for p in block.params]
        for k, (_, s) in keyword.items():
            if k not in pnames:
                raise UserError(f"{node.name} has no parameter '{k}'", s,
                                hint=did_you_mean(k, pnames),
                                notes=[Note(f"{node.name} is defined here", block.span)])
        for i, p in enumerate(block.params):
            if i < len(positional):
                benv.vars[p.name] = positional[i][0]
            elif p.name in keyword:
                benv.vars[p.name] = keyword[p.name][0]
            elif p.default is not None:
                benv.vars[p.name] = self.eval(p.default, benv)
            else:
                raise UserError(f"{node.name} needs the argument '{p.name}'", node.span,
                                notes=[Note(f"{node.name} is defined here", block.span)])
        name = self.instance_name(inst or node.name.lower(), explicit=inst is not None,
                                  span=node.span)
        saved = self.scope
        self.scope = name.split(".")
        self.block_stack.append(node.name)
        try:
            out = self.run_body(block.body, benv, x)
        finally:
            self.block_stack.pop()
            self.scope = saved
        return Tensor(out.value, out.origin, out.what)


_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "//": operator.floordiv, "%": operator.mod, "<": operator.lt, "<=": operator.le,
          ">": operator.gt, ">=": operator.ge}


def _explicit_name(keyword: dict) -> str | None:
    """Pop and check a `name="..."` argument."""
    if "name" not in keyword:
        return None
    value, span = keyword.pop("name")
    if not isinstance(value, str) or not value.isidentifier():
        raise UserError(f"name= must be a string that is a valid identifier, got {describe(value)}",
                        span)
    return value


def _mentions_in(node: ast.Node) -> bool:
    if isinstance(node, ast.In):
        return True
    for v in vars(node).values():
        if isinstance(v, ast.Node) and _mentions_in(v):
            return True
        if isinstance(v, list):
            for item in v:
                if isinstance(item, ast.Node) and _mentions_in(item):
                    return True
    return False


def _title(node: ast.Call) -> str:
    """The call as written (`conv(64, 3)`), or its name when it spans several lines."""
    sp = node.span
    if sp.line and sp.end_line == sp.line and sp.end_col:
        return sp.source.line(sp.line)[sp.col - 1:sp.end_col - 1]
    return node.name


def _import_hint(name: str) -> str | None:
    """For an unknown capitalised name (blocks are named so): it may live in another file."""
    if name[:1].isupper():
        return (f"if {name} is a block defined in another file, import it: "
                'import "blocks/file.dls"')
    return None
