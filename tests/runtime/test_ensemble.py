"""k-fold, bagging and boosting (runtime/ensemble.py) on small data with known outcomes.

The index sets are checked for their defining properties, SAMME against a literal
transcription of its equations, and the ensembles' predictions against probabilities
computed here in NumPy from the members' saved weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import dlc
from dlc.cli import main
from dlc.runtime.data import load
from dlc.runtime.ensemble import (Ensemble, bootstrap_indices, kfold_indices, samme_step,
                                  weighted_indices)
from dlc.runtime.model import Model

# a linear model on digits: every member's output is x @ W.T + b, checkable in NumPy
LINEAR = ("model Linear {{\n    input x: f32[64]\n    linear(10)\n}}\n"
          "train {{\n    data      digits(val={val}, test=0.2)\n    optimizer sgd(lr={lr})\n"
          "    batch     {batch}\n    epochs    {epochs}\n    {ensemble}\n}}\n")


def _spec(tmp_path, ensemble, val=0.1, lr=0.1, batch=256, epochs=2):
    path = tmp_path / "m.dls"
    path.write_text(LINEAR.format(ensemble=ensemble, val=val, lr=lr, batch=batch, epochs=epochs))
    return dlc.compile_spec(path)


def _member_probs(run, members, x):
    """Each member's softmax probabilities, from its checkpoint's weights, in float64."""
    out = []
    for m in members:
        w = load_file(str(run / m["dir"] / "checkpoint.safetensors"))
        (wk,), (bk,) = [k for k in w if k.endswith("weight")], [k for k in w if k.endswith("bias")]
        z = x.astype(np.float64) @ w[wk].T.astype(np.float64) + w[bk]          # (n, 10)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out.append(e / e.sum(axis=1, keepdims=True))
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- index sets

def test_kfold_folds_are_disjoint_stratified_and_cover_the_data():
    y = np.array([0] * 23 + [1] * 11 + [2] * 6 + [3] * 1)
    np.random.default_rng(5).shuffle(y)
    folds = kfold_indices(y, 4, seed=7)
    joined = np.concatenate(folds)
    assert len(joined) == len(y) and set(joined.tolist()) == set(range(len(y)))   # disjoint, cover
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in range(4):
        share = len(np.flatnonzero(y == c)) / 4
        for f in folds:
            assert math.floor(share) <= np.sum(y[f] == c) <= math.ceil(share)   # stratified
    again = kfold_indices(y, 4, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))            # seeded
    other = kfold_indices(y, 4, seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(folds, other))


def test_kfold_without_classes_cuts_a_permutation():
    y = np.zeros((10, 2), dtype=np.float32)                 # regression targets: no strata
    folds = kfold_indices(y, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    assert sorted(len(f) for f in folds) == [3, 3, 4]


def test_bootstrap_draws_with_replacement_and_is_seeded():
    n = 4000
    idx = bootstrap_indices(n, n, seed=3, member=1)
    assert idx.min() >= 0 and idx.max() < n and len(idx) == n
    unique = len(np.unique(idx)) / n                          # 1 - (1 - 1/n)^n ≈ 1 - 1/e
    assert abs(unique - (1 - (1 - 1 / n) ** n)) < 0.02
    assert np.array_equal(idx, bootstrap_indices(n, n, seed=3, member=1))
    assert not np.array_equal(idx, bootstrap_indices(n, n, seed=3, member=2))
    assert not np.array_equal(idx, bootstrap_indices(n, n, seed=4, member=1))


def test_weighted_resample_follows_the_weights():
    w = np.zeros(3000)
    w[:1000], w[1000:1500] = 2.0, 1.0                        # 0 weight: never drawn
    idx = weighted_indices(w, seed=0, member=0)
    assert len(idx) == 3000 and idx.max() < 1500
    assert abs(np.mean(idx < 1000) - 0.8) < 0.03             # 2000 / 2500 of the mass


# -- SAMME

def _samme_literal(w, wrong, K):
    """Zhu et al. (2009), Algorithm 2 (SAMME), steps 2(b)-2(d), one example at a time."""
    err = sum(wi for wi, m in zip(w, wrong) if m) / sum(w)
    alpha = math.log((1 - err) / err) + math.log(K - 1)
    new = [wi * math.exp(alpha) if m else wi for wi, m in zip(w, wrong)]
    total = sum(new)
    return err, alpha, [v / total for v in new]


@pytest.mark.parametrize("K", [2, 3, 10])
def test_samme_step_matches_the_equations(K):
    rng = np.random.default_rng(K)
    w = rng.uniform(0.1, 1.0, 50)
    wrong = (rng.uniform(size=50) < 0.3).astype(np.float64)
    err, alpha, new = samme_step(w, wrong, K)
    err_l, alpha_l, new_l = _samme_literal(w.tolist(), wrong.tolist(), K)
    assert err == pytest.approx(err_l, rel=1e-12)
    assert alpha == pytest.approx(alpha_l, rel=1e-12)
    np.testing.assert_allclose(new, new_l, rtol=1e-12)


def test_samme_step_keeps_a_perfect_member_finite():
    err, alpha, new = samme_step(np.full(4, 0.25), np.zeros(4), 3)
    assert err == 0 and math.isfinite(alpha) and alpha > 20
    np.testing.assert_allclose(new, 0.25)


# -- whole ensembles

def test_kfold_run_reports_every_fold_and_averages_probabilities(tmp_path, capsys):
    spec = _spec(tmp_path, "kfold(3)")
    run = tmp_path / "run"
    final = dlc.train(spec, run, progress=False)
    assert [f["fold"] for f in final["folds"]] == [0, 1, 2]
    rows = _rows(run / "metrics.jsonl")
    assert [(r["fold"], r["epoch"]) for r in rows] == [(f, e) for f in range(3) for e in (1, 2)]
    held = []
    for f in range(3):
        fold_rows = _rows(run / "folds" / str(f) / "metrics.jsonl")
        assert all(r["fold"] == f for r in fold_rows)
        held.append(fold_rows[-1]["val_acc"])            # no early stopping: the last epoch
    assert [f["val_acc"] for f in final["folds"]] == held
    assert final["mean"]["val_acc"] == pytest.approx(np.mean(held), rel=1e-12)
    assert final["std"]["val_acc"] == pytest.approx(np.std(held), rel=1e-12)
    data = load(spec.config.data, spec.config.seed, spec.path.parent)
    pooled = len(data.train) + len(data.val)
    sizes = [yaml.safe_load((run / "folds" / str(f) / "run.yaml").read_text())["data"]
             for f in range(3)]
    assert all(s["train"] + s["val"] == pooled for s in sizes)          # the rest + the fold
    assert sum(s["val"] for s in sizes) == pooled                        # the folds cover it
    mean = np.mean(_member_probs(run, final["folds"], data.test.x), axis=0)
    ens = dlc.load_run(run)
    assert isinstance(ens, Ensemble) and len(ens.members) == 3
    np.testing.assert_allclose(ens.predict(data.test.x), mean, rtol=1e-5, atol=1e-6)
    acc = float(np.mean(mean.argmax(axis=1) == data.test.y))
    nll = float(-np.mean(np.log(mean[np.arange(len(mean)), data.test.y])))
    assert final["test_acc"] == pytest.approx(acc, abs=1e-12)
    assert final["test_loss"] == pytest.approx(nll, rel=1e-5)
    assert main(["eval", str(spec.path), "--checkpoint", str(run)]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["acc"] == pytest.approx(acc, abs=1e-12)
    assert (run / "curves.png").is_file() and (run / "curves.svg").is_file()


def test_bagging_votes_of_bootstrap_members(tmp_path):
    spec = _spec(tmp_path, "bagging(3, combine=vote, fraction=0.5)")
    run = tmp_path / "run"
    final = dlc.train(spec, run, progress=False)
    data = load(spec.config.data, spec.config.seed, spec.path.parent)
    for m in final["members"]:               # each member trained on its half-size resample
        doc = yaml.safe_load((run / m["dir"] / "run.yaml").read_text())
        assert doc["data"]["train"] == round(0.5 * len(data.train))
    assert {r["member"] for r in _rows(run / "metrics.jsonl")} == {0, 1, 2}
    probs = _member_probs(run, final["members"], data.test.x)
    votes = np.mean([np.eye(10)[p.argmax(axis=1)] for p in probs], axis=0)   # (n, 10)
    ens = dlc.load_run(run, spec)
    np.testing.assert_allclose(ens.predict(data.test.x), votes, atol=1e-12)
    assert final["test_acc"] == pytest.approx(np.mean(votes.argmax(axis=1) == data.test.y))
    assert final["test_loss"] is None                     # votes have no likelihood
    x = tmp_path / "x.npy"
    np.save(x, data.test.x[:7])
    assert main(["predict", str(spec.path), "--checkpoint", str(run), "--input", str(x),
                 "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), votes[:7], atol=1e-12)


def test_boosting_a_weak_model_beats_its_members(tmp_path):
    """Six linear models, each trained two full-batch steps on a weighted resample of
    digits, are weak (test accuracy ~20-45%); their SAMME vote is much better."""
    spec = _spec(tmp_path, "boosting(6)", val=0.0, lr=0.5, batch="full", epochs=2)
    run = tmp_path / "run"
    final = dlc.train(spec, run, progress=False)
    members = final["members"]
    assert len(members) >= 3
    assert final["test_acc"] > max(m["test_acc"] for m in members) + 0.03
    # the members' says, recomputed from their mistakes on the training split
    data = load(spec.config.data, spec.config.seed, spec.path.parent)
    w = [1 / len(data.train)] * len(data.train)
    doc = json.loads((run / "ensemble.json").read_text())
    for m, entry in zip(_member_probs(run, members, data.train.x), doc["members"]):
        wrong = (m.argmax(axis=1) != data.train.y).tolist()
        _, alpha, w = _samme_literal(w, wrong, 10)
        assert entry["weight"] == pytest.approx(alpha, rel=1e-6)
    probs = _member_probs(run, members, data.test.x)
    alphas = np.array([e["weight"] for e in doc["members"]])
    vote = sum(a * np.eye(10)[p.argmax(axis=1)] for a, p in zip(alphas, probs)) / alphas.sum()
    np.testing.assert_allclose(dlc.load_run(run).predict(data.test.x), vote, atol=1e-12)


def test_a_single_run_loads_as_a_model(tmp_path):
    spec = _spec(tmp_path, "seed 0", epochs=1)
    dlc.train(spec, tmp_path / "run", progress=False)
    assert type(dlc.load_run(tmp_path / "run")) is Model


@pytest.mark.parametrize("line, message", [
    ("kfold(1)", "kfold needs at least 2 folds"),
    ("bagging(0)", "bagging needs at least 1 member"),
    ("bagging(combine=votes)", "bagging combines by mean or vote"),
    ("kfold(3)\n    boosting(2)", "boosting cannot be combined with kfold"),
    ("bagging(fraction=0)", "fraction must be above 0"),
])
def test_bad_ensemble_settings_are_located(tmp_path, capsys, line, message):
    path = tmp_path / "m.dls"
    path.write_text(LINEAR.format(ensemble=line, val=0.1, lr=0.1, batch=32, epochs=1))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "m.dls:" in err and "^" in err


def test_boosting_needs_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", x=rng.normal(size=(40, 3)), y=rng.normal(size=(40, 1)))
    path = tmp_path / "r.dls"
    path.write_text("model R {\n    input x: f32[3]\n    linear(1)\n}\ntrain {\n"
                    "    data npz(path=\"r.npz\", classes=false)\n    loss mse\n"
                    "    boosting(2)\n}\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "boosting (SAMME) needs class labels" in capsys.readouterr().err


# -- resume and overwrite

def test_an_interrupted_boosting_run_resumes_to_the_uninterrupted_result(
        tmp_path, monkeypatch, interrupt_at_validation, capsys):
    """Ctrl-C in member 1's second epoch; --resume keeps member 0, continues member 1 from
    its saved epoch and trains member 2 on the weights member 0 and 1 give: every member's
    weights and every say α equal those of a run never interrupted."""
    from safetensors.torch import load_file as load_torch
    import torch
    spec = _spec(tmp_path, "boosting(3)", lr=0.5, batch=64, epochs=2)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    dlc.train(spec, whole, backend="reference", progress=False)
    per_member = 3                 # evaluations: two validations and the test split
    interrupt_at_validation(per_member + 2)
    with pytest.raises(KeyboardInterrupt):
        dlc.train(spec, cut, backend="reference", progress=False)
    monkeypatch.undo()
    assert json.loads((cut / "members/0/final.json").read_text())["stopped"] == "completed"
    assert json.loads((cut / "members/1/final.json").read_text())["stopped"] == "interrupted"
    assert not (cut / "members/2").exists()
    kept = [(cut / f"members/{m}/metrics.jsonl").read_text().splitlines()[0] for m in (0, 1)]
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    # member 0 was kept and member 1 continued: their first epochs (timings included) are
    # the records written before the interruption, not trained again
    assert [(cut / f"members/{m}/metrics.jsonl").read_text().splitlines()[0]
            for m in (0, 1)] == kept
    for m in range(3):
        a = load_torch(str(whole / f"members/{m}/checkpoint.safetensors"))
        b = load_torch(str(cut / f"members/{m}/checkpoint.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), m
    wa, wb = (json.loads((p / "ensemble.json").read_text()) for p in (whole, cut))
    assert wa["members"] == wb["members"]
    fa, fb = (json.loads((p / "final.json").read_text()) for p in (whole, cut))
    assert (fa["test_acc"], fa["stopped"]) == (fb["test_acc"], fb["stopped"]) != (None, None)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(_rows(whole / "metrics.jsonl")) == strip(_rows(cut / "metrics.jsonl"))


def test_an_ensemble_folder_is_not_overwritten_silently(tmp_path, capsys):
    spec = _spec(tmp_path, "bagging(2)", epochs=1)
    run = tmp_path / "run"
    dlc.train(spec, run, progress=False)
    assert main(["train", str(spec.path), "--out", str(run), "--quiet"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    stale = run / "members" / "7"
    stale.mkdir()
    assert main(["train", str(spec.path), "--out", str(run), "--quiet", "--overwrite"]) == 0
    assert not stale.exists() and (run / "members/1/final.json").is_file()
