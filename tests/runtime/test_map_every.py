"""`map_every k`: a detector's validation mAP on epochs k, 2k, ... and the run's last epoch
only, the other records without the keys; located errors for a spec that is no detector;
an interrupted run resumes to the same records."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
import torch

from dlc.cli import main
from dlc.runtime import loop
from test_detectors import TINY_YOLO as DETECTOR

pytest.importorskip("pycocotools")

# test_detectors' tiny YOLO on shapes(n=40, size=16), for 3 epochs, scored every 2nd
TINY_YOLO = DETECTOR.replace("epochs    2", "epochs    3\n    map_every 2")
BOX_KEYS = {"val_map50", "val_map", "val_ap"}


def _train(tmp_path, text=TINY_YOLO, *extra):
    tmp_path.mkdir(exist_ok=True)
    spec = tmp_path / "yolo.dls"
    spec.write_text(text)
    run = tmp_path / "run"
    return main(["train", str(spec), "--out", str(run), "--quiet", "--backend", "reference",
                 *extra]), run


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_map_is_computed_every_k_epochs_and_on_the_last(tmp_path):
    code, run = _train(tmp_path)
    assert code == 0
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert not BOX_KEYS & set(records[0])                 # left out, not null
    for r in records[1:]:
        assert BOX_KEYS <= set(r) and 0 <= r["val_map"] <= r["val_map50"] <= 1
        assert set(r["val_ap"]) == {"square", "circle", "triangle"}
    assert all(r["val_loss"] is not None for r in records)       # the loss every epoch
    final = json.loads((run / "final.json").read_text())
    assert 0 <= final["test_map"] <= final["test_map50"] <= 1


def test_the_epoch_early_stopping_ends_on_is_scored(tmp_path):
    """patience 1 and a min_delta no epoch beats: the run stops after epoch 2, which
    map_every 5 would not have scored."""
    text = TINY_YOLO.replace("epochs    3", "epochs    6").replace(
        "map_every 2", "map_every 5\n    early_stopping(patience=1, min_delta=1e9)")
    code, run = _train(tmp_path, text)
    assert code == 0
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert not BOX_KEYS & set(records[0]) and BOX_KEYS <= set(records[1])
    assert json.loads((run / "final.json").read_text())["stopped"] == "early_stopping"


def test_an_interrupted_run_resumes_to_the_same_records(tmp_path, monkeypatch):
    code, whole = _train(tmp_path / "a")
    assert code == 0
    real = loop.train_epoch

    def interrupted(step, batches, epoch, *args, **kwargs):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(step, batches, epoch, *args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", interrupted)
    code, run = _train(tmp_path / "b")
    assert code == 130 and len(_records(run)) == 2
    monkeypatch.setattr(loop, "train_epoch", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip(_records(run)) == strip(_records(whole))
    want, got = (load_file(str(p / "checkpoint.safetensors")) for p in (whole, run))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_map_every_on_a_spec_that_is_no_detector_is_a_located_error(tmp_path, capsys):
    spec = tmp_path / "mlp.dls"
    spec.write_text("model M {\n    input x: f32[64]\n    linear(10)\n}\n"
                    "train {\n    epochs 1\n    map_every 2\n}\n")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "mlp.dls:7:5: error: map_every says how often a detector's validation mAP is " \
           "computed, but no loss of this train section reads ground-truth boxes" in err
    assert "^~~~~~~~~" in err


@pytest.mark.parametrize("value, message", [("0", "map_every must be at least 1, got 0"),
                                            ("1.5", "map_every must be a whole number")])
def test_map_every_takes_a_positive_whole_number(tmp_path, capsys, value, message):
    spec = tmp_path / "yolo.dls"
    spec.write_text(TINY_YOLO.replace("map_every 2", f"map_every {value}"))
    assert main(["check", str(spec)]) == 2
    assert f"yolo.dls:13:15: error: {message}" in capsys.readouterr().err
