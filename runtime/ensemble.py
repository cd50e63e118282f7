"""Cross-validation and ensembles: several runs of runtime/loop.py from one spec.

    kfold(k)      the training and validation splits pooled and cut into k folds
                  (stratified by class); fold i trains on the other k-1 and validates on
                  fold i. The k models also form an ensemble (mean probabilities).
    bagging(n)    member i trains on a bootstrap resample of the training split (drawn
                  with replacement, seeded by (seed, i)); mean probabilities or votes.
    boosting(n)   SAMME: member m trains on a resample of the training split drawn with
                  the example weights w; its weighted error sets its say α_m and the new
                  weights; the ensemble is the α-weighted vote.

The run directory of an ensemble:

    folds/0/ ... or members/0/   each a complete single run directory (runtime/loop.py)
    ensemble.json                kind, combine rule, members' directories and weights:
                                 what `load_run` reads
    final.json                   every fold/member and the ensemble (k-fold: mean ± std)
    metrics.jsonl                every member's epoch rows, each with its "fold"/"member"
    run.yaml                     spec, sets, seed and the train section
    curves.png, curves.svg       the members' curves overlaid

`dlc train --resume DIR` of an ensemble keeps the members that finished (their
final.json says completed or early_stopping), continues the interrupted member from its
last.safetensors exactly, and trains the rest; boosting recomputes each kept member's
mistakes, so its example weights are those of a run never interrupted.

Each member is one call of `train_member` (a fold or a resample given as a Dataset to
`run_training`), so members that do not depend on each other (folds, bagging) run one
per process with `dlc train --nproc N` (or torchrun): process r trains members r, r + N,
..., each alone; rank 0 waits for the others' final.json and writes the ensemble's
files. Boosting is sequential by nature (each member trains on the previous ones'
mistakes), so `--nproc` refuses it.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..spec.diagnostics import UserError
from . import rundir
from .data import Dataset, Split, load
from .distributed import World
from .model import Model
from .resume import LAST

_ERR_FLOOR = 1e-10                  # SAMME: a perfect member's error, so that α stays finite


# -- the index sets

def kfold_indices(y: np.ndarray, k: int, seed: int, stratify: bool = True) -> list[np.ndarray]:
    """The k folds of examples 0..n-1, disjoint and covering them all, sizes within one.
    Stratified: each class's examples, in a seeded order, are dealt to the folds in turn
    (continuing where the previous class stopped), so every fold holds each class's
    count to within one. Otherwise (or for regression targets) a seeded permutation cut
    into k parts."""
    n = len(y)
    if k > n:
        raise UserError(f"kfold({k}) needs at least {k} examples, but there are {n}")
    rng = np.random.default_rng([seed, k])
    if not stratify or y.ndim != 1:
        return [np.sort(part) for part in np.array_split(rng.permutation(n), k)]
    fold = np.empty(n, dtype=np.int64)
    start = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = (start + np.arange(len(members))) % k
        start += len(members)
    return [np.flatnonzero(fold == i) for i in range(k)]


def bootstrap_indices(n: int, size: int, seed: int, member: int) -> np.ndarray:
    """`size` draws with replacement from 0..n-1, seeded by (seed, member)."""
    return np.random.default_rng([seed, member]).integers(0, n, size=size)


def weighted_indices(weights: np.ndarray, seed: int, member: int) -> np.ndarray:
    """len(weights) draws with replacement, example i with probability weights[i]."""
    return np.random.default_rng([seed, member]).choice(len(weights), size=len(weights),
                                                        p=weights / weights.sum())


def samme_step(weights: np.ndarray, wrong: np.ndarray, classes: int):
    """One SAMME round (Zhu, Zou, Rosset & Hastie 2009) from the example weights and the
    member's mistakes on the training split:

        err = Σ w_i [wrong_i] / Σ w_i
        α   = log((1 - err) / err) + log(K - 1)
        w_i ← w_i · exp(α [wrong_i]), then normalised to sum 1

    Returns (err, α, new weights). err is floored at 1e-10, so a perfect member gets a
    large finite α."""
    err = float(np.sum(weights * wrong) / np.sum(weights))
    e = min(max(err, _ERR_FLOOR), 1 - _ERR_FLOOR)
    alpha = math.log((1 - e) / e) + math.log(classes - 1)
    new = weights * np.exp(alpha * wrong)
    return err, alpha, new / new.sum()


# -- members

@dataclass
class MemberJob:
    """One model of an ensemble: what it trains on and where its run directory goes."""
    index: int
    tag: dict             # {"fold": i} or {"member": i}: in its metrics rows and final.json
    data: Dataset
    seed: int
    out_dir: Path


def train_member(spec, job: MemberJob, *, resume: bool = False, **run) -> dict:
    """Train one member (runtime/loop.py's run_training on the member's data); returns
    its final.json. `run`: backend, device, init_from, progress, tensorboard.

    `resume`: a member that finished is kept as it is, one with a finished epoch continues
    from it exactly, and one with none starts again."""
    from .loop import run_training
    if resume:
        done = _finished(job.out_dir)
        if done is not None:
            return done
        resumable = (job.out_dir / LAST).is_file()
        run = {**run, "resume": resumable, "overwrite": not resumable}
    if run.get("progress", True):
        print(f"{_kind_name(job.tag)} {job.index}", file=sys.stderr)
    return run_training(spec, job.out_dir, seed=job.seed, data=job.data, tag=job.tag, **run)


def _finished(member_dir: Path) -> dict | None:
    """A member's final.json when it trained to the end (or stopped early), else None."""
    try:
        final = json.loads((member_dir / "final.json").read_text())
    except (OSError, ValueError):
        return None
    return final if final.get("stopped") in ("completed", "early_stopping") else None


def _kind_name(tag: dict) -> str:
    return next(iter(tag))


def _subset(split: Split, idx: np.ndarray) -> Split:
    return Split(split.x[idx], split.y[idx])


def _with_train(data: Dataset, train: Split, val: Split | None = None) -> Dataset:
    return Dataset(train, data.val if val is None else val, data.test, data.classes, data.name)


def kfold_jobs(data: Dataset, k: int, stratify: bool, seed: int, out_dir: Path) -> list[MemberJob]:
    """Fold i: the pooled training and validation examples but fold i to train on, fold i
    to validate on; the test split unchanged."""
    pool = Split(np.concatenate([data.train.x, data.val.x]),
                 np.concatenate([data.train.y, data.val.y]))
    folds = kfold_indices(pool.y, k, seed, stratify)
    jobs = []
    for i, held in enumerate(folds):
        rest = np.concatenate([f for j, f in enumerate(folds) if j != i])
        jobs.append(MemberJob(i, {"fold": i}, _with_train(data, _subset(pool, rest),
                                                          _subset(pool, held)),
                              seed + i, out_dir / "folds" / str(i)))
    return jobs


def bagging_jobs(data: Dataset, n: int, fraction: float, seed: int,
                 out_dir: Path) -> list[MemberJob]:
    """Member i: a bootstrap resample of the training split; validation and test unchanged."""
    size = max(2, round(fraction * len(data.train)))
    return [MemberJob(i, {"member": i},
                      _with_train(data, _subset(data.train, bootstrap_indices(
                          len(data.train), size, seed, i))),
                      seed + i, out_dir / "members" / str(i)) for i in range(n)]


# -- running an ensemble

def check_parallel(cfg, nproc: int) -> None:
    """Boosting's members depend on each other: a UserError for a run on several processes."""
    if nproc > 1 and cfg.ensemble is not None and cfg.ensemble.name == "boosting":
        raise UserError("boosting trains each member on the mistakes of the ones before, so "
                        f"its members cannot run on {nproc} processes",
                        cfg.spans.get("boosting") or cfg.ensemble.span,
                        hint="train it without --nproc (kfold and bagging members run one "
                             "per process)")


def run_ensemble(spec, out_dir: Path, *, seed=None, resume=False, overwrite=False,
                 world: World = World(), **run) -> dict:
    """Train the ensemble the train section asks for into `out_dir`; returns final.json
    (in a run on several processes, rank 0's; the others return {}).
    An interrupted or diverged member stops the ensemble after final.json says what was
    finished. `resume`: finished members are kept, the interrupted one continues exactly
    and the rest are trained (boosting's weights follow from the kept members)."""
    cfg = spec.config
    check_parallel(cfg, world.size)
    seed = cfg.seed if seed is None else seed
    if world.leader:
        if resume:
            _check_resumable(spec, out_dir)
        else:
            rundir.prepare(out_dir, overwrite=overwrite)
    world.barrier()                     # no member starts before --overwrite cleared them
    data = load(cfg.data, seed, spec.path.parent)
    if world.size > 1:
        return _run_parallel(spec, data, seed, out_dir, world, {**run, "resume": resume})
    if not resume:
        _write_run_yaml(out_dir / "run.yaml", spec, seed, run.get("backend", "auto"))
    (out_dir / "metrics.jsonl").write_text("")
    run["resume"] = resume
    book = _Book(spec, cfg.ensemble, out_dir)
    try:
        if cfg.ensemble.name == "boosting":
            _boost(spec, data, cfg.ensemble.args["n"], seed, out_dir, book, run)
        else:
            for job in _jobs(cfg, data, seed, out_dir):
                book.add(job, train_member(spec, job, **run), 1.0)
    except KeyboardInterrupt:
        book.stopped = "interrupted"
        raise
    except UserError as e:
        book.stopped = "failed"
        book.note(e.message)
        raise
    finally:
        book.close(data, run)
    return book.final


def _jobs(cfg, data: Dataset, seed: int, out_dir: Path) -> list[MemberJob]:
    a = cfg.ensemble.args
    if cfg.ensemble.name == "kfold":
        return kfold_jobs(data, a["k"], a["stratify"], seed, out_dir)
    return bagging_jobs(data, a["n"], a["fraction"], seed, out_dir)


def _run_parallel(spec, data: Dataset, seed: int, out_dir: Path, world: World,
                  run: dict) -> dict:
    """k-fold or bagging members one per process (round robin); rank 0 gathers them."""
    jobs = _jobs(spec.config, data, seed, out_dir)
    if world.leader:
        if not run["resume"]:
            _write_run_yaml(out_dir / "run.yaml", spec, seed, run.get("backend", "auto"))
        (out_dir / "metrics.jsonl").write_text("")
    mine = {**run, "progress": run.get("progress", True) and world.leader}
    finals = {job.index: train_member(spec, job, **mine) for job in jobs[world.rank::world.size]}
    if not world.leader:
        return {}
    book = _Book(spec, spec.config.ensemble, out_dir)
    try:
        for job in jobs:
            book.add(job, finals.get(job.index) or _wait_final(job.out_dir), 1.0)
    finally:
        book.close(data, run)
    return book.final


def _wait_final(run_dir: Path, poll_s: float = 0.2) -> dict:
    """The final.json another process writes into `run_dir` when its member has finished
    (that of an interrupted member, kept for --resume, does not count). A process that
    fails ends the whole run: the launcher or torchrun stops this one."""
    while (final := _finished(run_dir)) is None:
        time.sleep(poll_s)
    return final


def _boost(spec, data: Dataset, rounds: int, seed: int, out_dir: Path, book, run) -> None:
    """SAMME by resampling: each round trains a member on examples drawn with the current
    weights, then reweights by its mistakes on the whole training split."""
    if data.classes is None:
        raise UserError("boosting (SAMME) needs class labels, but the data has regression "
                        "targets", spec.config.spans.get("boosting"),
                        hint="use bagging for regression")
    weights = np.full(len(data.train), 1.0 / len(data.train))
    for m in range(rounds):
        idx = weighted_indices(weights, seed, m)
        job = MemberJob(m, {"member": m}, _with_train(data, _subset(data.train, idx)),
                        seed + m, out_dir / "members" / str(m))
        final = train_member(spec, job, **run)
        member = Model(spec, backend=run.get("backend", "auto"), device=run.get("device"),
                       checkpoint=job.out_dir / "checkpoint.safetensors")
        wrong = (member.predict(data.train.x).argmax(axis=1) != data.train.y).astype(np.float64)
        err, alpha, new = samme_step(weights, wrong, data.classes)
        final["boosting"] = {"error": err, "alpha": alpha}
        if err >= 1 - 1 / data.classes:
            book.note(f"member {m} is no better than chance (weighted error {err:.4f}); "
                      "boosting stopped and left it out")
            if m == 0:
                raise UserError("boosting: the first member is no better than chance "
                                f"(weighted training error {err:.4f})",
                                spec.config.spans.get("boosting"),
                                hint="train each member longer or with a higher learning rate")
            book.record_only(job, final)
            return
        book.add(job, final, alpha)
        if err <= _ERR_FLOOR:
            book.note(f"member {m} makes no mistake on the training split; boosting stopped")
            return
        weights = new


class _Book:
    """What the ensemble has finished so far, written out as it goes: the members' rows
    appended to metrics.jsonl, and at the end ensemble.json and final.json."""

    def __init__(self, spec, call, out_dir: Path):
        self.spec, self.call, self.out_dir = spec, call, out_dir
        self.kind = call.name
        self.members: list[dict] = []      # each member's final.json, weight, directory
        self.notes: list[str] = []
        self.stopped = "completed"
        self.final: dict = {}

    def add(self, job: MemberJob, final: dict, weight: float) -> None:
        self.record_only(job, final)
        self.members.append({**final, "dir": str(job.out_dir.relative_to(self.out_dir)),
                             "weight": weight, **_held_out(job, final)})

    def record_only(self, job: MemberJob, final: dict) -> None:
        rows = (job.out_dir / "metrics.jsonl").read_text()
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(rows)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def close(self, data: Dataset, run: dict) -> None:
        """ensemble.json, the ensemble's test metrics, final.json and the curves."""
        if not self.members:
            return
        doc = {"kind": self.kind, "combine": _combine(self.call), **self.call.args,
               "members": [{"dir": m["dir"], "weight": m["weight"]} for m in self.members]}
        (self.out_dir / "ensemble.json").write_text(json.dumps(doc, indent=2) + "\n")
        ens = Ensemble.from_dir(self.out_dir, self.spec, run.get("backend", "auto"),
                                run.get("device"))
        test = ens.evaluate_arrays(data.test.x, data.test.y)
        self.final = _final(self.kind, self.members, test, self.stopped, self.notes, doc)
        (self.out_dir / "final.json").write_text(json.dumps(self.final, indent=2) + "\n")
        from .plot import plot_runs
        plot_runs([self.out_dir], self.out_dir / "curves")


def _held_out(job: MemberJob, final: dict) -> dict:
    """A fold's held-out validation metrics at the weights it kept (the best epoch's with
    early stopping, else the last's), from its metrics rows."""
    if "fold" not in job.tag:
        return {}
    rows = [json.loads(r) for r in (job.out_dir / "metrics.jsonl").read_text().splitlines()]
    kept = next((r for r in rows if r["epoch"] == final["best_epoch"]), rows[-1])
    return {"val_loss": kept["val_loss"], "val_acc": kept["val_acc"]}


def _combine(call) -> str:
    return {"bagging": call.args.get("combine", "mean"), "boosting": "weighted_vote"}.get(
        call.name, "mean")


def _final(kind: str, members: list[dict], test: dict, stopped: str, notes: list[str],
           doc: dict) -> dict:
    key = "folds" if kind == "kfold" else "members"
    final = {"kind": kind, "combine": doc["combine"], "test_loss": test["loss"],
             "test_acc": test["acc"], "ensemble": {"test_loss": test["loss"],
                                                   "test_acc": test["acc"]},
             "epochs_run": sum(m["epochs_run"] for m in members), "stopped": stopped,
             key: members}
    stats = ("val_loss", "val_acc", "test_loss", "test_acc") if kind == "kfold" else \
        ("test_loss", "test_acc")
    final["mean"], final["std"] = {}, {}
    for s in stats:
        values = [m[s] for m in members if m.get(s) is not None]
        if values:
            final["mean"][s] = float(np.mean(values))
            final["std"][s] = float(np.std(values))          # population (ddof 0)
    if notes:
        final["notes"] = notes
    return final


def _check_resumable(spec, out_dir: Path) -> None:
    """An ensemble run continues only from its own spec (as run.yaml recorded it)."""
    run = rundir.read_run(out_dir)
    if run.get("spec_sha256") != spec.spec_hash:
        raise UserError(f"the spec changed since the ensemble in {out_dir} started, so it "
                        "cannot be resumed exactly", hint="restore the spec, or train a new run")


def _write_run_yaml(path: Path, spec, seed: int, backend: str) -> None:
    doc = {"spec": str(spec.path), "model": spec.graph.name, "spec_sha256": spec.spec_hash,
           "sets": list(spec.sets), "seed": seed, "backend": backend,
           "train": {**spec.config.to_dict(), "seed": seed},
           "command": " ".join(sys.argv)}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# -- using an ensemble

def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Ensemble:
    """Several Models combined, with Model's predict/evaluate interface.

    For class labels `predict` returns each row's combined class scores, which sum to 1:
    the mean of the members' softmax probabilities (combine `mean`), the fraction of
    members voting for each class (`vote`), or the α-weighted vote Σ α_m [argmax f_m = k]
    / Σ α_m (`weighted_vote`, boosting). For regression it returns the members' mean
    output. Model.predict, by contrast, returns logits."""

    def __init__(self, members: list[Model], weights: list[float], combine: str = "mean"):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members, self.combine = members, combine
        self.weights = np.asarray(weights, dtype=np.float64)
        self.spec = members[0].spec
        self.classify = self.spec.config.loss.name == "cross_entropy"

    @classmethod
    def from_dir(cls, run_dir: Path, spec, backend: str = "auto", device=None) -> Ensemble:
        doc = json.loads((Path(run_dir) / "ensemble.json").read_text())
        members = [Model(spec, backend=backend, device=device,
                         checkpoint=Path(run_dir) / m["dir"] / "checkpoint.safetensors")
                   for m in doc["members"]]
        return cls(members, [m["weight"] for m in doc["members"]], doc["combine"])

    @property
    def input_names(self) -> list[str]:
        return self.members[0].input_names

    @property
    def scores_are_probabilities(self) -> bool:
        """`predict` gives combined class scores (rows sum to 1), not logits."""
        return self.classify

    def predict_outputs(self, x, batch: int = 512) -> dict[str, np.ndarray]:
        """The combined first output under its name (an ensemble combines one output)."""
        names = self.members[0].infer_graph.output_names or ["out0"]
        return {names[0]: self.predict(x, batch)}

    def predict(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        outs = [m.predict(x, batch).astype(np.float64) for m in self.members]
        w = self.weights / self.weights.sum()
        if not self.classify:
            return np.tensordot(w, np.stack(outs), axes=1).astype(np.float32)
        if self.combine == "mean":
            scores = [_softmax(o) for o in outs]
        else:                                               # vote, weighted_vote
            scores = [np.eye(o.shape[1])[o.argmax(axis=1)] for o in outs]
        return np.tensordot(w, np.stack(scores), axes=1)   # (n, classes), rows sum to 1

    def evaluate_arrays(self, x: np.ndarray, y: np.ndarray, batch: int = 512) -> dict:
        """Accuracy of the combined scores and, where it is defined, their loss: the mean
        negative log-likelihood of the mean probabilities (combine `mean`), or the mean
        squared error of the mean output (regression); None for votes."""
        if len(x) == 0:
            return {"loss": None, "acc": None}
        scores = self.predict(x, batch)
        if not self.classify:
            return {"loss": float(np.mean((scores - y) ** 2)), "acc": None}
        picked = scores[np.arange(len(y)), y]
        loss = float(-np.mean(np.log(np.maximum(picked, 1e-300)))) \
            if self.combine == "mean" else None
        return {"loss": loss, "acc": float(np.mean(scores.argmax(axis=1) == y))}

    def evaluate(self, split: str = "test") -> dict:
        cfg = self.spec.config
        data = load(cfg.data, cfg.seed, self.spec.path.parent)
        s = getattr(data, split)
        return self.evaluate_arrays(s.x, s.y)


def load_run(run_dir: str | Path, spec=None, backend: str = "auto",
             device: str | None = None) -> Model | Ensemble:
    """The model a run directory holds: an Ensemble when it has ensemble.json (k-fold,
    bagging, boosting), else a Model with its checkpoint. `spec` defaults to the one
    run.yaml names, compiled with the same --set overrides."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no such run directory: {run_dir}")
    if spec is None:
        spec = _spec_of(run_dir)
    if (run_dir / "ensemble.json").is_file():
        return Ensemble.from_dir(run_dir, spec, backend, device)
    return Model(spec, backend=backend, device=device,
                 checkpoint=run_dir / "checkpoint.safetensors")


def _spec_of(run_dir: Path):
    from ..api import compile_spec
    try:
        doc = yaml.safe_load((run_dir / "run.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{run_dir} has no readable run.yaml ({e}); give the spec too") from None
    return compile_spec(doc["spec"], doc.get("sets") or [])
