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
    "rmsprop": (Arg("lr", 0.01, kind="float"), Arg("alpha", 0.99, kind="float"),
                Arg("eps", 1e-8, kind="float"), Arg("momentum", 0.0, kind="float"),
                Arg("centered", False, kind="bool"), Arg("weight_decay", 0.0, kind="float")),
    "adagrad": (Arg("lr", 0.01, kind="float"), Arg("lr_decay", 0.0, kind="float"),
                Arg("eps", 1e-10, kind="float"), Arg("initial_accumulator", 0.0, kind="float"),
                Arg("weight_decay", 0.0, kind="float")),
    "adadelta": (Arg("lr", 1.0, kind="float"), Arg("rho", 0.9, kind="float"),
                 Arg("eps", 1e-6, kind="float"), Arg("weight_decay", 0.0, kind="float")),
}


def check_optimizer_args(call: Call) -> str | None:
    """A problem with the optimizer's hyper-parameters, or None."""
    a = call.args
    if a["lr"] <= 0:
        return "lr must be positive"
    if call.name == "sgd" and a["nesterov"] and (a["momentum"] <= 0 or a["dampening"] != 0):
        return "nesterov momentum needs momentum > 0 and dampening = 0"
    for k in ("momentum", "beta1", "beta2", "alpha", "rho"):
        if k in a and not 0 <= a[k] < 1:
            return f"{k} must be in [0, 1)"
    for k in ("eps", "lr_decay", "weight_decay", "initial_accumulator"):
        if k in a and a[k] < 0:
            return f"{k} must not be negative"
    return None


def lower_optimizer(g: Graph, call: Call, params: list[Value], grads: dict[int, Value],
                    lr: Value) -> None:
    """Emit update nodes for every parameter and record them in g.updates."""
    a = call.args
    b = Builder(g, scope="optimizer")
    step_in = None
    if call.name in ("adam", "adamw", "adagrad") or (call.name == "sgd" and a["momentum"]):
        step = g.add_state(StateSpec("optimizer.step", TensorType(()), "zeros", False, "slot"))
        step_in = b.emit1("increment", [step])
        g.updates["optimizer.step"] = step_in
    for p in params:
        name, gp = p.state.name, grads[id(p)]
        b.scope = name

        def slot(suffix: str, init: str = "zeros") -> Value:
            return g.add_state(StateSpec(f"{name}.{suffix}", p.type, init, False, "slot"))

        if call.name == "sgd":
            attrs = {k: a[k] for k in ("momentum", "dampening", "nesterov", "weight_decay")}
            slots = [slot("momentum")] if a["momentum"] else []
            ins = [p, gp, *slots, step_in, lr] if slots else [p, gp, lr]
            op = "sgd_update"
        elif call.name in ("adam", "adamw"):
            slots = [slot("adam_m"), slot("adam_v")]
            attrs = {"beta1": a["beta1"], "beta2": a["beta2"], "eps": a["eps"],
                     "weight_decay": a["weight_decay"], "decoupled": call.name == "adamw"}
            ins, op = [p, gp, *slots, step_in, lr], "adam_update"
        elif call.name == "rmsprop":
            slots = [slot("square_avg")] + ([slot("grad_avg")] if a["centered"] else []) \
                + ([slot("momentum")] if a["momentum"] else [])
            attrs = {k: a[k] for k in ("alpha", "eps", "momentum", "centered", "weight_decay")}
            ins, op = [p, gp, *slots, lr], "rmsprop_update"
        elif call.name == "adagrad":
            slots = [slot("sum", f"constant({a['initial_accumulator']!r})")]
            attrs = {k: a[k] for k in ("lr_decay", "eps", "weight_decay")}
            ins, op = [p, gp, *slots, step_in, lr], "adagrad_update"
        else:                                            # adadelta
            slots = [slot("square_avg"), slot("acc_delta")]
            attrs = {k: a[k] for k in ("rho", "eps", "weight_decay")}
            ins, op = [p, gp, *slots, lr], "adadelta_update"
        new_p, *new_slots = b.emit(op, ins, attrs)
        for s_old, s_new in zip(slots, new_slots):
            g.updates[s_old.state.name] = s_new
        g.updates[name] = new_p
