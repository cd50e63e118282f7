"""The `dlc` command line: check, compile, train, eval, predict, bench, convert, plot.

Exit codes: 0 success, 2 a user error (spec, arguments, data), 1 anything else,
130 interrupted.  Set DLC_DEBUG=1 to see the traceback of an internal error.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .spec.diagnostics import UserError

EMITS = ("summary", "ir", "ir-train", "params", "plan", "triton", "dot", "onnx")
RENDERED = (".svg", ".png", ".pdf")                # `--emit dot -o` suffixes drawn by Graphviz


class _Parser(argparse.ArgumentParser):
    def error(self, message):                       # argparse's own errors: exit 2, no traceback
        self.print_usage(sys.stderr)
        sys.stderr.write(f"dlc: error: {message}\n")
        hint = _flag_hint(message)
        if hint:
            sys.stderr.write(f"  = hint: {hint}\n")
        raise SystemExit(2)


def _flag_hint(message: str) -> str | None:
    """`--epochs 5`, `--lr=0.1`: settings are changed with --set."""
    if "unrecognized arguments" not in message:
        return None
    from .spec.train import SETTINGS
    words = message.split(":", 1)[1].split()
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        name, _, value = word[2:].partition("=")
        name = name.replace("-", "_")
        if not value and i + 1 < len(words) and not words[i + 1].startswith("--"):
            value = words[i + 1]
        value = value or "VALUE"
        if name in SETTINGS:
            return f"train settings are changed with --set: --set train.{name}={value}"
        if name in ("lr", "learning_rate"):
            return f"the learning rate is an optimizer argument: --set train.optimizer.lr={value}"
        return (f"there is no option --{word[2:].partition('=')[0]}; spec settings are changed "
                f"with --set train.NAME=VALUE or --set model.PARAM=VALUE")
    return None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dlc", description="Compile and run declarative neural-network specs.")
    p.add_argument("--version", action="version", version=f"dlc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def spec_cmd(name, help, what="the .dls file", nargs=None):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("spec", help=what, nargs=nargs)
        c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting: train.epochs=5, model.classes=3")
        c.add_argument("--model", metavar="NAME",
                       help="the model to use when the file defines several")
        return c

    spec_cmd("check", "parse and check a spec; print diagnostics only")
    c = spec_cmd("compile", "compile a spec and print what it became")
    c.add_argument("--emit", choices=EMITS, default="summary")
    c.add_argument("--batch", type=int, default=32, metavar="N",
                   help="batch size for the summary's activation memory and for the kernel "
                        "plan of --emit plan/triton (default 32)")
    c.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="--emit ir-train: the train graphs of a data-parallel run on N "
                        "processes (with the gradient all-reduce)")
    c.add_argument("-o", "--output", help="write to this file instead of stdout (required for "
                   "onnx; for dot, a .svg/.png/.pdf path is rendered with Graphviz)")
    c.add_argument("--checkpoint", metavar="CKPT",
                   help="weights for --emit onnx (default: a fresh init from the spec's seed)")
    c = spec_cmd("train", "train the model as the spec's train section says",
                 what="the .dls file (not with --resume)", nargs="?")
    c.add_argument("--out", help="run directory (default: a new runs/<spec name>/<n>)")
    c.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last finished epoch, with the "
                        "spec and settings of its run.yaml")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the run files in --out if it already holds a run")
    c.add_argument("--save-every", type=int, metavar="K",
                   help="also keep the weights of every K-th epoch (epoch-K.safetensors)")
    c.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to RUN/tensorboard (needs the "
                        "tensorboard extra); a resumed run that logged goes on logging")
    c.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    c.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    c.add_argument("--seed", type=int, help="override train.seed")
    c.add_argument("--init-from", metavar="CKPT", help="start from these weights")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.add_argument("--nproc", type=int, metavar="N",
                   help="data parallelism: N processes on this machine, each taking batch/N "
                        "examples of every batch (ensembles: one member per process); "
                        "under torchrun, leave it out")
    c = spec_cmd("eval", "evaluate a checkpoint on the test split of the spec's data",
                 what="a run directory, or the .dls file (then --checkpoint)")
    c.add_argument("--checkpoint", metavar="CKPT",
                   help="the weights, or a run directory (an ensemble's: all its members); default: the run directory's own")
    c.add_argument("--split", default="test", choices=("train", "val", "test"))
    c.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    c.add_argument("--device")
    c = spec_cmd("predict", "run a checkpoint on inputs from a .npy, .npz or CSV file",
                 what="a run directory, or the .dls file (then --checkpoint)")
    c.add_argument("--checkpoint", metavar="CKPT",
                   help="the weights, or a run directory (an ensemble's: all its members); default: the run directory's own")
    c.add_argument("--input", required=True, metavar="X",
                   help=".npy, .npz (an array per input, named after it) or .csv (numbers)")
    c.add_argument("--output", required=True, metavar="Y",
                   help=".npy (one file per output: Y.npy, then Y.<output>.npy), .npz or .csv")
    c.add_argument("--output-kind", default="logits", choices=("logits", "probs", "labels"),
                   help="raw outputs, softmax probabilities or argmax labels (default logits)")
    c.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    c.add_argument("--device")
    c = spec_cmd("bench", "time the training step (and inference) of a spec on a backend")
    c.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    c.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    c.add_argument("--batch", type=int, metavar="N",
                   help="examples per step (default: the spec's train batch)")
    c.add_argument("--steps", type=int, default=20, metavar="K",
                   help="timed steps; the median is reported (default 20)")
    c.add_argument("--warmup", type=int, default=3, metavar="W",
                   help="untimed steps before the timed ones (default 3)")
    c.add_argument("--no-infer", dest="infer", action="store_false",
                   help="time the training step only")
    c.add_argument("--compare", action="store_true",
                   help="also time the same network in PyTorch: eager, and on a GPU "
                        "torch.compile (default, reduce-overhead) and a captured CUDA graph")
    c.add_argument("--seed", type=int, default=0, help="initial weights and synthetic data")
    c.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    c = spec_cmd("convert", "convert a PyTorch state dict into a dlc checkpoint for a spec")
    c.add_argument("--from", dest="source", required=True, metavar="STATE_DICT",
                   help=".safetensors, or .pt/.pth read with torch.load(weights_only=True)")
    c.add_argument("-o", "--output", required=True, metavar="CKPT",
                   help="the dlc checkpoint to write (.safetensors)")
    c.add_argument("--show", action="store_true", help="print every dlc <- source pair")
    c = sub.add_parser("plot", help="overlay the training curves of run directories",
                       description="overlay the training curves of run directories: loss, "
                       "accuracy and learning rate per epoch, best epochs marked")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("-o", "--output", default="curves", metavar="PATH",
                   help="PATH.png and PATH.svg, or only PATH if it ends in .png, .svg or "
                        ".pdf (default: curves)")
    return p


def _compile(args):
    from .api import compile_spec
    return compile_spec(args.spec, args.set, model=args.model)


def cmd_check(args) -> int:
    from .spec.loader import load_module
    module, blocks = load_module(args.spec)
    if not module.models and module.blocks:          # a library of blocks, for `import`
        names = ", ".join(b.name for b in module.blocks)
        print(f"{args.spec}: ok (a block library: {names}; blocks are checked fully where a "
              "model uses them)")
        return 0
    from .api import compile_spec
    names = [args.model] if args.model or len(module.models) < 2 else \
        [m.name for m in module.models]
    for name in names:
        spec = compile_spec(args.spec, args.set, model=name)
        print(f"{args.spec}: ok ({spec.graph.name}, {spec.num_params():,} parameters)")
    return 0


def cmd_compile(args) -> int:
    if args.emit == "onnx" and not args.output:
        raise UserError("--emit onnx writes a binary file: give its path with -o, "
                        "e.g. -o model.onnx")
    if args.checkpoint and args.emit != "onnx":
        raise UserError("--checkpoint only applies to --emit onnx")
    out = Path(args.output) if args.output else None
    render = args.emit == "dot" and out is not None and out.suffix.lower() in RENDERED
    if render:
        _require_graphviz(out)
    spec = _compile(args)
    if args.emit == "onnx":
        return _emit_onnx(spec, args.checkpoint, out)
    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    text = spec.emit(args.emit, args.batch, args.nproc)
    if render:
        _write_bytes(out, _render_dot(text, out.suffix.lower()[1:]))
        print(f"wrote {out}")
    elif out is not None:
        _write_text(out, text)
    else:
        sys.stdout.write(text)
    return 0


def _emit_onnx(spec, checkpoint: str | None, out: Path) -> int:
    from .compiler.onnx_export import OPSET, export_onnx
    state = None
    if checkpoint:
        from .runtime.checkpoint import load
        state = load(Path(checkpoint), spec.graph)
    data = export_onnx(spec, state)
    _write_bytes(out, data)
    weights = f"weights from {checkpoint}" if checkpoint else "freshly initialised weights"
    print(f"wrote {out}: ONNX opset {OPSET}, {len(data):,} bytes, {weights}")
    return 0


def _require_graphviz(out: Path) -> None:
    import shutil
    if shutil.which("dot") is None:
        raise UserError(f"drawing {out} needs the Graphviz `dot` program, which is not on PATH",
                        hint="install Graphviz (apt-get install graphviz, or brew install "
                             f"graphviz), or write the Graphviz source with -o "
                             f"{out.with_suffix('.dot')} and render it elsewhere")


def _render_dot(text: str, fmt: str) -> bytes:
    import subprocess
    done = subprocess.run(["dot", f"-T{fmt}"], input=text.encode(), capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"Graphviz dot -T{fmt} failed: {done.stderr.decode().strip()}")
    return done.stdout


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def cmd_train(args) -> int:
    from .runtime import distributed
    nproc = _nproc(args, distributed.env_world())
    if nproc > 1 and distributed.env_world() == 1:
        return _launch(args, nproc)
    world, args.device = distributed.join(args.device)
    try:
        final, out = _resume(args, world) if args.resume else _train_new(args, world)
    finally:
        distributed.leave()
    if world.leader:
        _print_final(final, out)
    return 0


def _train_new(args, world) -> tuple[dict, Path]:
    from .api import train
    if args.spec is None:
        raise UserError("dlc train needs a spec (or --resume RUN_DIR)",
                        hint="for example: dlc train examples/digits_mlp.dls")
    spec = _compile(args)
    out = _out_dir(args)
    final = train(spec, out, backend=args.backend, device=args.device, seed=args.seed,
                  init_from=args.init_from, progress=not args.quiet, overwrite=args.overwrite,
                  save_every=_save_every(args), tensorboard=args.tensorboard,
                  world=world)
    return final, out


def _out_dir(args) -> Path:
    if args.out:
        return Path(args.out)
    from .runtime.rundir import fresh_default
    return fresh_default(Path(args.spec))


def _nproc(args, world_size: int) -> int:
    """The processes of the run: --nproc, or WORLD_SIZE under torchrun; a UserError when
    the two disagree or the backend cannot run them."""
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc is not None and world_size > 1 and args.nproc != world_size:
        raise UserError(f"--nproc {args.nproc} in a group of WORLD_SIZE={world_size} processes",
                        hint="under torchrun, leave out --nproc")
    nproc = args.nproc or (world_size if world_size > 1 else _recorded_nproc(args))
    if world_size > 1 and not (args.out or args.resume):
        raise UserError("a run on several processes needs --out: every process must name "
                        "the same run directory", hint="torchrun ... -m dlc train SPEC --out "
                        "runs/NAME")
    return nproc


def _check_split(cfg, nproc: int) -> None:
    """An ensemble's members run one per process (not boosting's); a single model's batch
    must split over the processes."""
    if cfg.ensemble is not None:
        from .runtime.ensemble import check_parallel
        check_parallel(cfg, nproc)
    else:
        from .spec.train import check_batch_split
        check_batch_split(cfg, cfg.batch, nproc)


def _recorded_nproc(args) -> int:
    """--resume: the processes the run was started with (run.yaml), else 1."""
    if not args.resume:
        return 1
    from .runtime.rundir import read_run
    return int(read_run(Path(args.resume)).get("nproc", 1))


def _launch(args, nproc: int) -> int:
    """`--nproc N` outside torchrun: check what can be checked once, fix the run directory,
    then start N copies of this command (runtime/distributed.py)."""
    from .runtime import distributed
    argv = list(args.argv)
    if not args.resume:
        if args.spec is None:
            raise UserError("dlc train needs a spec (or --resume RUN_DIR)")
        spec = _compile(args)
        _check_split(spec.config, nproc)
        if not args.out:
            argv += ["--out", str(_out_dir(args))]
    return distributed.launch(argv, nproc)


def _save_every(args) -> int | None:
    if args.save_every is not None and args.save_every < 1:
        raise UserError(f"--save-every must be at least 1, got {args.save_every}")
    return args.save_every


def _resume(args, world) -> tuple[dict, Path]:
    """`dlc train --resume DIR`: the run's spec, settings, seed and backend from run.yaml."""
    from .api import compile_run, train
    clash = [flag for flag, given in (("the spec argument", args.spec), ("--set", args.set),
                                      ("--init-from", args.init_from), ("--out", args.out),
                                      ("--overwrite", args.overwrite), ("--seed", args.seed))
             if given]
    if clash:
        raise UserError("--resume continues a run with the spec and settings of its run.yaml; "
                        f"drop {clash[0]}",
                        hint=f"dlc train --resume {args.resume}")
    out = Path(args.resume)
    spec, run = compile_run(out)
    backend = run.get("backend", "auto") if args.backend == "auto" else args.backend
    final = train(spec, out, backend=backend, device=args.device or run.get("device"),
                  seed=run.get("seed"), progress=not args.quiet, resume=True,
                  save_every=_save_every(args), tensorboard=args.tensorboard,
                  world=world)
    return final, out


def _print_final(final: dict, out: Path) -> None:
    acc, loss = final["test_acc"], final["test_loss"]
    shown = f"test_acc {acc:.4f}  " if acc is not None else ""
    shown += f"test_loss {loss:.4f}  " if loss is not None else "no test split  "
    kind = f"{final['kind']}: " if "kind" in final else ""
    print(f"{kind}{shown}epochs {final['epochs_run']} ({final['stopped']})  -> {out}")


def _build_for_run(args):
    """The model `eval` and `predict` run: from a run directory (its spec, `--set`s and
    checkpoint) or from a spec and --checkpoint."""
    from .api import build, compile_run
    run = None
    if Path(args.spec).is_dir():
        spec, run = compile_run(args.spec, args.set)
        checkpoint = args.checkpoint or Path(args.spec) / "checkpoint.safetensors"
    else:
        if not args.checkpoint:
            raise UserError(f"dlc {args.command} {args.spec} needs --checkpoint CKPT",
                            hint=f"or give the run directory: dlc {args.command} runs/<name>/<n>")
        spec, checkpoint = _compile(args), args.checkpoint
    if Path(checkpoint).is_dir() or (run is not None and (Path(args.spec) / "ensemble.json").is_file()):
        from .api import load_run          # an ensemble's members, or a run's checkpoint
        return load_run(checkpoint if Path(checkpoint).is_dir() else args.spec, spec,
                        backend=args.backend, device=args.device), run
    return build(spec, backend=args.backend, device=args.device, checkpoint=checkpoint), run


def cmd_eval(args) -> int:
    import json
    model, _ = _build_for_run(args)
    print(json.dumps({"split": args.split, **model.evaluate(args.split)}))
    return 0


def cmd_predict(args) -> int:
    from .runtime.predict_io import as_kind, read_inputs, standardized, write_outputs
    model, run = _build_for_run(args)
    data = (run or {}).get("data") or {}
    inputs = standardized(read_inputs(args.input, _read_names(model), data), data)
    inputs = _with_proposals(model, inputs)
    kind = args.output_kind
    if getattr(model, "scores_are_probabilities", False) and kind == "probs":
        kind = "logits"            # an ensemble's combined scores are probabilities already
    raw = model.predict_outputs(inputs if len(inputs) > 1 else next(iter(inputs.values())))
    outputs = {name: as_kind(y, kind, name) for name, y in raw.items()}
    written = write_outputs(args.output, outputs)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items())
    print(f"wrote {', '.join(map(str, written))}: {shapes}")
    seg = model.segmentation_output() if hasattr(model, "segmentation_output") else None
    if seg is not None:                      # per-pixel classes: coloured masks as PNGs
        from .runtime.segviz import save_masks
        masks = list(raw.values())[seg].argmax(axis=1)
        folder = Path(args.output).with_suffix("").with_name(Path(args.output).stem + "_masks")
        save_masks(masks, folder)
        print(f"wrote {len(masks)} coloured masks to {folder}/")
    _predict_detections(model, inputs, args.output, run)
    return 0


def _read_names(model) -> list[str]:
    """The model inputs predict reads from --input: all but the proposals a spec computes."""
    from .runtime.proposals import INPUT
    computed = getattr(model, "spec", None) is not None and model.spec.config.proposals
    return [n for n in model.input_names if not (computed and n == INPUT)]


def _with_proposals(model, inputs: dict) -> dict:
    """The inputs with the proposals of the spec's `proposals` setting, when it has one."""
    from .runtime.proposals import INPUT, compute
    call = model.spec.config.proposals if getattr(model, "spec", None) is not None else None
    if call is None or INPUT in inputs:
        return inputs
    images = model.shape_batch(next(iter(inputs.values())), "the input").cpu().numpy()
    return {**inputs, INPUT: compute(call, images)}


def _predict_detections(model, inputs: dict, output: str, run: dict | None) -> None:
    """A detector's boxes after NMS: <output stem>.detections.json and one picture per image
    with its boxes drawn in <output stem>_boxes/."""
    from .runtime.detect import class_names, detector_of
    det = detector_of(model.spec.config) if hasattr(model, "detect") else None
    if det is None:
        return
    from .runtime.detviz import save_detections
    x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    found = model.detect(x)
    names = ((run or {}).get("data") or {}).get("class_names")
    out = Path(output)
    json_path = out.with_name(out.stem + ".detections.json")
    folder = out.with_name(out.stem + "_boxes")
    images = model.shape_batch(next(iter(inputs.values())), "the input").cpu().numpy()
    save_detections(found, class_names(names, det.classes(model.spec.graph)), json_path,
                    folder, images)
    print(f"wrote {sum(len(f) for f in found)} detections of {len(found)} images to "
          f"{json_path} and {folder}/")


def cmd_bench(args) -> int:
    import json
    from .runtime.bench import bench, check_args, format_report
    check_args(args.batch, args.steps, args.warmup)
    out = Path(args.json) if args.json else None
    if out is not None and not out.parent.is_dir():
        raise UserError(f"cannot write {out}: the folder {out.parent} does not exist")
    spec = _compile(args)
    result = bench(spec, backend=args.backend, device=args.device, batch=args.batch,
                   steps=args.steps, warmup=args.warmup, infer=args.infer,
                   compare=args.compare, seed=args.seed)
    sys.stdout.write(format_report(result))
    if out is not None:
        _write_text(out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def cmd_convert(args) -> int:
    from .runtime.convert import convert
    spec = _compile(args)
    done = convert(spec, args.source, args.output)
    for warning in done.warnings:
        sys.stderr.write(f"dlc: warning: {warning}\n")
    if args.show:
        for mine, theirs in done.pairs:
            print(f"  {mine} <- {theirs}  {list(spec.graph.state[mine].type.shape)}")
    how = ("by name" if done.by_name else "by order" if done.source_ordered
           else "by order of the sorted .safetensors names")
    dropped = f", dropped {len(done.dropped)} num_batches_tracked" if done.dropped else ""
    print(f"mapped {done.count} tensors {how}{dropped} onto {spec.graph.name} -> {args.output}")
    return 0


def cmd_plot(args) -> int:
    from .runtime.plot import plot_runs
    written = plot_runs([Path(r) for r in args.runs], Path(args.output))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "train": cmd_train, "eval": cmd_eval,
            "predict": cmd_predict, "bench": cmd_bench, "convert": cmd_convert, "plot": cmd_plot}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        sys.stderr.write(e.render() + "\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("dlc: interrupted; files already written are kept\n")
        return 130
    except Exception as e:                          # noqa: BLE001 — the last line of defence
        if os.environ.get("DLC_DEBUG"):
            raise
        from .runtime.distributed import peer_failure
        lost = peer_failure(e)
        if lost:
            sys.stderr.write(lost)
            return 1
        sys.stderr.write(f"dlc: internal error: {type(e).__name__}: {e}\n"
                         "  (this is a bug in dlc; rerun with DLC_DEBUG=1 for the traceback)\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
