"""CNN ops (conv, pools, batch norm, LRN, leaky_relu, identity, upsample): each IR VJP against
torch.autograd, batch-norm running statistics against nn.BatchNorm, shape rules against
PyTorch's, symbolic sizes, errors, and a spec compiled end to end."""
from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, StateSpec, TensorType
from dlc.compiler.lower import lower
from dlc.compiler.ops import Builder, ShapeError, dims, get
from dlc.runtime.reference import ReferenceProgram

DT = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def resolve(op: str, bound: dict, x_shape) -> dict:
    """Node attrs as the elaborator makes them: `attrs()` over the bound language arguments."""
    return get(op).attrs(bound, [TensorType(tuple(x_shape))])


def ir_grads(op: str, feeds: dict[str, torch.Tensor], attrs: dict, target_seed=99):
    """Build `loss = mse(op(*feeds), t)`, run autodiff, execute; return (out, grads, graph)."""
    g = Graph("t")
    vals = [g.add_input(k, TensorType(tuple(v.shape))) for k, v in feeds.items()]
    b = Builder(g)
    y = b.emit(op, vals, attrs)[0]
    t = g.add_input("target", y.type)
    loss = b.emit1("mse", [y, t])
    grads = backward(g, loss, vals)
    g.outputs = [y, *(grads[id(v)] for v in vals)]
    out = y.type.shape
    target = rand(*out, seed=target_seed)
    outs, _, _ = ReferenceProgram(g, training=True).run({}, {**feeds, "target": target})
    return outs[0], outs[1:], g, target


def check_vjp(op: str, feeds: dict[str, torch.Tensor], attrs: dict, torch_fn, bwd_ops=()):
    """The IR's gradients of every input equal torch.autograd's for the same computation."""
    y, grads, g, target = ir_grads(op, feeds, attrs)
    leaves = [v.clone().requires_grad_(True) for v in feeds.values()]
    ty = torch_fn(*leaves)
    torch.testing.assert_close(y, ty.detach())
    expected = torch.autograd.grad(F.mse_loss(ty, target), leaves)
    for name, got, want in zip(feeds, grads, expected):
        torch.testing.assert_close(got, want, msg=lambda m: f"d/d{name}: {m}")
    ops = {n.op for n in g.nodes}
    for name in bwd_ops:
        assert name in ops, f"expected backward op {name} in {sorted(ops)}"


# -- convolution ----------------------------------------------------------------------------------

CONV_CASES = [
    # (C, H, W), bound arguments
    ((3, 7, 6), dict(out=4, kernel=3)),
    ((3, 8, 9), dict(out=5, kernel=(3, 2), stride=(2, 1), padding=(1, 0))),
    ((4, 9, 9), dict(out=6, kernel=3, stride=2, padding=2, dilation=2, groups=2)),
    ((4, 6, 7), dict(out=4, kernel=(1, 3), groups=4, bias=False)),          # depthwise
    ((2, 5, 5), dict(out=3, kernel=5, padding="valid")),
    ((2, 6, 5), dict(out=3, kernel=(3, 5), padding="same", dilation=(2, 1))),
    ((3, 10, 10), dict(out=2, kernel=4, stride=3, padding=0, bias=True)),
]


@pytest.mark.parametrize("chw,bound", CONV_CASES)
def test_conv2d_vjp_matches_autograd(chw, bound):
    x = rand(2, *chw)
    a = resolve("conv2d", {"stride": 1, "padding": None, "dilation": 1, "groups": 1, "bias": True,
                           **bound}, x.shape)
    kh, kw = a["kernel"]
    feeds = {"x": x, "w": rand(a["out"], chw[0] // a["groups"], kh, kw, seed=1)}
    if a["bias"]:
        feeds["b"] = rand(a["out"], seed=2)

    def ref(x, w, b=None):
        return F.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])

    check_vjp("conv2d", feeds, a, ref, bwd_ops=("conv2d_bwd_input", "conv2d_bwd_weight"))


def test_conv_attrs_defaults_and_state():
    op = get("conv2d")
    x = TensorType(("N", 6, 12, 12))
    a = op.attrs({"out": 8, "kernel": (5, 3), "stride": 1, "padding": None, "dilation": 1,
                  "groups": 2, "bias": True}, [x])
    assert a == {"out": 8, "kernel": (5, 3), "stride": (1, 1), "padding": (2, 1),
                 "dilation": (1, 1), "groups": 2, "bias": True}
    assert op.infer([x], a)[0].shape == ("N", 8, 12, 12)
    w, b = op.state([x], a)
    assert (w.name, w.shape, w.init) == ("weight", (8, 3, 5, 3), "uniform(0.149071)")
    assert (b.name, b.shape, b.init) == ("bias", (8,), "uniform(0.149071)")   # 1/sqrt(45)
    dil = op.attrs({"out": 1, "kernel": 3, "dilation": 2}, [x])
    assert dil["padding"] == (2, 2)                               # dilation*(k-1)//2
    assert op.attrs({"out": 1, "kernel": 3, "padding": "valid"}, [x])["padding"] == (0, 0)
    assert op.attrs({"out": 1, "kernel": 3, "padding": (0, 1)}, [x])["padding"] == (0, 1)


def test_conv_flops_count_groups_and_bias():
    op = get("conv2d")
    x = TensorType(("N", 4, 8, 8))
    a = op.attrs({"out": 6, "kernel": 3, "groups": 2}, [x])
    out = op.infer([x], a)
    assert op.flops([x], out, a) == 6 * 8 * 8 * (2 * 2 * 9) + 6 * 8 * 8
    a = op.attrs({"out": 6, "kernel": 3, "stride": 2, "bias": False}, [x])
    out = op.infer([x], a)
    assert op.flops([x], out, a) == 6 * 4 * 4 * 2 * 4 * 9
    sym = TensorType(("N", 4, "H", "W"))
    assert op.flops([sym], op.infer([sym], a), a) == 0      # symbolic: not counted, no crash


def test_conv_shape_matches_torch():
    op = get("conv2d")
    for h, k, s, p, d in itertools.product((5, 8, 11), (1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (1, 2)):
        a = op.attrs({"out": 2, "kernel": (k, 1), "stride": (s, 1), "padding": (p, 0),
                      "dilation": (d, 1)}, [])
        x = TensorType((1, 1, h, 3))
        want = F.conv2d(torch.zeros(1, 1, h, 3), torch.zeros(2, 1, k, 1), None, (s, 1), (p, 0),
                        (d, 1)).shape if h + 2 * p >= d * (k - 1) + 1 else None
        if want is None:
            with pytest.raises(ShapeError):
                op.infer([x], a)
        else:
            assert op.infer([x], a)[0].shape == tuple(want)


@pytest.mark.parametrize("bound,x,message", [
    ({"out": 4, "kernel": 3, "padding": 0}, (1, 3, 2, 2), "on a 2x2 input gives a 0x0 output"),
    ({"out": 4, "kernel": 3, "stride": 2, "padding": "same"}, (1, 3, 8, 8), "needs stride 1"),
    ({"out": 4, "kernel": 2, "padding": "same"}, (1, 3, 8, 8), "odd kernel"),
    ({"out": 4, "kernel": 3, "groups": 2}, (1, 3, 8, 8), "divisible by 2"),
    ({"out": 3, "kernel": 3, "groups": 2}, (1, 4, 8, 8), "divisible by 2"),
    ({"out": 4, "kernel": 3}, (1, 3, 8), "expects an image batch [N, C, H, W]"),
])
def test_conv_errors(bound, x, message):
    op = get("conv2d")
    t = TensorType(x)
    with pytest.raises(ShapeError, match=None) as e:
        op.infer([t], op.attrs(bound, [t]))
    assert message in str(e.value)


# -- pooling ------------------------------------------------------------------------------------

POOL_CASES = [
    dict(kernel=2),
    dict(kernel=3, stride=2, padding=1),
    dict(kernel=3, stride=2, ceil=True),
    dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0), ceil=True),
    dict(kernel=2, stride=3, padding=1, ceil=True),
    dict(kernel=3, stride=1, padding=1, ceil=True),
]


@pytest.mark.parametrize("bound", POOL_CASES)
def test_max_pool2d_vjp_matches_autograd(bound):
    x = rand(2, 3, 7, 8)
    a = resolve("max_pool2d", bound, x.shape)
    check_vjp("max_pool2d", {"x": x}, a,
              lambda x: F.max_pool2d(x, a["kernel"], a["stride"], a["padding"],
                                     ceil_mode=a["ceil"]), bwd_ops=("max_pool2d_bwd",))


@pytest.mark.parametrize("bound", POOL_CASES)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avg_pool2d_vjp_matches_autograd(bound, include_pad):
    x = rand(2, 3, 7, 8)
    a = resolve("avg_pool2d", {**bound, "count_include_pad": include_pad}, x.shape)
    check_vjp("avg_pool2d", {"x": x}, a,
              lambda x: F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"],
                                     ceil_mode=a["ceil"], count_include_pad=include_pad),
              bwd_ops=("avg_pool2d_bwd",))


def test_pool_attrs_default_stride_is_kernel():
    a = resolve("max_pool2d", {"kernel": (3, 2)}, (1, 1, 8, 8))
    assert a == {"kernel": (3, 2), "stride": (3, 2), "padding": (0, 0), "ceil": False}
    b = resolve("avg_pool2d", {"kernel": 2, "stride": 1}, (1, 1, 8, 8))
    assert b == {"kernel": (2, 2), "stride": (1, 1), "padding": (0, 0), "ceil": False,
                 "count_include_pad": True}


def _torch_pool_shape(size, k, s, p, ceil):
    try:
        return F.max_pool2d(torch.zeros(1, 1, size, 3), (k, 1), (s, 1), (p, 0),
                            ceil_mode=ceil).shape[2]
    except RuntimeError:
        return None


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_shape_rule_matches_torch(op):
    impl = get(op)
    checked = 0
    for size, k, s, ceil in itertools.product(range(1, 14), range(1, 6), range(1, 5),
                                              (False, True)):
        for p in range(0, k // 2 + 1):
            a = impl.attrs({"kernel": (k, 1), "stride": (s, 1), "padding": (p, 0), "ceil": ceil},
                           [])
            want = _torch_pool_shape(size, k, s, p, ceil)
            x = TensorType((1, 1, size, 3))
            if want is None:
                with pytest.raises(ShapeError, match=f"on a {size}x3 input"):
                    impl.infer([x], a)
                continue
            assert impl.infer([x], a)[0].shape[2] == want, (size, k, s, p, ceil)
            # the symbolic rule, evaluated at this size, gives the same answer
            sym = impl.infer([TensorType((1, 1, "H", 3))], a)[0].shape[2]
            assert eval(str(sym), {"H": size}) == want, (sym, size, k, s, p, ceil)
            checked += 1
    assert checked > 500


def test_pool_errors():
    mp = get("max_pool2d")
    x = TensorType((1, 3, 1, 1))
    with pytest.raises(ShapeError, match=r"on a 1x1 input gives a 0x0 output"):
        mp.infer([x], mp.attrs({"kernel": 2}, [x]))
    y = TensorType((1, 3, 8, 8))
    with pytest.raises(ShapeError, match="at most half the kernel"):
        mp.infer([y], mp.attrs({"kernel": 2, "padding": 2}, [y]))
    with pytest.raises(ShapeError, match=r"\[N, C, H, W\]"):
        mp.infer([TensorType((1, 8))], mp.attrs({"kernel": 2}, []))


def test_global_avg_pool_vjp_and_shape():
    x = rand(2, 3, 5, 4)
    assert get("global_avg_pool").infer([TensorType(("N", 3, "H", "W"))], {})[0].shape == \
        ("N", 3, 1, 1)
    check_vjp("global_avg_pool", {"x": x}, {}, lambda x: F.adaptive_avg_pool2d(x, 1),
              bwd_ops=("global_avg_pool_bwd",))


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upsample_nearest_vjp(scale):
    x = rand(2, 3, 4, 5)
    check_vjp("upsample_nearest", {"x": x}, {"scale": scale},
              lambda x: F.interpolate(x, scale_factor=scale, mode="nearest"),
              bwd_ops=("upsample_nearest_bwd",))


# -- batch norm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 4)])
def test_batch_norm_train_vjp(shape):
    c = shape[1]
    feeds = {"x": rand(*shape) * 2 + 1, "w": rand(c, seed=1), "b": rand(c, seed=2)}
    a = {"eps": 1e-3}
    y, grads, g, target = ir_grads("batch_norm_train", feeds, a)
    leaves = [v.clone().requires_grad_(True) for v in feeds.values()]
    ty = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True, 0.1, 1e-3)
    torch.testing.assert_close(y, ty.detach())
    want = torch.autograd.grad(F.mse_loss(ty, target), leaves)
    for got, w in zip(grads, want):
        torch.testing.assert_close(got, w)
    assert "batch_norm_train_bwd" in {n.op for n in g.nodes}


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 4)])
def test_batch_norm_eval_vjp(shape):
    c = shape[1]
    rm, rv = rand(c, seed=3), rand(c, seed=4).abs() + 0.5
    feeds = {"x": rand(*shape), "w": rand(c, seed=1), "b": rand(c, seed=2), "rm": rm, "rv": rv}
    y, grads, g, target = ir_grads("batch_norm", feeds, {"eps": 1e-5, "momentum": 0.1})
    leaves = [v.clone().requires_grad_(True) for v in list(feeds.values())[:3]]
    ty = F.batch_norm(leaves[0], rm, rv, leaves[1], leaves[2], False, 0.1, 1e-5)
    torch.testing.assert_close(y, ty.detach())
    for got, w in zip(grads, torch.autograd.grad(F.mse_loss(ty, target), leaves)):
        torch.testing.assert_close(got, w)


def _bn_model(shape, momentum=0.1, eps=1e-5):
    """A model graph holding one `bn` exactly as the elaborator builds it."""
    op = get("batch_norm")
    g = Graph("bn")
    x = g.add_input("x", TensorType(shape))
    a = op.attrs({"eps": eps, "momentum": momentum}, [x.type])
    state = [g.add_state(StateSpec(f"bn.{s.name}", TensorType(s.shape), s.init, s.trainable,
                                   s.kind)) for s in op.state([x.type], a)]
    g.outputs = [Builder(g).emit1("batch_norm", [x, *state], a)]
    g.output_names = ["out"]
    return g


@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (16, 4)])
def test_batch_norm_running_stats_and_eval_match_torch(shape):
    c = shape[1]
    model = _bn_model(shape)
    assert [(v.state.name, v.state.init, v.state.trainable, v.state.kind)
            for v in model.state.values()] == [
        ("bn.weight", "ones", True, "param"), ("bn.bias", "zeros", True, "param"),
        ("bn.running_mean", "zeros", False, "buffer"), ("bn.running_var", "ones", False, "buffer")]
    ref = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(c).double()
    with torch.no_grad():
        ref.weight.copy_(rand(c, seed=5))
        ref.bias.copy_(rand(c, seed=6))
        ref.running_mean.copy_(rand(c, seed=7))
        ref.running_var.copy_(rand(c, seed=8).abs() + 0.5)
    state = {"bn.weight": ref.weight.detach().clone(), "bn.bias": ref.bias.detach().clone(),
             "bn.running_mean": ref.running_mean.clone(), "bn.running_var": ref.running_var.clone()}
    x = rand(*shape, seed=9) * 3 + 2

    train = lower(model, "train")
    assert set(train.updates) == {"bn.running_mean", "bn.running_var"}
    outs, updates, _ = ReferenceProgram(train, training=True).run(state, {"x": x})
    ref.train()
    want = ref(x)
    torch.testing.assert_close(outs[0], want.detach())
    torch.testing.assert_close(updates["bn.running_mean"], ref.running_mean)
    torch.testing.assert_close(updates["bn.running_var"], ref.running_var)

    state.update(updates)
    ev = lower(model, "eval")
    assert not ev.updates and [n.op for n in ev.nodes] == ["batch_norm"]
    outs, _, _ = ReferenceProgram(ev, training=False).run(state, {"x": x})
    ref.eval()
    torch.testing.assert_close(outs[0], ref(x).detach())


def test_batch_norm_train_graph_param_grads_match_torch():
    shape = (4, 3, 3, 3)
    train = lower(_bn_model(shape, momentum=0.3, eps=1e-3), "train")
    b = Builder(train)
    t = train.add_input("target", train.outputs[0].type)
    loss = b.emit1("mse", [train.outputs[0], t])
    params = [v for v in train.state.values() if v.state.trainable]
    grads = backward(train, loss, params)
    train.outputs = [loss, *(grads[id(p)] for p in params)]
    ref = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.3).double()
    with torch.no_grad():
        ref.weight.copy_(rand(3, seed=1))
        ref.bias.copy_(rand(3, seed=2))
    state = {"bn.weight": ref.weight.detach().clone(), "bn.bias": ref.bias.detach().clone(),
             "bn.running_mean": torch.zeros(3, dtype=DT), "bn.running_var": torch.ones(3, dtype=DT)}
    x, target = rand(*shape, seed=3), rand(*shape, seed=4)
    outs, updates, _ = ReferenceProgram(train, training=True).run(state, {"x": x, "target": target})
    tl = F.mse_loss(ref(x), target)
    gw, gb = torch.autograd.grad(tl, [ref.weight, ref.bias])
    torch.testing.assert_close(outs[0], tl.detach())
    torch.testing.assert_close(outs[1], gw)
    torch.testing.assert_close(outs[2], gb)
    torch.testing.assert_close(updates["bn.running_var"], ref.running_var)


def test_batch_norm_rejects_bad_input():
    op = get("batch_norm")
    with pytest.raises(ShapeError, match=r"\[N, C\] or \[N, C, H, W\]"):
        op.infer([TensorType(("N", 3, 4))], op.attrs({}, []))
    with pytest.raises(ShapeError, match="momentum"):
        op.infer([TensorType(("N", 3))], op.attrs({"momentum": 1.5}, []))


# -- LRN, leaky_relu, identity ------------------------------------------------------------------

@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (3, 0.5, 0.75, 1.0),
                                              (2, 0.3, 1.5, 0.5), (1, 0.2, 0.5, 1.0),
                                              (4, 1.0, 0.6, 1.0)])
def test_local_response_norm_vjp(size, alpha, beta, k):
    x = rand(2, 6, 3, 4) * 2
    a = resolve("local_response_norm", {"size": size, "alpha": alpha, "beta": beta, "k": k},
                x.shape)
    check_vjp("local_response_norm", {"x": x}, a,
              lambda x: F.local_response_norm(x, size, alpha, beta, k),
              bwd_ops=("local_response_norm_bwd",))


def test_lrn_defaults_follow_torch():
    assert resolve("local_response_norm", {}, (1, 4, 2, 2)) == \
        {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}
    assert "divided by size" in get("local_response_norm").doc


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5, 0.0])
def test_leaky_relu_vjp(slope):
    x = rand(3, 4, 2, 2)
    check_vjp("leaky_relu", {"x": x}, {"slope": slope}, lambda x: F.leaky_relu(x, slope),
              bwd_ops=("leaky_relu_bwd",))


def test_identity_vjp_and_lowering():
    x = rand(2, 3, 2, 2)
    check_vjp("identity", {"x": x}, {}, lambda x: x * 1)
    g = Graph("id")
    v = g.add_input("x", TensorType(("N", 3)))
    g.outputs = [Builder(g).emit1("identity", [v])]
    assert lower(g, "train").nodes == [] and lower(g, "eval").outputs[0].input_name == "x"


# -- symbolic sizes -------------------------------------------------------------------------------

def test_symbolic_dims_are_readable_and_canonical():
    assert dims.conv_out("H", 1, 1, 0) == "H"
    assert dims.conv_out("H", 3, 1, 1) == "H"
    assert dims.conv_out(32, 3, 2, 1) == 16
    down = dims.conv_out("H", 3, 2, 1)
    assert down == "(H+1)//2" == dims.conv_out("H", 1, 2, 0)   # residual paths agree
    assert dims.pool_out("H", 2, 2, 0, False) == "H//2"
    assert dims.pool_out(dims.conv_out("H", 7, 2, 3), 3, 2, 1, False) == "(H+3)//4"
    assert dims.scale("H//2", 2) == "2*(H//2)"
    assert dims.floordiv(dims.scale("(H+3)//4", 2), 2) == "(H+3)//4"
    assert dims.simplify("-(H//2)+1") == "-(H//2)+1"
    for h in range(1, 50):
        assert eval(dims.conv_out("H", 3, 2, 1), {"H": h}) == dims.conv_out(h, 3, 2, 1)
        v = dims.pool_out(dims.pool_out("H", 1, 2, 0, True), 3, 2, 1, True)
        want = dims.pool_out(dims.pool_out(h, 1, 2, 0, True), 3, 2, 1, True)
        if want >= 1:
            assert eval(v, {"H": h}) == want, (v, h)


def test_symbolic_shapes_through_ops_never_crash():
    x = TensorType(("N", 3, "H", "W"))
    conv = get("conv2d")
    a = conv.attrs({"out": 8, "kernel": 3, "stride": 2}, [x])
    y = conv.infer([x], a)[0]
    assert y.shape == ("N", 8, "(H+1)//2", "(W+1)//2")
    assert conv.flops([x], [y], a) == 0
    for op, attrs in [("max_pool2d", {"kernel": 3, "stride": 2, "ceil": True}),
                      ("avg_pool2d", {"kernel": 2}), ("global_avg_pool", {}),
                      ("upsample_nearest", {"scale": 2}), ("local_response_norm", {}),
                      ("batch_norm", {}), ("leaky_relu", {})]:
        impl = get(op)
        at = impl.attrs(attrs, [y])
        out = impl.infer([y], at)
        assert isinstance(impl.flops([y], out, at), int)
    assert get("upsample_nearest").infer([y], {"scale": 2})[0].shape[2] == "2*((H+1)//2)"


# -- end to end ---------------------------------------------------------------------------------

SPEC = """
model Tiny(classes=3) {
    input x: f32[3, 12, 12]
    conv(8, 3, bias=false) -> bn -> relu
    maxpool(2)
    conv(16, [3, 1], stride=[2, 1], groups=2) -> bn(eps=1e-3, momentum=0.2) -> leaky_relu(0.1)
    lrn(3) -> avgpool(2, ceil=true) -> identity
    global_avgpool -> flatten -> linear(classes)
}
train {
    data      digits
    loss      cross_entropy
    optimizer sgd(lr=0.1, momentum=0.9)
    batch     4
    epochs    1
}
"""


def test_spec_with_cnn_layers_compiles_and_trains_one_step(tmp_path):
    path = tmp_path / "tiny.dls"
    path.write_text(SPEC)
    spec = dlc.compile_spec(path)
    g = spec.graph
    assert [n.op for n in g.nodes] == [
        "conv2d", "batch_norm", "relu", "max_pool2d", "conv2d", "batch_norm", "leaky_relu",
        "local_response_norm", "avg_pool2d", "identity", "global_avg_pool", "flatten", "linear"]
    conv2 = g.nodes[4]
    assert conv2.attrs == {"out": 16, "kernel": (3, 1), "stride": (2, 1), "padding": (1, 0),
                           "dilation": (1, 1), "groups": 2, "bias": True}
    assert conv2.outputs[0].type.shape == ("N", 16, 3, 6)
    # 8*3*9 + 2*8 + (16*4*3 + 16) + 2*16 + 16*3 + 3
    assert spec.num_params() == 216 + 16 + 208 + 32 + 51
    assert "conv2d" in spec.summary() and "batch_norm" in spec.summary()

    from dlc.compiler.pipeline import build_train_graph
    from dlc.runtime.state import init_state
    train = build_train_graph(g, spec.config)
    state = init_state(train, seed=0)
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    outs, updates, _ = ReferenceProgram(train, training=True).run(
        state, {"x": x, "y": torch.tensor([0, 1, 2, 1]), "lr": torch.tensor(0.1)})
    assert torch.isfinite(outs[0])
    assert not torch.equal(updates["bn1.running_mean"], state["bn1.running_mean"])
    assert not torch.equal(updates["conv1.weight"], state["conv1.weight"])


def test_cli_compile_prints_summary(tmp_path):
    path = tmp_path / "tiny.dls"
    path.write_text(SPEC)
    r = subprocess.run([sys.executable, "-m", "dlc", "compile", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "conv2d" in r.stdout and "max_pool2d" in r.stdout and "parameters:" in r.stdout


def test_cli_reports_shrinking_conv(tmp_path):
    path = tmp_path / "bad.dls"
    path.write_text("model Bad {\n    input x: f32[3, 4, 4]\n    conv(8, 5, padding=0)\n}\n")
    r = subprocess.run([sys.executable, "-m", "dlc", "check", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "4x4 input gives a 0x0 output" in r.stdout + r.stderr


def test_compiling_ops_does_not_import_torch():
    code = ("import sys, dlc.compiler.ops as o; "
            "from dlc.compiler.ir import TensorType as T; "
            "c = o.get('conv2d'); x = T(('N', 3, 8, 8)); "
            "a = c.attrs({'out': 4, 'kernel': 3}, [x]); "
            "c.infer([x], a); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
