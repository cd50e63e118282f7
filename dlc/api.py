"""The Python API the command line is built on.

    import dlc
    spec  = dlc.compile_spec("examples/digits_mlp.dls", sets=["train.epochs=5"])
    print(spec.summary())
    run   = dlc.train(spec, out_dir="runs/digits")        # trains, writes the run directory
    model = dlc.build(spec, checkpoint="runs/digits/checkpoint.safetensors")
    y     = model.predict(x)                               # numpy in, numpy out
    print(model.evaluate())                                # test split of the spec's data
    model = dlc.load_run("runs/digits")                    # a Model, or for kfold/bagging/
                                                           # boosting runs the whole Ensemble
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .compiler.config import TrainConfig
from .compiler.ir import Graph
from .compiler.ops.registry import ShapeError
from .spec.diagnostics import SourceFile, Span, UserError, located


@dataclass
class CompiledSpec:
    path: Path
    graph: Graph                      # the model graph (mode-neutral)
    config: TrainConfig               # the resolved train section
    spec_hash: str                    # sha256 over the spec and every file it imports
    sets: list[str] = field(default_factory=list)

    def emit(self, what: str, batch: int = 32, nproc: int = 1) -> str | bytes:
        from .compiler import emit
        return emit.emit(self, what, batch, nproc)

    def summary(self) -> str:
        return self.emit("summary")

    def num_params(self) -> int:
        return sum(p.type.numel() for p in self.graph.params())


def _parse_sets(sets: list[str]):
    from .spec.parser import parse_expr
    model_sets, train_sets = {}, []
    for i, item in enumerate(sets):
        src = SourceFile(f"--set[{i + 1}]", item)
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}", Span(src, 1, 1),
                            hint="for example --set train.epochs=5 or --set model.classes=3")
        key, value = item.split("=", 1)
        section, _, name = key.strip().partition(".")   # train.optimizer.lr: name has a dot
        key_span = Span(src, 1, 1, 1, len(key) + 1)
        if section not in ("train", "model") or not name:
            raise UserError(f"--set keys are train.NAME or model.NAME, got {key!r}", key_span)
        expr = parse_expr(value, src, len(key) + 1)
        if section == "train":
            train_sets.append((name, key_span, expr))
        else:
            model_sets[name] = (expr, key_span)
    return model_sets, train_sets


def compile_spec(path: str | Path, sets: list[str] = (), model: str | None = None) -> CompiledSpec:
    """Parse, check and elaborate a `.dls` file into its model graph and train config."""
    from .spec.elaborate import Elaborator
    from .spec.loader import load_module
    from .spec.train import check_param_groups, resolve_train

    path = Path(path)
    if path.suffix != ".dls" and not path.exists():
        raise UserError(f"no such file: {path}")
    module, blocks = load_module(path)
    if not module.models:
        raise UserError("no model is defined in this file", Span(SourceFile(str(path), ""), 1, 1),
                        hint="a spec needs `model Name { input x: f32[...] ... }`")
    chosen = module.models[-1]
    if model is None and len(module.models) > 1:
        names = ", ".join(m.name for m in module.models)
        raise UserError(f"{path} defines {len(module.models)} models ({names}); say which "
                        "with --model NAME", module.models[1].span,
                        hint=f"for example --model {module.models[0].name}")
    if model is not None:
        named = [m for m in module.models if m.name == model]
        if not named:
            raise UserError(f"{path} has no model named {model!r}",
                        hint=f"its models: {', '.join(m.name for m in module.models)}")
        chosen = named[0]
    model_sets, train_sets = _parse_sets(list(sets))
    elab = Elaborator(blocks)
    env_overrides = {}
    if model_sets:
        from .spec.train import _ConfigEval
        for k, (expr, span) in model_sets.items():
            env_overrides[k] = (_ConfigEval().eval(expr, None), span)
    try:
        graph = elab.build(chosen, env_overrides)
    except RecursionError:
        raise UserError("the model nests too deeply to elaborate", chosen.span) from None
    except ShapeError as e:
        raise located(e, chosen.span) from None
    config = resolve_train(module.trains, train_sets)
    check_param_groups(config, graph)
    from .spec.objective import check_objective
    check_objective(graph, config)
    digest = hashlib.sha256()
    for src in sorted(_sources(path)):
        digest.update(Path(src).read_bytes())
    return CompiledSpec(path, graph, config, digest.hexdigest(), list(sets))


def _sources(path: Path) -> set[str]:
    from .spec.loader import parse_cached, read_source
    seen: set[str] = set()
    stack = [path]
    while stack:
        q = Path(stack.pop())                  # as the loader spells it: its parse is cached
        p = q.resolve()
        if str(p) in seen:
            continue
        seen.add(str(p))
        module = parse_cached(read_source(q), str(q))
        stack.extend(q.parent / imp.path for imp in module.imports)
    return seen


def build(spec: CompiledSpec, backend: str = "auto", device: str | None = None,
          checkpoint: str | Path | None = None, seed: int | None = None):
    """An executable model (inference + evaluation) on a backend, optionally from a checkpoint."""
    from .runtime.model import Model
    return Model(spec, backend=backend, device=device, checkpoint=checkpoint, seed=seed)


def train(spec: CompiledSpec, out_dir: str | Path, *, backend: str = "auto",
          device: str | None = None, seed: int | None = None,
          init_from: str | Path | None = None, progress: bool = True, resume: bool = False,
          overwrite: bool = False, save_every: int | None = None, tensorboard: bool = False,
          world=None):
    """Train as the spec says and write the run directory; returns the final metrics.
    `tensorboard`: also write TensorBoard event files (RUN/tensorboard, one per member of
    an ensemble).

    A folder that already holds a run is refused unless `overwrite` (its run files are
    replaced) or `resume` (the run continues from its last finished epoch). A train
    section with kfold, bagging or boosting trains every member of the ensemble
    (runtime/ensemble.py); resuming one keeps its finished members and continues the
    interrupted one. `world`: this process's place in a data-parallel run
    (runtime/distributed.py; alone by default)."""
    if tensorboard:
        from .runtime.tblog import writer_class
        writer_class()                  # a missing package is said before anything is written
    from .runtime.distributed import World
    world = world or World()
    if spec.config.ensemble is not None:
        from .runtime.ensemble import run_ensemble
        return run_ensemble(spec, Path(out_dir), backend=backend, device=device, seed=seed,
                            init_from=init_from, progress=progress, tensorboard=tensorboard,
                            resume=resume, overwrite=overwrite, world=world)
    from .runtime.loop import run_training
    return run_training(spec, Path(out_dir), backend=backend, device=device, seed=seed,
                        init_from=init_from, progress=progress, resume=resume,
                        overwrite=overwrite, save_every=save_every, tensorboard=tensorboard,
                        world=world)


def compile_run(run_dir: str | Path, sets: list[str] = ()) -> tuple[CompiledSpec, dict]:
    """The spec of the run in `run_dir` as it was trained (its file, model and `--set`s,
    then `sets`), and its run.yaml."""
    from .runtime.rundir import read_run, spec_of
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    spec = compile_spec(spec_of(run, run_dir), [*run.get("sets", []), *sets],
                        model=run.get("model"))
    return spec, run


def load_run(run_dir: str | Path, spec: CompiledSpec | None = None, backend: str = "auto",
             device: str | None = None):
    """What a run directory holds, ready to evaluate and predict: a Model, or an Ensemble
    (same interface) for kfold/bagging/boosting runs. `spec` defaults to run.yaml's."""
    from .runtime.ensemble import load_run as _load_run
    return _load_run(run_dir, spec, backend=backend, device=device)
