"""Dense ops and losses (compiler/ops/core.py, losses.py): every IR vector-Jacobian product
against torch.autograd, dropout's train/eval lowering, each reference forward against the
torch function it transcribes, and the doc strings of the language's layers.

A gradient check builds a tiny graph `y = op(inputs)`, multiplies y by an input `r` (a random
upstream gradient), runs `autodiff.backward` from that product (the seed is ones, so y's
gradient is exactly r), executes the graph on the reference backend and compares every input
gradient with `torch.autograd.grad(y_torch, inputs, grad_outputs=r)`.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.lower import lower
from dlc.compiler.ops import Builder, ExecContext, all_ops, get
from dlc.runtime.reference import ReferenceProgram

DT = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def ir_vjp(op: str, feeds: dict[str, torch.Tensor], attrs: dict, upstream: torch.Tensor,
           int_feeds: dict[str, torch.Tensor] = None):
    """Execute y = op(*feeds, *int_feeds) and its autodiff gradients w.r.t. every float feed,
    with upstream gradient `upstream`.  Returns (y, [grads], graph)."""
    int_feeds = int_feeds or {}
    g = Graph("t")
    vals = [g.add_input(k, TensorType(tuple(v.shape))) for k, v in feeds.items()]
    ints = [g.add_input(k, TensorType(tuple(v.shape), "i64")) for k, v in int_feeds.items()]
    b = Builder(g)
    y = b.emit1(op, vals + ints, attrs)
    r = g.add_input("upstream", y.type)
    objective = b.emit1("mul", [y, r])                  # d objective / d y = r
    grads = backward(g, objective, vals)
    g.outputs = [y, *(grads[id(v)] for v in vals)]
    outs, _, _ = ReferenceProgram(g, training=True).run(
        {}, {**feeds, **int_feeds, "upstream": upstream})
    return outs[0], outs[1:], g


def check_vjp(op: str, feeds: dict[str, torch.Tensor], attrs: dict, torch_fn, *, seed=123,
              bwd_ops=()):
    """IR gradients of every input == torch.autograd's, for a random upstream gradient."""
    leaves = [v.clone().requires_grad_(True) for v in feeds.values()]
    want_y = torch_fn(*leaves)
    upstream = rand(*want_y.shape, seed=seed)
    y, grads, g = ir_vjp(op, feeds, attrs, upstream)
    torch.testing.assert_close(y, want_y.detach())
    want = torch.autograd.grad(want_y, leaves, grad_outputs=upstream)
    assert len(grads) == len(want)
    for name, got, w in zip(feeds, grads, want):
        torch.testing.assert_close(got, w, msg=lambda m: f"{op}: d/d{name}: {m}")
    ops = {n.op for n in g.nodes}
    for name in bwd_ops:
        assert name in ops, f"expected backward op {name} in {sorted(ops)}"
    return g


# -- linear ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear_vjp(bias):
    feeds = {"x": rand(5, 7), "w": rand(4, 7, seed=1)}
    if bias:
        feeds["b"] = rand(4, seed=2)
    check_vjp("linear", feeds, {"out": 4, "bias": bias},
              lambda x, w, b=None: F.linear(x, w, b), bwd_ops=("matmul",))


def test_linear_vjp_only_emits_needed_gradients():
    """x is data (no gradient wanted): the backward builds no gx = gy @ W node."""
    g = Graph("t")
    x = g.add_input("x", TensorType((3, 4)))
    w = g.add_input("w", TensorType((2, 4)))
    y = Builder(g).emit1("linear", [x, w], {"out": 2, "bias": False})
    backward(g, y, [w])
    matmuls = [n for n in g.nodes if n.op == "matmul"]
    assert len(matmuls) == 1 and matmuls[0].attrs == {"transpose_a": True}


# -- activations ---------------------------------------------------------------------------------

ACTIVATIONS = [
    ("relu", torch.relu),
    ("sigmoid", torch.sigmoid),
    ("tanh", torch.tanh),
    ("softmax", lambda x: torch.softmax(x, dim=1)),
]


@pytest.mark.parametrize("op,fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 4, 5)])
def test_activation_vjp(op, fn, shape):
    x = rand(*shape) * 2
    if op == "relu":                       # keep clear of the kink at 0
        x = torch.where(x.abs() < 1e-3, x + 0.1, x)
    check_vjp(op, {"x": x}, {}, fn, bwd_ops=(op + "_bwd",))


def test_softmax_is_over_dim_1_for_images():
    """On [N, C, H, W] the softmax normalises over channels, like nn.Softmax2d."""
    x = rand(2, 3, 4, 5)
    (y,) = get("softmax").forward([x], {}, ExecContext())
    torch.testing.assert_close(y.sum(1), torch.ones(2, 4, 5, dtype=DT))


# -- shape ops -------------------------------------------------------------------------------------

def test_flatten_vjp():
    check_vjp("flatten", {"x": rand(3, 2, 4, 5)}, {}, lambda x: x.flatten(1),
              bwd_ops=("reshape",))


@pytest.mark.parametrize("shape,target", [((3, 24), (2, 3, 4)), ((2, 3, 4, 5), (60,)),
                                          ((2, 6, 2), (4, 3))])
def test_reshape_vjp(shape, target):
    check_vjp("reshape", {"x": rand(*shape)}, {"shape": target},
              lambda x: x.reshape(x.shape[0], *target))


# -- elementwise and joins -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3])
def test_add_vjp(n):
    feeds = {f"x{i}": rand(3, 4, 2, seed=i) for i in range(n)}
    check_vjp("add", feeds, {}, lambda *xs: sum(xs[1:], xs[0]))


def test_add_of_one_value_twice_accumulates():
    """y = add(x, x): both uses contribute, so dy/dx = 2 r (autodiff sums the two parts)."""
    g = Graph("t")
    x = g.add_input("x", TensorType((3, 4)))
    b = Builder(g)
    y = b.emit1("add", [x, x])
    r = g.add_input("upstream", y.type)
    gx = backward(g, b.emit1("mul", [y, r]), [x])[id(x)]
    g.outputs = [gx]
    xv, rv = rand(3, 4), rand(3, 4, seed=1)
    outs, _, _ = ReferenceProgram(g, training=False).run({}, {"x": xv, "upstream": rv})
    torch.testing.assert_close(outs[0], 2 * rv)


def test_mul_vjp():
    check_vjp("mul", {"a": rand(4, 5), "b": rand(4, 5, seed=1)}, {}, lambda a, b: a * b)


@pytest.mark.parametrize("sizes", [(2, 3), (1, 4, 2), (3, 1, 2, 5)])
def test_concat_axis1_vjp(sizes):
    feeds = {f"x{i}": rand(2, c, 3, 2, seed=i) for i, c in enumerate(sizes)}
    check_vjp("concat", feeds, {"axis": 1}, lambda *xs: torch.cat(xs, dim=1),
              bwd_ops=("slice",))


def test_concat_other_axis_vjp():
    feeds = {"a": rand(2, 3, 4, 2), "b": rand(2, 3, 1, 2, seed=1), "c": rand(2, 3, 2, 2, seed=2)}
    check_vjp("concat", feeds, {"axis": 2}, lambda *xs: torch.cat(xs, dim=2))


def test_concat_of_features_vjp():
    feeds = {"a": rand(3, 2), "b": rand(3, 5, seed=1)}
    check_vjp("concat", feeds, {"axis": 1}, lambda *xs: torch.cat(xs, dim=1))


# -- losses ----------------------------------------------------------------------------------------

def loss_graph(op, pred_shape, attrs, labels_dtype):
    g = Graph("t")
    pred = g.add_input("pred", TensorType(pred_shape))
    tshape = (pred_shape[0],) if labels_dtype == "i64" else pred_shape
    target = g.add_input("target", TensorType(tshape, labels_dtype))
    b = Builder(g)
    loss = b.emit1(op, [pred, target], attrs)
    scale = g.add_input("scale", TensorType(()))
    objective = b.emit1("mul", [loss, scale])
    return g, pred, loss, objective


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("scale", [1.0, -2.5])
def test_cross_entropy_vjp(smoothing, scale):
    n, c = 6, 5
    logits = rand(n, c) * 3
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    g, pred, loss, objective = loss_graph("cross_entropy", (n, c),
                                          {"label_smoothing": smoothing}, "i64")
    g.outputs = [loss, backward(g, objective, [pred])[id(pred)]]
    assert "cross_entropy_bwd" in {nd.op for nd in g.nodes}
    outs, _, _ = ReferenceProgram(g, training=True).run(
        {}, {"pred": logits, "target": labels, "scale": torch.tensor(scale, dtype=DT)})
    leaf = logits.clone().requires_grad_(True)
    want = F.cross_entropy(leaf, labels, label_smoothing=smoothing)
    torch.testing.assert_close(outs[0], want.detach())
    (gz,) = torch.autograd.grad(want * scale, [leaf])
    torch.testing.assert_close(outs[1], gz)


def test_cross_entropy_label_smoothing_value_by_hand():
    """The smoothed target is (1-eps) one_hot + eps/C (PyTorch's definition)."""
    logits = rand(4, 3)
    labels = torch.tensor([2, 0, 1, 1])
    eps = 0.1
    (got,) = get("cross_entropy").forward([logits, labels], {"label_smoothing": eps},
                                          ExecContext())
    logp = torch.log_softmax(logits, dim=1)
    q = F.one_hot(labels, 3).to(DT) * (1 - eps) + eps / 3
    torch.testing.assert_close(got, -(q * logp).sum(1).mean())


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_mse_vjp(shape, scale):
    pred, target = rand(*shape), rand(*shape, seed=1)
    g, p, loss, objective = loss_graph("mse", shape, {}, "f32")
    g.outputs = [loss, backward(g, objective, [p])[id(p)]]
    assert "mse_bwd" in {nd.op for nd in g.nodes}
    outs, _, _ = ReferenceProgram(g, training=True).run(
        {}, {"pred": pred, "target": target, "scale": torch.tensor(scale, dtype=DT)})
    leaf = pred.clone().requires_grad_(True)
    want = F.mse_loss(leaf, target)
    torch.testing.assert_close(outs[0], want.detach())
    (gp,) = torch.autograd.grad(want * scale, [leaf])
    torch.testing.assert_close(outs[1], gp)


# -- dropout ----------------------------------------------------------------------------------------

def dropout_model(shape, p):
    g = Graph("drop")
    x = g.add_input("x", TensorType(shape))
    g.outputs = [Builder(g).emit1("dropout", [x], {"p": p})]
    g.output_names = ["out"]
    return g


def run_dropout_train(shape, p, seed=0):
    """Lower to train mode, add the backward with upstream r, run; returns x, r, y, gx, mask."""
    g = lower(dropout_model(shape, p), "train")
    masks = [n.outputs[0] for n in g.nodes if n.op == "dropout_mask"]
    assert len(masks) == 1, [n.op for n in g.nodes]
    x = g.inputs[0]
    b = Builder(g)
    r = g.add_input("upstream", g.outputs[0].type)
    gx = backward(g, b.emit1("mul", [g.outputs[0], r]), [x])[id(x)]
    g.outputs = [g.outputs[0], gx]
    xv, rv = rand(*shape) + 3.0, rand(*shape, seed=1)          # x away from 0: y == 0 iff dropped
    outs, _, (mask,) = ReferenceProgram(g, training=True, seed=seed).run(
        {}, {"x": xv, "upstream": rv}, fetch=masks)
    return xv, rv, outs[0], outs[1], mask


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_train_forward_and_gradient_use_the_drawn_mask(p):
    x, r, y, gx, mask = run_dropout_train((64, 50), p)
    scale = 1.0 / (1.0 - p)
    values = sorted(torch.unique(mask).tolist())
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale), values
    assert torch.all((mask == 0) | torch.isclose(mask, torch.tensor(scale, dtype=mask.dtype)))
    torch.testing.assert_close(y, x * mask)
    torch.testing.assert_close(gx, r * mask)
    assert torch.equal(y == 0, mask == 0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
def test_dropout_keep_fraction_is_near_one_minus_p(p):
    n = 200_000
    _, _, _, _, mask = run_dropout_train((400, 500), p)
    kept = (mask != 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 6 * sigma, (kept, 1 - p)
    # inverted dropout keeps the expectation: E[mask] = 1
    assert abs(mask.double().mean().item() - 1.0) < 6 * sigma / (1 - p)


def test_dropout_masks_follow_the_seed():
    _, _, _, _, m0 = run_dropout_train((20, 30), 0.5, seed=0)
    _, _, _, _, m0b = run_dropout_train((20, 30), 0.5, seed=0)
    _, _, _, _, m1 = run_dropout_train((20, 30), 0.5, seed=1)
    assert torch.equal(m0, m0b)
    assert not torch.equal(m0, m1)


def test_dropout_eval_is_identity():
    model = dropout_model((5, 7), 0.5)
    ev = lower(model, "eval")
    assert ev.nodes == [] and ev.outputs[0] is ev.inputs[0]
    x = rand(5, 7)
    outs, _, _ = ReferenceProgram(ev, training=False).run({}, {"x": x})
    assert torch.equal(outs[0], x)


def test_dropout_p0_in_training_is_identity():
    tr = lower(dropout_model((5, 7), 0.0), "train")
    assert tr.nodes == [] and tr.outputs[0] is tr.inputs[0]


# -- reference forwards are faithful transcriptions -------------------------------------------------

def _forward(op, ins, attrs):
    return get(op).forward(ins, attrs, ExecContext())


def test_forward_transcriptions():
    x, w, bias = rand(4, 6), rand(3, 6, seed=1), rand(3, seed=2)
    img = rand(2, 3, 4, 5, seed=3)
    cases = [
        ("linear", [x, w, bias], {"out": 3, "bias": True}, F.linear(x, w, bias)),
        ("linear", [x, w], {"out": 3, "bias": False}, x @ w.T),
        ("relu", [img], {}, F.relu(img)),
        ("sigmoid", [img], {}, 1 / (1 + torch.exp(-img))),
        ("tanh", [img], {}, torch.tanh(img)),
        ("softmax", [x], {}, F.softmax(x, dim=1)),
        ("softmax", [img], {}, torch.exp(img) / torch.exp(img).sum(1, keepdim=True)),
        ("flatten", [img], {}, torch.flatten(img, 1)),
        ("reshape", [img], {"shape": (12, 5)}, img.reshape(2, 12, 5)),
        ("add", [x, x * 2, x * 3], {}, 6 * x),
        ("mul", [x, x], {}, x ** 2),
        ("matmul", [x, w], {"transpose_b": True}, x @ w.T),
        ("matmul", [x, x], {"transpose_a": True}, x.T @ x),
        ("sum", [img], {"dims": (0, 2)}, img.sum(dim=(0, 2))),
        ("concat", [img, img * 2], {"axis": 1}, torch.cat([img, img * 2], 1)),
        ("slice", [img], {"axis": 1, "start": 1, "stop": 3}, img[:, 1:3]),
        ("ones_like", [img], {}, torch.ones_like(img)),
        ("zeros_like", [img], {}, torch.zeros_like(img)),
        ("mse", [x, x * 0.5], {}, F.mse_loss(x, x * 0.5)),
        ("cross_entropy", [x, torch.tensor([0, 2, 5, 1])], {"label_smoothing": 0.0},
         F.cross_entropy(x, torch.tensor([0, 2, 5, 1]))),
        ("cross_entropy", [x, torch.tensor([0, 2, 5, 1])], {"label_smoothing": 0.2},
         F.cross_entropy(x, torch.tensor([0, 2, 5, 1]), label_smoothing=0.2)),
    ]
    for op, ins, attrs, want in cases:
        (got,) = _forward(op, ins, attrs)
        torch.testing.assert_close(got, want, msg=lambda m: f"{op} {attrs}: {m}")


def test_forward_dropout_unlowered_is_identity():
    """A dropout node that was not lowered (an inference graph built by hand) passes x through."""
    x = rand(3, 4)
    (y,) = get("dropout").forward([x], {"p": 0.5}, ExecContext(training=False))
    assert torch.equal(y, x)


def test_backward_ops_transcribe_their_formulas():
    """Each *_bwd forward equals its documented formula (checked here without autodiff)."""
    gy, z = rand(4, 6), rand(4, 6, seed=1)
    ctx = ExecContext()
    s = torch.sigmoid(z)
    t = torch.tanh(z)
    sm = torch.softmax(z, 1)
    torch.testing.assert_close(get("sigmoid_bwd").forward([gy, s], {}, ctx)[0], gy * s * (1 - s))
    torch.testing.assert_close(get("tanh_bwd").forward([gy, t], {}, ctx)[0], gy * (1 - t ** 2))
    torch.testing.assert_close(get("relu_bwd").forward([gy, torch.relu(z)], {}, ctx)[0],
                               torch.where(z > 0, gy, torch.zeros_like(gy)))
    jac = torch.diag_embed(sm) - sm.unsqueeze(2) * sm.unsqueeze(1)      # (N, C, C)
    torch.testing.assert_close(get("softmax_bwd").forward([gy, sm], {}, ctx)[0],
                               torch.einsum("nij,nj->ni", jac, gy))


# -- documentation -----------------------------------------------------------------------------------

def test_every_layer_has_a_doc_string():
    layers = {name: op for name, op in all_ops().items() if op.layer}
    assert {"linear", "relu", "sigmoid", "tanh", "softmax", "flatten", "dropout", "add",
            "concat"} <= set(layers)
    undocumented = sorted(op.layer for op in layers.values() if not (op.doc or "").strip())
    assert not undocumented, f"layers without a doc string: {undocumented}"


def test_losses_have_doc_strings():
    for name in ("cross_entropy", "mse"):
        assert get(name).doc.strip(), name
