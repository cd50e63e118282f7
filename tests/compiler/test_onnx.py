"""ONNX export: onnxruntime's outputs against the reference backend's, op by op and whole nets.

The CNN specs are written into tmp_path; each test names the ops it needs and is
skipped (with the reason shown by `pytest -ra`) until those ops are registered.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import dlc  # noqa: E402
from dlc.cli import main  # noqa: E402
from dlc.compiler.onnx_export import ONNX_OPS, OPSET, export_onnx  # noqa: E402
from dlc.compiler.ops import all_ops  # noqa: E402
from dlc.spec.diagnostics import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CNN_OPS = ("conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool", "batch_norm",
           "local_response_norm", "leaky_relu", "upsample_nearest")


# dlc.build also builds the evaluation graph, whose loss must accept the model's output
TRAIN = "train {\n    loss mse\n}\n"


def needs_ops(*ops: str):
    missing = [o for o in ops if o not in all_ops()]
    return pytest.mark.skipif(bool(missing), reason=f"ops not registered yet: {', '.join(missing)}")


def write_spec(tmp_path: Path, body: str, input_type: str = "f32[3, 12, 12]",
               name: str = "net.dls") -> Path:
    path = tmp_path / name
    body = textwrap.indent(textwrap.dedent(body).strip(), "    ")
    path.write_text(f"model Net {{\n    input x: {input_type}\n{body}\n}}\n{TRAIN}")
    return path


def randomise(model, seed: int = 1) -> None:
    """Non-trivial buffers (running stats) so batch norm is really tested in inference form."""
    gen = np.random.default_rng(seed)
    for name, t in model.state.items():
        if name.endswith("running_mean"):
            model.state[name] = t.new_tensor(gen.normal(0, 0.5, tuple(t.shape)))
        elif name.endswith("running_var"):
            model.state[name] = t.new_tensor(gen.uniform(0.5, 2.0, tuple(t.shape)))
        elif name.endswith(".weight") and t.ndim == 1:            # batch-norm scale
            model.state[name] = t.new_tensor(gen.uniform(0.5, 1.5, tuple(t.shape)))
        elif name.endswith(".bias") and t.ndim == 1 and float(t.abs().sum()) == 0.0:
            model.state[name] = t.new_tensor(gen.normal(0, 0.2, tuple(t.shape)))


def run_onnx(data: bytes, x: np.ndarray, name: str = "x") -> list[np.ndarray]:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-4) -> None:
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err <= rel, f"relative error {err:.3g} > {rel}"


def check_against_reference(path: Path, x_shape: tuple, seed: int = 0, sets=()) -> bytes:
    spec = dlc.compile_spec(path, sets=list(sets))
    model = dlc.build(spec, backend="reference", device="cpu")
    randomise(model)
    x = np.random.default_rng(seed).normal(size=x_shape).astype(np.float32)
    want = model.predict(x)
    data = export_onnx(spec, model.state)
    (got, *_) = run_onnx(data, x, spec.graph.inputs[0].input_name)
    assert_close(got, want)
    return data


# -- the MLP example and the model's interface -------------------------------------------------

def test_mlp_example_matches_reference():
    data = check_against_reference(ROOT / "examples" / "digits_mlp.dls", (7, 64))
    m = onnx.load_from_string(data)
    assert m.opset_import[0].version == OPSET
    assert [i.name for i in m.graph.input] == ["x"]
    assert [o.name for o in m.graph.output] == ["out"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 64
    assert {t.name for t in m.graph.initializer} == {
        f"linear{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    assert [n.op_type for n in m.graph.node] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]


# every CNN of the zoo but VGG-16 (AlexNet has the same ops; its 528 MB export is slow)
@pytest.mark.parametrize("name", ["digits_cnn", "resnet18_cifar", "googlenet", "alexnet",
                                  "resnet18", "resnet50", "densenet121"])
def test_cnn_examples_match_reference(name):
    path = ROOT / "examples" / f"{name}.dls"
    spec = dlc.compile_spec(path)
    # the loss is set explicitly: a spec without a train section gets the default one
    check_against_reference(path, (2, *spec.graph.inputs[0].type.shape[1:]),
                            sets=["train.loss=cross_entropy"])


def test_fresh_init_is_the_spec_seed():
    spec = dlc.compile_spec(ROOT / "examples" / "digits_mlp.dls")
    assert export_onnx(spec) == export_onnx(spec, dlc.build(spec, device="cpu").state)


def test_dense_ops_and_several_outputs(tmp_path):
    path = tmp_path / "dense.dls"
    path.write_text(textwrap.dedent("""
        model Dense {
            input x: f32[2, 3, 4]
            h = flatten -> linear(16, bias=false) -> tanh
            a = h -> linear(16) -> sigmoid
            s = add(h, a, a) -> dropout(0.3)
            c = concat(s, h) -> linear(5) -> softmax
            output c, h
        }
    """) + TRAIN)
    spec = dlc.compile_spec(path)
    model = dlc.build(spec, device="cpu")
    x = np.random.default_rng(3).normal(size=(4, 2, 3, 4)).astype(np.float32)
    outs = run_onnx(export_onnx(spec, model.state), x)
    assert len(outs) == 2
    assert_close(outs[0], model.predict(x))
    assert outs[1].shape == (4, 16)


def test_an_op_without_mapping_is_a_user_error(monkeypatch):
    spec = dlc.compile_spec(ROOT / "examples" / "digits_mlp.dls")
    monkeypatch.delitem(ONNX_OPS, "relu")
    with pytest.raises(UserError, match="'relu' has no ONNX mapping"):
        export_onnx(spec)


def test_every_inference_op_has_a_mapping():
    internal = {"relu_bwd", "sigmoid_bwd", "tanh_bwd", "softmax_bwd", "dropout", "dropout_mask",
                "matmul", "sum", "ones_like", "zeros_like", "slice"}
    # detection layers (compiler/ops/boxes.py, roi.py, detection.py): no ONNX mapping yet;
    # exporting one is a UserError naming it (tests/compiler/test_ops_roi.py)
    detection = {"box_iou", "box_encode", "box_decode", "anchors", "nms", "assign_targets",
                 "roi_pool", "roi_align", "spp", "roi_spp", "smooth_l1", "rpn_loss", "yolo_head",
                 "yolo_loss", "yolo_decode", "fast_rcnn_loss", "propose"}
    for name, op in all_ops().items():
        if op.layer and name not in internal | detection:
            assert name in ONNX_OPS, f"layer op {name!r} cannot be exported to ONNX"


def test_cli_onnx_needs_an_output_path(capsys):
    assert main(["compile", str(ROOT / "examples" / "digits_mlp.dls"), "--emit", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlc: error:") and "-o" in err
    assert main(["compile", str(ROOT / "examples" / "digits_mlp.dls"), "--emit", "ir",
                 "--checkpoint", "w.safetensors"]) == 2
    assert "--checkpoint only applies to --emit onnx" in capsys.readouterr().err


def test_cli_onnx_with_checkpoint(tmp_path):
    spec = dlc.compile_spec(ROOT / "examples" / "digits_mlp.dls")
    model = dlc.build(spec, device="cpu", seed=123)
    model.save(tmp_path / "ckpt.safetensors")
    out = tmp_path / "m.onnx"
    code = subprocess.run([sys.executable, "-m", "dlc", "compile",
                           str(ROOT / "examples" / "digits_mlp.dls"), "--emit", "onnx",
                           "--checkpoint", str(tmp_path / "ckpt.safetensors"), "-o", str(out)],
                          capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    assert_close(run_onnx(out.read_bytes(), x)[0], model.predict(x))


# -- CNN ops ------------------------------------------------------------------------------------

@needs_ops("conv2d")
@pytest.mark.parametrize("conv", [
    "conv(8, 3)",
    "conv(6, 3, stride=2, padding=1)",
    "conv(6, [3, 1], stride=[2, 1], padding=[1, 0], bias=false)",
    "conv(6, 3, groups=3)",
    "conv(4, 3, dilation=2, padding=2)",
    "conv(4, 5, stride=3, padding=0)",
])
def test_conv2d(tmp_path, conv):
    check_against_reference(write_spec(tmp_path, conv), (2, 3, 12, 12))


@needs_ops("conv2d", "batch_norm", "max_pool2d")
@pytest.mark.parametrize("pool", ["maxpool(3, stride=2, ceil=true)", "maxpool(2)",
                                  "maxpool(3, stride=2, padding=1, ceil=true)"])
def test_conv_bn_maxpool(tmp_path, pool):
    spec = write_spec(tmp_path, f"conv(6, 3, bias=false) -> bn -> relu -> {pool}",
                      "f32[3, 13, 13]")
    check_against_reference(spec, (3, 3, 13, 13))


@needs_ops("avg_pool2d")
@pytest.mark.parametrize("pool", ["avgpool(2)", "avgpool(3, stride=2, padding=1)",
                                  "avgpool(3, stride=2, padding=1, count_include_pad=false)",
                                  "avgpool(3, stride=2, ceil=true)"])
def test_avgpool(tmp_path, pool):
    check_against_reference(write_spec(tmp_path, pool, "f32[3, 11, 11]"), (2, 3, 11, 11))


@needs_ops("conv2d", "global_avg_pool", "batch_norm")
def test_global_avgpool_head_and_bn_on_features(tmp_path):
    spec = write_spec(tmp_path, "conv(8, 3) -> global_avgpool -> flatten -> linear(6) -> bn")
    check_against_reference(spec, (4, 3, 12, 12))


@needs_ops("local_response_norm")
@pytest.mark.parametrize("size,shape", [(5, (7, 5, 5)),      # ONNX LRN
                                        (4, (7, 5, 5)),      # even: spelled out (window differs)
                                        (3, (6, 9))])        # 3-D input: spelled out
def test_lrn(tmp_path, size, shape):
    spec = write_spec(tmp_path, f"lrn({size}, alpha=0.01, beta=0.75, k=2.0)",
                      f"f32[{', '.join(map(str, shape))}]")
    check_against_reference(spec, (2, *shape))


@needs_ops("leaky_relu", "upsample_nearest", "conv2d")
def test_leaky_relu_and_upsample(tmp_path):
    spec = write_spec(tmp_path, "conv(4, 3) -> leaky_relu(0.2) -> upsample(2)", "f32[3, 6, 6]")
    check_against_reference(spec, (2, 3, 6, 6))


@needs_ops("conv2d", "batch_norm", "max_pool2d", "global_avg_pool")
def test_inception_concat_and_residual_add(tmp_path):
    spec = write_spec(tmp_path, """
        conv(8, 3, bias=false) -> bn -> relu
        concat {
            branch { conv(4, 1) }
            branch { conv(4, 1) -> relu -> conv(6, 3) }
            branch { maxpool(3, stride=1, padding=1) -> conv(2, 1) }
        }
        residual {
            conv(12, 3, bias=false) -> bn -> relu
            conv(12, 3, bias=false) -> bn
        }
        relu
        residual {
            conv(16, 3, stride=2, bias=false) -> bn
        } shortcut {
            conv(16, 1, stride=2, bias=false) -> bn
        }
        global_avgpool -> flatten -> linear(5)
    """)
    check_against_reference(spec, (2, 3, 12, 12))


@needs_ops("conv2d")
def test_symbolic_spatial_dims_stay_symbolic(tmp_path):
    path = write_spec(tmp_path, "conv(4, 3, padding=1) -> relu -> conv(2, 1)", "f32[3, H, W]")
    spec = dlc.compile_spec(path)
    model = dlc.build(spec, device="cpu")
    data = export_onnx(spec, model.state)
    dims = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    for hw in [(5, 7), (9, 4)]:
        x = np.random.default_rng(0).normal(size=(2, 3, *hw)).astype(np.float32)
        assert_close(run_onnx(data, x)[0], model.predict(x))


# -- ceil mode where PyTorch drops a last window that would start in the padding (issue 12) --

@needs_ops("max_pool2d", "avg_pool2d")
@pytest.mark.parametrize("pool", ["maxpool(2, stride=2, padding=1, ceil=true)",
                                  "avgpool(2, stride=2, padding=1, ceil=true)",
                                  "avgpool(2, stride=2, padding=1, ceil=true, "
                                  "count_include_pad=false)",
                                  "maxpool([2, 3], stride=[2, 3], padding=1, ceil=true)"])
def test_ceil_pool_output_size_matches_pytorch(tmp_path, pool):
    data = check_against_reference(write_spec(tmp_path, pool, "f32[2, 7, 7]"), (2, 2, 7, 7))
    got = torch.nn.functional.max_pool2d(torch.zeros(1, 1, 7, 7), 2, 2, 1, ceil_mode=True)
    assert got.shape[-1] == 4                        # the case: ONNX alone would give 5
    onnx.checker.check_model(data, full_check=True)


def test_ceil_pool_on_a_symbolic_size_is_refused_when_the_clamp_may_bite(tmp_path):
    spec = dlc.compile_spec(write_spec(tmp_path, "maxpool(2, stride=2, padding=1, ceil=true) "
                                       "-> global_avgpool -> flatten", "f32[2, H, W]"))
    with pytest.raises(UserError) as info:
        export_onnx(spec)
    assert "ceil-mode" in info.value.message and info.value.span.line == 3


def test_too_big_for_protobuf_is_refused_before_allocating(tmp_path):
    import time
    spec = dlc.compile_spec(write_spec(tmp_path, "flatten -> linear(100000) -> linear(10000)",
                                       "f32[1, 8, 8]"))
    t0 = time.process_time()
    with pytest.raises(UserError) as info:
        export_onnx(spec)
    assert "more than one protobuf file can hold" in info.value.message
    assert time.process_time() - t0 < 1.0


@pytest.mark.parametrize("k", [1, 4])
def test_per_anchor_exports_as_reshape_transpose_reshape(tmp_path, k):
    """The RPN's per-anchor view: onnxruntime gives the reference's values (the 1x1 conv
    before it to float rounding; the permutation itself moves values only)."""
    path = tmp_path / "net.dls"
    path.write_text(f"model Net {{\n    input x: f32[3, 5, 6]\n    conv({3 * k}, 1) -> "
                    f"per_anchor({k})\n}}\n{TRAIN}")
    spec = dlc.compile_spec(path)
    model = dlc.build(spec, backend="reference", device="cpu")
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 6)).astype(np.float32)
    want = model.predict(x)
    (got,) = run_onnx(export_onnx(spec, model.state), x)
    assert got.shape == ((2, 90) if k == 1 else (2, 90, k))
    assert_close(got, want, rel=1e-6)
