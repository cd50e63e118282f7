"""Training curves (runtime/plot.py) and `dlc plot`: what each figure shows."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import dlc
from dlc.cli import main
from dlc.runtime.plot import figure, read_run


def _fake_run(path, losses, lrs, acc=True, best=None):
    """A run directory as the training loop writes it, epoch records given."""
    path.mkdir()
    rows = [{"epoch": e, "train_loss": l, "val_loss": l * 1.1, "lr": lr,
             "train_acc": 0.5 if acc else None, "val_acc": 0.4 if acc else None}
            for e, (l, lr) in enumerate(zip(losses, lrs), 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stopped = "early_stopping" if best else "completed"
    (path / "final.json").write_text(json.dumps({"stopped": stopped, "best_epoch": best}))
    return path


def _texts(svg):
    return [t.text or "" for t in ET.parse(svg).iter("{http://www.w3.org/2000/svg}text")]


def test_dlc_plot_overlays_two_runs_in_png_and_svg(tmp_path, capsys):
    a = _fake_run(tmp_path / "adam", [2.0, 0.5, 0.1, 0.02], [1e-3] * 4, best=3)
    b = _fake_run(tmp_path / "sgd", [2.0, 1.5, 1.2, 1.0], [0.1, 0.05, 0.01, 0.001])
    out = tmp_path / "cmp"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    png, svg = tmp_path / "cmp.png", tmp_path / "cmp.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = _texts(svg)
    assert "adam" in texts and "sgd" in texts                      # one legend entry per run
    assert any("accuracy" in t for t in texts)
    assert main(["plot", str(a), "-o", str(tmp_path / "one.svg")]) == 0   # a suffix: that format
    assert (tmp_path / "one.svg").is_file() and not (tmp_path / "one.png").exists()


def test_figure_marks_the_best_epoch_and_goes_log_when_values_span_decades(tmp_path):
    a = _fake_run(tmp_path / "adam", [2.0, 0.5, 0.1, 0.02], [1e-3] * 4, best=3)
    b = _fake_run(tmp_path / "sgd", [2.0, 1.5, 1.2, 1.0], [0.1, 0.05, 0.01, 0.001])
    fig = figure(read_run(a) + read_run(b))
    loss, acc, lr = fig.axes
    assert loss.get_yscale() == "log" and lr.get_yscale() == "log"   # 100x spans
    assert acc.get_yscale() == "linear"
    marks = [ln for ln in loss.lines if list(ln.get_xdata()) == [3, 3]]   # axvline at epoch 3
    assert len(marks) == 1
    # sgd did not stop early: its lowest validation loss (the last epoch) is marked
    dots = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in loss.lines
            if ln.get_marker() == "o"]
    assert ([3], [pytest.approx(0.11)]) in dots and ([4], [pytest.approx(1.1)]) in dots


def test_a_regression_run_draws_no_accuracy_panel(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    np.savez(tmp_path / "r.npz", x=x, y=x @ np.array([[1.0], [-2.0], [0.5]]))
    path = tmp_path / "r.dls"
    path.write_text("model R {\n    input x: f32[3]\n    linear(1)\n}\ntrain {\n"
                    "    data npz(path=\"r.npz\", classes=false)\n    loss mse\n"
                    "    optimizer sgd(lr=0.1)\n    epochs 2\n}\n")
    run = tmp_path / "run"
    dlc.train(dlc.compile_spec(path), run, progress=False)
    titles = [ax.get_title() for ax in figure(read_run(run)).axes]
    assert len(titles) == 2 and not any("accuracy" in t for t in titles)
    texts = _texts(run / "curves.svg")
    assert any(t.startswith("loss") for t in texts)
    assert not any("accuracy" in t for t in texts)
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_of_a_folder_without_metrics_is_a_user_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "x")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
