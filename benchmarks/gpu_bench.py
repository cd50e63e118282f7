"""One-call GPU benchmark: dlc's training step against PyTorch on the same networks.

Run from the repository root on the GPU machine (torch and triton preinstalled, no network;
dlc is imported from this checkout, so nothing needs installing; lark and safetensors must
be importable, as for any use of dlc):

    python benchmarks/gpu_bench.py --json $OUT/bench.json

Prove it on the CPU first (tiny sizes, the same code path, GPU-only baselines skipped with
a note; well under a minute):

    python benchmarks/gpu_bench.py --dry

Workloads (float32 unless said otherwise; synthetic data; the spec files are written to a
temporary folder or given as examples/ + --set, nothing is added to examples/):

    A         MLP 64 -> 512 -> 512 -> 10, batch 256, AdamW
    B         ResNet-18 for 3x32x32 (examples/resnet18_cifar.dls), batch 256,
              SGD momentum 0.9, weight decay 5e-4
    B-bf16    the same under bf16: dlc with `precision bf16` (bf16 matmul/conv operands,
              float32 accumulation), the PyTorch baselines under torch.autocast(bf16) with
              channels-last

For each: dlc on the triton backend (when it is refused or fails, the reason, and dlc on
the reference backend instead), PyTorch eager (the spec's train-lowered forward graph as an
nn.Module through the reference ops, autograd, torch.optim), torch.compile (default and
reduce-overhead) and the eager step captured whole as a CUDA graph; median ms per step,
samples/s, peak memory, and dlc's time over each (below 1: dlc is faster). Then the time
from a `dlc train`-style start (a fresh process) to the first finished ResNet-18 step, with
an empty and with a warm kernel cache. Prints a table and writes JSON (after every
workload, so a run cut short keeps what it measured). Progress goes to stderr.

Options: --only A,B,B-bf16 · --no-compile (skip the torch.compile baselines, the slowest
part) · --no-first-step · --steps K --warmup W --batch N · --tf32 (PyTorch float32 matmuls
in TF32; cuDNN's benchmark mode is on for every GPU run) · --dry-backend reference|triton
(--dry: triton runs under Triton's interpreter, slowly).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = time.perf_counter()


def _import_dlc():
    """dlc from this checkout: installed (editable) here, or loaded straight from the source
    folders (dlc/ holds the package, spec/ compiler/ runtime/ its subpackages)."""
    found = importlib.util.find_spec("dlc")
    here = ROOT / "dlc" / "__init__.py"
    if found is None or Path(found.origin or "").resolve() != here:
        spec = importlib.util.spec_from_file_location(
            "dlc", here, submodule_search_locations=[str(ROOT / "dlc"), str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["dlc"] = module
        spec.loader.exec_module(module)
    import dlc
    return dlc


def _preflight() -> None:
    missing = [m for m in ("torch", "lark", "numpy") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"gpu_bench: dlc needs {', '.join(missing)}, which this Python cannot import "
                 f"({sys.executable}); install them (or put a folder holding them on "
                 "PYTHONPATH) and rerun")


def log(msg: str) -> None:
    sys.stderr.write(f"[gpu_bench {time.perf_counter() - T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


MLP = """\
# workload A: an MLP 64 -> 512 -> 512 -> 10, AdamW, batch 256 (gpu_bench.py)
model BenchMLP(classes=10, hidden=512) {{
    input x: f32[64]
    linear(hidden) -> relu
    linear(hidden) -> relu
    linear(classes)
}}

train {{
    loss      cross_entropy
    optimizer adamw(lr=1e-3)
    batch     {batch}
    epochs    1
}}
"""
RESNET_SETS = ["train.optimizer=sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)"]


def resnet_spec(tmp: Path, dry: bool) -> Path:
    """examples/resnet18_cifar.dls; for --dry a copy at 8x8 pixels and a quarter of the
    channels (the same layers; a 2-core CPU takes seconds per full-size step)."""
    src = ROOT / "examples" / "resnet18_cifar.dls"
    if not dry:
        return src
    text = src.read_text()
    text = text.replace('import "blocks/', f'import "{(src.parent / "blocks").as_posix()}/')
    assert "f32[3, 32, 32]" in text, "resnet18_cifar.dls changed its input line"
    text = text.replace("f32[3, 32, 32]", "f32[3, 8, 8]")
    for call in ("conv(64", "Basic(64", "Basic(128", "Basic(256", "Basic(512"):
        assert call in text, f"resnet18_cifar.dls no longer has {call}"
    for width in (64, 128, 256, 512):                  # and a quarter of the channels
        for call in ("conv", "Basic"):
            text = text.replace(f"{call}({width}", f"{call}({width // 4}")
    path = tmp / "resnet18_cifar_8px.dls"
    path.write_text(text)
    return path


def workloads(tmp: Path, args) -> list[dict]:
    batch = args.batch
    mlp = tmp / "mlp.dls"
    mlp.write_text(MLP.format(batch=batch))
    resnet = resnet_spec(tmp, args.dry)
    sets = RESNET_SETS + [f"train.batch={batch}"]
    return [
        {"key": "A", "name": "MLP 64-512-512-10 fp32", "spec": str(mlp), "sets": []},
        {"key": "B", "name": "ResNet-18 CIFAR fp32", "spec": str(resnet), "sets": sets},
        {"key": "B-bf16", "name": "ResNet-18 CIFAR bf16", "spec": str(resnet), "sets": sets,
         "bf16": True},
    ]


def precision_supported() -> bool:
    from dlc.spec.train import SETTINGS
    return "precision" in SETTINGS


def _reason(e: BaseException) -> str:
    from dlc.spec.diagnostics import UserError
    if isinstance(e, UserError):
        return e.message + (f" (hint: {e.hint})" if getattr(e, "hint", None) else "")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def measure_dlc(spec, backend: str, device: str, args) -> dict:
    from dlc.runtime.bench import bench_dlc_train, prepare
    setup = prepare(spec, backend=backend, device=device, batch=args.batch, infer=False)
    log(f"  dlc {setup.backend} on {setup.device}")
    r = bench_dlc_train(setup, steps=args.steps, warmup=args.warmup,
                        profile_runs=1 if args.dry else 3)
    r["backend"] = setup.backend
    r["kernels"] = r["kernels"][:15]                   # the JSON keeps the top of the breakdown
    return r


def run_workload(w: dict, device: str, args) -> dict:
    import torch

    import dlc
    from dlc.runtime.baselines import compare_baselines, loss_check, ratios
    from dlc.runtime.bench import prepare
    log(f"workload {w['key']}: {w['name']}")
    out = {"key": w["key"], "name": w["name"], "spec": w["spec"], "sets": w["sets"],
           "batch": args.batch, "dlc": None, "dlc_refused": None, "baselines": [],
           "best": None, "loss_check": None}
    bf16 = w.get("bf16", False)
    sets = list(w["sets"])
    if bf16:
        if precision_supported():
            sets.append("train.precision=bf16")
        else:
            out["dlc_refused"] = ("not supported yet: the spec language has no `precision` "
                                  "setting (spec/train.py SETTINGS)")
    spec = dlc.compile_spec(w["spec"], sets)
    out["optimizer"] = str(spec.config.optimizer)
    out["params"] = spec.num_params()
    out["bf16"] = bf16
    if out["dlc_refused"] is None:
        backend = args.dry_backend if args.dry else "triton"
        out["dlc_tried"] = backend
        try:
            out["dlc"] = measure_dlc(spec, backend, device, args)
        except Exception as e:                            # noqa: BLE001 — report, go on
            out["dlc_refused"] = f"{backend}: {_reason(e)}"
            log(f"  dlc {backend} refused or failed: {out['dlc_refused']}")
            if os.environ.get("DLC_DEBUG"):
                traceback.print_exc()
            if backend != "reference":
                try:
                    out["dlc"] = measure_dlc(spec, "reference", device, args)
                except Exception as e2:                   # noqa: BLE001
                    out["dlc_reference_failed"] = _reason(e2)
    setup = prepare(dlc.compile_spec(w["spec"], w["sets"]), backend="reference", device=device,
                    batch=args.batch, infer=False)
    names = ["eager", "torch.compile", "torch.compile reduce-overhead", "cuda graph"]
    if args.no_compile:
        names = [n for n in names if "compile" not in n]
    for name in names:
        log(f"  {name}{' (bf16 autocast, channels-last)' if bf16 else ''}")
        (b,) = compare_baselines(setup, steps=args.steps, warmup=args.warmup, names=[name],
                                 autocast=torch.bfloat16 if bf16 else None, channels_last=bf16)
        out["baselines"].append(b)
    if args.no_compile:
        out["baselines"] += [{"name": n, "skipped": "--no-compile"}
                             for n in ("torch.compile", "torch.compile reduce-overhead")]
    dlc_ms = out["dlc"]["median_ms"] if out["dlc"] else None
    out["best"] = ratios(dlc_ms, out["baselines"])
    if out["dlc"] and not bf16:
        try:
            out["loss_check"] = loss_check(setup, out["dlc"]["first_losses"][:2])
        except Exception as e:                            # noqa: BLE001
            out["loss_check"] = {"failed": _reason(e)}
    return out


# -- dlc train-style start to the first finished step, in fresh processes -----------------------

def first_step_child(argv: list[str]) -> None:
    """In the child: the first step, then one JSON line with the wall-clock time it ended."""
    a = json.loads(argv[0])
    from dlc.runtime.bench import first_step
    try:
        r = first_step(a["spec"], a["sets"], backend=a["backend"], device=a["device"],
                       batch=a["batch"])
    except Exception as e:                                # noqa: BLE001
        r = {"failed": _reason(e)}
    r["t_done"] = time.time()
    print(json.dumps(r))


def first_step_timings(spec: str, sets: list[str], device: str, args,
                       backend: str | None = None) -> dict:
    """Cold and warm first steps in fresh processes; when the backend is refused, the reason
    and the same on the reference backend."""
    backend = backend or (args.dry_backend if args.dry else "triton")
    cache = tempfile.mkdtemp(prefix="dlc-first-step-cache-")
    env = {**os.environ, "DLC_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
    if args.dry:
        env["OMP_NUM_THREADS"] = "1"
    res = {"backend": backend, "spec": spec, "sets": sets}

    def child(label: str) -> dict:
        log(f"first step, {label} kernel cache ({backend}, fresh process)")
        payload = json.dumps({"spec": spec, "sets": sets, "backend": backend,
                              "device": device, "batch": args.batch})
        t = time.time()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                               "--first-step-child", payload], env=env, capture_output=True,
                              text=True, timeout=args.child_timeout)
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {"failed": f"exit {done.returncode}: {tail[:300]}"}
        r = json.loads(lines[-1])
        if "t_done" in r:
            r["start_to_first_step_s"] = r.pop("t_done") - t
        return r

    try:
        res["cold"] = child("empty")
        res["warm"] = child("warm")
    except subprocess.TimeoutExpired:
        res.setdefault("cold", {"failed": "timed out"})
        res.setdefault("warm", {"failed": "timed out"})
    if "failed" in res["cold"] and backend != "reference":
        res["fallback"] = first_step_timings(spec, sets, device, args, backend="reference")
    return res


# -- the report --------------------------------------------------------------------------------

def _f(x, unit="") -> str:
    if x is None:
        return "-"
    return (f"{x:,.3f}" if x < 10 else f"{x:,.1f}") + unit


def _mem(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB"


def format_table(result: dict) -> str:
    from dlc.compiler.emit import text_table
    m = result["machine"]
    lines = [f"gpu_bench{' --dry' if result['dry'] else ''}: {m['device_name']}, torch "
             f"{m['torch']}, triton {m['triton']}, batch {result['batch']}, "
             f"{result['steps']} timed steps after {result['warmup']} warm-up", ""]
    rows = [["workload", "implementation", "ms/step", "samples/s", "peak memory",
             "dlc/impl", "compile cold s", "warm s"]]
    notes = []
    for w in result["workloads"]:
        d = w["dlc"]
        label = f"{w['key']} {w['name']}"
        if d:
            name = f"dlc {d['backend']}" + (" (fallback)" if w["dlc_refused"] else "")
            rows.append([label, name, _f(d["median_ms"]), f"{d['samples_per_s']:,.0f}",
                         _mem(d["peak_memory_bytes"]), "1.00x", _f(d["compile_cold_s"]),
                         _f(d["compile_warm_s"])])
            label = ""
        if w["dlc_refused"]:
            rows.append([label, f"dlc {w.get('dlc_tried') or ''}".rstrip(),
                         "not supported" if w.get("bf16") else "refused", "", "", "", "", ""])
            label = ""
            notes.append(f"{w['key']}: dlc: {w['dlc_refused']}")
        skipped: dict[str, list[str]] = {}
        for b in w["baselines"]:
            if "median_ms" in b:
                r = b.get("dlc_over_baseline")
                rows.append([label, b["name"], _f(b["median_ms"]),
                             f"{b['samples_per_s']:,.0f}", _mem(b["peak_memory_bytes"]),
                             "-" if r is None else f"{r:.2f}x", _f(b["first_call_s"]), ""])
            elif "skipped" in b:
                rows.append([label, b["name"], "skipped", "", "", "", "", ""])
                skipped.setdefault(b["skipped"], []).append(b["name"])
            else:
                rows.append([label, b["name"], "failed", "", "", "", "", ""])
                notes.append(f"{w['key']}: {b['name']} failed: {b.get('failed')}")
            label = ""
        for why, names in skipped.items():
            notes.append(f"{w['key']}: skipped {', '.join(names)}: {why}")
        if w["best"] and w["best"].get("dlc_over_best") is not None:
            notes.append(f"{w['key']}: best baseline {w['best']['name']} "
                         f"{_f(w['best']['median_ms'])} ms; dlc/best "
                         f"{w['best']['dlc_over_best']:.2f}x")
        lc = w.get("loss_check")
        if lc and "max_abs_diff" in lc:
            notes.append(f"{w['key']}: same network: first two losses dlc "
                         f"{', '.join(f'{x:.5f}' for x in lc['dlc'])}, eager "
                         f"{', '.join(f'{x:.5f}' for x in lc['eager'])}")
    lines += text_table(rows, {2, 3, 4, 5, 6, 7})
    lines += ["", "dlc/impl: dlc's median step time over that implementation's (below 1: dlc "
                  "is faster). compile cold/warm: dlc's program built and first step run with "
                  "an empty / a populated kernel cache; for a baseline its first call "
                  "(torch.compile compiles there)."]
    fs = result.get("first_step")
    if fs:
        lines.append("")
    while fs:
        for k in ("cold", "warm"):
            r = fs.get(k) or {}
            if "start_to_first_step_s" in r:
                lines.append(f"dlc train-style start to the first finished ResNet-18 step "
                             f"({r.get('backend')}, {k} kernel cache): "
                             f"{r['start_to_first_step_s']:.2f} s (setup {r['setup_s']:.2f} s, "
                             f"first step {r['first_step_s']:.2f} s)")
            else:
                lines.append(f"first ResNet-18 step ({fs['backend']}, {k} kernel cache): "
                             f"{r.get('failed', '-')}")
        fs = fs.get("fallback")
    lines += [""] + [f"note: {n}" for n in notes + result["notes"]]
    return "\n".join(lines) + "\n"


def machine(device: str) -> dict:
    import importlib.metadata

    import torch
    try:                               # not `import triton`: its interpreter mode is chosen
        tv = importlib.metadata.version("triton")      # when dlc first resolves a backend
    except importlib.metadata.PackageNotFoundError:
        tv = None
    gpu = device.startswith("cuda")
    return {"device": device,
            "device_name": torch.cuda.get_device_name(device) if gpu else
            f"CPU ({os.cpu_count()} cores)",
            "torch": str(torch.__version__), "triton": tv, "python": platform.python_version(),
            "cuda": torch.version.cuda if gpu else None,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--first-step-child"]:
        _preflight()
        _import_dlc()
        first_step_child(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="the same code path on the CPU, tiny sizes")
    p.add_argument("--json", metavar="PATH", help="write the results here as JSON")
    p.add_argument("--only", default="A,B,B-bf16", help="workloads to run (default A,B,B-bf16)")
    p.add_argument("--steps", type=int, help="timed steps (default 20; --dry 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5; --dry 1)")
    p.add_argument("--batch", type=int, help="examples per step (default 256; --dry 8)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--no-first-step", action="store_true",
                   help="skip the fresh-process first-step timings")
    p.add_argument("--dry-backend", default="reference", choices=("reference", "triton"))
    p.add_argument("--tf32", action="store_true",
                   help="let PyTorch's float32 matmuls use TF32 (cuDNN convolutions do by "
                        "default); recorded in the JSON either way")
    p.add_argument("--child-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _preflight()
    _import_dlc()
    import torch
    args.steps = args.steps or (2 if args.dry else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry else 5)
    args.batch = args.batch or (8 if args.dry else 256)
    if args.dry:
        device = "cpu"
        torch.set_num_threads(1)          # a shared 2-core machine: far steadier, times moot
        if args.dry_backend == "triton":
            os.environ["TRITON_INTERPRET"] = "1"        # before anything imports triton
    elif torch.cuda.is_available():
        device = "cuda"
        torch.backends.cudnn.benchmark = True          # fixed sizes: let cuDNN pick kernels
        if args.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
    else:
        sys.stderr.write("gpu_bench: no CUDA GPU here; use --dry for the CPU dry run\n")
        return 2
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    out_path = Path(args.json) if args.json else None
    result = {"dry": args.dry, "machine": machine(device), "batch": args.batch,
              "steps": args.steps, "warmup": args.warmup, "workloads": [], "first_step": None,
              "notes": [], "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if args.dry:
        result["notes"].append("--dry: CPU (one thread), batch 8, ResNet-18 at 8x8 pixels and "
                               "a quarter of the channels; the GPU-only baselines are "
                               "skipped; times mean nothing")

    def save():
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2) + "\n")

    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    todo = [w for w in workloads(tmp, args) if w["key"] in keys]
    for w in todo:
        try:
            result["workloads"].append(run_workload(w, device, args))
        except Exception as e:                            # noqa: BLE001 — keep the others
            log(f"workload {w['key']} failed: {_reason(e)}")
            traceback.print_exc()
            result["notes"].append(f"{w['key']}: failed: {_reason(e)}")
        save()
    if not args.no_first_step:
        resnet = next((w for w in workloads(tmp, args) if w["key"] == "B"))
        result["first_step"] = first_step_timings(resnet["spec"], resnet["sets"], device, args)
        save()
    sys.stdout.write(format_table(result))
    if out_path is not None:
        print(f"wrote {out_path}")
    failed = [n for n in result["notes"] if ": failed: " in n]
    log("done" + (f"; {len(failed)} workload(s) failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
