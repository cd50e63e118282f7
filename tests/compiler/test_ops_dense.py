"""The dense-prediction ops against torch: forward and gradient (torch.autograd) of
conv_transpose (with FCN's bilinear initialisation), bilinear resizing to a factor or to
another tensor's size (align_corners both ways), crop and adaptive average pooling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder, get
from dlc.runtime.reference import ReferenceProgram

TOL = dict(rtol=1e-6, atol=1e-9)


def check(op, xs, attrs, want_fn, grad_wrt=(0,)):
    """dlc's forward and the gradients of sum(y * r) against torch.autograd (float64)."""
    gen = torch.Generator().manual_seed(0)
    g = Graph("t")
    vals = [g.add_input(f"x{i}", TensorType(tuple(x.shape))) for i, x in enumerate(xs)]
    b = Builder(g)
    full = get(op).attrs(attrs, [v.type for v in vals])
    y = b.emit1(op, vals, full)
    r = g.add_input("r", y.type)
    obj = b.emit1("mul", [y, r])
    grads = backward(g, obj, [vals[i] for i in grad_wrt])
    g.outputs = [y, *[grads[id(vals[i])] for i in grad_wrt]]
    rv = torch.randn(y.type.shape, generator=gen, dtype=torch.float64)
    feed = {f"x{i}": x for i, x in enumerate(xs)}
    got, _, _ = ReferenceProgram(g, training=True).run({}, {**feed, "r": rv})
    leaves = [x.clone().requires_grad_(True) for x in xs]
    want = want_fn(*leaves)
    want_g = torch.autograd.grad(want, [leaves[i] for i in grad_wrt], grad_outputs=rv)
    torch.testing.assert_close(got[0], want.detach(), **TOL)
    for a, w in zip(got[1:], want_g):
        torch.testing.assert_close(a, w, **TOL)
    return g


def rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kernel, stride, padding, out_pad, groups", [
    (4, 2, 1, 0, 1), (3, 2, 1, 1, 1), (3, 1, 0, 0, 2), (16, 8, 4, 0, 1), ([3, 2], [2, 1], 0, 0, 1)])
def test_conv_transpose_matches_autograd(kernel, stride, padding, out_pad, groups):
    x, w, bias = rand(2, 4, 5, 6), rand(4, 6 // groups, *([kernel] * 2 if isinstance(kernel, int)
                                                          else kernel), seed=2), rand(6, seed=3)
    attrs = {"out": 6, "kernel": kernel, "stride": stride, "padding": padding,
             "output_padding": out_pad, "groups": groups}
    g = check("conv_transpose2d", [x, w, bias], attrs,
              lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, out_pad, groups),
              grad_wrt=(0, 1, 2))
    assert {"conv2d", "conv2d_bwd_weight"} <= {n.op for n in g.nodes}


def test_conv_transpose_state_and_bilinear_init():
    from dlc.runtime.state import init_tensor
    from dlc.compiler.ir import StateSpec
    op = get("conv_transpose2d")
    t = TensorType((1, 3, 8, 8))
    a = op.attrs({"out": 3, "kernel": 4, "stride": 2, "init": "bilinear", "bias": False}, [t])
    (weight,) = op.state([t], a)
    w = init_tensor(StateSpec("w", TensorType(weight.shape), weight.init), torch.Generator())
    # fcn.berkeleyvision.org surgery.upsample_filt(4), on the channel diagonal
    f = np.array([0.25, 0.75, 0.75, 0.25])
    want = np.zeros((3, 3, 4, 4), np.float32)
    for i in range(3):
        want[i, i] = np.outer(f, f)
    np.testing.assert_allclose(w.numpy(), want)
    # bilinear weights make the transposed conv a bilinear 2x upsampling in the interior
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    y = F.conv_transpose2d(x, w.double(), stride=2, padding=1)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
    # default: as nn.ConvTranspose2d, U(-1/sqrt(out/g*k*k), ...)
    a = op.attrs({"out": 6, "kernel": 3}, [t])
    assert [s.init for s in op.state([t], a)] == ["uniform(0.136083)"] * 2


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("scale", [2, 3])
def test_resize_by_factor_matches_autograd(scale, align):
    check("resize_bilinear", [rand(2, 3, 4, 5)], {"scale": scale, "align_corners": align},
          lambda x: F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align))


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("size", [(9, 13), (3, 2)])           # up and down
def test_resize_to_another_value_matches_autograd(size, align):
    x, ref = rand(2, 3, 5, 6), rand(2, 1, *size, seed=4)
    check("resize_bilinear_to", [x, ref], {"align_corners": align},
          lambda x, ref: F.interpolate(x, size=size, mode="bilinear", align_corners=align))


@pytest.mark.parametrize("offset", [0, 2, [1, 3]])
def test_crop_matches_autograd(offset):
    x, ref = rand(2, 3, 9, 10), rand(2, 5, 5, 6, seed=4)
    oh, ow = (offset, offset) if isinstance(offset, int) else offset
    check("crop", [x, ref], {"offset": offset}, lambda x, ref: x[:, :, oh:oh + 5, ow:ow + 6])


@pytest.mark.parametrize("size", [1, 3, [2, 5], [7, 4]])
def test_adaptive_avg_pool_matches_autograd(size):
    check("adaptive_avg_pool", [rand(2, 3, 7, 9)], {"size": size},
          lambda x: F.adaptive_avg_pool2d(x, size))


def test_pixel_cross_entropy_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=gen, dtype=torch.float64)
    masks = torch.randint(0, 4, (2, 3, 5), generator=gen)
    masks[0, 1] = 255
    g = Graph("t")
    z = g.add_input("z", TensorType((2, 4, 3, 5)))
    m = g.add_input("m", TensorType((2, 3, 5), "i64"))
    b = Builder(g)
    loss = b.emit1("pixel_cross_entropy", [z, m], {"ignore": 255})
    g.outputs = [loss, backward(g, loss, [z])[id(z)]]
    (got, gz), _, _ = ReferenceProgram(g, training=True).run({}, {"z": logits, "m": masks})
    leaf = logits.clone().requires_grad_(True)
    want = F.cross_entropy(leaf, masks, ignore_index=255)
    torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(gz, torch.autograd.grad(want, leaf)[0])


@pytest.mark.parametrize("op, ins, attrs, message", [
    ("crop", [(1, 2, 4, 4), (1, 2, 3, 3)], {"offset": 2}, "crop cannot cut a height of 3"),
    ("conv_transpose2d", [(1, 2, 4, 4)], {"out": 3, "kernel": 4, "init": "bilinear"},
     "needs as many output channels"),
    ("conv_transpose2d", [(1, 2, 4, 4)], {"out": 2, "kernel": 3, "stride": 2,
                                          "output_padding": 2}, "must be smaller than the stride"),
])
def test_shape_errors(op, ins, attrs, message):
    from dlc.compiler.ops import ShapeError
    types = [TensorType(s) for s in ins]
    with pytest.raises(ShapeError, match=message):
        impl = get(op)
        impl.infer(types, impl.attrs(attrs, types))


def test_dense_ops_export_to_onnx(tmp_path):
    """ONNX Runtime on the exported inference graph against the reference backend."""
    import onnxruntime as ort
    import dlc
    from dlc.compiler.onnx_export import export_onnx
    path = tmp_path / "net.dls"
    path.write_text("""
model Net {
    input x: f32[3, 8, 12]
    a = conv(4, 3, stride=2) -> adaptive_avgpool([2, 3])
    b = conv_transpose(x -> conv(4, 1), 4, 3, stride=2, padding=1, output_padding=1)
    c = crop(b, x, offset=[1, 0])
    d = resize(conv(x, 4, 1), 3, align_corners=true)
    e = resize_to(a, x)
    output c, d, e
}
""")
    spec = dlc.compile_spec(path)
    model = dlc.build(spec, device="cpu")
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 12)).astype(np.float32)
    session = ort.InferenceSession(export_onnx(spec, model.state),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})
    for i, g in enumerate(got):
        np.testing.assert_allclose(g, model.predict(x, output=i), rtol=1e-4, atol=1e-5)
