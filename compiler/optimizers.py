"""Optimizer lowering: turn `optimizer adam(lr=...)` into one update node per parameter,
its state slots, and the `@name <- %value` assignments of the train graph.

Also lowered here, because they shape every update node:
    params(match=..., ...)   parameter groups: another value of the optimizer's own
                             arguments for the parameters a pattern matches
    clip norm(max_norm)      gradients scaled by min(1, max_norm / (||g||_2 + 1e-6)) over all
    clip value(clip_value)   gradients clamped to [-clip_value, clip_value]
    nag(...)                 the forward evaluated at the look-ahead point (`add_lookahead`)
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from .config import Call
from .ir import Graph, StateSpec, TensorType, Value
from .ops import Arg, Builder

_EPS_INSIDE = Arg("eps_inside", False, kind="bool",
                  doc="the notes' form: eps inside the square root")
# Language signatures (the learning rate comes from the schedule at run time).
OPTIMIZERS: dict[str, tuple[Arg, ...]] = {
    "sgd": (Arg("lr", kind="float"), Arg("momentum", 0.0, kind="float"),
            Arg("dampening", 0.0, kind="float"), Arg("nesterov", False, kind="bool"),
            Arg("weight_decay", 0.0, kind="float")),
    "momentum": (Arg("lr", kind="float"), Arg("beta", 0.9, kind="float"),
                 Arg("weight_decay", 0.0, kind="float")),
    "nag": (Arg("lr", kind="float"), Arg("beta", 0.9, kind="float"),
            Arg("weight_decay", 0.0, kind="float")),
    "adam": (Arg("lr", 1e-3, kind="float"), Arg("beta1", 0.9, kind="float"),
             Arg("beta2", 0.999, kind="float"), Arg("eps", 1e-8, kind="float"),
             Arg("weight_decay", 0.0, kind="float"), Arg("amsgrad", False, kind="bool")),
    "adamw": (Arg("lr", 1e-3, kind="float"), Arg("beta1", 0.9, kind="float"),
              Arg("beta2", 0.999, kind="float"), Arg("eps", 1e-8, kind="float"),
              Arg("weight_decay", 0.01, kind="float"), Arg("amsgrad", False, kind="bool")),
    "rmsprop": (Arg("lr", 0.01, kind="float"), Arg("alpha", 0.99, kind="float"),
                Arg("eps", 1e-8, kind="float"), Arg("momentum", 0.0, kind="float"),
                Arg("centered", False, kind="bool"), Arg("weight_decay", 0.0, kind="float"),
                _EPS_INSIDE),
    "adagrad": (Arg("lr", 0.01, kind="float"), Arg("lr_decay", 0.0, kind="float"),
                Arg("eps", 1e-10, kind="float"), Arg("initial_accumulator", 0.0, kind="float"),
                Arg("weight_decay", 0.0, kind="float"), _EPS_INSIDE),
    "adadelta": (Arg("lr", 1.0, kind="float"), Arg("rho", 0.9, kind="float"),
                 Arg("eps", 1e-6, kind="float"), Arg("weight_decay", 0.0, kind="float")),
}
CLIPS: dict[str, tuple[Arg, ...]] = {
    "norm": (Arg("max_norm", kind="float", doc="largest global L2 norm of all gradients"),),
    "value": (Arg("clip_value", kind="float", doc="largest |gradient| element"),),
}
# `match=` names for common groups (besides glob patterns over parameter names)
MATCH_NAMES = ("biases", "norms")
NORM_OPS = ("batch_norm", "layer_norm", "group_norm")


def check_optimizer_args(call: Call) -> str | None:
    """A problem with the optimizer's hyper-parameters, or None."""
    a = call.args
    if "lr" in a and a["lr"] <= 0:
        return "lr must be positive"
    if call.name == "sgd" and a.get("nesterov") and (a["momentum"] <= 0 or a["dampening"] != 0):
        return "nesterov momentum needs momentum > 0 and dampening = 0"
    for k in ("momentum", "beta", "beta1", "beta2", "alpha", "rho"):
        if k in a and not 0 <= a[k] < 1:
            return f"{k} must be in [0, 1)"
    for k in ("eps", "lr_decay", "weight_decay", "initial_accumulator"):
        if k in a and a[k] < 0:
            return f"{k} must not be negative"
    return None


# -- parameter groups ----------------------------------------------------------------------------

def _patterns(group: Call) -> list[str]:
    m = group.args["match"]
    return list(m) if isinstance(m, list) else [m]


def _norm_params(g: Graph) -> set[str]:
    return {v.state.name for n in g.nodes if n.op.startswith(NORM_OPS)
            for v in n.inputs[1:] if v.state is not None and v.state.trainable}


def group_members(g: Graph, group: Call) -> dict[str, list[str]]:
    """{pattern: the trainable parameters it matches} for one `params(match=...)` group."""
    names = [v.state.name for v in g.state.values() if v.state.trainable]
    norms = _norm_params(g)
    out = {}
    for pat in _patterns(group):
        if pat == "biases":
            out[pat] = [n for n in names if n.endswith(".bias") and n not in norms]
        elif pat == "norms":
            out[pat] = [n for n in names if n in norms]
        else:
            out[pat] = [n for n in names if fnmatchcase(n, pat)]
    return out


Settings = dict[str, tuple[dict, float]]


def param_settings(call: Call, groups: list[Call], g: Graph) -> Settings:
    """{parameter: (its optimizer arguments, later groups winning; its lr scale, the group's
    lr / the optimizer's lr)}, read from the forward graph before any rewiring."""
    members = [{n for ms in group_members(g, grp).values() for n in ms} for grp in groups]
    out = {}
    for v in g.state.values():
        if not v.state.trainable:
            continue
        args = dict(call.args)
        for grp, names in zip(groups, members):
            if v.state.name in names:
                args.update({k: a for k, a in grp.args.items() if k != "match"})
        out[v.state.name] = (args, args["lr"] / call.args["lr"])
    return out


# -- gradient clipping ---------------------------------------------------------------------------

def clip_factor(g: Graph, clip: Call, grads: list[Value]) -> Value:
    """min(1, max_norm / (sqrt(sum of every gradient's squares) + 1e-6)), as
    torch.nn.utils.clip_grad_norm_: one sum of squares per gradient, added up."""
    b = Builder(g, loc=clip.span, scope="clip")
    squares = [b.emit1("sum", [b.emit1("mul", [gr, gr])], {"dims": list(range(gr.type.rank))})
               for gr in grads]
    total = squares[0] if len(squares) == 1 else b.emit1("add", squares)
    return b.emit1("clip_factor", [total], {"max_norm": clip.args["max_norm"]})


def clip_attrs(clip: Call | None) -> dict:
    if clip is None:
        return {}
    if clip.name == "norm":
        return {"clip_norm": True}
    return {"clip_value": clip.args["clip_value"]}


# -- NAG: the forward at the look-ahead point ----------------------------------------------------

def add_lookahead(g: Graph, call: Call, settings: Settings, params: list[Value],
                  lr: Value) -> dict[int, Value]:
    """For `nag`, every forward use of a parameter w reads w - lr*beta*v instead (v the
    velocity slot): the gradient the graph computes is then the notes' ∇J(θ - ηβv).
    Returns {id(parameter): its look-ahead value}; nothing for other optimizers."""
    if call.name != "nag":
        return {}
    b = Builder(g, scope="optimizer")
    forward, g.nodes = g.nodes, []
    points = {}
    for p in params:
        args, scale = settings[p.state.name]
        v = g.add_state(StateSpec(f"{p.state.name}.velocity", p.type, "zeros", False, "slot"))
        b.scope = p.state.name
        points[id(p)] = b.emit1("nag_lookahead", [p, v, lr],
                                {"beta": args["beta"], "lr_scale": scale})
    for node in forward:
        node.inputs = [points.get(id(v), v) for v in node.inputs]
    g.nodes += forward
    return points


# -- updates -------------------------------------------------------------------------------------

def _slot(g: Graph, p: Value, suffix: str, init: str = "zeros") -> Value:
    name = f"{p.state.name}.{suffix}"
    if name in g.state:                                 # nag's velocity, made before autodiff
        return g.state[name]
    return g.add_state(StateSpec(name, p.type, init, False, "slot"))


def _update(g: Graph, name: str, a: dict, p: Value, step: Value | None
            ) -> tuple[str, list[Value], list[Value], dict]:
    """(op, slots, inputs between the gradient and lr, attrs) of one parameter's update."""
    slot = lambda suffix, init="zeros": _slot(g, p, suffix, init)   # noqa: E731
    if name == "sgd":
        attrs = {k: a[k] for k in ("momentum", "dampening", "nesterov", "weight_decay")}
        slots = [slot("momentum")] if a["momentum"] else []
        return "sgd_update", slots, [*slots, step] if slots else [], attrs
    if name in ("momentum", "nag"):
        slots = [slot("velocity")]
        return "momentum_update", slots, slots, {"beta": a["beta"],
                                                 "weight_decay": a["weight_decay"]}
    if name in ("adam", "adamw"):
        slots = [slot("adam_m"), slot("adam_v")] + ([slot("adam_vmax")] if a["amsgrad"] else [])
        attrs = {"beta1": a["beta1"], "beta2": a["beta2"], "eps": a["eps"],
                 "weight_decay": a["weight_decay"], "decoupled": name == "adamw"}
        return "adam_update", slots, [*slots, step], attrs
    if name == "rmsprop":
        slots = [slot("square_avg")] + ([slot("grad_avg")] if a["centered"] else []) \
            + ([slot("momentum")] if a["momentum"] else [])
        attrs = {k: a[k] for k in ("alpha", "eps", "momentum", "centered", "weight_decay")}
        return "rmsprop_update", slots, slots, attrs
    if name == "adagrad":
        slots = [slot("sum", f"constant({a['initial_accumulator']!r})")]
        attrs = {k: a[k] for k in ("lr_decay", "eps", "weight_decay")}
        return "adagrad_update", slots, [*slots, step], attrs
    slots = [slot("square_avg"), slot("acc_delta")]                  # adadelta
    return "adadelta_update", slots, slots, {k: a[k] for k in ("rho", "eps", "weight_decay")}


def _options(args: dict, lr_scale: float, clip: Call | None) -> dict:
    """Attributes an update node carries only when they are not their defaults (the IR
    of a spec without them stays as it was)."""
    extra = {k: True for k in ("amsgrad", "eps_inside") if args.get(k)}
    if lr_scale != 1.0:
        extra["lr_scale"] = lr_scale
    return {**extra, **clip_attrs(clip)}


def _needs_step(call: Call, per_param: list[dict]) -> bool:
    if call.name in ("adam", "adamw", "adagrad"):
        return True
    return call.name == "sgd" and any(a["momentum"] for a in per_param)


def lower_optimizer(g: Graph, call: Call, params: list[Value], grads: dict[int, Value],
                    lr: Value, settings: Settings, clip: Call | None = None) -> None:
    """Emit update nodes for every parameter (with its group's `settings`) and record them
    in g.updates."""
    b = Builder(g, scope="optimizer")
    step_in = None
    if _needs_step(call, [a for a, _ in settings.values()]):
        step = g.add_state(StateSpec("optimizer.step", TensorType(()), "zeros", False, "slot"))
        step_in = b.emit1("increment", [step])
        g.updates["optimizer.step"] = step_in
    factor = None
    if clip is not None and clip.name == "norm" and params:
        factor = clip_factor(g, clip, [grads[id(p)] for p in params])
    for p in params:
        name = p.state.name
        b.scope = name
        args, scale = settings[name]
        op, slots, middle, attrs = _update(g, call.name, args, p, step_in)
        attrs.update(_options(args, scale, clip))
        ins = [p, grads[id(p)], *middle, lr] + ([factor] if factor is not None else [])
        new_p, *new_slots = b.emit(op, ins, attrs)
        for s_old, s_new in zip(slots, new_slots):
            g.updates[s_old.state.name] = s_new
        g.updates[name] = new_p
