"""The compiler's pipelines: every graph dlc runs is made by a straight list of named passes.

    TRAIN  lower-train -> weight-noise -> add-loss -> lookahead -> autodiff -> optimizer
           -> dce -> verify
    EVAL   lower-eval  -> add-loss -> dce -> verify
    INFER  lower-eval  -> dce -> verify

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
from .config import TrainConfig
from .ir import Graph, TensorType, Value, print_graph
from .lower import live_nodes, lower
from .ops import Builder, ShapeError
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


Pass = Callable[[Graph, PassContext], Graph]


def label_type(model: Graph, loss: str) -> TensorType:
    """The type of `%y`: class indices for cross-entropy, else the first output's type."""
    out = model.outputs[0].type
    if loss == "cross_entropy":
        return TensorType((out.shape[0],), "i64")
    return out


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


def mixed_loss(g: Graph, b: Builder, cfg: TrainConfig, y: Value) -> Value:
    """A batch mixed by mixup/cutmix: lam_a * loss(z, y) + lam_b * loss(z, y_b), with
    inputs %y_b (each example's partner's label), %lam_a = λ and %lam_b = 1 - λ."""
    z = g.outputs[0]
    y_b = g.add_input("y_b", y.type)
    lam_a, lam_b = g.add_input("lam_a", TensorType(())), g.add_input("lam_b", TensorType(()))
    terms = [b.emit1("mul", [b.emit1(cfg.loss.name, [z, labels], dict(cfg.loss.args)), lam])
             for labels, lam in ((y, lam_a), (y_b, lam_b))]
    return b.emit1("add", terms)


def add_loss(g: Graph, ctx: PassContext) -> Graph:
    """Input %y and the loss node; outputs become (loss, model outputs...).

    In training, a `penalty` setting adds strength * sum(w^2) (l2) or sum(|w|) (l1) over
    every weight to the loss that is differentiated and reported, and mixup/cutmix with
    cross-entropy make the loss the λ-weighted sum of the two labels' losses."""
    cfg = ctx.config
    y = g.add_input("y", label_type(g, cfg.loss.name))
    b = Builder(g, loc=cfg.loss.span, scope="loss")
    if ctx.training and cfg.label_mixer is not None and cfg.loss.name == "cross_entropy":
        ctx.loss = mixed_loss(g, b, cfg, y)
    else:
        ctx.loss = b.emit1(cfg.loss.name, [g.outputs[0], y], dict(cfg.loss.args))
    if ctx.training and cfg.penalty is not None:
        b.loc, b.scope = cfg.penalty.span, "penalty"
        op, attrs = f"{cfg.penalty.name}_penalty", {"strength": cfg.penalty.args["strength"]}
        terms = [b.emit1(op, [w], attrs, scope=w.state.name) for w in penalized(g)]
        if terms:
            ctx.loss = b.emit1("add", [ctx.loss, *terms])
    g.outputs = [ctx.loss, *g.outputs]
    g.output_names = ["loss", *g.output_names]
    return g


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


TRAIN: list[tuple[str, Pass]] = [("lower-train", lower_train), ("weight-noise", weight_noise),
                                 ("add-loss", add_loss), ("lookahead", lookahead),
                                 ("autodiff", autodiff), ("optimizer", optimizer),
                                 ("dce", dce), ("verify", verify_pass)]
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


def build_train_graph(model: Graph, cfg: TrainConfig) -> Graph:
    """inputs (%x..., %y, %lr) -> outputs (loss, model outputs...), with state updates."""
    return run(TRAIN, model, PassContext(cfg, f"{model.name}.train", training=True))


def build_eval_graph(model: Graph, cfg: TrainConfig) -> Graph:
    """inputs (%x..., %y) -> outputs (loss, model outputs...)."""
    return run(EVAL, model, PassContext(cfg, f"{model.name}.eval"))


def build_infer_graph(model: Graph, cfg: TrainConfig) -> Graph:
    """inputs (%x...) -> the model's outputs, in inference mode."""
    return run(INFER, model, PassContext(cfg, f"{model.name}.infer"))
