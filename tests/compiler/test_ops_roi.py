"""RoI pooling, RoI align and spatial pyramid pooling against literal transcriptions of
torchvision.ops' CPU kernels (tests/compiler/det_refs.py says why not torchvision itself):
forward on NumPy, gradients against torch.autograd through the same loops, boxes across the
borders, empty RoI lists, shape rules and the triton backend's refusal."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from det_refs import ir_grads, roi_align_loops, roi_pool_loops, run_op
from dlc.compiler.ir import TensorType
from dlc.compiler.ops import ShapeError, get

DT = torch.float64


def _x(n=2, c=3, h=7, w=9, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=DT)


# (batch index, x0, y0, x1, y1) in input pixels; spatial_scale 0.5 maps them onto the map
ROIS = torch.tensor([
    [0, 1.0, 2.0, 13.0, 11.0],
    [1, 0.0, 0.0, 17.0, 13.0],        # the whole map
    [1, -6.0, -3.0, 5.0, 4.0],        # across the top-left border
    [0, 12.0, 9.0, 30.0, 22.0],       # across the bottom-right border
    [0, 30.0, 30.0, 40.0, 36.0],      # entirely outside
    [1, 7.3, 3.6, 7.9, 4.1],          # smaller than a cell
], dtype=DT)

np_stack = np.stack


def _attrs(op, **bound):
    return get(op).attrs(bound, [TensorType((2, 3, 7, 9))])


@pytest.mark.parametrize("output", [(2, 2), (3, 2), (1, 1)])
def test_roi_pool_matches_torchvision_transcription(output):
    x = _x()
    got = run_op("roi_pool", {"x": x, "rois": ROIS}, _attrs("roi_pool", output=output,
                                                             spatial_scale=0.5))[0]
    want = roi_pool_loops(x.numpy(), ROIS.numpy(), *output, 0.5, np_stack)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert got.shape == (len(ROIS), 3, *output)


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (-1, False), (1, True),
                                                    (0, True), (3, False)])
def test_roi_align_matches_torchvision_transcription(sampling_ratio, aligned):
    x = _x()
    a = _attrs("roi_align", output=(3, 2), spatial_scale=0.5, sampling_ratio=sampling_ratio,
               aligned=aligned)
    got = run_op("roi_align", {"x": x, "rois": ROIS}, a)[0]
    want = roi_align_loops(x.numpy(), ROIS.numpy(), 3, 2, 0.5, sampling_ratio, aligned,
                           np_stack)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def _torch_stack(parts):
    return torch.stack(parts)


def test_roi_pool_gradient_matches_autograd():
    x = _x(seed=3)
    a = _attrs("roi_pool", output=(2, 3), spatial_scale=0.5)
    target = torch.randn(len(ROIS), 3, 2, 3, generator=torch.Generator().manual_seed(1),
                         dtype=DT)
    _, (gx,) = ir_grads("roi_pool", {"x": x, "rois": ROIS}, a, ["x"], target)
    leaf = x.clone().requires_grad_(True)
    ref = roi_pool_loops(leaf, ROIS, 2, 3, 0.5, _torch_stack)
    want, = torch.autograd.grad(F.mse_loss(ref, target), [leaf])
    torch.testing.assert_close(gx, want)
    assert gx.abs().sum() > 0


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (-1, True)])
def test_roi_align_gradient_matches_autograd(sampling_ratio, aligned):
    x = _x(seed=4)
    a = _attrs("roi_align", output=2, spatial_scale=0.5, sampling_ratio=sampling_ratio,
               aligned=aligned)
    target = torch.randn(len(ROIS), 3, 2, 2, generator=torch.Generator().manual_seed(2),
                         dtype=DT)
    _, (gx,) = ir_grads("roi_align", {"x": x, "rois": ROIS}, a, ["x"], target)
    leaf = x.clone().requires_grad_(True)
    ref = roi_align_loops(leaf, ROIS, 2, 2, 0.5, sampling_ratio, aligned, _torch_stack)
    want, = torch.autograd.grad(F.mse_loss(ref, target), [leaf])
    torch.testing.assert_close(gx, want)


@pytest.mark.parametrize("op", ["roi_pool", "roi_align", "roi_spp"])
def test_no_rois_give_empty_outputs_and_zero_gradient(op):
    x = _x()
    empty = torch.zeros((0, 5), dtype=DT)
    a = _attrs(op, spatial_scale=0.5)
    y = run_op(op, {"x": x, "rois": empty}, a)[0]
    assert y.shape[0] == 0 and y.shape[1:] == tuple(
        get(op).infer([TensorType((2, 3, 7, 9)), TensorType((0, 5))], a)[0].shape[1:])
    g = run_op(op + "_bwd", {"gy": y, "x": x, "rois": empty}, a)[0]
    assert torch.equal(g, torch.zeros_like(x))


def _adaptive_max_np(x, lv):
    """Adaptive max pooling's bins: [floor(i H / l), ceil((i + 1) H / l))."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, lv, lv))
    for i in range(lv):
        for j in range(lv):
            hs, he = (i * h) // lv, -((-(i + 1) * h) // lv)
            ws, we = (j * w) // lv, -((-(j + 1) * w) // lv)
            out[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
    return out


def test_spp_matches_pyramid_of_adaptive_max_pools_and_autograd():
    x = _x(h=7, w=5)
    a = get("spp").attrs({"levels": (1, 2, 4)}, [TensorType((2, 3, 7, 5))])
    got = run_op("spp", {"x": x}, a)[0]
    want = np.concatenate([_adaptive_max_np(x.numpy(), lv).reshape(2, -1) for lv in (1, 2, 4)],
                          axis=1)
    np.testing.assert_allclose(got.numpy(), want)
    assert got.shape == (2, 3 * 21)
    target = torch.randn(2, 63, generator=torch.Generator().manual_seed(5), dtype=DT)
    _, (gx,) = ir_grads("spp", {"x": x}, a, ["x"], target)
    leaf = x.clone().requires_grad_(True)
    ref = torch.cat([F.adaptive_max_pool2d(leaf, lv).flatten(1) for lv in (1, 2, 4)], dim=1)
    want_g, = torch.autograd.grad(F.mse_loss(ref, target), [leaf])
    torch.testing.assert_close(gx, want_g)


def test_roi_spp_is_roi_pool_per_level_with_its_gradient():
    x = _x(seed=6)
    rois = ROIS[:4]
    a = _attrs("roi_spp", levels=(1, 2), spatial_scale=0.5)
    got = run_op("roi_spp", {"x": x, "rois": rois}, a)[0]
    want = np.concatenate([roi_pool_loops(x.numpy(), rois.numpy(), lv, lv, 0.5, np_stack)
                           .reshape(4, -1) for lv in (1, 2)], axis=1)
    np.testing.assert_allclose(got.numpy(), want)
    target = torch.randn(4, 15, generator=torch.Generator().manual_seed(7), dtype=DT)
    _, (gx,) = ir_grads("roi_spp", {"x": x, "rois": rois}, a, ["x"], target)
    leaf = x.clone().requires_grad_(True)
    ref = torch.cat([roi_pool_loops(leaf, rois, lv, lv, 0.5, _torch_stack).flatten(1)
                     for lv in (1, 2)], dim=1)
    want_g, = torch.autograd.grad(F.mse_loss(ref, target), [leaf])
    torch.testing.assert_close(gx, want_g)


def test_roi_shape_rules_and_errors():
    x, rois = TensorType(("N", 16, 14, 14)), TensorType(("R", 5))
    a = _attrs("roi_align", output=(7, 5), spatial_scale=1 / 16)
    assert get("roi_align").infer([x, rois], a)[0].shape == ("R", 16, 7, 5)
    a = _attrs("roi_spp", levels=(1, 2, 4))
    assert get("roi_spp").infer([x, rois], a)[0].shape == ("R", 16 * 21)
    with pytest.raises(ShapeError, match=r"RoIs \[R, 5\]"):
        get("roi_pool").infer([x, TensorType(("R", 4))], _attrs("roi_pool"))
    with pytest.raises(ShapeError, match="spatial_scale"):
        get("roi_pool").infer([x, rois], _attrs("roi_pool", spatial_scale=0.0))
    with pytest.raises(ShapeError, match="levels must be positive"):
        get("spp").infer([x], {"levels": (1, 0)})


SPP_SPEC = """model SppDigits {
    input x: f32[1, 8, 8]
    conv(8, 3) -> relu
    spp(levels=[1, 2, 4]) -> linear(10)
}

train {
    data      digits(val=0.1, test=0.2)
    loss      cross_entropy
    optimizer adam(lr=3e-3)
    batch     64
    epochs    2
    seed      0
}
"""


def test_spp_spec_trains_on_both_backends_and_onnx_refuses_it(tmp_path, capsys):
    from dlc.cli import main
    path = tmp_path / "spp.dls"
    path.write_text(SPP_SPEC)
    assert main(["compile", str(path)]) == 0
    assert f"f32[N,{8 * (1 + 4 + 16)}]" in capsys.readouterr().out       # 8 channels x 21 bins
    assert main(["compile", str(path), "--emit", "onnx", "-o", str(tmp_path / "s.onnx")]) == 2
    err = capsys.readouterr().err
    assert "spp.dls:4:5: error: cannot export to ONNX: the op 'spp' has no ONNX mapping" in err
    assert main(["train", str(path), "--backend", "reference", "--out", str(tmp_path / "r")]) == 0
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    assert final["test_acc"] > 0.4                    # learns (chance is 0.1) through spp_bwd
    capsys.readouterr()
    # spp and spp_bwd are Triton kernels (templates/roi.py): the triton backend trains to
    # the reference backend's result
    assert main(["compile", str(path), "--emit", "plan", "--batch", "4"]) == 0
    plan = capsys.readouterr().out
    assert "anchor  %3 = spp" in plan and "torch steps" not in plan, plan
    # (on 150 digits: the interpreter runs the gradient's window scans slowly)
    from sklearn.datasets import load_digits
    d = load_digits()
    np.savez(tmp_path / "few.npz", x=(d.data[:150] / 16).astype(np.float32), y=d.target[:150])
    small = ["--set", f'train.data=npz(path="{tmp_path / "few.npz"}", val=0.1, test=0.2)',
             "--set", "train.epochs=1"]
    runs = {}
    for backend in ("reference", "triton"):
        out = tmp_path / f"small-{backend}"
        assert main(["train", str(path), "--backend", backend, "--out", str(out), *small]) == 0
        runs[backend] = json.loads((out / "final.json").read_text())
    assert runs["triton"]["test_acc"] == pytest.approx(runs["reference"]["test_acc"], abs=0.01)
    assert runs["triton"]["test_loss"] == pytest.approx(runs["reference"]["test_loss"], rel=1e-4)


@pytest.mark.parametrize("op", ["roi_pool", "roi_align", "roi_spp"])
def test_boxes_per_image_are_rois_image_major(op):
    x = _x(seed=8)
    boxes = ROIS[[0, 3, 4, 1, 2, 5], 1:].reshape(2, 3, 4)        # image 0: 3 boxes, image 1: 3
    rois = torch.cat([torch.tensor([0, 0, 0, 1, 1, 1], dtype=DT)[:, None],
                      boxes.reshape(6, 4)], dim=1)
    a = _attrs(op, output=2, spatial_scale=0.5)
    assert get(op).infer([TensorType(("N", 3, 7, 9)), TensorType(("N", 3, 4))], a)[0] \
        .shape[0] == "3*N"
    per_image = run_op(op, {"x": x, "b": boxes}, a)[0]
    torch.testing.assert_close(per_image, run_op(op, {"x": x, "r": rois}, a)[0], rtol=0, atol=0)
    gy = torch.randn(per_image.shape, generator=torch.Generator().manual_seed(9), dtype=DT)
    torch.testing.assert_close(run_op(op + "_bwd", {"gy": gy, "x": x, "b": boxes}, a)[0],
                               run_op(op + "_bwd", {"gy": gy, "x": x, "r": rois}, a)[0])


HEAD_SPEC = """# Fast R-CNN's RoI head: the feature map once per image, RoI pooling per proposal.
model FastRcnnHead(classes=4) {
    input x: f32[3, 32, 32]
    input proposals: f32[8, 4]
    features = x -> conv(16, 3) -> relu -> maxpool(2)
    pooled = roi_pool(features, proposals, output=4, spatial_scale=0.5) -> flatten -> linear(32)
    scores = pooled -> linear(classes)
    deltas = pooled -> linear(4 * classes)
}
"""


def test_a_roi_head_spec_compiles_and_bad_rois_are_located(tmp_path, capsys):
    from dlc.cli import main
    path = tmp_path / "head.dls"
    path.write_text(HEAD_SPEC)
    assert main(["compile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "f32[8*N,16,4,4]" in out and "f32[8*N,16]" in out        # 8 proposals an image
    path.write_text(HEAD_SPEC.replace("f32[8, 4]", "f32[8, 5]"))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "head.dls:6:14: error: roi_pool expects RoIs [R, 5]" in err
