"""The `train { }` section: evaluate settings into a checked `TrainConfig`."""
from __future__ import annotations

import math
from typing import Any

from ..compiler.config import DEFAULT_TARGETS, Call, LossTerm, TrainConfig
from ..compiler.ops import get as get_op
from ..compiler.optimizers import CLIPS, MATCH_NAMES, OPTIMIZERS, check_optimizer_args
from ..compiler.ops.registry import Arg
from ..runtime.augment import AUGMENTS, LABEL_MIXERS, check_augment
from ..runtime.data import DATASOURCES, check_data_args
from ..runtime.proposals import PROPOSALS
from ..runtime.schedules import SCHEDULES, check_schedule_args
from . import ast
from .bind import bind, describe
from .diagnostics import Note, Span, UserError, did_you_mean
from .elaborate import Elaborator
from .values import Symbol

# a loss's arguments in a train section (an op's `term_args` when they differ from the layer's)
LOSSES = {name: getattr(get_op(name), "term_args", get_op(name).args)
          for name in ("cross_entropy", "mse", "pixel_cross_entropy", "yolo_loss",
                       "fast_rcnn_loss", "rpn_loss")}
PENALTIES = {"l2": (Arg("strength", kind="float", doc="multiplies sum(w^2)"),),
             "l1": (Arg("strength", kind="float", doc="multiplies sum(|w|)"),)}
WEIGHT_NOISE = (Arg("std", kind="float", doc="standard deviation of the noise on each weight"),)
EARLY_STOPPING = (Arg("monitor", "val_loss", kind="name"), Arg("patience", 5, kind="int"),
                  Arg("min_delta", 0.0, kind="float"))
# several models from one spec (runtime/ensemble.py); one of them per train section
ENSEMBLES = {
    "kfold": (Arg("k", 5, kind="int", doc="number of folds, at least 2"),
              Arg("stratify", True, kind="bool", doc="every fold keeps the class proportions")),
    "bagging": (Arg("n", 5, kind="int", doc="members, each on a bootstrap resample"),
                Arg("combine", "mean", kind="name", doc="mean (probabilities) or vote"),
                Arg("fraction", 1.0, kind="float", doc="resample size / training split size")),
    "boosting": (Arg("n", 10, kind="int", doc="rounds of SAMME, at most one member each"),),
}

# key -> (kind, table of named choices or None, what to write)
SETTINGS: dict[str, tuple[str, dict | None, str]] = {
    "data": ("call", DATASOURCES, "data digits(val=0.1, test=0.2)"),
    "loss": ("call", LOSSES, "loss cross_entropy(label_smoothing=0.1)"),
    "optimizer": ("call", OPTIMIZERS, "optimizer adam(lr=1e-3)"),
    "schedule": ("call", SCHEDULES, "schedule cosine(warmup=2)"),
    "batch": ("batch", None, "batch 64   (or `full` for batch gradient descent)"),
    "accumulate": ("posint", None, "accumulate 4   (micro-batches per optimizer step)"),
    "epochs": ("posint", None, "epochs 30"),
    "seed": ("seed", None, "seed 0"),
    "early_stopping": ("early", None, "early_stopping(monitor=val_loss, patience=5)"),
    "penalty": ("call", PENALTIES, "penalty l2(1e-4)"),
    "proposals": ("call", PROPOSALS, "proposals selective_search(count=32)"),
    "precision": ("precision", None, "precision bf16   (or f32, the default)"),
    "augment": ("augment", AUGMENTS, "augment crop(padding=4) -> flip -> mixup(0.2)"),
    "weight_noise": ("weight_noise", None, "weight_noise 0.01   (or weight_noise(std=0.01))"),
    "shuffle": ("bool", None, "shuffle false"),
    "drop_last": ("bool", None, "drop_last true   (or just drop_last)"),
    "map_every": ("posint", None, "map_every 5   (a detector's validation mAP every 5th epoch)"),
    "clip": ("call", CLIPS, "clip norm(1.0)   (or value(0.5))"),
    "params": ("group", None, 'params("*.bias", weight_decay=0)'),
    "kfold": ("ensemble", ENSEMBLES, "kfold(5)"),
    "bagging": ("ensemble", ENSEMBLES, "bagging(5, combine=vote)"),
    "boosting": ("ensemble", ENSEMBLES, "boosting(10)"),
}
REPEATABLE = ("params",)
PRECISIONS = ("f32", "bf16")
SWITCHABLE = ("early_stopping", "penalty")      # settings `off` removes


class _ConfigValue:
    """A call written in the train section, before it is checked: `adam(lr=1e-3)`."""

    def __init__(self, name, span, positional, keyword):
        self.name, self.span, self.positional, self.keyword = name, span, positional, keyword

    def describe(self) -> str:
        return f"{self.name}(...)"


class _ConfigEval(Elaborator):
    """Expressions of the train section: bare names are symbols, calls are configuration."""

    def __init__(self):
        super().__init__({})

    def eval_Name(self, node, env):
        return Symbol(node.id)

    def eval_Call(self, node, env):
        if node.body is not None:
            raise UserError(f"'{node.name}' does not take a body here", node.span)
        pos = [(self.eval(a.value, env), a.span) for a in node.args if a.name is None]
        kw = {}
        for a in node.args:
            if a.name is not None:
                if a.name in kw:
                    raise UserError(f"argument '{a.name}' given twice", a.span)
                kw[a.name] = (self.eval(a.value, env), a.span)
        return _ConfigValue(node.name, node.span, pos, kw)

    def eval_Group(self, node, env):
        if len(node.args) == 1 and node.args[0].name is None:
            return self.eval(node.args[0].value, env)
        return self.eval_Call(ast.Call(node.span, "", node.span, node.args), env)

    def eval_In(self, node, env):
        raise UserError("`in` has no meaning here: it is the tensor flowing into a layer",
                        node.span)


def _as_call(value: Any, key: str, span: Span, table: dict) -> Call:
    if isinstance(value, Symbol):
        value = _ConfigValue(value.name, span, [], {})
    if not isinstance(value, _ConfigValue) or not value.name:
        raise UserError(f"{key} expects one of: {', '.join(sorted(table))}; got {describe(value)}",
                        span)
    if value.name not in table:
        raise UserError(f"unknown {key} '{value.name}'", value.span,
                        hint=did_you_mean(value.name, table) or
                        f"choose one of: {', '.join(sorted(table))}")
    kinds = {a.name: a.kind for a in table[value.name]}
    named = lambda k, v: v.name if isinstance(v, Symbol) and kinds.get(k) == "name" else v  # noqa
    value.keyword = {k: (named(k, v), s) for k, (v, s) in value.keyword.items()}
    value.positional = [(named(a.name, v), s) for (v, s), a in
                        zip(value.positional, table[value.name])] + value.positional[
                            len(table[value.name]):]
    args = bind(table[value.name], value.positional, value.keyword, value.name, value.span)
    arg_spans = {k: s for k, (_, s) in value.keyword.items()}
    for (_, s), a in zip(value.positional, table[value.name]):
        arg_spans[a.name] = s
    return Call(value.name, args, value.span, arg_spans)


def _check_values(key: str, call: Call) -> None:
    """Values the runtime could not use, reported where the train section says them."""
    problem = None
    if key == "loss":
        text = get_op(call.name).check(call.args)
        problem = (text, "label_smoothing") if text else None
    elif key == "data":
        problem = check_data_args(call)
    if problem:
        text, arg = problem
        raise UserError(f"{key} {call.name}: {text}", call.arg_spans.get(arg, call.span))


def _int(value, key, span, minimum=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key} must be a whole number, got {describe(value)}", span)
    if minimum is not None and value < minimum:
        raise UserError(f"{key} must be at least {minimum}, got {value}", span)
    return value


def apply_setting(cfg: TrainConfig, key: str, key_span: Span, expr: ast.Node | None,
                  value_span: Span) -> None:
    if key not in SETTINGS:
        raise UserError(f"unknown train setting '{key}'", key_span,
                        hint=did_you_mean(key, SETTINGS) or f"settings: {', '.join(SETTINGS)}")
    kind, table, example = SETTINGS[key]
    if key in SWITCHABLE and isinstance(expr, ast.Name) and expr.id == "off":
        setattr(cfg, key, None)                    # `--set train.penalty=off`
        cfg.spans[key] = key_span
        return
    if expr is None and kind == "bool":
        setattr(cfg, key, True)
        cfg.spans[key] = key_span
        return
    if kind == "augment":
        cfg.augment = _augment_chain(expr)
        cfg.spans[key] = key_span
        return
    if expr is None and kind not in ("early", "ensemble"):
        raise UserError(f"'{key}' needs a value", key_span, hint=f"for example: {example}")
    value = _ConfigEval().eval(expr, None) if expr is not None else None
    apply_setting_value(cfg, key, key_span, value, value_span)


def apply_setting_value(cfg: TrainConfig, key: str, key_span: Span, value,
                        value_span: Span) -> None:
    """Check and set one train setting from its evaluated value."""
    kind, table, example = SETTINGS[key]
    if key == "loss" and isinstance(value, _ConfigValue) and not value.name:
        cfg.terms = _loss_terms(value, value_span)         # loss (seg=..., aux=...)
        cfg.loss = cfg.terms[0].call
    elif kind == "call":
        call = _as_call(value, key, value_span, table)
        if key == "loss":
            cfg.terms = []
        if key == "optimizer":
            problem = check_optimizer_args(call)
            if problem:
                raise UserError(f"optimizer {call.name}: {problem}", call.span)
        if key == "schedule" and check_schedule_args(call):
            arg, problem = check_schedule_args(call)
            raise UserError(f"schedule {call.name}: {problem}", call.arg_spans.get(arg, call.span))
        if key == "clip" and next(iter(call.args.values())) <= 0:
            raise UserError(f"clip {call.name}: the limit must be positive", call.span)
        _check_values(key, call)
        if key == "penalty" and not 0 <= call.args["strength"] < math.inf:
            raise UserError("a penalty's strength must not be negative, and must be finite",
                            call.arg_spans.get("strength", call.span))
        setattr(cfg, key, call)
    elif kind == "batch":
        if isinstance(value, Symbol) and value.name == "full":
            cfg.batch = "full"
        else:
            cfg.batch = _int(value, "batch", value_span, 1)
    elif kind == "group":
        cfg.param_groups.append(_param_group(value, value_span, example))
    elif kind == "precision":
        name = value.name if isinstance(value, Symbol) else None
        if name not in PRECISIONS:
            raise UserError(f"precision is f32 or bf16, got {describe(value)}", value_span,
                            hint=did_you_mean(str(name), PRECISIONS) or f"for example: {example}")
        cfg.precision = name
    elif kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{key} is true or false, got {describe(value)}", value_span,
                            hint=f"for example: {example}")
        setattr(cfg, key, value)
    elif kind == "weight_noise":
        cfg.weight_noise = _weight_noise(value, value_span, example)
    elif kind == "posint":
        setattr(cfg, key, _int(value, key, value_span, 1))
    elif kind == "seed":
        if _int(value, key, value_span, 0) >= 2**63:
            raise UserError("seed must be below 2**63", value_span)
        cfg.seed = value
    elif kind == "early":
        if value is None:
            value = _ConfigValue("early_stopping", key_span, [], {})
        elif not isinstance(value, _ConfigValue):
            raise UserError(f"early_stopping takes arguments, got {describe(value)}", value_span,
                            hint=f"for example: {example}")
        value.name = "early_stopping"
        for k, (v, s) in list(value.keyword.items()):
            if isinstance(v, Symbol):
                value.keyword[k] = (v.name, s)
        call = _as_call(value, key, value_span, {"early_stopping": EARLY_STOPPING})
        if call.args["monitor"] not in ("val_loss", "val_acc"):
            raise UserError(f"early_stopping can monitor val_loss or val_acc, not "
                            f"'{call.args['monitor']}'", call.arg_spans.get("monitor", call.span))
        if not 0 <= call.args["min_delta"] < math.inf:
            raise UserError("min_delta must be a number >= 0",
                            call.arg_spans.get("min_delta", call.span))
        if call.args["patience"] < 1:
            raise UserError("patience must be at least 1", call.arg_spans.get("patience"))
        cfg.early_stopping = call
    elif kind == "ensemble":
        cfg.ensemble = _ensemble(cfg, key, key_span, value, value_span)
    cfg.spans[key] = key_span


def _augment_chain(expr: ast.Node) -> list[Call]:
    """`augment crop(padding=4) -> flip -> mixup(0.2)`: one checked Call per transform."""
    steps = expr.steps if isinstance(expr, ast.Chain) else [expr]
    calls: list[Call] = []
    for step in steps:
        call = _as_call(_ConfigEval().eval(step, None), "augment", step.span, AUGMENTS)
        call.args = {k: list(v) if isinstance(v, tuple) else v for k, v in call.args.items()}
        problem = check_augment(call)
        if problem:
            arg, message = problem
            raise UserError(f"{call.name}: {message}", call.arg_spans.get(arg, call.span))
        earlier = next((c for c in calls if c.name in LABEL_MIXERS), None)
        if call.name in LABEL_MIXERS and earlier is not None:
            raise UserError("only one of mixup and cutmix can mix a batch's labels",
                            call.span, notes=[Note(f"{earlier.name} is here", earlier.span)])
        calls.append(call)
    return calls


def _weight_noise(value, span: Span, example: str) -> Call:
    """`weight_noise 0.01` or `weight_noise(std=0.01)`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _ConfigValue("weight_noise", span, [(value, span)], {})
    if not isinstance(value, _ConfigValue) or value.name not in ("", "weight_noise"):
        raise UserError(f"weight_noise takes a standard deviation, got {describe(value)}", span,
                        hint=f"for example: {example}")
    value.name = "weight_noise"
    call = _as_call(value, "weight_noise", span, {"weight_noise": WEIGHT_NOISE})
    if not 0 <= call.args["std"] < math.inf:
        raise UserError("weight_noise: std must not be negative, and must be finite",
                        call.arg_spans.get("std", call.span))
    return call
def _loss_terms(value: _ConfigValue, span: Span) -> list[LossTerm]:
    """`loss (seg=pixel_cross_entropy(target=masks), aux=...(weight=0.4))`: one term per model
    output, each a loss with an optional data `target` and `weight` (default 1)."""
    if value.positional or not value.keyword:
        raise UserError("several losses are written one per output: loss (OUTPUT=LOSS, ...)",
                        span, hint="for example: loss (seg=pixel_cross_entropy, "
                                   "aux=pixel_cross_entropy(weight=0.4))")
    terms = []
    for output, (loss, term_span) in value.keyword.items():
        if isinstance(loss, Symbol):
            loss = _ConfigValue(loss.name, term_span, [], {})
        target, weight = None, 1.0
        if isinstance(loss, _ConfigValue):
            loss.keyword = dict(loss.keyword)
            if "target" in loss.keyword:
                t, t_span = loss.keyword.pop("target")
                if not isinstance(t, Symbol):
                    raise UserError(f"target names a data field (labels, masks, targets, boxes), "
                                    f"got {describe(t)}", t_span)
                target = t.name
            if "weight" in loss.keyword:
                weight, w_span = loss.keyword.pop("weight")
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                    raise UserError(f"a loss weight is a number >= 0, got {describe(weight)}",
                                    w_span)
        call = _as_call(loss, "loss", term_span, LOSSES)
        terms.append(LossTerm(output, call, target or DEFAULT_TARGETS[call.name],
                              float(weight), term_span))
    return terms


def apply_argument(cfg: TrainConfig, key: str, key_span: Span, expr: ast.Node) -> None:
    """`--set train.optimizer.lr=0.1`: one argument of a setting that is a call, the
    others kept as they were."""
    setting, _, arg = key.partition(".")
    if setting not in SETTINGS:
        raise UserError(f"unknown train setting '{setting}'", key_span,
                        hint=did_you_mean(setting, SETTINGS) or f"settings: {', '.join(SETTINGS)}")
    call = getattr(cfg, setting)
    kind, table, _ = SETTINGS[setting]
    if kind not in ("call", "early") or call is None or "." in arg:
        raise UserError(f"'{setting}' has no argument '{arg}' to set"
                        + (" (it is off)" if call is None and kind != "posint" else ""),
                        key_span, hint=f"set the whole setting: --set train.{setting}=...")
    keyword = {k: (_as_config(v), call.arg_spans.get(k, call.span)) for k, v in call.args.items()}
    keyword[arg] = (_ConfigEval().eval(expr, None), key_span)
    value = _ConfigValue(call.name, call.span, [], keyword)
    saved_span = cfg.spans.get(setting)
    apply_setting_value(cfg, setting, key_span, value, key_span)
    if saved_span is not None:
        cfg.spans[setting] = saved_span


def _as_config(v):
    """A bound argument value as the train section's evaluator would give it."""
    return Symbol(v) if isinstance(v, str) and v in ("val_loss", "val_acc") else v


def _param_group(value, span: Span, example: str) -> Call:
    """`params(PATTERN, setting=value, ...)`, unchecked against the optimizer yet: a Call
    named `params` holding `match` and the settings written."""
    if isinstance(value, (str, list, Symbol)):            # `params("*.bias")`: a pattern alone
        value = _ConfigValue("params", span, [(value, span)], {})
    if not isinstance(value, _ConfigValue) or value.name not in ("", "params"):
        raise UserError(f"params takes a pattern and settings, got {describe(value)}", span,
                        hint=f"for example: {example}")
    kw = dict(value.keyword)
    if len(value.positional) > 1:
        raise UserError("params takes one pattern (a list for several) before its settings",
                        value.positional[1][1])
    if value.positional:
        if "match" in kw:
            raise UserError("the pattern is given twice (positionally and as match=)",
                            kw["match"][1])
        kw["match"] = value.positional[0]
    if "match" not in kw:
        raise UserError("params needs a pattern: which parameters the settings are for", span,
                        hint=f"for example: {example}")
    m, mspan = kw["match"]
    items = m if isinstance(m, list) else [m]
    pats = [i.name if isinstance(i, Symbol) else i for i in items]
    for p in pats:
        if not isinstance(p, str):
            raise UserError(f"a params pattern is a string such as \"*.bias\" or one of "
                            f"biases, norms; got {describe(p)}", mspan)
        if "*" not in p and "?" not in p and "[" not in p and "." not in p and \
                p not in MATCH_NAMES:
            raise UserError(f"unknown parameter set '{p}'", mspan,
                            hint=did_you_mean(p, MATCH_NAMES) or
                            'write a name pattern in quotes ("block3.*"), or biases, norms')
    kw["match"] = (pats if isinstance(m, list) else pats[0], mspan)
    if len(kw) == 1:
        raise UserError("params sets nothing for its parameters", span,
                        hint=f"for example: {example}")
    return Call("params", {k: v for k, (v, _) in kw.items()}, span,
                {k: s for k, (_, s) in kw.items()})


def _check_param_groups(cfg: TrainConfig) -> None:
    """Each group's settings are the optimizer's own arguments, of the right kinds."""
    opt = cfg.optimizer
    sig = OPTIMIZERS[opt.name]
    for group in cfg.param_groups:
        given = {k: (v, group.arg_spans.get(k)) for k, v in group.args.items() if k != "match"}
        for k, (_, sp) in given.items():
            if k not in {a.name for a in sig}:
                raise UserError(f"'{k}' is not a setting of optimizer {opt.name}", sp,
                                hint=did_you_mean(k, [a.name for a in sig]) or
                                f"{opt.name} takes: {', '.join(a.name for a in sig)}")
        merged = bind(sig, [], {**{k: (v, opt.arg_spans.get(k)) for k, v in opt.args.items()},
                                **given}, opt.name, group.span)
        problem = check_optimizer_args(Call(opt.name, merged))
        if problem:
            raise UserError(f"params: {problem}", group.span)
        group.args.update({k: merged[k] for k in given})


def check_param_groups(cfg: TrainConfig, graph) -> None:
    """Every pattern of every `params` group matches at least one trainable parameter."""
    from ..compiler.optimizers import group_members
    names = [v.state.name for v in graph.state.values() if v.state.trainable]
    for group in cfg.param_groups:
        for pat, members in group_members(graph, group).items():
            if not members:
                raise UserError(f"params pattern '{pat}' matches no parameter of "
                                f"{graph.name}", group.arg_spans.get("match", group.span),
                                hint=did_you_mean(pat, names) or
                                f"parameters: {', '.join(names[:6])}"
                                f"{', ...' if len(names) > 6 else ''}")


def _ensemble(cfg: TrainConfig, key: str, key_span: Span, value, value_span: Span) -> Call:
    """`kfold(5)`, `kfold 5`, `bagging(8, combine=vote)`, `boosting` (the defaults)."""
    if cfg.ensemble is not None and cfg.ensemble.name != key:
        raise UserError(f"{key} cannot be combined with {cfg.ensemble.name}: a train section "
                        "makes one kind of ensemble", key_span,
                        notes=[Note(f"{cfg.ensemble.name} is set here", cfg.spans[cfg.ensemble.name])])
    if value is None:
        value = _ConfigValue(key, key_span, [], {})
    elif not (isinstance(value, _ConfigValue) and value.name == ""):
        value = _ConfigValue(key, value_span, [(value, value_span)], {})
    value.name = key
    for k, (v, s) in list(value.keyword.items()):
        if isinstance(v, Symbol):
            value.keyword[k] = (v.name, s)
    call = _as_call(value, key, value_span, ENSEMBLES)
    a, where = call.args, lambda arg: call.arg_spans.get(arg, call.span)
    if key == "kfold" and a["k"] < 2:
        raise UserError(f"kfold needs at least 2 folds, got {a['k']}", where("k"))
    if key != "kfold" and a["n"] < 1:
        raise UserError(f"{key} needs at least 1 member, got {a['n']}", where("n"))
    if key == "bagging" and a["combine"] not in ("mean", "vote"):
        raise UserError(f"bagging combines by mean or vote, not '{a['combine']}'",
                        where("combine"), hint=did_you_mean(a["combine"], ("mean", "vote")))
    if key == "bagging" and not a["fraction"] > 0:
        raise UserError(f"a resample's fraction must be above 0, got {a['fraction']}",
                        where("fraction"))
    return call


def check_batch_split(cfg: TrainConfig, batch: int | str, nproc: int) -> None:
    """A (global) batch must split into `accumulate` micro-batches on each of `nproc`
    processes: a UserError at the setting that does not divide it."""
    parts = cfg.accumulate * nproc
    if not isinstance(batch, int) or batch % parts == 0:
        return
    how = " x ".join(f"{n} {what}" for n, what in ((cfg.accumulate, "micro-batches"),
                                                  (nproc, "processes")) if n > 1)
    span = cfg.spans.get("accumulate") or cfg.spans.get("batch")
    raise UserError(f"batch {batch} does not split into {how}", span,
                    hint=f"use a batch that is a multiple of {parts}")


def resolve_train(trains: list[ast.TrainDef],
                  overrides: list[tuple[str, Span, ast.Node]]) -> TrainConfig:
    cfg = TrainConfig()
    if len(trains) > 1:
        raise UserError("only one train section is allowed", trains[1].span,
                        notes=[Note("the first is here", trains[0].span)])
    seen: dict[str, Span] = {}
    for t in trains:
        for s in t.settings:
            if s.key in seen and s.key not in REPEATABLE:
                raise UserError(f"'{s.key}' is set twice", s.key_span,
                                notes=[Note("first set here", seen[s.key])])
            seen[s.key] = s.key_span
            apply_setting(cfg, s.key, s.key_span, s.value, s.value.span if s.value else s.span)
    for key, span, expr in overrides:
        if "." in key:
            apply_argument(cfg, key, span, expr)
        else:
            apply_setting(cfg, key, span, expr, expr.span)
    for key in ("data", "loss", "optimizer", "schedule"):     # defaults get their defaults too
        call = getattr(cfg, key)
        table = SETTINGS[key][1]
        setattr(cfg, key, Call(call.name, bind(table[call.name], [], dict(
            (k, (v, call.arg_spans.get(k))) for k, v in call.args.items()), call.name, call.span),
            call.span, call.arg_spans))
    check_batch_split(cfg, cfg.batch, 1)
    _check_early_stopping_has_val(cfg)
    _check_map_every(cfg)
    _check_param_groups(cfg)
    return cfg


def _check_map_every(cfg: TrainConfig) -> None:
    """map_every paces a detector's validation mAP: a spec whose losses read no ground-truth
    boxes has none to pace."""
    if "map_every" in cfg.spans and not any(getattr(get_op(t.call.name), "box_target", False)
                                            for t in cfg.loss_terms()):
        raise UserError("map_every says how often a detector's validation mAP is computed, but "
                        "no loss of this train section reads ground-truth boxes",
                        cfg.spans["map_every"],
                        hint="remove map_every (detectors: yolo_loss, fast_rcnn_loss)")


def _check_early_stopping_has_val(cfg: TrainConfig) -> None:
    """Early stopping monitors the validation split: data with val=0 has none."""
    es = cfg.early_stopping
    if es is not None and cfg.data.args.get("val", 1) == 0:
        raise UserError(f"early stopping monitors {es.args['monitor']}, but the data has no "
                        "validation split (val=0)", cfg.data.arg_spans.get("val", es.span),
                        notes=[Note("early stopping is set here", es.span)],
                        hint="set val > 0 in data, or remove early_stopping")
