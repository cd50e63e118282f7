"""`dlc convert`: PyTorch state dicts (.pt and .safetensors) mapped onto dlc models by order.

Each test builds a torch.nn.Module with the same structure as a dlc spec, converts its
state dict, loads the checkpoint with dlc.build and compares logits in eval mode.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import dlc
from dlc.cli import main
from dlc.compiler.ops import all_ops
from dlc.runtime.convert import convert

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "digits_mlp.dls"


class NotATensor:
    """An arbitrary Python object: a weights-only load must refuse to rebuild it."""

    def __init__(self):
        self.payload = [1, 2, 3]


def mlp_module(hidden: int = 256) -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def save_both(module: nn.Module, tmp_path: Path) -> dict[str, Path]:
    sd = module.state_dict()
    paths = {"pt": tmp_path / "weights.pt", "safetensors": tmp_path / "weights.safetensors"}
    torch.save(sd, paths["pt"])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(paths["safetensors"]))
    return paths


def assert_same_logits(spec_path: Path, ckpt: Path, module: nn.Module, x: np.ndarray) -> None:
    model = dlc.build(dlc.compile_spec(spec_path), device="cpu", checkpoint=ckpt)
    module.eval()
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-4, atol=1e-5)


# -- the MLP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_mlp_state_dict(tmp_path, fmt):
    module = mlp_module()
    src = save_both(module, tmp_path)[fmt]
    ckpt = tmp_path / "dlc.safetensors"
    done = convert(dlc.compile_spec(MLP), src, ckpt)
    assert done.count == 6 and not done.dropped
    assert done.pairs[0] == ("linear1.weight", "0.weight")
    assert done.pairs[-1] == ("linear3.bias", "4.bias")
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    assert_same_logits(MLP, ckpt, module, x)


def test_cli_convert_reports_the_count(tmp_path, capsys):
    src = save_both(mlp_module(), tmp_path)["pt"]
    code = main(["convert", str(MLP), "--from", str(src), "-o", str(tmp_path / "c.safetensors"),
                 "--show"])
    out = capsys.readouterr().out
    assert code == 0
    assert "mapped 6 tensors by order onto DigitsMLP" in out
    assert "linear2.weight <- 2.weight  [256, 256]" in out


def test_wrapped_state_dict_and_names_that_already_match(tmp_path):
    module = mlp_module()
    spec = dlc.compile_spec(MLP)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": module.state_dict()}, wrapped)
    convert(spec, wrapped, tmp_path / "a.safetensors")
    # a dlc checkpoint is a state dict whose names are the model's: mapped by name
    done = convert(spec, tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert done.by_name and done.count == 6
    x = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    assert_same_logits(MLP, tmp_path / "b.safetensors", module, x)


def test_shape_mismatch_exits_2_and_shows_the_pair(tmp_path):
    src = save_both(mlp_module(hidden=128), tmp_path)["pt"]
    done = subprocess.run([sys.executable, "-m", "dlc", "convert", str(MLP), "--from", str(src),
                           "-o", str(tmp_path / "c.safetensors")], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert "linear1.weight [256, 64] in the model but 0.weight [128, 64] in the source" in err
    assert "the model has 6 parameter/buffer tensors" in err and "has 6" in err
    assert "Traceback" not in err and not (tmp_path / "c.safetensors").exists()


def test_count_mismatch_names_the_first_unpaired_tensor(tmp_path, capsys):
    module = nn.Sequential(mlp_module(), nn.Linear(10, 3))
    src = save_both(module, tmp_path)["safetensors"]
    assert main(["convert", str(MLP), "--from", str(src), "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "tensor #7 is (no more model tensors) in the model but 1.weight [3, 10]" in err
    assert "the model has 6 parameter/buffer tensors" in err and "has 8" in err
    assert "hint: .safetensors keeps no tensor order" in err


def test_a_pickle_that_is_not_weights_only_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"0.weight": torch.zeros(256, 64), "extra": NotATensor()}, bad)
    done = subprocess.run([sys.executable, "-m", "dlc", "convert", str(MLP), "--from", str(bad),
                           "-o", str(tmp_path / "c.safetensors")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "refusing to load" in done.stderr and "NotATensor" in done.stderr
    assert "weights_only=True" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "c.safetensors").exists()


def test_unreadable_sources_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    for src in (junk, tensor, tmp_path / "missing.pt", MLP):
        assert main(["convert", str(MLP), "--from", str(src), "-o", str(tmp_path / "c")]) == 2
    good = save_both(mlp_module(), tmp_path)["pt"]
    assert main(["convert", str(MLP), "--from", str(good),
                 "-o", str(tmp_path / "no" / "such" / "c.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    assert "cannot write" in err and err.count("dlc: error:") == 5


# -- a small CNN: conv / bn / pools / residuals ----------------------------------------------

CNN_SPEC = """
model SmallRes(classes=5) {
    input x: f32[3, 16, 16]
    conv(8, 3, bias=false) -> bn -> relu -> maxpool(2)
    residual {
        conv(8, 3, bias=false) -> bn -> relu
        conv(8, 3, bias=false) -> bn
    }
    relu
    residual {
        conv(16, 3, stride=2) -> bn
    } shortcut {
        conv(16, 1, stride=2, bias=false) -> bn
    }
    relu -> avgpool(2) -> global_avgpool -> flatten -> linear(classes)
}

train {
    loss cross_entropy
}
"""


class Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body                       # registered first: dlc builds the body first
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def cnn_module() -> nn.Module:
    torch.manual_seed(3)

    def bn(c):
        layer = nn.BatchNorm2d(c)
        with torch.no_grad():                  # trained-looking statistics, not the defaults
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_(0, 0.2)
            layer.running_mean.normal_(0, 0.3)
            layer.running_var.uniform_(0.5, 2.0)
            layer.num_batches_tracked.fill_(100)
        return layer

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(), nn.MaxPool2d(2),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(),
                               nn.Conv2d(8, 8, 3, padding=1, bias=False), bn(8))),
        nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), bn(16)),
                 nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), bn(16))),
        nn.ReLU(), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


@pytest.mark.skipif(not {"conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "global_avg_pool"}
                    <= set(all_ops()), reason="CNN ops not registered yet")
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_cnn_state_dict(tmp_path, fmt):
    spec_path = tmp_path / "small_res.dls"
    spec_path.write_text(textwrap.dedent(CNN_SPEC))
    module = cnn_module()
    src = save_both(module, tmp_path)[fmt]
    ckpt = tmp_path / "dlc.safetensors"
    done = convert(dlc.compile_spec(spec_path), src, ckpt)
    assert len(done.dropped) == 5                       # one num_batches_tracked per bn
    assert done.count == 5 * 4 + 5 + 1 + 2              # bn: 4 each; 5 convs, 1 bias; linear
    x = np.random.default_rng(2).normal(size=(4, 3, 16, 16)).astype(np.float32)
    assert_same_logits(spec_path, ckpt, module, x)
