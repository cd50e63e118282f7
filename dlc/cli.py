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
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dlc", description="Compile and run declarative neural-network specs.")
    p.add_argument("--version", action="version", version=f"dlc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def spec_cmd(name, help):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("spec", help="the .dls file")
        c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting: train.epochs=5, model.classes=3")
        return c

    spec_cmd("check", "parse and check a spec; print diagnostics only")
    c = spec_cmd("compile", "compile a spec and print what it became")
    c.add_argument("--emit", choices=EMITS, default="summary")
    c.add_argument("--batch", type=int, default=32, metavar="N",
                   help="batch size for the summary's activation memory and for the kernel "
                        "plan of --emit plan/triton (default 32)")
    c.add_argument("-o", "--output", help="write to this file instead of stdout (required for "
                   "onnx; for dot, a .svg/.png/.pdf path is rendered with Graphviz)")
    c.add_argument("--checkpoint", metavar="CKPT",
                   help="weights for --emit onnx (default: a fresh init from the spec's seed)")
    c = spec_cmd("train", "train the model as the spec's train section says")
    c.add_argument("--out", help="run directory (default runs/<spec name>)")
    c.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    c.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    c.add_argument("--seed", type=int, help="override train.seed")
    c.add_argument("--init-from", metavar="CKPT", help="start from these weights")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c = spec_cmd("eval", "evaluate a checkpoint on the test split of the spec's data")
    c.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint, or a run directory (an ensemble's: all its members)")
    c.add_argument("--split", default="test", choices=("train", "val", "test"))
    c.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    c.add_argument("--device")
    c = spec_cmd("predict", "run a checkpoint on inputs from a .npy file")
    c.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint, or a run directory (an ensemble's: all its members)")
    c.add_argument("--input", required=True, metavar="X.npy")
    c.add_argument("--output", required=True, metavar="Y.npy")
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
    return compile_spec(args.spec, args.set)


def cmd_check(args) -> int:
    from .spec.loader import load_module
    module, blocks = load_module(args.spec)
    if not module.models and module.blocks:          # a library of blocks, for `import`
        names = ", ".join(b.name for b in module.blocks)
        print(f"{args.spec}: ok (a block library: {names}; blocks are checked fully where a "
              "model uses them)")
        return 0
    spec = _compile(args)
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
    text = spec.emit(args.emit, args.batch)
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
    from .api import train
    spec = _compile(args)
    out = Path(args.out) if args.out else Path("runs") / Path(args.spec).stem
    final = train(spec, out, backend=args.backend, device=args.device, seed=args.seed,
                  init_from=args.init_from, progress=not args.quiet)
    shown = "  ".join(f"{k} {final[k]:.4f}" for k in ("test_acc", "test_loss")
                      if final[k] is not None)
    kind = f"{final['kind']}: " if "kind" in final else ""
    print(f"{kind}{shown}  epochs {final['epochs_run']} ({final['stopped']})  -> {out}")
    return 0


def _trained(args):
    """The model of --checkpoint: a checkpoint file, or a run directory (load_run)."""
    from .api import build, load_run
    spec = _compile(args)
    if Path(args.checkpoint).is_dir():
        return load_run(args.checkpoint, spec, backend=args.backend, device=args.device)
    return build(spec, backend=args.backend, device=args.device, checkpoint=args.checkpoint)


def cmd_eval(args) -> int:
    import json
    model = _trained(args)
    print(json.dumps({"split": args.split, **model.evaluate(args.split)}))
    return 0


def cmd_predict(args) -> int:
    import numpy as np
    model = _trained(args)
    try:
        x = np.load(args.input, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"no such file: {args.input}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{args.input} is not a readable .npy array ({e})") from None
    y = model.predict(x)
    try:
        np.save(args.output, y)
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror}") from None
    print(f"wrote {args.output}: {list(y.shape)}")
    return 0


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
    args = _parser().parse_args(argv)
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
        sys.stderr.write(f"dlc: internal error: {type(e).__name__}: {e}\n"
                         "  (this is a bug in dlc; rerun with DLC_DEBUG=1 for the traceback)\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
