"""`dlc train --tensorboard`: event files that TensorBoard's own reader gives back as the
run's metrics.jsonl, continued (not duplicated) by a resumed run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.cli import main
from dlc.runtime.tblog import scalars

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SPEC = ("model M {\n    input x: f32[64]\n    linear(32) -> relu\n    linear(10)\n}\n"
        "train {\n    optimizer sgd(lr=0.05)\n    batch 64\n    epochs 3\n}\n")


def _events(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_event_files_hold_every_epoch_of_metrics_jsonl(tmp_path):
    (tmp_path / "m.dls").write_text(SPEC)
    assert main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet",
                 "--backend", "reference", "--tensorboard"]) == 0
    events, records = _events(tmp_path / "run"), _records(tmp_path / "run")
    assert {"loss/train", "loss/val", "acc/train", "acc/val", "lr"} <= events.keys()
    for tag, key in (("loss/train", "train_loss"), ("acc/val", "val_acc"), ("lr", "lr")):
        assert [s for s, _ in events[tag]] == [1, 2, 3]
        np.testing.assert_allclose([v for _, v in events[tag]], [r[key] for r in records],
                                   rtol=1e-6)


def test_a_resumed_run_continues_its_event_files_without_repeating_epochs(tmp_path, monkeypatch,
                                                                          interrupt_at_validation):
    (tmp_path / "m.dls").write_text(SPEC)
    spec = dlc.compile_spec(tmp_path / "m.dls")
    interrupt_at_validation(2)
    with pytest.raises(KeyboardInterrupt):
        dlc.train(spec, tmp_path / "run", backend="reference", progress=False, tensorboard=True)
    monkeypatch.undo()
    assert [s for s, _ in _events(tmp_path / "run")["loss/train"]] == [1]
    dlc.train(spec, tmp_path / "run", backend="reference", progress=False, resume=True)
    events, records = _events(tmp_path / "run"), _records(tmp_path / "run")
    assert [s for s, _ in events["loss/train"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in events["loss/val"]],
                               [r["val_loss"] for r in records], rtol=1e-6)


def test_without_the_package_the_flag_is_a_user_error_with_the_install_hint(tmp_path, monkeypatch,
                                                                            capsys):
    (tmp_path / "m.dls").write_text(SPEC)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)    # import fails
    assert main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet",
                 "--backend", "reference", "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "tensorboard package" in err and "dlc[tensorboard]" in err
    assert not (tmp_path / "run").exists()      # refused before the run directory is made


def test_tags_group_splits_and_loss_terms():
    got = scalars({"fold": 2, "epoch": 4, "train_loss": 0.5, "val_acc": 0.75, "lr": 0.1,
                   "train_losses": {"seg": 0.4, "aux": 0.2}, "val_miou": None,
                   "seconds": 1.5, "test_acc": float("nan")})
    assert got == {"loss/train": 0.5, "acc/val": 0.75, "lr": 0.1, "losses/seg/train": 0.4,
                   "losses/aux/train": 0.2, "seconds": 1.5}
