"""Several losses, one per named output: the train graph's total, each term and every
parameter gradient against torch.autograd on tiny two-head models, on the reference backend
and (for ops with kernels) the Triton backend; and the located errors of a bad objective."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.pipeline import build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state
from dlc.spec.diagnostics import UserError

TOL = dict(rtol=1e-4, atol=1e-5)

TWO_HEADS = """
model TwoHeads {
    input x: f32[6]
    h = linear(8) -> relu
    a = h -> linear(3)
    b = h -> linear(3)
    output a, b
}
train {
    loss (a=cross_entropy, b=cross_entropy(label_smoothing=0.1, weight=0.5))
    optimizer sgd(lr=1.0)
}
"""

SEG_HEADS = """
model SegHeads {
    input x: f32[2, 5, 6]
    h = conv(4, 3) -> relu
    seg = h -> conv(3, 1)
    aux = h -> conv(3, 3)
    output seg, aux
}
train {
    loss (
        seg = pixel_cross_entropy(ignore=255),
        aux = pixel_cross_entropy(target=masks, weight=0.4),
    )
    optimizer sgd(lr=1.0)
}
"""


def spec_of(tmp_path, text, name="m.dls"):
    path = tmp_path / name
    path.write_text(text)
    return dlc.compile_spec(path)


def one_step(spec, inputs, program_cls, **kw):
    """(outputs, {param: gradient}) of one sgd(lr=1) step: the gradient is p - p'."""
    train = build_train_graph(spec.graph, spec.config)
    state = init_state(train, seed=0)
    before = {k: v.clone() for k, v in state.items()}
    outs, updates, _ = program_cls(train, training=True, **kw).run(
        state, {**inputs, "lr": torch.tensor(1.0)})
    grads = {n: before[n] - updates[n] for n in train.grads}
    return train, before, outs, grads


def autograd(state, names, fn):
    leaves = {n: state[n].detach().clone().requires_grad_(True) for n in names}
    total, terms = fn(leaves)
    grads = torch.autograd.grad(total, [leaves[n] for n in names])
    return total.detach(), [t.detach() for t in terms], dict(zip(names, grads))


def two_heads_torch(x, y):
    def fn(p):
        h = F.relu(F.linear(x, p["linear1.weight"], p["linear1.bias"]))
        a = F.linear(h, p["linear2.weight"], p["linear2.bias"])
        b = F.linear(h, p["linear3.weight"], p["linear3.bias"])
        la, lb = F.cross_entropy(a, y), 0.5 * F.cross_entropy(b, y, label_smoothing=0.1)
        return la + lb, [la, lb]
    return fn


def check(train, outs, grads, want):
    total, terms, want_grads = want
    names = train.output_names
    assert names[0] == "loss" and names[-len(terms):] == [f"loss.{n}" for n in
                                                          names[1:1 + len(terms)]]
    torch.testing.assert_close(outs[0], total, **TOL)
    for got, w in zip(outs[-len(terms):], terms):
        torch.testing.assert_close(got, w, **TOL)
    assert set(grads) == set(want_grads)
    for n, g in want_grads.items():
        torch.testing.assert_close(grads[n], g, **TOL, msg=lambda m: f"gradient of {n}: {m}")


def test_two_classification_heads_match_autograd(tmp_path):
    spec = spec_of(tmp_path, TWO_HEADS)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    train, state, outs, grads = one_step(spec, {"x": x, "y": y}, ReferenceProgram)
    assert [v.input_name for v in train.inputs] == ["x", "y", "lr"]     # one shared target
    check(train, outs, grads, autograd(state, list(train.grads), two_heads_torch(x, y)))


def test_two_classification_heads_on_triton(tmp_path):
    from dlc.runtime.triton_backend import TritonProgram
    spec = spec_of(tmp_path, TWO_HEADS)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    train, state, outs, grads = one_step(spec, {"x": x, "y": y}, TritonProgram)
    check(train, outs, grads, autograd(state, list(train.grads), two_heads_torch(x, y)))


def seg_torch(x, masks):
    def fn(p):
        h = F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1))
        seg = F.conv2d(h, p["conv2.weight"], p["conv2.bias"])
        aux = F.conv2d(h, p["conv3.weight"], p["conv3.bias"], padding=1)
        ls = F.cross_entropy(seg, masks, ignore_index=255)
        la = 0.4 * F.cross_entropy(aux, masks, ignore_index=255)
        return ls + la, [ls, la]
    return fn


def seg_batch(seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 2, 5, 6, generator=gen)
    masks = torch.randint(0, 3, (4, 5, 6), generator=gen)
    masks[0, 0, :4] = 255                                    # ignored pixels
    return x, masks


def test_segmentation_and_aux_heads_match_autograd(tmp_path):
    spec = spec_of(tmp_path, SEG_HEADS)
    x, masks = seg_batch()
    train, state, outs, grads = one_step(spec, {"x": x, "masks": masks}, ReferenceProgram)
    assert [v.input_name for v in train.inputs] == ["x", "masks", "lr"]
    check(train, outs, grads, autograd(state, list(train.grads), seg_torch(x, masks)))


@pytest.mark.parametrize("loss, message", [
    ("(sge=pixel_cross_entropy)", "has no output 'sge'"),
    ("(seg=cross_entropy)", "cross_entropy expects logits [N, classes]"),
    ("(seg=pixel_cross_entropy(target=1))", "target names a data field"),
    ("(seg=pixel_cross_entropy(weight=-1))", "a loss weight is a number >= 0"),
    ("(seg=pixel_cross_entropy, mse)", "several losses are written one per output"),
])
def test_bad_objective_is_a_located_error(tmp_path, loss, message):
    text = SEG_HEADS.replace(SEG_HEADS[SEG_HEADS.index("    loss ("):
                                       SEG_HEADS.index("    optimizer")], f"    loss {loss}\n")
    with pytest.raises(UserError) as e:
        spec_of(tmp_path, text)
    assert message in e.value.message
    assert e.value.span is not None and e.value.span.line == 10
