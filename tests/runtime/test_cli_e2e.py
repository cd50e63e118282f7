"""End to end: `dlc train/eval/predict` on the digits MLP and the run directory contract."""
from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import dlc
from dlc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "digits_mlp.dls"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full training run of the digits MLP example, as the README runs it."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", str(MLP), "--out", str(out), "--quiet"]) == 0
    return out


def test_digits_mlp_reaches_97_percent(trained):
    final = json.loads((trained / "final.json").read_text())
    assert final["test_acc"] >= 0.97, final
    assert final["stopped"] == "completed" and final["epochs_run"] == 30
    assert final["params"] == 85_002


def test_run_directory_contract(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"metrics.jsonl", "final.json", "checkpoint.safetensors", "run.yaml",
            "curves.svg"} <= names
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 31))
    for r in records:
        assert {"epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"} <= set(r)
        assert r["lr"] >= 0 and r["seconds"] >= 0 and 0 <= r["val_acc"] <= 1
    assert records[0]["lr"] > 0 and records[-1]["lr"] == 0.0   # cosine ends at min_lr 0
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    final = json.loads((trained / "final.json").read_text())
    assert {"test_loss", "test_acc", "epochs_run", "stopped"} <= set(final)
    run = yaml.safe_load((trained / "run.yaml").read_text())
    assert run["spec_sha256"] == hashlib.sha256(MLP.read_bytes()).hexdigest()
    assert run["train"]["optimizer"]["name"] == "adam"
    assert run["versions"]["torch"] == str(torch.__version__)
    ET.parse(trained / "curves.svg")                          # a well-formed SVG


def test_checkpoint_uses_pytorch_layouts_and_param_names(trained, capsys):
    tensors = load_file(str(trained / "checkpoint.safetensors"))
    assert main(["compile", str(MLP), "--emit", "params"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]
              if line and not line.startswith("total")]
    assert listed == list(tensors)[:0] + listed and sorted(listed) == sorted(tensors)
    assert listed == ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                      "linear3.weight", "linear3.bias"]
    assert tuple(tensors["linear1.weight"].shape) == (256, 64)      # [out, in]
    assert tuple(tensors["linear3.weight"].shape) == (10, 256)


def _torch_mlp(tensors, x):
    h = torch.relu(torch.nn.functional.linear(x, tensors["linear1.weight"], tensors["linear1.bias"]))
    h = torch.relu(torch.nn.functional.linear(h, tensors["linear2.weight"], tensors["linear2.bias"]))
    return torch.nn.functional.linear(h, tensors["linear3.weight"], tensors["linear3.bias"])


def test_predict_matches_an_independent_torch_forward(trained, tmp_path, capsys):
    from sklearn.datasets import load_digits
    x = (load_digits().data[:50] / 16.0).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = main(["predict", str(MLP), "--checkpoint", str(trained / "checkpoint.safetensors"),
                 "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")])
    assert code == 0, capsys.readouterr().err
    y = np.load(tmp_path / "y.npy")
    expect = _torch_mlp(load_file(str(trained / "checkpoint.safetensors")), torch.from_numpy(x))
    np.testing.assert_allclose(y, expect.numpy(), rtol=1e-5, atol=1e-5)


def test_eval_reproduces_the_final_test_accuracy(trained, capsys):
    assert main(["eval", str(MLP), "--checkpoint", str(trained / "checkpoint.safetensors")]) == 0
    result = json.loads(capsys.readouterr().out)
    final = json.loads((trained / "final.json").read_text())
    assert result["acc"] == pytest.approx(final["test_acc"])
    assert result["loss"] == pytest.approx(final["test_loss"], rel=1e-5)


def test_predict_rejects_wrong_shapes(trained, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((3, 10), np.float32))
    code = main(["predict", str(MLP), "--checkpoint", str(trained / "checkpoint.safetensors"),
                 "--input", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "y.npy")])
    err = capsys.readouterr().err
    assert code == 2 and "64 values per example" in err and "Traceback" not in err


def test_checkpoint_for_another_model_is_refused(trained, tmp_path, capsys):
    other = tmp_path / "other.dls"
    other.write_text(MLP.read_text().replace("hidden=256", "hidden=128"))
    code = main(["eval", str(other), "--checkpoint", str(trained / "checkpoint.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "linear1.weight has shape [256, 64]" in err


def test_same_seed_same_run(tmp_path):
    spec = dlc.compile_spec(MLP, sets=["train.epochs=2"])
    a = dlc.train(spec, tmp_path / "a", progress=False)
    b = dlc.train(spec, tmp_path / "b", progress=False)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"}
                       for l in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")
    assert a["test_acc"] == b["test_acc"]
    c = dlc.train(spec, tmp_path / "c", seed=1, progress=False)
    assert strip(tmp_path / "c") != strip(tmp_path / "a")
    assert c["test_acc"] is not None


def test_init_from_continues_from_the_checkpoint(trained, tmp_path):
    spec = dlc.compile_spec(MLP, sets=["train.epochs=1"])
    dlc.train(spec, tmp_path / "warm", init_from=trained / "checkpoint.safetensors",
              progress=False)
    dlc.train(spec, tmp_path / "cold", progress=False)
    first = lambda p: json.loads((p / "metrics.jsonl").read_text().splitlines()[0])
    assert first(tmp_path / "warm")["train_loss"] < 0.5 * first(tmp_path / "cold")["train_loss"]


def test_set_overrides_model_and_train(tmp_path, capsys):
    code = main(["train", str(MLP), "--out", str(tmp_path), "--quiet",
                 "--set", "train.epochs=2", "--set", "model.hidden=32",
                 "--set", "train.optimizer=sgd(lr=0.1, momentum=0.9, nesterov=true)",
                 "--set", "train.batch=full"])
    assert code == 0, capsys.readouterr().err
    run = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert run["params"] == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert run["train"]["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                         "dampening": 0.0, "nesterov": True, "weight_decay": 0.0}
    assert run["train"]["batch"] == "full"
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_early_stopping_stops_and_keeps_the_best_weights(tmp_path):
    spec = dlc.compile_spec(MLP, sets=["train.epochs=20",
                                       "train.early_stopping=(patience=2, min_delta=100.0)"])
    final = dlc.train(spec, tmp_path, progress=False)
    assert final["stopped"] == "early_stopping"
    assert final["epochs_run"] == 3 and final["best_epoch"] == 1
    model = dlc.build(spec, checkpoint=tmp_path / "checkpoint.safetensors")
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    data_val = model.evaluate("val")
    assert data_val["loss"] == pytest.approx(first["val_loss"], rel=1e-5)


def test_interrupted_run_keeps_what_was_saved(tmp_path, monkeypatch, capsys):
    from dlc.runtime import model as model_mod
    real = model_mod.Model.evaluate_arrays
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                       # during epoch 3's validation
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(model_mod.Model, "evaluate_arrays", flaky)
    code = main(["train", str(MLP), "--out", str(tmp_path), "--quiet", "--set", "train.epochs=5"])
    assert code == 130
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["stopped"] == "interrupted" and final["epochs_run"] == 2
    assert load_file(str(tmp_path / "checkpoint.safetensors"))["linear1.weight"].shape == (256, 64)


def test_csv_data_source(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = ["a,b,c,d,label"] + [",".join(f"{v:.5f}" for v in row) + f",{c}"
                                 for row, c in zip(x, y)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.dls").write_text(
        "model Tiny {\n    input x: f32[4]\n    linear(16) -> tanh -> linear(2)\n}\n"
        'train {\n    data csv(path="data.csv", label="label")\n    optimizer adam(lr=0.05)\n'
        "    epochs 15\n    batch 32\n}\n")
    code = main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "final.json").read_text())["test_acc"] >= 0.9


def test_csv_errors_are_user_errors(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    (tmp_path / "m.dls").write_text(
        "model Tiny {\n    input x: f32[2]\n    linear(2)\n}\n"
        'train {\n    data csv(path="data.csv", label="label")\n}\n')
    code = main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "data.csv:3: column 'b' holds 'x', which is not a number" in err
    (tmp_path / "m.dls").write_text(
        "model Tiny {\n    input x: f32[2]\n    linear(2)\n}\n"
        'train {\n    data csv(path="missing.csv")\n}\n')
    code = main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "data file not found" in err and "m.dls:6:" in err


def test_stochastic_gradient_descent_batch_one(tmp_path):
    spec = dlc.compile_spec(MLP, sets=["train.epochs=1", "train.batch=1",
                                       "train.optimizer=sgd(lr=0.05)", "train.schedule=constant",
                                       "model.hidden=16"])
    final = dlc.train(spec, tmp_path, progress=False)
    assert final["test_acc"] > 0.5


BN_MLP = "model M {\n input x: f32[64]\n linear(16) -> bn -> relu -> linear(10)\n}\n"


def test_a_last_batch_of_one_joins_the_previous_batch(tmp_path):
    (tmp_path / "m.dls").write_text(BN_MLP + "train {\n batch 1257\n epochs 1\n}\n")
    spec = dlc.compile_spec(tmp_path / "m.dls")        # digits: 1,258 training examples
    final = dlc.train(spec, tmp_path / "run", progress=False)
    assert final["epochs_run"] == 1


def test_batch_of_one_with_batch_norm_is_a_located_error(tmp_path, capsys):
    (tmp_path / "m.dls").write_text(BN_MLP + "train {\n batch 1\n}\n")
    code = main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'm.dls'}:6:2: error: batch norm in training" in err


def test_npz_data_source_with_regression_targets(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)) + 0.3
    np.savez(tmp_path / "d.npz", inputs=x, targets=y)
    (tmp_path / "m.dls").write_text(
        "model Reg {\n    input x: f32[3]\n    linear(1)\n}\n"
        'train {\n    data npz(path="d.npz", x="inputs", y="targets", classes=false)\n'
        "    loss mse\n    optimizer sgd(lr=0.1)\n    epochs 20\n}\n")
    code = main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["test_acc"] is None and final["test_loss"] < 1e-3
    w = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    np.testing.assert_allclose(w["linear1.weight"].numpy(), [[1.0, -2.0, 0.5]], atol=1e-2)
    np.testing.assert_allclose(w["linear1.bias"].numpy(), [0.3], atol=1e-2)


def test_data_that_does_not_fit_the_input_names_the_default(tmp_path, capsys):
    (tmp_path / "m.dls").write_text("model M {\n input x: f32[3, 32, 32]\n conv(4, 3) -> "
                                    "global_avgpool -> flatten -> linear(10)\n}\n")
    code = main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "3072 values per example" in err and "no data, so digits" in err


def test_a_new_run_never_mixes_with_the_previous_one(tmp_path, monkeypatch):
    """Killed in its first epoch, a new run written over an old one (--overwrite) leaves no
    file of the previous run beside its own run.yaml (issue 12): the folder holds one run's
    files, the new one's."""
    from dlc.runtime import loop
    stale = {"final.json": '{"stopped": "completed", "epochs_run": 99}',
             "checkpoint.safetensors": "old weights", "curves.svg": "<svg/>", "curves.png": "png",
             "metrics.jsonl": '{"epoch": 1}\n', "run.yaml": "spec: old.dls\n"}
    for name, text in stale.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "notes.txt").write_text("mine")            # not a run file: kept

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epoch", killed)
    code = main(["train", str(MLP), "--out", str(tmp_path), "--quiet", "--overwrite",
                 "--set", "train.epochs=2"])
    assert code == 130
    assert not (tmp_path / "checkpoint.safetensors").exists()
    assert not (tmp_path / "curves.svg").exists() and not (tmp_path / "curves.png").exists()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert yaml.safe_load((tmp_path / "run.yaml").read_text())["spec"] == str(MLP)
    assert json.loads((tmp_path / "final.json").read_text())["epochs_run"] == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
