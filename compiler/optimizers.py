"""Optimizer lowering: turn `optimizer adam(lr=...)` into one update node per parameter,
its state slots, and the `@name <- %value` assignments of the train graph."""
from __future__ import annotations

from .config import Call
from .ir import Graph, StateSpec, TensorType, Value
from .ops import Arg, Builder

# Language signatures (the learning rate comes from the schedule at run time).
OPTIMIZERS: dict[str, tuple[Arg, ...]] = {
    "sgd": (Arg("lr", kind="float"), Arg("momentum", 0.0, kind="float"),
            Arg("dampening", 0.0, kind="float"), Arg("nesterov", False, kind="bool"),
            Arg("weight_decay", 0.0, kind="float")),
    "adam": (Arg("lr", 1e-3, kind="float"), Arg("beta1", 0.9, kind="float"),
             Arg("beta2", 0.999, kind="float"), Arg("eps", 1e-8, kind="float"),
             Arg("weight_decay", 0.0, kind="float")),
    "adamw": (Arg("lr", 1e-3, kind="float"), Arg("beta1", 0.9, kind="float"),
              Arg("beta2", 0.999, kind="float"), Arg("eps", 1e-8, kind="float"),
              Arg("weight_decay", 0.01, kind="float")),
}


def check_optimizer_args(call: Call) -> str | None:
    """A problem with the optimizer's hyper-parameters, or None."""
    a = call.args
    if a["lr"] <= 0:
        return "lr must be positive"
    if call.name == "sgd":
        if a["nesterov"] and (a["momentum"] <= 0 or a["dampening"] != 0):
            return "nesterov momentum needs momentum > 0 and dampening = 0"
        if not 0 <= a["momentum"] < 1:
            return "momentum must be in [0, 1)"
    else:
        for k in ("beta1", "beta2"):
            if not 0 <= a[k] < 1:
                return f"{k} must be in [0, 1)"
    return None


def lower_optimizer(g: Graph, call: Call, params: list[Value], grads: dict[int, Value],
                    lr: Value) -> None:
    """Emit update nodes for every parameter and record them in g.updates."""
    a = call.args
    b = Builder(g, scope="optimizer")
    step_in = None
    if call.name in ("adam", "adamw") or a.get("momentum"):
        step = g.add_state(StateSpec("optimizer.step", TensorType(()), "zeros", False, "slot"))
        step_in = b.emit1("increment", [step])
        g.updates["optimizer.step"] = step_in
    for p in params:
        name, gp = p.state.name, grads[id(p)]
        b.scope = name
        if call.name == "sgd":
            attrs = {k: a[k] for k in ("momentum", "dampening", "nesterov", "weight_decay")}
            if a["momentum"]:
                buf = g.add_state(StateSpec(f"{name}.momentum", p.type, "zeros", False, "slot"))
                new_p, new_buf = b.emit("sgd_update", [p, gp, buf, step_in, lr], attrs)
                g.updates[buf.state.name] = new_buf
            else:
                (new_p,) = b.emit("sgd_update", [p, gp, lr], attrs)
        else:
            m = g.add_state(StateSpec(f"{name}.adam_m", p.type, "zeros", False, "slot"))
            v = g.add_state(StateSpec(f"{name}.adam_v", p.type, "zeros", False, "slot"))
            attrs = {"beta1": a["beta1"], "beta2": a["beta2"], "eps": a["eps"],
                     "weight_decay": a["weight_decay"], "decoupled": call.name == "adamw"}
            new_p, new_m, new_v = b.emit("adam_update", [p, gp, m, v, step_in, lr], attrs)
            g.updates[m.state.name] = new_m
            g.updates[v.state.name] = new_v
        g.updates[name] = new_p
