"""The training loop and the run directory it writes.

    metrics.jsonl            one JSON object per epoch (epoch, train_loss, train_acc,
                             val_loss, val_acc, lr, seconds), flushed as it goes
    checkpoint.safetensors   weights after the last finished epoch (best epoch with early stopping)
    final.json               test_loss, test_acc, epochs_run, stopped (why), best_epoch
    run.yaml                 resolved configuration, versions, spec hash, command
    curves.svg               loss and accuracy per epoch
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ..compiler.pipeline import build_train_graph
from ..spec.diagnostics import UserError
from .data import load
from .model import Model
from .plot import write_curves
from .progress import Progress
from .reference import ReferenceProgram
from .schedules import learning_rate
from .state import init_state


def _versions() -> dict:
    import lark
    from .. import __version__
    return {"dlc": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": np.__version__, "lark": lark.__version__}


def _check_data(model: Model, data, cfg) -> None:
    out = model.spec.graph.outputs[0].type
    if cfg.loss.name == "cross_entropy":
        if data.classes is None:
            raise UserError("cross_entropy needs class labels, but the data has regression "
                            "targets", cfg.loss.span)
        if out.rank != 2 or out.shape[1] < data.classes:
            raise UserError(f"the model's output {out} cannot score {data.classes} classes of "
                            f"{data.name}", cfg.loss.span or cfg.data.span,
                            hint=f"end the model with linear({data.classes})")
    elif data.classes is not None:
        raise UserError(f"{cfg.loss.name} needs numeric targets, but {data.name} has class labels",
                        cfg.loss.span or cfg.data.span,
                        hint="use cross_entropy, or classes=false for csv/npz targets")
    else:
        want = tuple(out.shape[1:])
        have = tuple(data.train.y.shape[1:])
        if want != have:
            raise UserError(f"the model's output {out} does not match the targets of "
                            f"{data.name} ({list(have)} per example)",
                            cfg.loss.span or cfg.data.span)
    try:
        model.shape_batch(data.train.x[:1], f"{data.name} examples")
    except UserError as e:
        default = "data" not in cfg.spans
        raise UserError(e.message, cfg.spans.get("data"),
                        hint=("the train section names no data, so digits is used; add a "
                              "`data` setting that fits the model's input") if default else
                        "the data and the model's input must hold the same values per example"
                        ) from None


def _check_batch_norm(spec, bounds: list[int]) -> None:
    smallest = min(b - a for a, b in zip(bounds, bounds[1:]))
    for node in spec.graph.nodes:
        if node.op == "batch_norm":
            t = node.inputs[0].type
            per_channel = smallest * (t.per_sample() or 1) // t.shape[1]
            if per_channel < 2:
                raise UserError("batch norm in training needs more than one value per channel, "
                                f"but a batch of {smallest} gives {node.scope} one",
                                spec.config.spans.get("batch", node.loc),
                                hint="use a batch of at least 2")


def run_training(spec, out_dir: Path, *, backend="auto", device=None, seed=None,
                 init_from=None, progress=True) -> dict:
    cfg = spec.config
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    model = Model(spec, backend=backend, device=device, seed=seed)
    data = load(cfg.data, seed, spec.path.parent)
    _check_data(model, data, cfg)
    if init_from is not None:
        model.load(init_from)

    train_graph = build_train_graph(spec.graph, cfg)
    state = init_state(train_graph, seed, model.device)       # slots start at zero
    state.update(model.state)                                  # parameters and buffers
    program = ReferenceProgram(train_graph, training=True, device=model.device, seed=seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_run_yaml(out_dir / "run.yaml", spec, cfg, model, seed, data)
    metrics_path = out_dir / "metrics.jsonl"
    metrics_path.write_text("")

    n = len(data.train)
    batch = n if cfg.batch == "full" else min(cfg.batch, n)
    # batch boundaries; a last batch of one example joins the one before it (batch norm
    # cannot normalise a single example in training)
    bounds = list(range(0, n, batch)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    steps = len(bounds) - 1
    _check_batch_norm(spec, bounds)
    rng = np.random.default_rng(seed)
    base_lr = cfg.optimizer.args["lr"]
    xin = spec.graph.inputs[0].input_name
    x_all = model.shape_batch(data.train.x, f"{data.name} examples")
    y_all = torch.as_tensor(data.train.y, device=model.device)
    classify = cfg.loss.name == "cross_entropy"
    es = cfg.early_stopping
    best, best_epoch, best_state, bad_epochs = None, 0, None, 0
    records, stopped, epochs_run, diverged = [], "completed", 0, None
    bar = Progress(cfg.epochs, steps, enabled=progress)
    t_start = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            perm = torch.as_tensor(rng.permutation(n), device=model.device)
            total, correct, lr = 0.0, 0, base_lr
            for step in range(steps):
                idx = perm[bounds[step]:bounds[step + 1]]
                lr = learning_rate(cfg.schedule, base_lr, epoch - 1 + step / steps, cfg.epochs)
                inputs = {xin: x_all[idx], "y": y_all[idx],
                          "lr": torch.tensor(lr, dtype=torch.float32, device=model.device)}
                (loss, logits, *_), updates, _ = program.run(state, inputs)
                state.update(updates)
                lv = float(loss)
                if not math.isfinite(lv):
                    raise _Diverged(f"the loss became {lv} in epoch {epoch}, step {step + 1}")
                total += lv * len(idx)
                if classify:
                    correct += int((logits.argmax(dim=1) == y_all[idx]).sum())
                bar.step(epoch, step + 1, lv)
            for name in model.state:
                model.state[name] = state[name]
            val = model.evaluate_arrays(data.val.x, data.val.y)
            record = {"epoch": epoch, "train_loss": total / n,
                      "train_acc": correct / n if classify else None,
                      "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
                      "seconds": round(time.perf_counter() - t0, 4)}
            records.append(record)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            epochs_run = epoch
            bar.epoch(record)
            if es is not None:
                key = es.args["monitor"]
                value = record[key]
                if value is None:
                    raise UserError(f"early stopping monitors {key}, but there is no validation "
                                    "split (set val > 0 in data)", es.span)
                better = (best is None or
                          (value < best - es.args["min_delta"] if key == "val_loss"
                           else value > best + es.args["min_delta"]))
                if better:
                    best, best_epoch, bad_epochs = value, epoch, 0
                    best_state = {k: v.clone() for k, v in model.state.items()}
                else:
                    bad_epochs += 1
                model.save(out_dir / "checkpoint.safetensors", {"epoch": best_epoch})
                if bad_epochs >= es.args["patience"]:
                    stopped = "early_stopping"
                    break
            else:
                model.save(out_dir / "checkpoint.safetensors", {"epoch": epoch})
    except KeyboardInterrupt:
        stopped = "interrupted"
    except _Diverged as e:
        stopped, diverged = "diverged", str(e)
    finally:
        if records:
            write_curves(records, out_dir / "curves.svg")
    if es is not None and best_state is not None:
        model.state.update(best_state)
        model.save(out_dir / "checkpoint.safetensors", {"epoch": best_epoch})
    test = model.evaluate_arrays(data.test.x, data.test.y)
    final = {"test_loss": test["loss"], "test_acc": test["acc"], "epochs_run": epochs_run,
             "stopped": stopped, "best_epoch": best_epoch if es is not None else epochs_run,
             "params": spec.num_params(), "seconds": round(time.perf_counter() - t_start, 3),
             "backend": model.backend, "device": str(model.device)}
    (out_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    if stopped == "interrupted":
        raise KeyboardInterrupt
    if diverged:
        raise UserError(f"training diverged: {diverged}; the last good weights are in "
                        f"{out_dir / 'checkpoint.safetensors'}", cfg.optimizer.span,
                        hint="lower the learning rate")
    return final


class _Diverged(Exception):
    pass


def _write_run_yaml(path: Path, spec, cfg, model: Model, seed: int, data) -> None:
    doc = {
        "spec": str(spec.path), "model": spec.graph.name, "spec_sha256": spec.spec_hash,
        "sets": list(spec.sets), "seed": seed, "backend": model.backend,
        "device": str(model.device), "params": spec.num_params(),
        "data": {"name": data.name, "train": len(data.train), "val": len(data.val),
                 "test": len(data.test), "classes": data.classes},
        "train": {**cfg.to_dict(), "seed": seed}, "versions": _versions(),
        "command": " ".join(sys.argv),
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
