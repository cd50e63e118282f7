"""The train graph end to end: compile a spec, build the train graph, run one step on the
reference backend from the initial state, and compare the loss, every parameter gradient
(graph.grads) and batch norm's running-statistic updates with a hand-written PyTorch
computation using the same weights (batch norm in training mode in both)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.pipeline import build_eval_graph
from dlc.compiler.pipeline import build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state

ROOT = Path(__file__).resolve().parents[2]
TOL = dict(rtol=1e-4, atol=1e-6)


def run_step(spec, x, y, lr=0.05, seed=0):
    """One training step: (train graph, initial state, outputs, updates, {param: grad})."""
    train = build_train_graph(spec.graph, spec.config)
    state = init_state(train, seed=seed)
    names = list(train.grads)
    outs, updates, fetched = ReferenceProgram(train, training=True).run(
        state, {"x": x, "y": y, "lr": torch.tensor(lr)}, fetch=[train.grads[n] for n in names])
    return train, state, outs, updates, dict(zip(names, fetched))


def torch_grads(state, names, loss_fn):
    """Leaves copied from `state`; returns (loss, logits, {name: grad}) from torch.autograd."""
    leaves = {n: state[n].detach().clone().requires_grad_(True) for n in names}
    loss, logits = loss_fn(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return loss.detach(), logits.detach(), dict(zip(names, grads))


def compare(got: dict, want: dict):
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        assert got[name].shape == want[name].shape, name
        torch.testing.assert_close(got[name], want[name], **TOL,
                                   msg=lambda m: f"gradient of {name}: {m}")


def batch(shape, classes, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen)


# -- the MLP example ----------------------------------------------------------------------------

def test_digits_mlp_gradients_match_torch():
    spec = dlc.compile_spec(ROOT / "examples" / "digits_mlp.dls")
    assert spec.config.loss.args["label_smoothing"] == 0.1
    x, y = batch((64,), 10, 16)
    train, state, outs, updates, grads = run_step(spec, x, y)
    names = [f"linear{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")]
    assert set(train.grads) == set(names)

    def forward(p):
        h = F.relu(F.linear(x, p["linear1.weight"], p["linear1.bias"]))
        h = F.relu(F.linear(h, p["linear2.weight"], p["linear2.bias"]))
        logits = F.linear(h, p["linear3.weight"], p["linear3.bias"])
        return F.cross_entropy(logits, y, label_smoothing=0.1), logits

    loss, logits, want = torch_grads(state, names, forward)
    torch.testing.assert_close(outs[0], loss, **TOL)
    torch.testing.assert_close(outs[1], logits, **TOL)
    compare(grads, want)
    assert train.output_names[0] == "loss"


def test_mse_loss_train_graph_matches_torch(tmp_path):
    path = tmp_path / "reg.dls"
    path.write_text("model Reg {\n    input x: f32[5]\n    linear(7) -> sigmoid\n"
                    "    linear(3) -> tanh\n}\n"
                    "train {\n    loss mse\n    optimizer sgd(lr=0.1)\n}\n")
    spec = dlc.compile_spec(path)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    target = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    train, state, outs, updates, grads = run_step(spec, x, target)
    names = sorted(train.grads)

    def forward(p):
        h = torch.sigmoid(F.linear(x, p["linear1.weight"], p["linear1.bias"]))
        out = torch.tanh(F.linear(h, p["linear2.weight"], p["linear2.bias"]))
        return F.mse_loss(out, target), out

    loss, out, want = torch_grads(state, names, forward)
    torch.testing.assert_close(outs[0], loss, **TOL)
    compare(grads, want)
    for n in names:                                    # plain sgd: w - lr * g
        torch.testing.assert_close(updates[n], state[n] - 0.05 * want[n], **TOL)


# -- small CNNs written for this test ------------------------------------------------------------

CNN = """
model SmallCnn(classes=4) {
    input x: f32[3, 8, 8]
    conv(6, 3) -> bn -> relu
    maxpool(2)
    flatten -> linear(classes)
}
train {
    loss      cross_entropy
    optimizer sgd(lr=0.05, momentum=0.9)
    batch     4
}
"""

RESCAT = """
model ResCat(classes=3) {
    input x: f32[3, 8, 8]
    conv(4, 3) -> bn -> relu
    residual {
        conv(4, 3, bias=false) -> bn(momentum=0.3) -> relu
        conv(4, 3, bias=false) -> bn(eps=1e-3)
    }
    relu
    concat {
        branch { conv(2, 1) -> relu }
        branch { maxpool(3, stride=1, padding=1) }
        branch { conv(3, 3, stride=1) -> tanh }
    }
    maxpool(2)
    flatten -> linear(classes)
}
train {
    loss      cross_entropy(label_smoothing=0.05)
    optimizer adam(lr=1e-3)
    batch     5
}
"""


class BN:
    """F.batch_norm in training mode, recording the running stats it updates (torch's EMA)."""

    def __init__(self, state):
        self.state = state
        self.running = {}

    def __call__(self, x, p, name, eps=1e-5, momentum=0.1):
        rm = self.state[f"{name}.running_mean"].clone()
        rv = self.state[f"{name}.running_var"].clone()
        out = F.batch_norm(x, rm, rv, p[f"{name}.weight"], p[f"{name}.bias"], True, momentum, eps)
        self.running[f"{name}.running_mean"] = rm
        self.running[f"{name}.running_var"] = rv
        return out


def check_running_stats(bn: BN, updates, state):
    assert bn.running, "no batch norm ran"
    for name, want in bn.running.items():
        assert not torch.equal(want, state[name])                 # the step moved it
        torch.testing.assert_close(updates[name], want, **TOL, msg=lambda m: f"{name}: {m}")


def compile_text(tmp_path, text, name):
    path = tmp_path / f"{name}.dls"
    path.write_text(text)
    return dlc.compile_spec(path)


def test_small_cnn_gradients_and_running_stats_match_torch(tmp_path):
    spec = compile_text(tmp_path, CNN, "cnn")
    x, y = batch((3, 8, 8), 4, 4)
    train, state, outs, updates, grads = run_step(spec, x, y)
    names = ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "linear1.weight",
             "linear1.bias"]
    bn = BN(state)

    def forward(p):
        h = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)
        h = F.relu(bn(h, p, "bn1"))
        h = F.max_pool2d(h, 2).flatten(1)
        logits = F.linear(h, p["linear1.weight"], p["linear1.bias"])
        return F.cross_entropy(logits, y), logits

    loss, logits, want = torch_grads(state, names, forward)
    torch.testing.assert_close(outs[0], loss, **TOL)
    torch.testing.assert_close(outs[1], logits, **TOL)
    compare(grads, want)
    check_running_stats(bn, updates, state)
    # momentum sgd, first step: buf = g, w' = w - lr * g
    for n in names:
        torch.testing.assert_close(updates[f"{n}.momentum"], want[n], **TOL)
        torch.testing.assert_close(updates[n], state[n] - 0.05 * want[n], **TOL)


def rescat_forward(x, y, bn):
    def forward(p):
        h = F.relu(bn(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1), p, "bn1"))
        r = F.relu(bn(F.conv2d(h, p["conv2.weight"], padding=1), p, "bn2", momentum=0.3))
        r = bn(F.conv2d(r, p["conv3.weight"], padding=1), p, "bn3", eps=1e-3)
        h = F.relu(r + h)
        b1 = F.relu(F.conv2d(h, p["branch1.conv1.weight"], p["branch1.conv1.bias"]))
        b2 = F.max_pool2d(h, 3, stride=1, padding=1)
        b3 = torch.tanh(F.conv2d(h, p["branch3.conv1.weight"], p["branch3.conv1.bias"],
                                 padding=1))
        h = F.max_pool2d(torch.cat([b1, b2, b3], dim=1), 2).flatten(1)
        logits = F.linear(h, p["linear1.weight"], p["linear1.bias"])
        return F.cross_entropy(logits, y, label_smoothing=0.05), logits
    return forward


def test_residual_and_concat_cnn_gradients_match_torch(tmp_path):
    spec = compile_text(tmp_path, RESCAT, "rescat")
    ops = [n.op for n in spec.graph.nodes]
    assert "add" in ops and "concat" in ops
    x, y = batch((3, 8, 8), 3, 5, seed=3)
    train, state, outs, updates, grads = run_step(spec, x, y)
    names = sorted(train.grads)
    assert names == sorted(["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias",
                            "conv2.weight", "bn2.weight", "bn2.bias", "conv3.weight",
                            "bn3.weight", "bn3.bias", "branch1.conv1.weight",
                            "branch1.conv1.bias", "branch3.conv1.weight", "branch3.conv1.bias",
                            "linear1.weight", "linear1.bias"])
    bn = BN(state)
    loss, logits, want = torch_grads(state, names, rescat_forward(x, y, bn))
    torch.testing.assert_close(outs[0], loss, **TOL)
    torch.testing.assert_close(outs[1], logits, **TOL)
    compare(grads, want)
    check_running_stats(bn, updates, state)


def test_gradients_with_perturbed_batch_norm_params(tmp_path):
    """The initial state has bn weight 1 / bias 0: also check with random affine params and
    running stats, so a swapped weight/bias or a dropped scale cannot hide."""
    spec = compile_text(tmp_path, RESCAT, "rescat")
    train = build_train_graph(spec.graph, spec.config)
    state = init_state(train, seed=1)
    gen = torch.Generator().manual_seed(7)
    for name in spec.graph.state:                      # model state only, not adam slots
        if name.startswith("bn"):
            if name.endswith("running_var"):
                state[name] = torch.rand(state[name].shape, generator=gen) + 0.5
            else:
                state[name] = torch.randn(state[name].shape, generator=gen)
    x, y = batch((3, 8, 8), 3, 5, seed=4)
    names = sorted(train.grads)
    outs, updates, fetched = ReferenceProgram(train, training=True).run(
        state, {"x": x, "y": y, "lr": torch.tensor(1e-3)}, fetch=[train.grads[n] for n in names])
    bn = BN(state)
    loss, _, want = torch_grads(state, names, rescat_forward(x, y, bn))
    torch.testing.assert_close(outs[0], loss, **TOL)
    compare(dict(zip(names, fetched)), want)
    check_running_stats(bn, updates, state)


def test_eval_graph_uses_running_stats(tmp_path):
    """After a step, the eval graph's loss is torch's with batch norm in eval mode."""
    spec = compile_text(tmp_path, CNN, "cnn")
    x, y = batch((3, 8, 8), 4, 6, seed=5)
    train, state, outs, updates, grads = run_step(spec, x, y)
    state = {**state, **updates}
    ev = build_eval_graph(spec.graph, spec.config)
    eouts, eupdates, _ = ReferenceProgram(ev, training=False).run(state, {"x": x, "y": y})
    assert not eupdates
    h = F.conv2d(x, state["conv1.weight"], state["conv1.bias"], padding=1)
    h = F.batch_norm(h, state["bn1.running_mean"], state["bn1.running_var"], state["bn1.weight"],
                     state["bn1.bias"], False, 0.1, 1e-5)
    logits = F.linear(F.max_pool2d(F.relu(h), 2).flatten(1), state["linear1.weight"],
                      state["linear1.bias"])
    torch.testing.assert_close(eouts[1], logits, **TOL)
    torch.testing.assert_close(eouts[0], F.cross_entropy(logits, y), **TOL)


@pytest.mark.parametrize("text,name", [(CNN, "cnn"), (RESCAT, "rescat")])
def test_every_trainable_state_gets_a_gradient_and_an_update(tmp_path, text, name):
    spec = compile_text(tmp_path, text, name)
    train = build_train_graph(spec.graph, spec.config)
    params = {p.name for p in spec.graph.params()}
    assert set(train.grads) == params
    assert params <= set(train.updates)
    buffers = {n for n, v in spec.graph.state.items() if v.state.kind == "buffer"}
    assert buffers and buffers <= set(train.updates)
