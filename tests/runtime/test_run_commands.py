"""`dlc eval RUN_DIR` and `dlc predict RUN_DIR`: the run's spec, `--set`s and checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dlc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "digits_mlp.dls"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained with a `--set model.*` that eval and predict must not be told again."""
    out = tmp_path_factory.mktemp("r") / "run"
    assert main(["train", str(MLP), "--out", str(out), "--quiet", "--set", "model.hidden=24",
                 "--set", "train.epochs=2"]) == 0
    return out


def test_eval_from_a_run_directory(run, capsys):
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    shown = json.loads(capsys.readouterr().out)
    final = json.loads((run / "final.json").read_text())
    assert shown["split"] == "test"
    assert shown["acc"] == pytest.approx(final["test_acc"], abs=1e-9)
    assert shown["loss"] == pytest.approx(final["test_loss"], rel=1e-6)


def test_predict_from_a_run_directory_matches_a_torch_forward(run, tmp_path, capsys):
    x = np.random.default_rng(1).random((7, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(run), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    w = load_file(str(run / "checkpoint.safetensors"))
    h = torch.from_numpy(x)
    for i in (1, 2):
        h = torch.relu(h @ w[f"linear{i}.weight"].T + w[f"linear{i}.bias"])
    want = h @ w["linear3.weight"].T + w["linear3.bias"]
    assert w["linear1.weight"].shape == (24, 64)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_spec_without_a_checkpoint_asks_for_one(capsys):
    assert main(["eval", str(MLP)]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err


def test_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
