"""The parts of the training loop: batches, early stopping, divergence, read-backs."""
from __future__ import annotations

import io
import json
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import dlc
from dlc.cli import main
from dlc.compiler.pipeline import build_step_graphs, build_train_graph
from dlc.runtime import train_step
from dlc.runtime.data import load
from dlc.runtime.batches import Batches
from dlc.runtime.epochs import EarlyStopping
from dlc.runtime.schedules import Schedule
from dlc.runtime.train_step import TrainStep
from dlc.runtime.model import Model
from dlc.runtime.progress import Progress
from dlc.spec.diagnostics import UserError

# digits has 1,258 training examples: batch 256 gives 5 steps an epoch
TINY = ("model M {\n    input x: f32[64]\n    linear(16) -> relu\n    linear(10)\n}\n"
        "train {\n    optimizer sgd(lr=0.1)\n    schedule  {schedule}\n    batch     256\n"
        "    epochs    {epochs}\n}\n")
STEPS = 5


def _tiny(tmp_path, epochs=2, schedule="constant"):
    path = tmp_path / "m.dls"
    path.write_text(TINY.replace("{schedule}", schedule).replace("{epochs}", str(epochs)))
    return path


# -- batches

@pytest.mark.parametrize("n, batch, bounds", [
    (10, 3, [0, 3, 6, 10]),          # a last batch of one joins the one before it
    (10, 4, [0, 4, 8, 10]),          # a last batch of two stays
    (10, 5, [0, 5, 10]),
    (10, "full", [0, 10]),
    (10, 64, [0, 10]),               # a batch larger than the split is the split
    (1, 1, [0, 1]),                  # a single example has nothing to join
    (1258, 1257, [0, 1258]),
])
def test_batch_boundaries(n, batch, bounds):
    b = Batches(n, batch, seed=0)
    assert b.bounds == bounds
    assert b.steps == len(bounds) - 1
    assert b.smallest == min(y - x for x, y in zip(bounds, bounds[1:]))


def test_each_epoch_is_a_fresh_seeded_permutation():
    a, b = Batches(10, 4, seed=3), Batches(10, 4, seed=3)
    first = [idx.tolist() for idx in a.epoch("cpu")]
    assert [len(i) for i in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10))
    assert first == [idx.tolist() for idx in b.epoch("cpu")]          # same seed, same order
    second = [idx.tolist() for idx in a.epoch("cpu")]
    assert sorted(sum(second, [])) == list(range(10)) and second != first
    assert sum(first, []) == np.random.default_rng(3).permutation(10).tolist()


# -- early stopping

def _feed(stopper, values, key="val_loss"):
    """The epoch at which `stopper` stops on `values` (None: it never does)."""
    for epoch, v in enumerate(values, 1):
        if stopper.update(epoch, {key: v}, {"w": torch.tensor([float(epoch)])}):
            return epoch
    return None


def test_early_stopping_patience_on_val_loss():
    s = EarlyStopping("val_loss", patience=2)
    assert _feed(s, [1.0, 0.8, 0.9, 0.85, 0.7]) == 4
    assert s.best == 0.8 and s.best_epoch == 2 and s.best_state["w"].item() == 2.0
    s = EarlyStopping("val_loss", patience=3)
    assert _feed(s, [1.0, 0.8, 0.9, 0.85, 0.7]) is None and s.best_epoch == 5


def test_early_stopping_min_delta():
    s = EarlyStopping("val_loss", patience=2, min_delta=0.1)
    assert _feed(s, [1.0, 0.95, 0.92]) == 3            # neither is 0.1 below 1.0
    assert s.best_epoch == 1
    s = EarlyStopping("val_loss", patience=2, min_delta=0.1)
    assert _feed(s, [1.0, 0.95, 0.89, 0.85, 0.84]) == 5 and s.best_epoch == 3


def test_early_stopping_on_val_acc_wants_it_higher():
    s = EarlyStopping("val_acc", patience=1)
    assert _feed(s, [0.5, 0.6, 0.55], key="val_acc") == 3 and s.best_epoch == 2
    s = EarlyStopping("val_acc", patience=1, min_delta=0.05)
    assert _feed(s, [0.5, 0.54], key="val_acc") == 2 and s.best_epoch == 1


def test_early_stopping_keeps_a_copy_of_the_best_state():
    s = EarlyStopping("val_loss", patience=5)
    w = torch.zeros(3)
    s.update(1, {"val_loss": 1.0}, {"w": w})
    w.add_(1)                                          # a backend updating its state in place
    assert s.best_state["w"].tolist() == [0.0, 0.0, 0.0]


def test_early_stopping_needs_the_metric_it_monitors():
    def cfg(monitor):
        return SimpleNamespace(early_stopping=SimpleNamespace(
            args={"monitor": monitor, "patience": 2, "min_delta": 0.0}, span=None))
    no_val = SimpleNamespace(val=[], classes=10)
    with pytest.raises(UserError, match="no validation split"):
        EarlyStopping.from_config(cfg("val_loss"), no_val)
    regression = SimpleNamespace(val=[1, 2], classes=None)
    with pytest.raises(UserError, match="not classes"):
        EarlyStopping.from_config(cfg("val_acc"), regression)
    s = EarlyStopping.from_config(cfg("val_loss"), regression)
    assert (s.monitor, s.patience, s.min_delta) == ("val_loss", 2, 0.0)
    assert EarlyStopping.from_config(SimpleNamespace(early_stopping=None), regression) is None


# -- progress

class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_due_at_most_every_refresh_interval():
    now = [0.0]
    bar = Progress(1, 10, stream=_TTY(), clock=lambda: now[0])
    assert not bar.due()
    now[0] = Progress.REFRESH_S
    assert bar.due()
    bar.step(1, 3, 0.5)
    assert not bar.due() and "step 3/10 loss 0.5000" in bar.stream.getvalue()
    quiet = Progress(1, 10, enabled=False, stream=_TTY(), clock=lambda: now[0])
    now[0] = 100.0
    assert not quiet.due()
    assert not Progress(1, 10, stream=io.StringIO(), clock=lambda: now[0] - 100).due()


# -- read-backs

def _count_read_backs(monkeypatch):
    calls = []
    real = train_step.read_back

    def counted(sums, epoch, step, seen):
        calls.append((epoch, step))
        return real(sums, epoch, step, seen)

    monkeypatch.setattr(train_step, "read_back", counted)
    return calls


@pytest.mark.parametrize("progress, tty, refresh, expected", [
    (False, True, 0.0, [(1, STEPS), (2, STEPS)]),              # once an epoch
    (True, False, 0.0, [(1, STEPS), (2, STEPS)]),              # no bar to redraw
    (True, True, 1e9, [(1, STEPS), (2, STEPS)]),               # the bar is never due
    (True, True, 0.0, [(e, s) for e in (1, 2) for s in [*range(1, STEPS + 1), STEPS]]),
])
def test_read_backs_happen_only_when_the_bar_redraws(tmp_path, monkeypatch, progress, tty,
                                                     refresh, expected):
    calls = _count_read_backs(monkeypatch)
    monkeypatch.setattr(sys, "stderr", _TTY() if tty else io.StringIO())
    monkeypatch.setattr(Progress, "REFRESH_S", refresh)
    spec = dlc.compile_spec(_tiny(tmp_path))
    final = dlc.train(spec, tmp_path / "run", backend="reference", progress=progress)
    assert final["stopped"] == "completed" and final["epochs_run"] == 2
    assert calls == expected


@pytest.mark.parametrize("accumulate", [1, 4])
def test_a_training_step_reads_nothing_back(tmp_path, monkeypatch, accumulate):
    """Only `read_back` (runtime/train_step.py) turns device values into Python values
    during an epoch (with gradient accumulation too: its micro-batches are summed on the
    device)."""
    path = _tiny(tmp_path)
    path.write_text(path.read_text().replace("batch     256", f"batch     256\n"
                                             f"    accumulate {accumulate}"))
    spec = dlc.compile_spec(path)
    graphs = build_step_graphs(spec.graph, spec.config)
    assert len(graphs) == (1 if accumulate == 1 else 2)
    model = Model(spec, backend="reference", device="cpu", extra_graphs=graphs)
    data = load(spec.config.data, 0, spec.path.parent)
    step = TrainStep(graphs, model, data, seed=0)
    batches = Batches(len(data.train), spec.config.batch, seed=0)
    reads, inside = [], [False]

    def spy(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if not inside[0]:
                reads.append(name)
            return real(self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__index__",
                 "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    real_read_back = train_step.read_back

    def read_back(sums, epoch, step_no, seen):
        inside[0] = True
        try:
            return real_read_back(sums, epoch, step_no, seen)
        finally:
            inside[0] = False

    monkeypatch.setattr(train_step, "read_back", read_back)
    schedule = Schedule(spec.config.schedule, 0.1, spec.config.epochs, batches.steps)
    stats = train_step.train_epoch(step, batches, 1, schedule,
                                    Progress(1, batches.steps, enabled=False))
    assert reads == []
    assert 0 < stats.loss < 10 and 0 <= stats.acc <= 1 and stats.lr == 0.1


def test_the_model_gets_copies_of_the_trained_state(tmp_path):
    """A backend may go on updating its state in place (triton: views of a flat buffer)."""
    spec = dlc.compile_spec(_tiny(tmp_path))
    graph = build_train_graph(spec.graph, spec.config)
    model = Model(spec, backend="reference", device="cpu", extra_graphs=[graph])
    step = TrainStep(graph, model, load(spec.config.data, 0, spec.path.parent), seed=0)
    step.copy_to(model)
    before = {k: v.clone() for k, v in model.state.items()}
    for t in step.state.values():
        t.add_(1)
    for name, t in model.state.items():
        torch.testing.assert_close(t, before[name], rtol=0, atol=0)


# -- divergence

def test_divergence_names_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path, capsys):
    # lr 0.1 in epoch 1, 1e29 from epoch 2 on
    spec = _tiny(tmp_path, epochs=3, schedule="step(every=1, gamma=1e30)")
    run = tmp_path / "run"
    code = main(["train", str(spec), "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(rf"training diverged: the loss became (nan|inf) in epoch 2, by step {STEPS};",
                     err), err
    assert "lower the learning rate" in err
    final = json.loads((run / "final.json").read_text())
    assert final["stopped"] == "diverged" and final["epochs_run"] == 1
    assert np.isfinite(final["test_loss"])             # evaluated on the last good weights
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    once = tmp_path / "once"
    assert main(["train", str(spec), "--out", str(once), "--quiet", "--set", "train.epochs=1"]) == 0
    with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == "1"
    got = load_file(str(run / "checkpoint.safetensors"))
    want = load_file(str(once / "checkpoint.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_divergence_is_seen_at_the_first_read_back_after_it(tmp_path, monkeypatch):
    calls = _count_read_backs(monkeypatch)
    monkeypatch.setattr(sys, "stderr", _TTY())
    monkeypatch.setattr(Progress, "REFRESH_S", 0.0)       # a read-back after every step
    spec = dlc.compile_spec(_tiny(tmp_path, epochs=3, schedule="step(every=1, gamma=1e30)"))
    with pytest.raises(UserError) as e:
        dlc.train(spec, tmp_path / "run", backend="reference", progress=True)
    by = int(re.search(r"in epoch 2, by step (\d+);", e.value.message).group(1))
    assert calls[-1] == (2, by) and by < STEPS
