"""The compiler's pipelines: every graph dlc runs is made by a straight list of named passes.

    TRAIN  lower-train -> gt-proposals -> weight-noise -> add-loss -> lookahead -> autodiff
           -> all-reduce -> optimizer -> dce -> verify
    GRAD   lower-train -> gt-proposals -> weight-noise -> add-loss -> lookahead -> autodiff
           -> grads-out -> dce -> verify
    APPLY  grads-in -> all-reduce -> optimizer -> dce -> verify
    EVAL   lower-eval  -> add-loss -> dce -> verify
    INFER  lower-eval  -> dce -> verify

A step is the TRAIN graph, or with `accumulate k` (gradient accumulation) the GRAD graph
run on k micro-batches, whose gradients the runtime averages, then the APPLY graph, which
takes them as inputs and updates the parameters (clipping sees the averaged gradients).
`all-reduce` matters only for a run on N processes (data parallelism): it averages the
gradients across them in one bucketed collective (compiler/ops/collective.py); with one
process it leaves the graph alone.

`DLC_DEBUG=1` prints each pass's name, node count and time on stderr; `DLC_DEBUG=2`
prints the IR after each pass as well.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .autodiff import backward
from .config import LossTerm, TrainConfig, target_input
from .ir import Graph, TensorType, Value, print_graph
from .lower import live_nodes, lower
from .ops import Builder, ShapeError
from .ops import get as get_op
from ..spec.diagnostics import located
from .optimizers import add_lookahead, lower_optimizer, param_settings
from .verify import verify


@dataclass
class PassContext:
    """What passes hand on to later passes."""

    config: TrainConfig
    name: str                                  # the name the result graph gets
    training: bool = False                     # penalties apply to the training loss only
    loss: Value | None = None
    params: list[Value] = field(default_factory=list)
    grads: dict[int, Value] = field(default_factory=dict)
    points: dict[int, Value] = field(default_factory=dict)   # nag: parameter -> look-ahead
    settings: dict = field(default_factory=dict)   # parameter -> (optimizer args, lr scale)
    world: int = 1                             # processes of a data-parallel run


Pass = Callable[[Graph, PassContext], Graph]


def target_type(out: TensorType, loss: str) -> TensorType:
    """The type of a loss's target, given the output it scores: class indices [N] for
    cross-entropy, a mask [N, H, W] for per-pixel cross-entropy, ground-truth boxes
    [N, M, 5] for a detection loss (M, the rows per image, is the data's), else the
    output's type."""
    if getattr(get_op(loss), "box_target", False):
        return TensorType(("N", "M", 5), "f32")
    if loss == "cross_entropy":
        return TensorType((out.shape[0],), "i64")
    if loss == "pixel_cross_entropy" and out.rank == 4:
        return TensorType((out.shape[0], *out.shape[2:]), "i64")
    return out


def label_type(model: Graph, loss: str) -> TensorType:
    """The type of `%y`: the target of the first output."""
    return target_type(model.outputs[0].type, loss)


def term_output(g: Graph, term: LossTerm) -> Value:
    """The model output a loss term scores (its first output when it names none)."""
    if term.output is None:
        return g.outputs[0]
    return g.outputs[g.output_names.index(term.output)]


def read_values(g: Graph, term: LossTerm) -> list[Value]:
    """The other tensors a loss reads beside its output (fast_rcnn_loss: `deltas=`, `rois=`),
    each named by an output, an input or a named value (`anchors = ...`) of the model."""
    found = []
    for arg in getattr(get_op(term.call.name), "reads", ()):
        name = term.call.args[arg]
        if name in g.output_names:
            found.append(g.outputs[g.output_names.index(name)])
        elif name in g.values:
            found.append(g.values[name])
        else:
            try:
                found.append(g.input(name))
            except KeyError:
                raise ShapeError(f"{term.call.name} reads {arg}={name}, but the model has no "
                                 f"output, input or named value '{name}' (outputs: "
                                 f"{', '.join(g.output_names)})") from None
    return found


def lower_train(g: Graph, ctx: PassContext) -> Graph:
    return lower(g, "train", name=ctx.name)


def lower_eval(g: Graph, ctx: PassContext) -> Graph:
    return lower(g, "eval", name=ctx.name)


def penalized(g: Graph) -> list[Value]:
    """The parameters a norm penalty applies to: the weights (rank >= 2) of linear and conv
    layers; biases and normalisation scales are left alone."""
    return [v for v in g.state.values() if v.state.trainable and v.type.rank >= 2]


def weight_noise(g: Graph, ctx: PassContext) -> Graph:
    """`weight_noise(std)`: every weight w (as `penalized`) is read by the forward pass as
    w + gaussian_noise(w) {std}, a fresh draw each step; the optimizer, the penalty and the
    gradient's target stay the clean w (d(w + noise)/dw = 1)."""
    wn = ctx.config.weight_noise
    if wn is None or wn.args["std"] == 0:
        return g
    forward, g.nodes = g.nodes, []
    b = Builder(g, loc=wn.span)
    noisy = {}
    for w in penalized(g):
        scope = w.state.name
        eps = b.emit1("gaussian_noise", [w], {"std": float(wn.args["std"])}, scope=scope)
        noisy[id(w)] = b.emit1("add", [w, eps], scope=scope)
    for node in forward:
        node.inputs = [noisy.get(id(v), v) for v in node.inputs]
    g.nodes += forward
    return g


def gt_proposals(g: Graph, ctx: PassContext) -> Graph:
    """Training only, for a detector whose objective reads ground-truth boxes: the output of
    each `propose` node (gt=true, the default) is read through `add_gt_boxes(proposals,
    %boxes)`, which puts the image's true boxes among the proposals the RoI head trains on
    (torchvision's add_gt_proposals), so the head sees positives from the first step."""
    terms = [t for t in ctx.config.loss_terms() if getattr(get_op(t.call.name), "box_target",
                                                            False)]
    proposes = [n for n in g.nodes if n.op == "propose" and n.attrs.get("gt", True)]
    if not terms or not proposes:
        return g
    boxes = _input(g, target_input(terms[0].target), TensorType(("N", "M", 5), "f32"))
    for node in proposes:
        old = node.outputs[0]
        new = Builder(g, loc=node.loc, scope=node.scope).emit1("add_gt_boxes", [old, boxes])
        g.nodes.pop()                                   # emitted last: move it after `node`
        g.nodes.insert(g.nodes.index(node) + 1, new.node)
        for n in g.nodes:
            if n is not new.node:
                n.inputs = [new if v is old else v for v in n.inputs]
        g.outputs = [new if v is old else v for v in g.outputs]
        g.values = {k: new if v is old else v for k, v in g.values.items()}
    return g


def _input(g: Graph, name: str, type: TensorType) -> Value:
    """The graph input `name`, added with `type` if the graph has none yet."""
    try:
        return g.input(name)
    except KeyError:
        return g.add_input(name, type)


def mixed_loss(g: Graph, b: Builder, call, z: Value, y: Value) -> Value:
    """A batch mixed by mixup/cutmix: lam_a * loss(z, y) + lam_b * loss(z, y_b), with
    inputs %y_b (each example's partner's label), %lam_a = λ and %lam_b = 1 - λ."""
    y_b = _input(g, "y_b", y.type)
    lam_a, lam_b = _input(g, "lam_a", TensorType(())), _input(g, "lam_b", TensorType(()))
    terms = [b.emit1("mul", [b.emit1(call.name, [z, labels], dict(call.args)), lam])
             for labels, lam in ((y, lam_a), (y_b, lam_b))]
    return b.emit1("add", terms)


def add_loss(g: Graph, ctx: PassContext) -> Graph:
    """Input %y and the loss node; outputs become (loss, model outputs...).

    In training, a `penalty` setting adds strength * sum(w^2) (l2) or sum(|w|) (l1) over
    every weight to the loss that is differentiated and reported, and mixup/cutmix with
    cross-entropy make the loss the λ-weighted sum of the two labels' losses."""
    cfg = ctx.config
    b = Builder(g, scope="loss")
    mix = ctx.training and cfg.label_mixer is not None
    terms = [_loss_term(g, b, term, mix) for term in cfg.loss_terms()]
    ctx.loss = terms[0] if len(terms) == 1 else b.emit1("add", terms, loc=cfg.spans.get("loss"))
    if ctx.training and cfg.penalty is not None:
        b.loc, b.scope = cfg.penalty.span, "penalty"
        op, attrs = f"{cfg.penalty.name}_penalty", {"strength": cfg.penalty.args["strength"]}
        penalties = [b.emit1(op, [w], attrs, scope=w.state.name) for w in penalized(g)]
        if penalties:
            ctx.loss = b.emit1("add", [ctx.loss, *penalties])
    model_outputs, names = list(g.outputs), list(g.output_names)
    g.outputs = [ctx.loss, *model_outputs]
    g.output_names = ["loss", *names]
    if len(terms) > 1:                         # each term after the model's outputs
        g.outputs += terms
        g.output_names += [f"loss.{t.output}" for t in cfg.loss_terms()]
    return g


def _loss_term(g: Graph, b: Builder, term: LossTerm, mix: bool = False) -> Value:
    """weight * loss(output, target): the target an input named after its data field (`%y`
    for labels or regression targets, `%masks`, ...), shared by terms that read one field.
    `mix`: the batch is mixed (mixup/cutmix), so a cross-entropy on the labels is mixed too."""
    out = term_output(g, term)
    name = target_input(term.target)
    target = _input(g, name, target_type(out.type, term.call.name))
    b.loc = term.span
    if mix and term.call.name == "cross_entropy" and name == "y":
        loss = mixed_loss(g, b, term.call, out, target)
    else:
        op, ins = get_op(term.call.name), [out, *read_values(g, term), target]
        if hasattr(op, "emit_term"):              # a term lowered to several ops (rpn_loss)
            loss = op.emit_term(b, ins, dict(term.call.args))
        else:
            loss = b.emit1(term.call.name, ins, dict(term.call.args))
    if term.weight != 1.0:
        loss = b.emit1("scale", [loss], {"factor": term.weight})
    return loss


def _lr_input(g: Graph) -> Value:
    try:
        return g.input("lr")
    except KeyError:
        return g.add_input("lr", TensorType(()))


def lookahead(g: Graph, ctx: PassContext) -> Graph:
    """nag only: the forward reads every parameter at its look-ahead point w - lr*beta*v,
    so that autodiff's gradient is the notes' ∇J(θ - ηβv)."""
    cfg = ctx.config
    ctx.params = [v for v in g.state.values() if v.state.trainable]
    ctx.settings = param_settings(cfg.optimizer, cfg.param_groups, g)
    if cfg.optimizer.name == "nag":
        ctx.points = add_lookahead(g, cfg.optimizer, ctx.settings, ctx.params, _lr_input(g))
    return g


def autodiff(g: Graph, ctx: PassContext) -> Graph:
    """d loss / d parameter for every trainable parameter (at its look-ahead point for
    nag), as backward nodes."""
    wrt = [ctx.points.get(id(p), p) for p in ctx.params]
    grads = backward(g, ctx.loss, wrt)
    ctx.grads = {id(p): grads[id(w)] for p, w in zip(ctx.params, wrt)}
    g.grads = {p.state.name: ctx.grads[id(p)] for p in ctx.params}
    return g


# the gradients of one all-reduce call: a bucket is filled with whole gradients up to this
# many elements (one bucket for most models: few collectives per step, as DDP's 25 MB)
BUCKET_ELEMENTS = 1 << 22


def buckets(values: list[Value], limit: int = BUCKET_ELEMENTS) -> list[list[Value]]:
    """`values` in order, cut into runs of at most `limit` elements (a larger one alone)."""
    out: list[list[Value]] = []
    size = 0
    for v in values:
        n = v.type.numel() or 0
        if out and size + n <= limit:
            out[-1].append(v)
            size += n
        else:
            out.append([v])
            size = n
    return out


def all_reduce(g: Graph, ctx: PassContext) -> Graph:
    """With N processes, `all_reduce` nodes average every gradient across them, bucketed
    (few collectives per step); the optimizer then updates with the averages."""
    if ctx.world == 1 or not ctx.params:
        return g
    b = Builder(g, scope="data_parallel")
    reduced = {}
    for bucket in buckets([ctx.grads[id(p)] for p in ctx.params]):
        for v, r in zip(bucket, b.emit("all_reduce", bucket,
                                       {"reduce": "mean", "world": ctx.world})):
            reduced[id(v)] = r
    ctx.grads = {id(p): reduced[id(ctx.grads[id(p)])] for p in ctx.params}
    return g


def grads_out(g: Graph, ctx: PassContext) -> Graph:
    """The gradients become outputs `grad.NAME` after (loss, model outputs...), in
    parameter order: the runtime accumulates them over micro-batches."""
    g.outputs = [*g.outputs, *(ctx.grads[id(p)] for p in ctx.params)]
    g.output_names = [*g.output_names, *(f"grad.{p.state.name}" for p in ctx.params)]
    return g


def grads_in(model: Graph, ctx: PassContext) -> Graph:
    """A graph of the model's trainable parameters with an input `%grad.NAME` for each:
    the gradients one step applies (with the parameters' optimizer settings)."""
    cfg = ctx.config
    ctx.settings = param_settings(cfg.optimizer, cfg.param_groups, lower(model, "train"))
    g = Graph(ctx.name)
    ctx.params = [g.add_state(v.state) for v in model.state.values() if v.state.trainable]
    ctx.grads = {id(p): g.add_input(f"grad.{p.state.name}", p.type) for p in ctx.params}
    return g


def optimizer(g: Graph, ctx: PassContext) -> Graph:
    """Input %lr, one update node per parameter, and the `@name <- %value` assignments."""
    cfg = ctx.config
    lower_optimizer(g, cfg.optimizer, ctx.params, ctx.grads, _lr_input(g), ctx.settings,
                    cfg.clip)
    return g


def dce(g: Graph, ctx: PassContext) -> Graph:
    """Drop nodes that feed neither an output nor a state update."""
    g.nodes = live_nodes(g)
    return g


def verify_pass(g: Graph, ctx: PassContext) -> Graph:
    return verify(g)


_FORWARD_BACKWARD: list[tuple[str, Pass]] = [
    ("lower-train", lower_train), ("gt-proposals", gt_proposals), ("weight-noise", weight_noise),
    ("add-loss", add_loss),
    ("lookahead", lookahead), ("autodiff", autodiff)]
TRAIN: list[tuple[str, Pass]] = [*_FORWARD_BACKWARD, ("all-reduce", all_reduce),
                                 ("optimizer", optimizer), ("dce", dce), ("verify", verify_pass)]
GRAD: list[tuple[str, Pass]] = [*_FORWARD_BACKWARD, ("grads-out", grads_out),
                                ("dce", dce), ("verify", verify_pass)]
APPLY: list[tuple[str, Pass]] = [("grads-in", grads_in), ("all-reduce", all_reduce),
                                 ("optimizer", optimizer), ("dce", dce), ("verify", verify_pass)]
EVAL: list[tuple[str, Pass]] = [("lower-eval", lower_eval), ("add-loss", add_loss),
                                ("dce", dce), ("verify", verify_pass)]
INFER: list[tuple[str, Pass]] = [("lower-eval", lower_eval), ("dce", dce),
                                 ("verify", verify_pass)]


def run(passes: list[tuple[str, Pass]], model: Graph, ctx: PassContext) -> Graph:
    debug = int(os.environ.get("DLC_DEBUG", "0") or 0)
    g = model
    for name, fn in passes:
        t0 = time.perf_counter()
        try:
            g = fn(g, ctx)
        except ShapeError as e:                    # e.g. a loss that does not fit the output
            raise located(e, _loss_span(model, ctx.config), _hint(e, ctx.config)) from None
        if debug >= 1:
            sys.stderr.write(f"[dlc] {ctx.name}: {name:<12} {len(g.nodes):>5} nodes  "
                             f"{(time.perf_counter() - t0) * 1e3:7.2f} ms\n")
        if debug >= 2:
            sys.stderr.write(print_graph(g))
    g.precision = ctx.config.precision
    return g


def _loss_span(model: Graph, cfg: TrainConfig):
    """Where the loss is written, or (the default loss) the layer making the model's output."""
    if cfg.loss.span is not None:
        return cfg.loss.span
    out = model.outputs[0] if model.outputs else None
    return out.node.loc if out is not None and out.node is not None else None


def _hint(e: ShapeError, cfg: TrainConfig) -> str | None:
    if cfg.loss.span is None and str(e).startswith(cfg.loss.name):
        return (f"no train section names a loss, so the default {cfg.loss.name} applies; "
                "set another with `loss mse` in `train { }`")
    return None


def build_train_graph(model: Graph, cfg: TrainConfig, world: int = 1) -> Graph:
    """inputs (%x..., %y, %lr) -> outputs (loss, model outputs...), with state updates;
    for `world` processes, the gradients averaged across them before the update."""
    return run(TRAIN, model, PassContext(cfg, f"{model.name}.train", training=True,
                                         world=world))


def build_step_graphs(model: Graph, cfg: TrainConfig, world: int = 1) -> list[Graph]:
    """What one optimizer step runs: [train graph], or with `accumulate` > 1
    [grad graph, apply graph]:

        grad   (%x..., %y[, %lr]) -> (loss, model outputs..., grad.NAME...), running stats
        apply  (%grad.NAME..., %lr) -> (), parameter and optimizer-slot updates"""
    if cfg.accumulate == 1:
        return [build_train_graph(model, cfg, world)]
    grad = run(GRAD, model, PassContext(cfg, f"{model.name}.grad", training=True))
    apply = run(APPLY, model, PassContext(cfg, f"{model.name}.apply", training=True,
                                          world=world))
    return [grad, apply]


def build_eval_graph(model: Graph, cfg: TrainConfig) -> Graph:
    """inputs (%x..., %y) -> outputs (loss, model outputs...)."""
    return run(EVAL, model, PassContext(cfg, f"{model.name}.eval"))


def build_infer_graph(model: Graph, cfg: TrainConfig) -> Graph:
    """inputs (%x...) -> the model's outputs, in inference mode."""
    return run(INFER, model, PassContext(cfg, f"{model.name}.infer"))
