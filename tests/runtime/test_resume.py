"""Exact resume (`dlc train --resume DIR`) and run directories that are never overwritten
silently: a run interrupted by SIGINT or SIGKILL in mid-epoch and resumed ends with the
weights, bit for bit, of a run that was never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import dlc
from dlc.cli import main

# dropout (the program's generator), adam (slots, step count), a cosine schedule, early
# stopping (best value, best weights) and an augment chain (its torch and numpy
# generators): everything a resumed run must get back
SPEC = ("model M {{\n    input x: f32[64]\n    linear(32) -> relu -> dropout(0.2)\n"
        "    linear(10)\n}}\n"
        "train {{\n    optimizer adam(lr=3e-3)\n    schedule  cosine(warmup=1)\n"
        "    batch     {batch}\n    epochs    {epochs}\n    augment   noise(0.05) -> mixup(0.2)\n"
        "    early_stopping(patience=50)\n}}\n")


def _spec(tmp_path: Path, epochs: int, batch: int) -> Path:
    path = tmp_path / "m.dls"
    path.write_text(SPEC.format(epochs=epochs, batch=batch))
    return path


def _same_files(a: Path, b: Path) -> None:
    for name in ("checkpoint.safetensors", "last.safetensors", "best.safetensors"):
        want, got = load_file(str(a / name)), load_file(str(b / name))
        assert want.keys() == got.keys(), name
        for k in want:
            assert torch.equal(want[k], got[k]), f"{name}: {k} differs"
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                       for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(a) == strip(b)
    fa, fb = (json.loads((p / "final.json").read_text()) for p in (a, b))
    assert (fa["test_loss"], fa["test_acc"], fa["epochs_run"], fa["stopped"]) == \
           (fb["test_loss"], fb["test_acc"], fb["epochs_run"], fb["stopped"])


def _saved_epoch(run: Path) -> int:
    try:
        with safe_open(str(run / "last.safetensors"), "pt") as f:
            return int(f.metadata()["epoch"])
    except Exception:                      # not written yet (or being replaced)
        return 0


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run the interrupted ones are compared with."""
    tmp = tmp_path_factory.mktemp("whole")
    spec = _spec(tmp, epochs=3, batch=16)
    assert main(["train", str(spec), "--out", str(tmp / "run"), "--quiet",
                 "--backend", "reference"]) == 0
    return spec, tmp / "run"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_resume_after_a_signal_in_mid_epoch_is_exact(whole, tmp_path, sig):
    spec, ref = whole
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dlc", "train", str(spec), "--out", str(run),
                             "--quiet", "--backend", "reference"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _saved_epoch(run) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)                  # in epoch 2: after a checkpoint, mid-epoch
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    saved = _saved_epoch(run)
    assert 1 <= saved < 3, "the signal came too late to test a resume"
    if sig == signal.SIGINT:
        final = json.loads((run / "final.json").read_text())
        assert final["stopped"] == "interrupted" and final["epochs_run"] == saved
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_files(ref, run)


def test_resume_on_the_triton_backend_restores_its_flat_state(tmp_path, monkeypatch,
                                                              interrupt_at_validation):
    """The triton backend keeps parameters and slots in one flat buffer: they are saved
    and loaded through it."""
    spec = dlc.compile_spec(_spec(tmp_path, epochs=2, batch=256))
    dlc.train(spec, tmp_path / "whole", backend="triton", progress=False)
    interrupt_at_validation(2)
    with pytest.raises(KeyboardInterrupt):
        dlc.train(spec, tmp_path / "cut", backend="triton", progress=False)
    monkeypatch.undo()
    assert _saved_epoch(tmp_path / "cut") == 1
    last = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert last["optimizer.step"].item() == 5 and "linear1.weight.adam_v" in last
    dlc.train(spec, tmp_path / "cut", backend="triton", progress=False, resume=True)
    _same_files(tmp_path / "whole", tmp_path / "cut")


def test_a_second_run_into_the_same_folder_is_refused(whole, tmp_path, capsys):
    spec, _ = whole
    out = tmp_path / "run"
    args = ["train", str(spec), "--out", str(out), "--quiet", "--set", "train.epochs=1"]
    assert main(args) == 0
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == before
    (out / "epoch-1.safetensors").write_bytes(b"old")
    (out / "overlay.png").write_bytes(b"old")       # a segmentation run's picture
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "epoch-1.safetensors").exists() and not (out / "overlay.png").exists()


def test_default_output_is_a_fresh_numbered_folder(whole, tmp_path, monkeypatch, capsys):
    spec, _ = whole
    monkeypatch.chdir(tmp_path)
    for n in (1, 2):
        assert main(["train", str(spec), "--quiet", "--set", "train.epochs=1"]) == 0
        assert capsys.readouterr().out.strip().endswith(f"-> {Path('runs', 'm', str(n))}")
    assert sorted(p.name for p in (tmp_path / "runs" / "m").iterdir()) == ["1", "2"]


def test_resume_refuses_what_it_cannot_continue(whole, tmp_path, capsys):
    spec, ref = whole
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", str(spec), "--resume", str(ref)]) == 2
    assert "drop the spec argument" in capsys.readouterr().err
    changed = tmp_path / "changed"
    changed.mkdir()
    copy = changed / "m.dls"
    copy.write_text(spec.read_text().replace("epochs    3", "epochs    1"))
    assert main(["train", str(copy), "--out", str(changed / "run"), "--quiet"]) == 0
    copy.write_text(spec.read_text())
    assert main(["train", "--resume", str(changed / "run"), "--quiet"]) == 2
    assert "the spec changed" in capsys.readouterr().err


def test_save_every_keeps_every_kth_epoch(whole, tmp_path):
    spec, _ = whole
    assert main(["train", str(spec), "--out", str(tmp_path / "r"), "--quiet",
                 "--set", "train.epochs=2", "--save-every", "1"]) == 0
    assert (tmp_path / "r" / "epoch-1.safetensors").is_file()
    assert (tmp_path / "r" / "epoch-2.safetensors").is_file()


def test_resume_continues_a_plateau_schedule_where_it_was(tmp_path, monkeypatch,
                                                          interrupt_at_validation):
    """plateau's reduced lr, best value and patience count come back on resume (replayed
    from the saved epochs' records), so the lr of every later epoch is that of a run never
    interrupted: it is halved at least once before the cut and once after."""
    text = SPEC.format(epochs=5, batch=64).replace(
        "cosine(warmup=1)", "plateau(monitor=train_loss, factor=0.5, patience=0, threshold=0.5)")
    (tmp_path / "p.dls").write_text(text)
    spec = dlc.compile_spec(tmp_path / "p.dls")
    dlc.train(spec, tmp_path / "whole", backend="reference", progress=False)
    interrupt_at_validation(4)
    with pytest.raises(KeyboardInterrupt):
        dlc.train(spec, tmp_path / "cut", backend="reference", progress=False)
    monkeypatch.undo()
    saved = _saved_epoch(tmp_path / "cut")
    assert 2 <= saved < 5
    dlc.train(spec, tmp_path / "cut", backend="reference", progress=False, resume=True)
    lrs = [json.loads(line)["lr"] for line in
           (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == 3e-3 and lrs[saved - 1] < 3e-3 and lrs[-1] < lrs[saved - 1], lrs
    _same_files(tmp_path / "whole", tmp_path / "cut")
