"""`dlc bench` and benchmarks/gpu_bench.py on the CPU: the JSON's fields and their
consistency, the eager PyTorch baseline being the same network as dlc's (same losses and
state after two steps from the same start), user errors, and the GPU script's dry run.
Ratios are printed by the commands, never asserted here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dlc
from dlc.cli import main
from dlc.compiler.lower import live_nodes
from dlc.runtime.baselines import eager_baseline
from dlc.runtime.bench import prepare
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "digits_mlp.dls"
CNN = ROOT / "examples" / "digits_cnn.dls"


def bench_json(tmp_path, *extra) -> dict:
    out = tmp_path / "bench.json"
    assert main(["bench", str(MLP), "--backend", "reference", "--steps", "2", "--warmup", "1",
                 "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_bench_json_fields(tmp_path, capsys):
    r = bench_json(tmp_path)
    printed = capsys.readouterr().out
    assert "train step" in printed and "per-kernel breakdown" in printed and "wrote" in printed
    assert (r["backend"], r["device"], r["batch"], r["steps"]) == ("reference", "cpu", 32, 2)
    assert r["params"] == 85_002 and r["model"] == "DigitsMLP" and r["gpu"] is None
    for part in ("train", "infer"):
        s = r[part]
        assert len(s["step_ms"]) == 2 and all(t > 0 for t in s["step_ms"])
        assert 0 < s["min_ms"] <= s["median_ms"] <= s["max_ms"]
        assert s["samples_per_s"] == pytest.approx(32 / (s["median_ms"] / 1e3), rel=1e-9)
        assert s["peak_memory_bytes"] is None                  # the CPU has no device memory
    t = r["train"]
    assert t["compile_cold_s"] > 0 and t["compile_warm_s"] > 0
    assert len(t["first_losses"]) == 2 and all(0 < x < 10 for x in t["first_losses"])
    # the breakdown: every node of the step once, sorted by time, adding up to the total
    kernels = t["kernels"]
    spec = dlc.compile_spec(MLP)
    train = prepare(spec, backend="reference", infer=False).train_graph
    assert sum(k["kernels"] for k in kernels) == len(live_nodes(train))
    assert [k["ms"] for k in kernels] == sorted((k["ms"] for k in kernels), reverse=True)
    assert t["profile_total_ms"] > 0
    assert sum(k["ms"] for k in kernels) == pytest.approx(t["profile_total_ms"], rel=1e-6)
    assert sum(k["share"] for k in kernels) == pytest.approx(1.0, rel=1e-6)
    assert any("linear1" in k["covers"] for k in kernels)
    assert r["compare"] is None


def test_compare_on_the_cpu_runs_eager_and_reports_a_ratio(tmp_path, capsys):
    r = bench_json(tmp_path, "--compare", "--no-infer")
    printed = capsys.readouterr().out
    assert r["infer"] is None
    c = r["compare"]
    by_name = {b["name"]: b for b in c["baselines"]}
    assert set(by_name) == {"eager", "torch.compile", "torch.compile reduce-overhead",
                            "cuda graph"}
    eager = by_name["eager"]
    assert eager["median_ms"] > 0 and eager["first_call_s"] > 0
    assert eager["dlc_over_baseline"] == pytest.approx(r["train"]["median_ms"] /
                                                       eager["median_ms"], rel=1e-9)
    for name in ("torch.compile", "torch.compile reduce-overhead", "cuda graph"):
        assert "GPU only" in by_name[name]["skipped"]
    assert c["best"]["name"] == "eager"
    assert c["loss_check"]["max_abs_diff"] < 1e-5
    assert "PyTorch baselines" in printed and "dlc/best" in printed
    assert "torch.compile: skipped" in printed


@pytest.mark.parametrize("path", [MLP, CNN], ids=["mlp", "cnn-bn-dropout"])
def test_eager_baseline_is_the_same_network(path):
    """Two steps from the same initial state and batch: the eager nn.Module + torch.optim
    and the dlc reference train graph give the same losses, weights and (batch norm)
    running statistics, with the same dropout masks."""
    spec = dlc.compile_spec(path)
    setup = prepare(spec, backend="reference", batch=16, infer=False)
    init = init_state(setup.train_graph, 0)
    state = dict(init)
    program = ReferenceProgram(setup.train_graph, training=True, seed=0)
    dlc_losses = []
    for _ in range(2):
        (loss, *_), updates, _ = program.run(state, setup.inputs)
        state.update(updates)
        dlc_losses.append(float(loss))
    module, _, step, _ = eager_baseline(setup, init=init)
    eager_losses = [float(step().detach()) for _ in range(2)]
    assert eager_losses == pytest.approx(dlc_losses, abs=1e-5)
    assert eager_losses[1] != eager_losses[0]                 # the optimizer did step
    for name, t in module.named_state().items():
        torch.testing.assert_close(t.detach(), state[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"@{name}: {m}")
    assert any("running_mean" in n for n in module.named_state()) == (path == CNN)


@pytest.mark.parametrize("argv,message", [
    (["--batch", "0"], "--batch must be"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--warmup", "-1"], "--warmup must not be negative"),
    (["--batch", "x"], "invalid int value"),
    (["--backend", "fast"], "invalid choice"),
    (["--json", "/no/such/folder/b.json"], "does not exist"),
], ids=["batch", "steps", "warmup", "batch-type", "backend", "json-folder"])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert cli(["bench", str(MLP), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def cli(argv) -> int:
    """main's exit code, also for argparse's own errors (which exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_batch_norm_batch_of_one_and_full_batch_are_user_errors(tmp_path, capsys):
    bn = tmp_path / "bn.dls"
    bn.write_text("model Bn {\n    input x: f32[6]\n    linear(4) -> bn -> relu\n"
                  "    linear(3)\n}\n")
    assert main(["bench", str(bn), "--batch", "1", "--steps", "1"]) == 2
    assert "batch norm in training needs more than one value" in capsys.readouterr().err
    full = tmp_path / "full.dls"
    full.write_text(MLP.read_text().replace("batch     32", "batch     full"))
    assert main(["bench", str(full), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "batch full" in err and "--batch N" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_user_error(capsys):
    assert main(["bench", str(MLP), "--device", "cuda", "--steps", "1"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_gpu_bench_dry_run(tmp_path):
    """The one-call GPU script, end to end on the CPU with tiny sizes."""
    out = tmp_path / "gpu_bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--dry",
                           "--json", str(out)], capture_output=True, text=True, timeout=240,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for text in ("A MLP 64-512-512-10 fp32", "B ResNet-18 CIFAR fp32", "B-bf16",
                 "dlc reference", "eager", "kernel cache",
                 "dlc train-style start to the first finished ResNet-18 step"):
        assert text in table, text
    r = json.loads(out.read_text())
    assert r["dry"] and [w["key"] for w in r["workloads"]] == ["A", "B", "B-bf16"]
    for w in r["workloads"]:
        eager = next(b for b in w["baselines"] if b["name"] == "eager")
        assert eager["median_ms"] > 0
        assert all("skipped" in b for b in w["baselines"] if b["name"] != "eager")
    a, b, bf16 = r["workloads"]
    assert a["dlc"]["median_ms"] > 0 and b["dlc"]["median_ms"] > 0
    assert a["loss_check"]["max_abs_diff"] < 1e-5 and b["loss_check"]["max_abs_diff"] < 1e-5
    assert a["optimizer"].startswith("adamw") and "momentum=0.9" in b["optimizer"]
    assert "weight_decay=0.0005" in b["optimizer"] and "nesterov=False" in b["optimizer"]
    assert bf16["bf16"] and bf16["dlc"]["median_ms"] > 0 and bf16["dlc_refused"] is None
    for k in ("cold", "warm"):
        assert r["first_step"][k]["start_to_first_step_s"] > 0, r["first_step"]


# -- detectors and dense prediction: targets beyond %y

def _bench_spec(tmp_path, text, *extra) -> dict:
    spec, out = tmp_path / "m.dls", tmp_path / "bench.json"
    spec.write_text(text)
    assert main(["bench", str(spec), "--backend", "reference", "--steps", "1", "--warmup", "1",
                 "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["TINY_YOLO", "TINY_FAST_RCNN"])
def test_bench_feeds_a_detector_generated_boxes(tmp_path, name):
    """A detector's train graph reads boxes [N, M, 5] (M a size symbol): bench feeds as many
    valid boxes per image as the data promises (max_shapes=2 here) (classes 1..C inside the image), sliding windows as proposals,
    and times the step and the same network in eager PyTorch."""
    import test_detectors
    from dlc.runtime.bench import synthetic_inputs
    from dlc.runtime.proposals import sliding_windows
    text = getattr(test_detectors, name)
    r = _bench_spec(tmp_path, text, "--compare")
    assert r["train"]["median_ms"] > 0 and r["infer"]["median_ms"] > 0
    assert all(0 < x < 1e3 for x in r["train"]["first_losses"])
    check = r["compare"]["loss_check"]
    assert check["max_abs_diff"] < 1e-4                     # the same network, fed the same
    assert "2 generated ground-truth boxes per image" in " ".join(r["notes"])
    inputs = synthetic_inputs(dlc.compile_spec(tmp_path / "m.dls"), 5, "cpu")
    boxes = inputs["boxes"]                                 # (5, max_shapes, 5)
    assert boxes.shape == (5, 2, 5)
    cls, x0, y0, x1, y1 = boxes.unbind(2)
    assert ((cls >= 1) & (cls <= 3) & (cls == cls.round())).all()
    assert ((0 <= x0) & (x0 < x1) & (x1 <= 16) & (0 <= y0) & (y0 < y1) & (y1 <= 16)).all()
    if "proposals" in inputs:                               # Fast R-CNN's input
        want = torch.from_numpy(sliding_windows(16, 16, 8))
        assert all(torch.equal(p, want) for p in inputs["proposals"])


def test_bench_feeds_a_segmentation_model_masks(tmp_path):
    """Per-pixel losses read masks [N, H, W] of class indices (the internal error this was)."""
    from test_dense import SEG
    from dlc.runtime.bench import synthetic_inputs
    r = _bench_spec(tmp_path, SEG, "--no-infer")
    assert r["train"]["median_ms"] > 0 and all(0 < x < 10 for x in r["train"]["first_losses"])
    masks = synthetic_inputs(dlc.compile_spec(tmp_path / "m.dls"), 4, "cpu")["masks"]
    assert masks.shape == (4, 16, 16) and masks.dtype == torch.int64
    assert 0 <= masks.min() and masks.max() <= 3 and len(masks.unique()) == 4
