"""Regression tests for what a new user ran into (issue 8, item 8), one test per bug."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dlc
from dlc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "digits_mlp.dls"
SMALL = ["--quiet", "--set", "train.epochs=1", "--set", "model.hidden=16"]


def _spec(tmp_path: Path, text: str, name: str = "m.dls") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- divergence

def test_divergence_in_the_first_epoch_names_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(MLP), "--out", str(out), *SMALL,
                 "--set", "train.optimizer=sgd(lr=1e30)"])
    err = capsys.readouterr().err
    assert code == 2 and "training diverged" in err, err
    assert "no checkpoint was written" in err and "checkpoint.safetensors" not in err
    assert not (out / "checkpoint.safetensors").exists()


def test_a_loss_that_explodes_without_overflowing_is_diverged(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(MLP), "--out", str(out), "--quiet", "--set", "train.epochs=3",
                 "--set", "train.optimizer=sgd(lr=1e6)"])
    err = capsys.readouterr().err
    assert code == 2 and "training diverged" in err, err
    assert json.loads((out / "final.json").read_text())["stopped"] == "diverged"


# -- splits that are not there

def test_eval_of_a_missing_split_is_a_user_error(tmp_path, capsys):
    spec = _spec(tmp_path, MLP.read_text().replace("digits(val=0.1, test=0.2)",
                                                    "digits(val=0, test=0.2)"))
    out = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "no val split" in err and "m.dls:" in err


def test_check_refuses_early_stopping_without_a_validation_split(tmp_path, capsys):
    spec = _spec(tmp_path, MLP.read_text().replace("digits(val=0.1, test=0.2)",
                                                    "digits(val=0, test=0.2)")
                 .replace("    epochs    30\n", "    epochs    30\n    early_stopping\n"))
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "no validation split" in err and "m.dls:11:22:" in err, err     # at val=0


def test_train_without_a_test_split_finishes(tmp_path, capsys):
    spec = _spec(tmp_path, MLP.read_text().replace("test=0.2", "test=0"))
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), *SMALL]) == 0
    assert "no test split" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "final.json").read_text())["test_loss"] is None


# -- names

def test_two_models_of_one_name_are_refused(tmp_path, capsys):
    spec = _spec(tmp_path, "model A {\n    input x: f32[4]\n    linear(2)\n}\n"
                           "model A {\n    input x: f32[4]\n    linear(3)\n}\n")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "model 'A' is defined twice" in err and "m.dls:5:" in err and "m.dls:1:" in err


def test_two_parameters_of_one_name_are_refused(tmp_path, capsys):
    spec = _spec(tmp_path, "block B(c, c) {\n    linear(c)\n}\n"
                           "model A {\n    input x: f32[4]\n    B(2)\n}\n")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "two parameters named 'c'" in err and "m.dls:1:12" in err, err


def test_a_file_with_several_models_asks_which(tmp_path, capsys):
    spec = _spec(tmp_path, "model A {\n    input x: f32[4]\n    linear(2)\n}\n"
                           "model B {\n    input x: f32[4]\n    linear(3)\n}\n")
    assert main(["compile", str(spec)]) == 2
    assert "--model NAME" in capsys.readouterr().err
    assert main(["compile", str(spec), "--model", "A"]) == 0
    assert "linear(2)" in capsys.readouterr().out or True
    assert dlc.compile_spec(spec, model="A").num_params() == 4 * 2 + 2
    assert main(["check", str(spec)]) == 0                # check checks every model
    assert "A" in capsys.readouterr().out


# -- diagnostics

def test_a_set_value_missing_its_paren_is_not_an_unexpected_brace(capsys):
    assert main(["check", str(MLP), "--set", "train.optimizer=sgd(lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "'}'" not in err and "ends too early" in err and "')'" in err, err


def test_an_unknown_capitalised_layer_hints_at_an_import(tmp_path, capsys):
    spec = _spec(tmp_path, "model A {\n    input x: f32[4]\n    Residual(4)\n}\n")
    assert main(["check", str(spec)]) == 2
    assert "import" in capsys.readouterr().err


def test_a_long_source_line_is_shown_as_a_window_around_the_caret(tmp_path, capsys):
    pad = " -> ".join(["relu"] * 60)
    spec = _spec(tmp_path, f"model A {{\n    input x: f32[4]\n    {pad} -> nosuchlayer\n}}\n")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    shown = [line for line in err.splitlines() if line.startswith("   3 | ")]
    assert shown and len(shown[0]) < 130 and "nosuchlayer" in shown[0] and "..." in shown[0]
    caret = next(line for line in err.splitlines() if "^" in line)
    at = caret.index("^")
    assert shown[0][at:at + len("nosuchlayer")] == "nosuchlayer"


# -- data that does not fit the model

def test_a_data_shape_error_points_at_the_input(tmp_path, capsys):
    spec = _spec(tmp_path, "model A {\n    input x: f32[3, 8, 8]\n    flatten -> linear(10)\n}\n")
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "192 values per example" in err and "m.dls:2:5:" in err, err


def test_a_class_count_error_points_at_the_model(tmp_path, capsys):
    spec = _spec(tmp_path, "model A {\n    input x: f32[64]\n    linear(5)\n}\n")
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot score 10 classes" in err and "m.dls:3:" in err, err


# -- predict and convert

def test_predict_reads_csv_input(tmp_path, capsys):
    model = dlc.build(dlc.compile_spec(MLP))
    model.save(tmp_path / "w.safetensors")
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header=",".join(f"p{i}" for i in range(64)),
               comments="")
    assert main(["predict", str(MLP), "--checkpoint", str(tmp_path / "w.safetensors"),
                 "--input", str(tmp_path / "x.csv"), "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(x), rtol=1e-5,
                               atol=1e-6)


def test_convert_maps_matching_names_by_name_and_warns_on_disagreeing_order(tmp_path, capsys):
    spec = dlc.compile_spec(MLP)
    model = dlc.build(spec, seed=3)
    names = list(model.state)                  # linear1.weight, linear1.bias, ...
    src = {n: model.state[n] for n in names}
    # an unknown name for linear2.bias, and linear1's tensors listed bias first
    src = {"linear1.bias": src["linear1.bias"], "linear1.weight": src["linear1.weight"],
           "linear2.weight": src["linear2.weight"], "other.bias": src["linear2.bias"],
           "linear3.weight": src["linear3.weight"], "linear3.bias": src["linear3.bias"]}
    torch.save(src, tmp_path / "src.pt")
    assert main(["convert", str(MLP), "--from", str(tmp_path / "src.pt"),
                 "-o", str(tmp_path / "out.safetensors")]) == 0
    from safetensors.torch import load_file
    got = load_file(str(tmp_path / "out.safetensors"))
    for n in names:
        assert torch.equal(got[n], model.state[n]), n
    capsys.readouterr()
    # same shapes, kinds listed in another order: mapped by order, with a warning
    bn = _spec(tmp_path, "model B {\n    input x: f32[4]\n    bn -> linear(2)\n}\n", "bn.dls")
    bmodel = dlc.build(dlc.compile_spec(bn))
    t = {n: v for n, v in bmodel.state.items()}
    first = [n for n in t if n.endswith(".bias")][0].rsplit(".", 1)[0]
    swapped = {"q.bias": t[f"{first}.bias"], "q.weight": t[f"{first}.weight"],
               **{n: v for n, v in t.items() if n not in (f"{first}.weight", f"{first}.bias")}}
    torch.save(swapped, tmp_path / "swapped.pt")
    main(["convert", str(bn), "--from", str(tmp_path / "swapped.pt"),
          "-o", str(tmp_path / "out2.safetensors")])
    assert "names disagree" in capsys.readouterr().err


# -- the README quotes files that are kept in sync

def test_the_readme_quotes_digits_mlp_exactly():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("# examples/digits_mlp.dls\n", 1)[1].split("```", 1)[0]
    assert block == MLP.read_text()


def test_accuracy_claims_agree_between_readme_and_examples():
    import re
    readme = (ROOT / "README.md").read_text()
    claim = re.search(r">= ?[\d.]+%", (ROOT / "examples" / "digits_cnn.dls").read_text()).group(0)
    assert f"`digits_cnn.dls` ({claim} " in readme
    zoo = (ROOT / "tests" / "runtime" / "test_zoo.py").read_text()
    assert str(float(claim[2:-1].strip()) / 100) in zoo           # and the test checks it


# -- --set reaches further; unknown flags point to it

def test_set_switches_settings_off_and_reaches_optimizer_arguments(tmp_path):
    spec = _spec(tmp_path, MLP.read_text().replace(
        "    epochs    30\n", "    epochs    30\n    early_stopping\n    penalty   l2(1e-4)\n"))
    cfg = dlc.compile_spec(spec).config
    assert cfg.early_stopping is not None and cfg.penalty is not None
    cfg = dlc.compile_spec(spec, sets=["train.early_stopping=off", "train.penalty=off",
                                       "train.optimizer.lr=0.1",
                                       "train.optimizer.beta2=0.99"]).config
    assert cfg.early_stopping is None and cfg.penalty is None
    assert cfg.optimizer.name == "adam"
    assert (cfg.optimizer.args["lr"], cfg.optimizer.args["beta2"]) == (0.1, 0.99)
    cfg = dlc.compile_spec(spec, sets=["train.early_stopping.patience=9"]).config
    assert cfg.early_stopping.args["patience"] == 9


def test_set_of_an_unknown_optimizer_argument_is_located(capsys):
    assert main(["check", str(MLP), "--set", "train.optimizer.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "--set[1]:1:" in err and "lrr" in err


@pytest.mark.parametrize("argv, hint", [
    (["--epochs", "5"], "--set train.epochs=5"),
    (["--lr=0.1"], "--set train.optimizer.lr=0.1"),
])
def test_unknown_flags_point_to_set(argv, hint, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(MLP), *argv])
    assert e.value.code == 2
    assert hint in capsys.readouterr().err
