"""Augmentation (runtime/augment.py) and batching (runtime/batches.py): the properties of
each transform, the identity at zero strength, determinism under a seed, and that only
training batches are augmented."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.config import Call
from dlc.compiler.pipeline import build_eval_graph, build_infer_graph
from dlc.runtime import augment as aug
from dlc.runtime.augment import AUGMENTS, Augmenter
from dlc.runtime.data import load
from dlc.runtime.batches import Batches
from dlc.runtime.loop import run_training
from dlc.spec.bind import bind
from dlc.spec.diagnostics import UserError


def call(name: str, **kw) -> Call:
    return Call(name, bind(AUGMENTS[name], [], {k: (v, None) for k, v in kw.items()}, name, None))


def apply(name: str, x: torch.Tensor, seed: int = 0, **kw) -> aug.Augmented:
    return Augmenter([call(name, **kw)], seed, "cpu")(x)


def images(n=6, c=3, h=8, w=8, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# -- each transform ---------------------------------------------------------------------------

def test_flip_twice_is_the_identity_and_p1_mirrors_every_image():
    x = images()
    once = apply("flip", x, p=1.0).x
    torch.testing.assert_close(once, x.flip(3), rtol=0, atol=0)
    torch.testing.assert_close(apply("flip", once, p=1.0).x, x, rtol=0, atol=0)
    half = apply("flip", images(200, 1, 2, 2), p=0.5).x
    mirrored = (half == images(200, 1, 2, 2).flip(3)).flatten(1).all(1)
    assert 60 < int(mirrored.sum()) < 140          # about half of 200


def test_crop_keeps_the_size_and_cuts_a_window_of_the_padded_image():
    x, p = images(8, 2, 6, 5), 2
    out = apply("crop", x, padding=p).x
    assert out.shape == x.shape
    xp = F.pad(x, (p, p, p, p))
    for i in range(len(x)):                         # some offset (dy, dx) explains each image
        assert any(torch.equal(out[i], xp[i, :, dy:dy + 6, dx:dx + 5])
                   for dy in range(2 * p + 1) for dx in range(2 * p + 1))
    offsets_seen = {tuple((out[i] == 0).all(0).any(1).tolist()) for i in range(8)}
    assert len(offsets_seen) > 1                    # not the same window for every image


def test_resized_crop_keeps_the_size_and_the_whole_box_is_the_identity():
    x = images(4, 3, 8, 8)
    out = apply("resized_crop", x, scale=[0.2, 0.5]).x
    assert out.shape == x.shape
    full = apply("resized_crop", x, scale=[1.0, 1.0], ratio=[1.0, 1.0]).x
    torch.testing.assert_close(full, x, rtol=1e-5, atol=1e-5)


def test_resized_crop_of_a_ramp_is_a_stretched_ramp():
    """A horizontal ramp resampled from a box stays a ramp, with a slope of at most
    1/sqrt(min scale * min ratio) times the original's (a zoom in)."""
    ramp = torch.arange(16.0).repeat(16, 1)[None, None].repeat(5, 1, 1, 1)   # (5, 1, 16, 16)
    out = apply("resized_crop", ramp, scale=[0.25, 0.5], ratio=[1.0, 1.0]).x
    dx = out[..., 1:-1, 2:-2].diff(dim=-1)
    slope = dx.mean(dim=(1, 2, 3))
    torch.testing.assert_close(dx, slope[:, None, None, None].expand_as(dx), rtol=1e-4, atol=1e-4)
    assert bool(((slope < 1.0) & (slope > 0.5 - 1e-4)).all())   # sides sqrt(0.25..0.5) of 16


def test_jitter_at_zero_is_the_identity_and_brightness_scales_each_image():
    x = images()
    zero = apply("jitter", x, brightness=0.0, contrast=0.0, saturation=0.0).x
    torch.testing.assert_close(zero, x, rtol=0, atol=0)
    pos = x.abs() + 0.1
    out = apply("jitter", pos, brightness=0.3, contrast=0.0, saturation=0.0).x
    f = (out / pos).flatten(1)                      # one factor per image
    torch.testing.assert_close(f, f[:, :1].expand_as(f))
    assert bool(((f >= 0.7 - 1e-6) & (f <= 1.3 + 1e-6)).all()) and f[:, 0].std() > 0


def test_jitter_contrast_and_saturation_match_their_equations():
    """contrast: out - m = f (x - m), m the image's mean luma (which it keeps); saturation:
    out - gray = f (x - gray) per pixel; f one factor per image within [1 - s, 1 + s]."""
    x = images(4, 3, 5, 5)
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    gray = (x * luma).sum(1, keepdim=True)                      # (4, 1, 5, 5)
    m = gray.mean(dim=(1, 2, 3), keepdim=True)
    out = apply("jitter", x, brightness=0.0, contrast=0.5, saturation=0.0).x
    f = ((out - m) / (x - m)).flatten(1)
    torch.testing.assert_close(f, f[:, :1].expand_as(f), rtol=1e-4, atol=1e-4)
    assert bool(((f[:, 0] > 0.5 - 1e-5) & (f[:, 0] < 1.5 + 1e-5)).all())
    out = apply("jitter", x, brightness=0.0, contrast=0.0, saturation=0.5).x
    f = ((out - gray) / (x - gray)).flatten(1)
    torch.testing.assert_close(f, f[:, :1].expand_as(f), rtol=1e-3, atol=1e-3)
    one = images(3, 1, 4, 4)                        # a single channel has no saturation
    torch.testing.assert_close(apply("jitter", one, brightness=0.0, contrast=0.0,
                                     saturation=0.9).x, one, rtol=0, atol=0)


def test_cutout_zeros_one_clipped_square_per_image():
    x = torch.ones(64, 1, 8, 8)
    out = apply("cutout", x, size=3).x
    assert out.shape == x.shape
    for img in out[:, 0]:
        zero = img == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert len(rows) and len(cols)              # p=1: every image is cut
        assert int(zero.sum()) == len(rows) * len(cols)         # one rectangle
        assert len(rows) <= 3 and len(cols) <= 3                 # of side <= size
    areas = (out == 0).flatten(1).sum(1)
    assert int(areas.max()) == 9 and int(areas.min()) < 9        # whole inside, clipped at edges
    torch.testing.assert_close(apply("cutout", x, size=3, p=0.0).x, x, rtol=0, atol=0)
    torch.testing.assert_close(apply("cutout", x, size=0).x, x, rtol=0, atol=0)


def test_noise_has_the_asked_std_and_zero_is_the_identity():
    x = torch.zeros(50, 400)                        # any rank: an MLP's inputs
    out = apply("noise", x, std=0.3).x
    assert abs(float(out.std()) - 0.3) < 0.01 and abs(float(out.mean())) < 0.01
    y = images()
    torch.testing.assert_close(apply("noise", y, std=0.0).x, y, rtol=0, atol=0)


def test_mixup_mixes_examples_with_one_lambda_and_alpha_zero_is_the_identity():
    x = images(10)
    b = apply("mixup", x, alpha=0.4)
    assert 0.0 <= b.lam <= 1.0 and sorted(b.perm.tolist()) == list(range(10))
    torch.testing.assert_close(b.x, b.lam * x + (1 - b.lam) * x[b.perm])
    none = apply("mixup", x, alpha=0.0)
    assert none.lam == 1.0
    torch.testing.assert_close(none.x, x, rtol=0, atol=0)


def test_cutmix_lambda_is_the_fraction_of_each_image_kept():
    n = 12
    x = torch.arange(float(n))[:, None, None, None].repeat(1, 2, 9, 7)   # image i is all i
    for seed in range(5):
        b = apply("cutmix", x, seed=seed, alpha=1.0)
        kept = (b.x == x).float().mean(dim=(1, 2, 3))                      # (n,)
        moved = b.perm != torch.arange(n)
        torch.testing.assert_close(kept[moved], torch.full_like(kept[moved], b.lam))
        from_partner = (b.x == x[b.perm]).float().mean(dim=(1, 2, 3))
        torch.testing.assert_close(from_partner[moved], 1 - kept[moved])
    none = apply("cutmix", x, alpha=0.0)
    assert none.lam == 1.0
    torch.testing.assert_close(none.x, x, rtol=0, atol=0)


# -- the chain ---------------------------------------------------------------------------------

CHAIN = [call("crop", padding=2), call("flip"), call("resized_crop", scale=[0.5, 1.0]),
         call("jitter"), call("cutout", size=3), call("noise", std=0.1), call("cutmix")]


def test_a_chain_is_deterministic_under_its_seed():
    x = images(16)
    runs = [[Augmenter(CHAIN, seed, "cpu")(x) for _ in range(1)] for seed in (3, 3, 4)]
    a, b, c = (r[0] for r in runs)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert torch.equal(a.perm, b.perm) and a.lam == b.lam
    assert not torch.equal(a.x, c.x)
    aug3 = Augmenter(CHAIN, 3, "cpu")
    first, second = aug3(x), aug3(x)              # the same augmenter draws afresh each batch
    assert not torch.equal(first.x, second.x)


# -- batching ----------------------------------------------------------------------------------

def test_batches_without_shuffle_keep_the_order_and_drop_last_drops_the_short_batch():
    b = Batches(10, 4, 0, shuffle=False)
    assert [t.tolist() for t in b.epoch("cpu")] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    d = Batches(10, 4, 0, shuffle=False, drop_last=True)
    assert [t.tolist() for t in d.epoch("cpu")] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert d.used == 8 and d.steps == 2 and d.smallest == 4
    s = Batches(10, 4, 0)
    e1, e2 = (torch.cat(list(s.epoch("cpu"))).tolist() for _ in range(2))
    assert sorted(e1) == list(range(10)) and e1 != e2 and e1 != list(range(10))
    assert Batches(9, 4, 0).bounds == [0, 4, 9]               # a last batch of one still joins
    assert Batches(10, "full", 0, drop_last=True).bounds == [0, 10]
    assert Batches(10, 1, 0, drop_last=True).steps == 10
    assert Batches(10, 1, 0).smallest == 1 and Batches(10, 1, 0).steps == 10


# -- in a run ----------------------------------------------------------------------------------

SPEC = """model Tiny {{
    input x: f32[1, 8, 8]
    conv(4, 3) -> relu -> maxpool(2) -> flatten -> linear(10)
}}
train {{
    data digits(val=0.2, test=0.2)
    augment {augment}
    optimizer adam(lr=3e-3)
    batch 128
    epochs 2
    {extra}
}}
"""


def tiny(tmp_path, augment="crop(padding=1) -> flip -> mixup(0.4)", extra="", name="t.dls"):
    path = tmp_path / name
    path.write_text(SPEC.format(augment=augment, extra=extra))
    return dlc.compile_spec(path)


def test_only_training_batches_are_augmented(tmp_path, monkeypatch):
    spec = tiny(tmp_path)
    calls = []
    real = Augmenter.__call__
    monkeypatch.setattr(Augmenter, "__call__",
                        lambda self, x, masks=None, boxes=None:
                        calls.append(len(x)) or real(self, x, masks, boxes))
    final = run_training(spec, tmp_path / "run", backend="reference", device="cpu",
                         progress=False)
    data = load(spec.config.data, 0, tmp_path)
    assert sum(calls) == 2 * len(data.train)       # every training example, each epoch, once
    assert final["test_acc"] is not None
    for g in (build_eval_graph(spec.graph, spec.config), build_infer_graph(spec.graph, spec.config)):
        assert {v.input_name for v in g.inputs} <= {"x", "y"}
    model = dlc.build(spec, device="cpu")
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), model.predict(x))


def test_a_run_is_reproducible_under_its_seed(tmp_path):
    spec = tiny(tmp_path, "crop(padding=1) -> flip -> noise(0.1) -> cutmix(1.0)",
                "weight_noise 0.01\n    drop_last")
    runs = [run_training(spec, tmp_path / f"r{i}", backend="reference", device="cpu",
                         progress=False) for i in range(2)]
    metrics = [(tmp_path / f"r{i}" / "metrics.jsonl").read_text() for i in range(2)]
    strip = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
              for line in m.splitlines()] for m in metrics]
    assert strip[0] == strip[1]
    assert runs[0]["test_loss"] == runs[1]["test_loss"]
    other = run_training(spec, tmp_path / "r2", backend="reference", device="cpu", seed=1,
                         progress=False)
    assert other["test_loss"] != runs[0]["test_loss"]


def test_an_image_transform_on_flat_inputs_is_a_located_error(tmp_path):
    path = tmp_path / "mlp.dls"
    path.write_text("model M {\n    input x: f32[64]\n    linear(10)\n}\n"
                    "train {\n    augment noise(0.1) -> flip\n}\n")
    spec = dlc.compile_spec(path)
    with pytest.raises(UserError) as e:
        run_training(spec, tmp_path / "run", backend="reference", device="cpu", progress=False)
    assert "flip transforms images" in e.value.message
    assert (e.value.span.line, e.value.span.col) == (6, 27)


# -- segmentation masks move with their images ---------------------------------------------

def _blocky(n=4, h=16, w=16, seed=0):
    """Masks of 4x4 blocks of classes 0..3, and images whose channel 0 is the mask."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 4, (n, h // 4, w // 4), generator=g).repeat_interleave(4, 1) \
        .repeat_interleave(4, 2)
    x = torch.randn(n, 3, h, w, generator=g)
    x[:, 0] = masks.float()
    return x, masks


@pytest.mark.parametrize("name,kw", [("crop", {"padding": 3}), ("flip", {"p": 0.5})])
def test_crop_and_flip_move_a_mask_exactly_as_its_image(name, kw):
    x, masks = _blocky()
    out = Augmenter([call(name, **kw)], 1, "cpu", mask_fill=255)(x, masks)
    assert out.masks.shape == masks.shape and out.masks.dtype == masks.dtype
    padded = out.masks == 255                     # crop's padding: the ignore label ...
    assert torch.all(out.x[:, 1:][padded[:, None].expand(-1, 2, -1, -1)] == 0)  # ... over zeros
    assert torch.equal(out.x[:, 0][~padded], out.masks[~padded].float())
    if name == "crop":
        assert padded.any()
    else:
        assert not torch.equal(out.masks, masks)              # something was flipped


def test_resized_crop_moves_a_mask_by_nearest_pixel():
    x, masks = _blocky(n=8, h=32, w=32, seed=2)
    same = Augmenter([call("resized_crop", scale=[1.0, 1.0], ratio=[1.0, 1.0])], 0, "cpu")
    assert torch.equal(same(x, masks).masks, masks)             # the whole image: unchanged
    out = Augmenter([call("resized_crop", scale=[0.3, 0.6])], 0, "cpu")(x, masks)
    assert set(out.masks.unique().tolist()) <= set(masks.unique().tolist())   # still classes
    # away from block edges the bilinear image channel is the class the mask says
    agree = (out.x[:, 0].round() == out.masks.float()).float().mean().item()
    assert agree > 0.8, agree


def test_photometric_transforms_leave_a_mask_alone():
    x, masks = _blocky()
    out = Augmenter([call("jitter", brightness=0.4), call("noise", std=0.1),
                     call("cutout", size=4)], 0, "cpu")(x, masks)
    assert torch.equal(out.masks, masks) and not torch.equal(out.x, x)


# -- ground-truth boxes move with their images -----------------------------------------------

def _boxed(n=24, size=16, seed=0):
    """One box per image (class 1..3, integer corners) and a second padding row, and images
    whose channel 0 is 1 inside the box: the box can be read back from the pixels."""
    g = np.random.default_rng(seed)
    boxes = np.zeros((n, 2, 5), np.float32)
    boxes[:, 1, 0] = -1
    x = torch.zeros(n, 3, size, size)
    for i in range(n):
        w, h = g.integers(3, 9, size=2)
        x0, y0 = g.integers(0, size - w + 1), g.integers(0, size - h + 1)
        boxes[i, 0] = [g.integers(1, 4), x0, y0, x0 + w, y0 + h]
        x[i, 0, y0:y0 + h, x0:x0 + w] = 1.0
    return x, torch.from_numpy(boxes)


def _extent(channel, threshold=0.5):
    """The (x0, y0, x1, y1) pixel extent of where channel > threshold, or None."""
    ys, xs = torch.nonzero(channel > threshold, as_tuple=True)
    if len(ys) == 0:
        return None
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("name,kw", [("crop", {"padding": 6}), ("flip", {"p": 0.5})])
def test_crop_and_flip_move_boxes_exactly_as_their_images(name, kw):
    x, boxes = _boxed()
    out = Augmenter([call(name, **kw)], 3, "cpu")(x, boxes=boxes)
    gone = 0
    for i in range(len(x)):
        seen = _extent(out.x[i, 0])
        if seen is None:                                    # cropped out: padding now
            assert out.boxes[i, 0].tolist() == [-1, 0, 0, 0, 0]
            gone += 1
        else:
            assert out.boxes[i, 0, 0] == boxes[i, 0, 0]
            assert out.boxes[i, 0, 1:].tolist() == seen, i
        assert out.boxes[i, 1].tolist() == [-1, 0, 0, 0, 0]     # padding stays padding
    assert not torch.equal(out.boxes, boxes)
    if name == "crop":
        assert gone < len(x)


def test_resized_crop_maps_boxes_with_the_image():
    x, boxes = _boxed(n=32, size=32, seed=1)
    out = Augmenter([call("resized_crop", scale=[0.3, 0.8])], 5, "cpu")(x, boxes=boxes)
    checked = 0
    for i in range(len(x)):
        seen = _extent(out.x[i, 0])
        b = out.boxes[i, 0]
        if seen is None or b[0] < 0:
            continue
        # bilinear: the thresholded edges lie within a pixel of the mapped box (the
        # sampling clamps at the image border, which clipping matches)
        assert np.allclose(b[1:].tolist(), seen, atol=1.01), (i, b.tolist(), seen)
        checked += 1
    assert checked >= 16


def test_boxes_refuse_label_mixing_and_moving_beside_proposals(tmp_path, capsys):
    from dlc.cli import main
    yolo = (Path(__file__).parents[2] / "examples" / "yolo_v1.dls").read_text()
    spec = tmp_path / "y.dls"
    spec.write_text(yolo.replace("    batch     32", "    augment   flip -> mixup(0.2)\n"
                                 "    batch     32").replace("n=3000", "n=20"))
    assert main(["train", str(spec), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mixup cannot be applied to ground-truth boxes" in err and "y.dls:" in err
    fast = (Path(__file__).parents[2] / "examples" / "fast_rcnn.dls").read_text()
    spec.write_text(fast.replace("    batch     16", "    augment   flip\n    batch     16")
                    .replace("selective_search", "sliding_window").replace("n=2000", "n=20"))
    assert main(["train", str(spec), "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "augment would move the objects but not the proposals" in err


def test_a_detector_is_fed_its_boxes_moved_with_its_images(tmp_path, fed_inputs):
    spec = tmp_path / "y.dls"
    from test_detectors import TINY_YOLO
    spec.write_text(TINY_YOLO.replace("    batch     8", "    augment   flip(p=1)\n    batch     8")
                    .replace("epochs    2", "epochs    1"))
    dlc.train(dlc.compile_spec(spec), tmp_path / "run", backend="reference", progress=False)
    data = load(dlc.compile_spec(spec).config.data, 0, tmp_path)
    truth = torch.as_tensor(data.train.target("boxes"))
    assert len(fed_inputs) == 3                    # 24 training images, batches of 8
    for step in fed_inputs:
        fed, want = step["inputs"]["boxes"], truth[step["idx"]].clone()
        real = want[..., 0] > 0
        want[..., 1] = 16 - truth[step["idx"]][..., 3]
        want[..., 3] = 16 - truth[step["idx"]][..., 1]
        assert torch.equal(fed[real], want[real])                  # every box mirrored
        assert torch.equal(step["inputs"]["x"], torch.as_tensor(
            data.train.x[step["idx"].numpy()]).flip(3))
