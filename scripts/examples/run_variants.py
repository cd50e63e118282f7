"""Train one spec under several `--set` variants and print a table of their accuracies.

Used by regularisation.py and augmentation.py beside it; each variant's run directory is
kept under --out (metrics.jsonl, final.json, curves) for a closer look."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import dlc
from dlc.runtime.loop import run_training

ROOT = Path(__file__).resolve().parents[2]


def main(spec: str, variants: dict[str, list[str]], default_out: str) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=default_out, help="folder for the runs")
    ap.add_argument("--epochs", type=int, help="override the spec's epochs (a quick look)")
    ap.add_argument("--only", nargs="*", help="run only these variants")
    ap.add_argument("--seed", type=int, default=0, help="the first seed")
    ap.add_argument("--seeds", type=int, default=3, help="how many seeds (splits and inits)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = [f"train.epochs={args.epochs}"] if args.epochs else []
    seeds = list(range(args.seed, args.seed + args.seeds))
    rows = []
    for name, sets in variants.items():
        if args.only and name not in args.only:
            continue
        compiled = dlc.compile_spec(ROOT / spec, [*sets, *extra])
        runs = [_run(compiled, Path(args.out) / name.replace(" ", "_") / f"seed{s}", s)
                for s in seeds]
        rows.append((name, runs))
        print(f"{name}: test_acc " + " ".join(f"{r['test']:.4f}" for r in runs), flush=True)
    print(f"\n{spec}, seeds {seeds}, reference backend on the CPU (mean ± std over seeds)\n")
    print("| variant | final train acc | best val acc | test acc | test loss | epochs run |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs in rows:
        cells = [_mean_std([r[k] for r in runs]) for k in ("train", "val", "test", "loss")]
        epochs = "/".join(str(r["epochs"]) for r in runs)
        print(f"| {name} | " + " | ".join(cells) + f" | {epochs} |")


def _run(compiled, out: Path, seed: int) -> dict:
    final = run_training(compiled, out, backend="reference", device="cpu", seed=seed,
                         progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"train": records[-1]["train_acc"], "val": max(r["val_acc"] for r in records),
            "test": final["test_acc"], "loss": final["test_loss"], "epochs": final["epochs_run"]}


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}" \
        if len(values) > 1 else f"{values[0]:.4f}"
