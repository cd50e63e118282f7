"""One-call device check: the reference backend on CUDA, and the zoo against torchvision.

Run on a GPU machine (it also runs on the CPU, where torchvision is missing here):

    python benchmarks/device_check.py --device cuda --out results.json

1. For each zoo spec with a torchvision counterpart: build the torchvision model
   (random init), save its state dict as .pt, `dlc convert` it, load it into the dlc
   reference backend and compare logits on the same random batch (eval mode), and
   record both parameter counts.  torchvision is the independent reference.
   fcn_resnet50.dls likewise against torchvision's segmentation model, with and without
   its auxiliary head (every output compared).
2. Train examples/digits_mlp.dls and examples/digits_cnn.dls on the device and record
   the test accuracy and the wall time.
Prints one JSON object; nothing here is a pass/fail assertion except the exit code
(1 when a comparison is outside tolerance).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dlc
from dlc.cli import main as dlc_main

ROOT = Path(__file__).resolve().parent.parent

# spec, --set overrides, torchvision constructor name and kwargs
ZOO = [
    ("alexnet.dls", ["model.lrn=false"], "alexnet", {}),
    ("vgg16.dls", [], "vgg16", {}),
    ("googlenet.dls", [], "googlenet", {"aux_logits": False, "init_weights": True}),
    ("resnet18.dls", [], "resnet18", {}),
    ("resnet50.dls", [], "resnet50", {}),
    ("densenet121.dls", [], "densenet121", {}),
]


def _randomize_batch_norm(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _converted(tv, spec_name: str, sets: list, stem: str, tmp: Path, row: dict):
    """Save torchvision model tv's state dict, `dlc convert` it onto the spec, and record
    the exit code and both parameter counts in row; returns (spec, checkpoint)."""
    pt, ckpt = tmp / f"{stem}.pt", tmp / f"{stem}.safetensors"
    torch.save(tv.state_dict(), pt)
    argv = ["convert", str(ROOT / "examples" / spec_name), "--from", str(pt), "-o", str(ckpt)]
    for s in sets:
        argv += ["--set", s]
    row["convert_exit"] = dlc_main(argv)
    spec = dlc.compile_spec(ROOT / "examples" / spec_name, sets=sets)
    row["dlc_params"] = spec.num_params()
    row["torchvision_params"] = sum(p.numel() for p in tv.parameters())
    return spec, ckpt


def compare_zoo(device: str, batch: int, tmp: Path) -> list[dict]:
    try:
        import torchvision
    except ImportError:
        return [{"skipped": "torchvision is not installed"}]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for spec_name, sets, tv_name, kwargs in ZOO:
        row = {"spec": spec_name}
        try:
            tv = getattr(torchvision.models, tv_name)(weights=None, **kwargs).eval()
            _randomize_batch_norm(tv, gen)      # default stats (0, 1) would hide a swap
            spec, ckpt = _converted(tv, spec_name, sets, tv_name, tmp, row)
            model = dlc.build(spec, device=device, checkpoint=ckpt)
            x = torch.randn(batch, 3, 224, 224, generator=gen)
            with torch.no_grad():
                ref = tv.to(device)(x.to(device)).float().cpu().numpy()
            t0 = time.perf_counter()
            out = model.predict(x.numpy(), batch=batch)
            row["dlc_forward_s"] = round(time.perf_counter() - t0, 4)
            err = np.abs(out - ref).max() / max(1e-12, np.abs(ref).max())
            row["max_rel_err"] = float(err)
            row["ref_absmax"] = float(np.abs(ref).max())
            row["ref_std_over_batch"] = float(ref.std(axis=0).mean())   # inputs really differ
            fresh = dlc.build(spec, device=device).predict(x.numpy(), batch=batch)
            row["unconverted_rel_err"] = float(np.abs(fresh - ref).max() / np.abs(ref).max())
            row["ok"] = bool(err < 1e-3 and row["dlc_params"] == row["torchvision_params"])
        except Exception as e:                          # noqa: BLE001 — report and go on
            row["error"] = f"{type(e).__name__}: {e}"
            row["ok"] = False
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def compare_fcn(device: str, batch: int, tmp: Path) -> list[dict]:
    """fcn_resnet50.dls against torchvision's fcn_resnet50 (21 classes), without and with
    the auxiliary head: converted weights, the same random batch at a size that is neither
    square nor a multiple of the output stride (so the final bilinear resize is exercised),
    every output compared."""
    try:
        from torchvision.models.segmentation import fcn_resnet50
    except ImportError:
        return [{"skipped": "torchvision is not installed"}]
    rows = []
    gen = torch.Generator().manual_seed(1)
    for aux in (False, True):
        sets = ["model.aux=true"] if aux else []
        row = {"spec": "fcn_resnet50.dls" + (" aux=true" if aux else "")}
        try:
            tv = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                              aux_loss=aux).eval()
            _randomize_batch_norm(tv, gen)
            spec, ckpt = _converted(tv, "fcn_resnet50.dls", sets, f"fcn_{aux}", tmp, row)
            x = torch.randn(batch, 3, 117, 150, generator=gen)
            with torch.no_grad():
                ref = {k: v.float().cpu().numpy() for k, v in tv.to(device)(x.to(device)).items()}
            model = dlc.build(spec, device=device, checkpoint=ckpt)
            t0 = time.perf_counter()
            outs = list(model.predict_outputs(x.numpy()).values())
            row["dlc_forward_s"] = round(time.perf_counter() - t0, 4)
            fresh = list(dlc.build(spec, device=device).predict_outputs(x.numpy()).values())
            row["shape"] = list(outs[0].shape)
            ok = outs[0].shape == ref["out"].shape
            for i, key in enumerate(["out", "aux"] if aux else ["out"]):
                err = np.abs(outs[i] - ref[key]).max() / max(1e-12, np.abs(ref[key]).max())
                row[f"{key}_max_rel_err"] = float(err)
                row[f"{key}_unconverted_rel_err"] = float(
                    np.abs(fresh[i] - ref[key]).max() / np.abs(ref[key]).max())
                ok = ok and err < 1e-3
            row["ok"] = bool(ok and row["dlc_params"] == row["torchvision_params"]
                             and row["convert_exit"] == 0)
        except Exception as e:                          # noqa: BLE001 — report and go on
            row["error"] = f"{type(e).__name__}: {e}"
            row["ok"] = False
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def train_examples(device: str, tmp: Path) -> list[dict]:
    rows = []
    for name in ("digits_mlp.dls", "digits_cnn.dls"):
        path = ROOT / "examples" / name
        if not path.exists():
            continue
        spec = dlc.compile_spec(path)
        t0 = time.perf_counter()
        final = dlc.train(spec, tmp / name, device=device, progress=False)
        rows.append({"spec": name, "device": final["device"], "test_acc": final["test_acc"],
                     "epochs": final["epochs_run"], "seconds": round(time.perf_counter() - t0, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out")
    ap.add_argument("--skip-zoo", action="store_true")
    ap.add_argument("--skip-fcn", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        zoo = [] if args.skip_zoo else compare_zoo(args.device, args.batch, tmp)
        zoo += [] if args.skip_fcn else compare_fcn(args.device, min(args.batch, 2), tmp)
        trained = [] if args.skip_train else train_examples(args.device, tmp)
    result = {"env": env, "zoo": zoo, "train": trained}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if all(r.get("ok", True) for r in zoo) else 1


if __name__ == "__main__":
    raise SystemExit(main())
