"""Data-parallel scaling on this machine: training samples/s of `dlc train` on 1 and 2
processes (and 1 process with one thread, and 2 processes with two threads each, to
show what over-subscription costs), in one session, so the ratio is fair on a shared machine.

    nice python benchmarks/dp_scaling.py [--examples 8192] [--epochs 3] [--repeat 2]

Samples/s is the training examples of the timed epochs over the sum of their `seconds`
in metrics.jsonl (training and validation of the epoch; the first epoch, with start-up
costs, is left out). Prints one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

SPEC = ("model Bench {{\n    input x: f32[{features}]\n"
        "    linear(512) -> relu -> linear(512) -> relu\n    linear(10)\n}}\n"
        "train {{\n    data      npz(path=\"d.npz\", val=0.02, test=0.02)\n"
        "    optimizer sgd(lr=0.05, momentum=0.9)\n    batch     {batch}\n"
        "    epochs    {epochs}\n}}\n")


def _run(spec: Path, out: Path, nproc: int, env: dict) -> float:
    cmd = [sys.executable, "-m", "dlc", "train", str(spec), "--out", str(out), "--quiet",
           "--overwrite", "--backend", "reference"] + (["--nproc", str(nproc)] if nproc > 1
                                                       else [])
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()][1:]
    n_train = yaml.safe_load((out / "run.yaml").read_text())["data"]["train"]
    return len(rows) * n_train / sum(r["seconds"] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=8192)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dlc-dp-"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.examples, a.features)).astype(np.float32)
    np.savez(tmp / "d.npz", x=x, y=rng.integers(0, 10, a.examples))
    spec = tmp / "bench.dls"
    spec.write_text(SPEC.format(features=a.features, batch=a.batch, epochs=a.epochs))
    cases = {"1 process": (1, {}), "1 process, 1 thread": (1, {"OMP_NUM_THREADS": "1"}),
             "2 processes": (2, {}),
             "2 processes, 2 threads each": (2, {"DLC_THREADS_PER_PROCESS": "2"})}
    results = {name: [] for name in cases}
    for _ in range(a.repeat):                     # interleaved: load changes hit all cases
        for name, (nproc, env) in cases.items():
            results[name].append(round(_run(spec, tmp / "run", nproc, env), 1))
    best = {k: max(v) for k, v in results.items()}
    print(json.dumps({"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
                      "examples": a.examples, "batch": a.batch, "samples_per_s": results,
                      "ratio_2p_1p": round(best["2 processes"] / best["1 process"], 3),
                      "ratio_2p_1p_1thread": round(best["2 processes"]
                                                   / best["1 process, 1 thread"], 3),
                      "ratio_2p_2threads_1p": round(best["2 processes, 2 threads each"]
                                                    / best["1 process"], 3)}, indent=2))


if __name__ == "__main__":
    main()
