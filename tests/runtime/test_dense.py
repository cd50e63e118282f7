"""Dense prediction data and metrics: the shapes generator, pixel accuracy / mean IoU, and a
short two-loss segmentation run end to end."""
from __future__ import annotations

import json

import dlc

import numpy as np
import torch

from dlc.cli import main
from dlc.runtime.seg_metrics import confusion, seg_scores
from dlc.runtime.shapes import generate


def test_shapes_is_deterministic_per_seed():
    a, b, c = generate(20, 24, seed=5), generate(20, 24, seed=5), generate(20, 24, seed=6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["x"], c["x"])
    assert a["x"].shape == (20, 3, 24, 24) and a["x"].dtype == np.float32
    assert a["masks"].shape == (20, 24, 24) and a["boxes"].shape == (20, 3, 5)


def test_shapes_masks_and_boxes_agree():
    d = generate(50, 32, max_shapes=3, seed=1)
    for masks, boxes, label in zip(d["masks"], d["boxes"], d["y"]):
        used = boxes[boxes[:, 0] >= 0]
        assert 1 <= len(used) <= 3
        covered = np.zeros_like(masks, dtype=bool)
        areas = []
        for cls, x0, y0, x1, y1 in used.astype(int):
            inside = masks[y0:y1, x0:x1] == cls
            # tight: every edge row and column of the box holds a pixel of the class
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] |= inside
            areas.append((inside.sum(), cls))
        np.testing.assert_array_equal(covered, masks > 0)          # no shape pixel outside a box
        assert label == max(areas)[1]                              # the largest shape's class


def test_pixel_accuracy_and_mean_iou_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])       # 255: ignored
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    conf = confusion(pred, target, 3, ignore=255).numpy()
    # class 0: tp 1, fp 2 (a 1 and a 2 predicted 0), fn 1 (a 0 predicted 1) -> IoU 1/4
    # class 1: tp 2, fp 1 (the 0 predicted 1), fn 1 (a 1 predicted 0)       -> IoU 2/4
    # class 2: tp 1, fp 0, fn 1 (the 2 predicted 0)                   -> IoU 1/2
    np.testing.assert_array_equal(conf, [[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    scores = seg_scores(conf)
    assert abs(scores["pixel_acc"] - 4 / 7) < 1e-12
    assert abs(scores["miou"] - (1 / 4 + 1 / 2 + 1 / 2) / 3) < 1e-12


def test_mean_iou_skips_absent_classes():
    conf = np.array([[3, 0, 0], [0, 0, 0], [1, 0, 2]])
    assert abs(seg_scores(conf)["miou"] - (3 / 4 + 2 / 3) / 2) < 1e-12


SEG = """
model TinySeg(classes=4) {
    input x: f32[3, 16, 16]
    h = conv(8, 3) -> relu
    d = h -> conv(16, 3, stride=2) -> relu
    seg = add(upsample(d -> conv(classes, 1), 2), h -> conv(classes, 1))
    aux = d -> conv(classes, 1) -> upsample(2)
    output seg, aux
}
train {
    data shapes(n=64, size=16)
    loss (seg=pixel_cross_entropy, aux=pixel_cross_entropy(weight=0.5))
    optimizer adam(lr=0.01)
    epochs 2
    batch 16
}
"""


def test_two_loss_segmentation_run(tmp_path, capsys):
    spec = tmp_path / "seg.dls"
    spec.write_text(SEG)
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        for split in ("train", "val"):
            terms = r[f"{split}_losses"]
            assert set(terms) == {"seg", "aux"}
            assert abs(terms["seg"] + terms["aux"] - r[f"{split}_loss"]) < 1e-5
            assert 0 <= r[f"{split}_miou"] <= r[f"{split}_pixel_acc"] <= 1
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert abs(sum(final["test_losses"].values()) - final["test_loss"]) < 1e-5
    assert 0 < final["test_miou"] <= 1 and 0 < final["test_pixel_acc"] <= 1


def test_missing_target_field_is_a_located_error(tmp_path, capsys):
    spec = tmp_path / "seg.dls"
    spec.write_text(SEG.replace("data shapes(n=64, size=16)", "data digits")
                    .replace("f32[3, 16, 16]", "f32[1, 8, 8]").replace("16, 3, stride", "4, 3, stride"))
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "seg.dls:12:11: error: the loss of output 'seg' reads masks, but digits has labels" in err


def write_voc(root, n=4):
    """A small folder in Pascal VOC's layout: random JPEGs, palette masks, XML boxes."""
    from PIL import Image
    from dlc.runtime.segviz import palette
    for d in ("JPEGImages", "SegmentationClass", "Annotations"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = 40 + 4 * i, 30
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"img{i}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 10:30] = 8                                   # a cat
        mask[3:5, :] = 255                                      # a border VOC ignores
        m = Image.fromarray(mask, mode="P")
        m.putpalette(palette().reshape(-1).tolist())
        m.save(root / "SegmentationClass" / f"img{i}.png")
        objects = "".join(f"<object><name>{c}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                          f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                          for c, x0, y0, x1, y1 in [("cat", 11, 6, 30, 15),
                                                    ("dog", 1, 1, 5, 4)][:1 + i % 2])
        (root / "Annotations" / f"img{i}.xml").write_text(
            f"<annotation><filename>img{i}.jpg</filename>{objects}</annotation>")


def test_voc_folder_reader(tmp_path):
    from dlc.runtime.voc import read_voc
    write_voc(tmp_path / "VOC")
    d = read_voc(tmp_path / "VOC", (20, 30))
    assert d["x"].shape == (4, 3, 20, 30) and 0 <= d["x"].min() and d["x"].max() <= 1
    assert d["masks"].shape == (4, 20, 30) and set(np.unique(d["masks"])) == {0, 8, 255}
    np.testing.assert_array_equal(d["y"], [8, 8, 8, 8])         # the largest box is the cat
    assert d["boxes"].shape == (4, 2, 5)
    assert list(d["boxes"][0, 1]) == [-1, 0, 0, 0, 0]           # img0 has one object
    sx = 30 / 40                                                # img0 is 40 wide, 30 high
    np.testing.assert_allclose(d["boxes"][0, 0], [8, 10 * sx, 5 * 20 / 30, 30 * sx, 15 * 20 / 30],
                               rtol=1e-6)
    assert d["boxes"][1, 1, 0] == 12                            # the dog


def test_voc_data_source_trains(tmp_path, capsys):
    write_voc(tmp_path / "VOC", n=6)
    spec = tmp_path / "voc.dls"
    spec.write_text('model M {\n    input x: f32[3, 16, 16]\n    conv(21, 3)\n}\n'
                    'train {\n    data voc(root="VOC", size=16, val=0.2, test=0.2)\n'
                    '    loss pixel_cross_entropy\n    epochs 1\n    batch 4\n}\n')
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert 0 <= final["test_miou"] <= 1
    assert (tmp_path / "run" / "overlay.png").is_file()


def test_augment_moves_the_masks_of_a_segmentation_run(tmp_path, fed_inputs):
    """crop and flip in a segmentation run: the masks the train step feeds the loss are the
    augmented ones (crop's padding carries the ignore label 255) and the run trains."""
    spec = tmp_path / "seg.dls"
    spec.write_text(SEG.replace("    epochs 2", "    epochs 1\n    augment crop(padding=3) -> flip"))
    final = dlc.train(dlc.compile_spec(spec), tmp_path / "run", backend="reference",
                      progress=False)
    fed = [r["inputs"]["masks"] for r in fed_inputs]
    assert fed and all((m == 255).any() for m in fed)          # padded border: ignored
    assert all(set(m.unique().tolist()) <= {0, 1, 2, 3, 255} for m in fed)
    assert 0 < final["test_miou"] <= 1


def test_a_mixer_on_masks_is_a_located_error(tmp_path, capsys):
    spec = tmp_path / "seg.dls"
    spec.write_text(SEG.replace("    epochs 2", "    epochs 1\n    augment flip -> mixup(0.2)"))
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "seg.dls:15:21: error: mixup cannot be applied to a segmentation mask" in err, err
