"""Data the way Ludwig users expect it (categories, text labels, standardisation, finite
values, several inputs), test metrics in final.json, and `dlc predict`'s files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn import metrics as skm

import dlc
from dlc.cli import main
from dlc.runtime import metrics

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "digits_mlp.dls"

CSV_SPEC = ("model M {{\n    input x: f32[{width}]\n    linear(8) -> relu\n    linear({out})\n}}\n"
            "train {{\n    data      {data}\n    loss      {loss}\n"
            "    optimizer adam(lr=1e-2)\n    batch     16\n    epochs    2\n}}\n")


def _csv(tmp_path: Path, rows: list, header=("a", "color", "b", "label")) -> Path:
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(n=120, seed=0):
    rng = np.random.default_rng(seed)
    colors = ["red", "green", "blue"]
    out = []
    for _ in range(n):
        a, b, c = rng.normal(5, 2), rng.normal(-3, 4), colors[rng.integers(3)]
        out.append([f"{a:.4f}", c, f"{b:.4f}", "dog" if a + (c == "red") > 5 else "cat"])
    return out


def _train(tmp_path, data, width, out=2, loss="cross_entropy", capsys=None):
    spec = tmp_path / "m.dls"
    spec.write_text(CSV_SPEC.format(width=width, out=out, data=data, loss=loss))
    run = tmp_path / "run"
    code = main(["train", str(spec), "--out", str(run), "--quiet"])
    return code, run


# -- CSV encodings

def test_csv_categories_text_labels_and_standardisation(tmp_path):
    rows = _rows()
    _csv(tmp_path, rows)
    code, run = _train(tmp_path, 'csv(path="d.csv", label="label", categories="color", '
                                 'standardize=true, val=0.2, test=0.2)', width=5)
    assert code == 0
    data = yaml.safe_load((run / "run.yaml").read_text())["data"]
    assert data["vocabulary"] == {"color": ["blue", "green", "red"]}
    assert data["class_names"] == ["cat", "dog"]
    # the statistics are the training split's: the seeded permutation's last 60% of rows
    perm = np.random.default_rng(0).permutation(len(rows))
    train_rows = [rows[i] for i in perm[24 + 24:]]
    onehot = {"blue": [1, 0, 0], "green": [0, 1, 0], "red": [0, 0, 1]}
    raw = np.array([[float(r[0]), *onehot[r[1]], float(r[2])] for r in train_rows])
    np.testing.assert_allclose(data["standardize"]["mean"], raw.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(data["standardize"]["std"], raw.std(axis=0), rtol=1e-6)
    final = json.loads((run / "final.json").read_text())
    assert len(final["test_classes"]["confusion"]) == 2
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_in_a_csv_is_located(tmp_path, capsys):
    rows = _rows(20)
    rows[2][2] = "nan"
    _csv(tmp_path, rows)
    code, _ = _train(tmp_path, 'csv(path="d.csv", label="label", categories="color")', 5)
    err = capsys.readouterr().err
    assert code == 2 and "d.csv:4: column 'b' is 'nan'" in err, err


def test_a_text_value_in_a_numeric_column_names_the_column(tmp_path, capsys):
    _csv(tmp_path, _rows(20))
    code, _ = _train(tmp_path, 'csv(path="d.csv", label="label")', 5)
    err = capsys.readouterr().err
    assert code == 2 and "d.csv:2: column 'color' holds" in err and "categories" in err, err


def test_nan_in_an_npz_is_located(tmp_path, capsys):
    x = np.ones((30, 4), np.float32)
    x[7, 2] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 2)
    code, _ = _train(tmp_path, 'npz(path="d.npz")', 4)
    err = capsys.readouterr().err
    assert code == 2 and "example 7" in err and "value 2" in err and "inf" in err, err


# -- metrics against scikit-learn

def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + np.eye(4)[y] * 1.5
    got = metrics.classification(logits, y, 4)
    pred = logits.argmax(axis=1)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    np.testing.assert_allclose(got["per_class"]["precision"], p)
    np.testing.assert_allclose(got["per_class"]["recall"], r)
    np.testing.assert_allclose(got["per_class"]["f1"], f)
    assert got["per_class"]["support"] == s.tolist()
    assert got["confusion"] == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
    assert got["macro"]["f1"] == pytest.approx(f.mean())


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(50, 2))
    pred = y + rng.normal(scale=0.3, size=(50, 2))
    got = metrics.regression(pred, y)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred, multioutput="variance_weighted"))


def test_a_regression_run_reports_mae_rmse_r2(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=x @ np.array([1.0, -2.0, 0.5]))
    code, run = _train(tmp_path, 'npz(path="d.npz", classes=false)', 3, out=1, loss="mse")
    assert code == 0
    final = json.loads((run / "final.json").read_text())
    assert {"test_mae", "test_rmse", "test_r2"} <= set(final)
    # mse averages over every target value, as RMSE does: RMSE is the root of the test loss
    assert final["test_rmse"] == pytest.approx(np.sqrt(final["test_loss"]), rel=1e-4)
    assert final["test_mae"] <= final["test_rmse"]


# -- several inputs

TWO = ("model Two {\n    input a: f32[3]\n    input b: f32[2]\n"
       "    ha = a -> linear(8) -> relu\n    hb = b -> linear(8) -> relu\n"
       "    concat(ha, hb) -> linear(2)\n}\n"
       "train {\n    data      npz(path=\"d.npz\", x=\"a=left, b=right\")\n"
       "    optimizer adam(lr=1e-2)\n    batch     16\n    epochs    3\n}\n")


def test_a_model_with_two_inputs_trains_evaluates_and_predicts(tmp_path, capsys):
    rng = np.random.default_rng(0)
    left = rng.normal(size=(100, 3)).astype(np.float32)
    right = rng.normal(size=(100, 2)).astype(np.float32)
    y = ((left[:, 0] + right[:, 1]) > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", left=left, right=right, y=y)
    (tmp_path / "two.dls").write_text(TWO)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "two.dls"), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["acc"] == pytest.approx(json.loads((run / "final.json").read_text())["test_acc"])
    np.savez(tmp_path / "in.npz", a=left[:5], b=right[:5])
    assert main(["predict", str(run), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npy")]) == 0
    from safetensors.torch import load_file
    w = {k: v.numpy() for k, v in load_file(str(run / "checkpoint.safetensors")).items()}
    relu = lambda v: np.maximum(v, 0)
    dense = lambda v, n: v @ w[f"{n}.weight"].T + w[f"{n}.bias"]
    # an independent NumPy forward: linear1 reads a, linear2 reads b, linear3 the concat
    assert w["linear1.weight"].shape == (8, 3) and w["linear2.weight"].shape == (8, 2)
    want = dense(np.concatenate([relu(dense(left[:5], "linear1")),
                                 relu(dense(right[:5], "linear2"))], axis=1), "linear3")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-5, atol=1e-6)


# -- predict's files

def test_predict_kinds_and_formats(tmp_path, capsys):
    model = dlc.build(dlc.compile_spec(MLP), seed=2)
    model.save(tmp_path / "w.safetensors")
    x = np.random.default_rng(0).random((6, 64), dtype=np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    logits = model.predict(x).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    base = ["predict", str(MLP), "--checkpoint", str(tmp_path / "w.safetensors"),
            "--input", str(tmp_path / "x.npz")]
    assert main([*base, "--output", str(tmp_path / "p.npy"), "--output-kind", "probs"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), probs, rtol=1e-5)
    assert main([*base, "--output", str(tmp_path / "l.csv"), "--output-kind", "labels"]) == 0
    with open(tmp_path / "l.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["out"] and [int(r[0]) for r in table[1:]] == logits.argmax(1).tolist()


def test_predict_writes_every_output(tmp_path, capsys):
    spec = dlc.compile_spec(ROOT / "tests" / "golden" / "specs" / "dag_outputs.dls")
    model = dlc.build(spec)
    model.save(tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 3, 32, 32), np.float32))
    assert main(["predict", str(spec.path), "--checkpoint", str(tmp_path / "w.safetensors"),
                 "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    want = model.predict_outputs(np.load(tmp_path / "x.npy"))
    assert list(want) == ["score", "pooled"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want["score"], rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "y.pooled.npy"), want["pooled"], rtol=1e-6)


# -- an image folder

def test_an_image_folder_is_a_classification_source(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    want = {}
    for name, level in (("dark", 40), ("light", 210)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            px = np.clip(rng.normal(level, 10, size=(6, 6, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(tmp_path / "imgs" / name / f"{i}.png")
            want[(name, i)] = px
    spec = tmp_path / "m.dls"
    spec.write_text("model M {\n    input x: f32[3, 6, 6]\n    flatten -> linear(2)\n}\n"
                    "train {\n    data      images(root=\"imgs\", val=0, test=0.25)\n"
                    "    optimizer adam(lr=1e-2)\n    batch     8\n    epochs    3\n}\n")
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert run["data"]["class_names"] == ["dark", "light"] and run["data"]["train"] == 18
    from dlc.runtime.data import load
    data = load(dlc.compile_spec(spec).config.data, 0, tmp_path)
    # every decoded example is one of the files, as (C, H, W) in [0, 1]
    files = {px.transpose(2, 0, 1).tobytes(): name for (name, _), px in want.items()}
    for x, y in zip(data.train.x, data.train.y):
        assert files[np.round(x * 255).astype(np.uint8).tobytes()] == ["dark", "light"][y]


def test_predict_encodes_a_csv_as_the_training_csv_was(tmp_path, capsys):
    """A CSV given to `dlc predict RUN` is one-hot encoded with the run's vocabulary and
    standardised with its statistics: with a header its columns match by name in any order
    (the label column may be left out), without one by position; the outputs equal those
    of the same features encoded by hand and given as .npy."""
    rows = _rows()
    _csv(tmp_path, rows)
    code, run = _train(tmp_path, 'csv(path="d.csv", label="label", categories="color", '
                                 'standardize=true, val=0.2, test=0.2)', width=5)
    assert code == 0
    new = _rows(n=7, seed=5)
    onehot = {"blue": [1, 0, 0], "green": [0, 1, 0], "red": [0, 0, 1]}
    np.save(tmp_path / "x.npy", np.array([[float(r[0]), *onehot[r[1]], float(r[2])]
                                          for r in new], np.float32))
    _csv(tmp_path, [[r[2], r[0], r[1]] for r in new], header=("b", "a", "color"))
    by_name = tmp_path / "d.csv"
    plain = tmp_path / "plain.csv"
    with open(plain, "w", newline="") as f:
        csv.writer(f).writerows(new)                 # no header, label column in place
    for given in ("x.npy", by_name.name, plain.name):
        assert main(["predict", str(run), "--input", str(tmp_path / given),
                     "--output", str(tmp_path / f"{given}.out.npy")]) == 0, capsys.readouterr().err
    want = np.load(tmp_path / "x.npy.out.npy")
    np.testing.assert_allclose(np.load(tmp_path / "d.csv.out.npy"), want, rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "plain.csv.out.npy"), want, rtol=1e-6)
    capsys.readouterr()
    _csv(tmp_path, [["1.0", "purple", "2.0"]], header=("a", "color", "b"))
    assert main(["predict", str(run), "--input", str(by_name), "--output",
                 str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "d.csv:2: column 'color' holds 'purple'" in err and "'blue'" in err, err
    _csv(tmp_path, [["1.0", "2.0"]], header=("a", "b"))
    assert main(["predict", str(run), "--input", str(by_name), "--output",
                 str(tmp_path / "o.npy")]) == 2
    assert "no column 'color'" in capsys.readouterr().err


def test_mixup_mixes_every_input_of_a_two_input_model_alike(tmp_path, monkeypatch, fed_inputs):
    """The augment chain transforms the first input; with mixup the second input is mixed
    with the same λ and partners: λ·b + (1 − λ)·b[perm]."""
    from dlc.runtime import augment
    rng = np.random.default_rng(0)
    left, right = (rng.normal(size=(64, k)).astype(np.float32) for k in (3, 2))
    np.savez(tmp_path / "d.npz", left=left, right=right, y=(left[:, 0] > 0).astype(np.int64))
    (tmp_path / "two.dls").write_text(TWO.replace("epochs    3", "epochs    1\n"
                                                  "    augment   mixup(0.4)"))
    batches, real_aug = [], augment.Augmenter.__call__

    def remember_batch(self, x, masks=None, boxes=None):
        batches.append(real_aug(self, x, masks, boxes))
        return batches[-1]

    monkeypatch.setattr(augment.Augmenter, "__call__", remember_batch)
    dlc.train(dlc.compile_spec(tmp_path / "two.dls"), tmp_path / "run", backend="reference",
              progress=False)
    assert len(fed_inputs) == len(batches) >= 3
    for rec, aug in zip(fed_inputs, batches):
        b, fed = rec["step"].xs["b"].index_select(0, rec["idx"]), rec["inputs"]
        assert 0 < aug.lam < 1 and not torch.equal(aug.perm, torch.arange(len(aug.perm)))
        torch.testing.assert_close(fed["b"], aug.lam * b + (1 - aug.lam) * b[aug.perm])
        torch.testing.assert_close(fed["a"], aug.x)
