"""Data-parallel training (runtime/distributed.py, the all-reduce pass and op) and gradient
accumulation, on the CPU with gloo: 2 processes with the global batch B train the weights
1 process gets with batch B, `accumulate 4` with batch 8 those of batch 32, a killed
worker ends the run within seconds, and a 2-process run resumes.

The references are independent of the code under test: one process without any
collective, and one batch of the full size without accumulation."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dlc
from dlc.cli import main
from dlc.compiler.ops.collective import all_reduce_flat
from dlc.compiler.pipeline import buckets, build_step_graphs
from dlc.runtime.distributed import free_port
from dlc.runtime.batches import Batches
from dlc.spec.diagnostics import UserError

MODEL = ("model M {{\n    input x: f32[8]\n    linear(16) -> {mid}relu\n    linear(3)\n}}\n"
         "train {{\n    data      npz(path=\"d.npz\", val=0.25, test=0.25)\n"
         "    optimizer {opt}\n    batch     {batch}\n    epochs    {epochs}\n{extra}}}\n")


def _spec(tmp: Path, *, batch=16, epochs=2, opt="sgd(lr=0.1, momentum=0.9)", mid="",
          extra="") -> Path:
    """A small MLP on 128 generated examples (3 classes), in `tmp`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    np.savez(tmp / "d.npz", x=x, y=y)
    path = tmp / "m.dls"
    path.write_text(MODEL.format(batch=batch, epochs=epochs, opt=opt, mid=mid, extra=extra))
    return path


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoint.safetensors"))


def _assert_close(a: dict, b: dict, atol=1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def _one_process(spec: Path, out: Path) -> dict:
    assert main(["train", str(spec), "--out", str(out), "--quiet", "--backend",
                 "reference"]) == 0
    return _weights(out)


def _launch(args: list, **kw) -> subprocess.CompletedProcess:
    """`dlc train ARGS` in a new process (the reference backend unless ARGS name one)."""
    backend = [] if "--backend" in args else ["--backend", "reference"]
    return subprocess.run([sys.executable, "-m", "dlc", "train", *map(str, args), "--quiet",
                           *backend], capture_output=True, text=True, timeout=300, **kw)


# -- the compiler's side and the batches (no processes)

def test_the_all_reduce_pass_is_in_the_train_graph_and_bucketed(tmp_path):
    spec = dlc.compile_spec(_spec(tmp_path))
    (alone,) = build_step_graphs(spec.graph, spec.config, 1)
    (shared,) = build_step_graphs(spec.graph, spec.config, 2)
    assert not any(n.op == "all_reduce" for n in alone.nodes)
    reduce = [n for n in shared.nodes if n.op == "all_reduce"]
    assert len(reduce) == 1 and len(reduce[0].inputs) == 4           # one bucket of 4 grads
    assert reduce[0].attrs == {"reduce": "mean", "world": 2}
    text = spec.emit("ir-train", nproc=2)
    assert "all_reduce(" in text and "world=2" in text
    sizes = [len(b) for b in buckets(reduce[0].inputs, limit=16 * 8 + 16)]
    assert sizes == [2, 2]                          # weight+bias fill a bucket of 144


def test_all_reduce_alone_is_the_identity():
    t = [torch.randn(3, 2), torch.randn(4)]
    assert all(torch.equal(a, b) for a, b in zip(all_reduce_flat(t, "mean"), t))


def test_the_shards_of_a_batch_are_the_batch():
    whole = [i.tolist() for i in Batches(23, 8, seed=5).epoch("cpu")]
    shards = [[i.tolist() for i in Batches(23, 8, seed=5, rank=r, world=2).epoch("cpu")]
              for r in (0, 1)]
    for k, batch in enumerate(whole):
        together = shards[0][k] + shards[1][k]
        assert len(shards[0][k]) == len(shards[1][k])
        assert together == batch[:len(together)] and len(batch) - len(together) < 2


def test_a_batch_that_does_not_split_is_a_located_error(tmp_path, capsys):
    spec = _spec(tmp_path, batch=10, extra="    accumulate 4\n")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "batch 10 does not split into 4 micro-batches" in err and "m.dls:" in err
    spec = _spec(tmp_path, batch=9)
    assert main(["train", str(spec), "--nproc", "2", "--out", str(tmp_path / "r")]) == 2
    assert "batch 9 does not split into 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_two_processes_on_the_triton_backend_train_the_weights_of_one(tmp_path):
    """The all-reduce is a torch step inside the replayed Triton step (interpreted here)."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one = _one_process(_spec(tmp_path / "a", epochs=1), tmp_path / "a" / "run")
    r = _launch([_spec(tmp_path / "b", epochs=1), "--nproc", "2", "--out",
                 tmp_path / "b" / "run", "--backend", "triton"])
    assert r.returncode == 0, r.stderr
    run = tmp_path / "b" / "run"
    assert json.loads((run / "final.json").read_text())["backend"] == "triton"
    _assert_close(_weights(run), one)


def test_triton_refuses_synchronised_batch_norm_on_several_processes(tmp_path):
    from dlc.runtime.distributed import World
    from dlc.runtime.checks import check_sync_bn
    spec = dlc.compile_spec(_spec(tmp_path, mid="bn(sync=true) -> "))
    check_sync_bn(spec, SimpleNamespace(backend="reference"), World(0, 2))
    check_sync_bn(spec, SimpleNamespace(backend="triton"), World(0, 1))
    with pytest.raises(UserError, match="bn.sync=true. has no Triton kernel") as e:
        check_sync_bn(spec, SimpleNamespace(backend="triton"), World(0, 2))
    assert "m.dls:3:" in e.value.render()


# -- gradient accumulation

@pytest.mark.parametrize("opt", ["sgd(lr=0.1, momentum=0.9)", "adam(lr=0.01)",
                                 "nag(lr=0.05)"])
def test_accumulate_4_of_batch_8_is_batch_32(tmp_path, opt):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    whole = _one_process(_spec(tmp_path / "a", batch=32, opt=opt), tmp_path / "a" / "run")
    acc = _spec(tmp_path / "b", batch=32, opt=opt, extra="    accumulate 4\n")
    graphs = build_step_graphs(dlc.compile_spec(acc).graph, dlc.compile_spec(acc).config)
    assert [g.name for g in graphs] == ["M.grad", "M.apply"]
    _assert_close(_one_process(acc, tmp_path / "b" / "run"), whole)


# -- several processes

def test_two_processes_under_torchrun_train_the_weights_of_one(tmp_path):
    """torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; `dlc train` joins the
    group it describes (the --nproc launcher is the same code: the tests below)."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one = _one_process(_spec(tmp_path / "a"), tmp_path / "a" / "run")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(free_port()), "-m", "dlc", "train",
                        str(_spec(tmp_path / "b")), "--out", str(tmp_path / "b" / "run"),
                        "--quiet", "--backend", "reference"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "b" / "run"
    _assert_close(_weights(run), one)
    assert json.loads((run / "final.json").read_text())["epochs_run"] == 2
    assert "\nnproc: 2\n" in (run / "run.yaml").read_text()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text()
           .splitlines()]
    for got, want in zip(rows, ref):                # the epoch's loss summed over both
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)


def test_synchronised_batch_norm_on_two_processes_is_batch_norm_on_one(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one = _one_process(_spec(tmp_path / "a", mid="bn -> "), tmp_path / "a" / "run")
    r = _launch([_spec(tmp_path / "b", mid="bn(sync=true) -> "), "--nproc", "2",
                 "--out", tmp_path / "b" / "run"])
    assert r.returncode == 0, r.stderr
    _assert_close(_weights(tmp_path / "b" / "run"), one)        # running stats included


def _pids(proc: subprocess.Popen) -> list[int]:
    line = proc.stderr.readline()
    m = re.search(r"pids ([\d, ]+)\)", line)
    assert m, line
    return [int(p) for p in m.group(1).split(",")]


def _epochs_recorded(run: Path) -> int:
    """Finished epochs: epoch k's row follows the resumable state of epoch k - 1."""
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_a_killed_worker_stops_the_run_and_the_run_resumes(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    epochs = 20
    one = _one_process(_spec(tmp_path / "a", epochs=epochs), tmp_path / "a" / "run")
    run = tmp_path / "b" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dlc", "train",
                             str(_spec(tmp_path / "b", epochs=epochs)), "--nproc", "2",
                             "--out", str(run), "--quiet", "--backend", "reference"],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pids = _pids(proc)
    deadline = time.monotonic() + 120
    while _epochs_recorded(run) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    code = proc.wait(timeout=30)
    stopped_in = time.monotonic() - t0
    err = proc.stderr.read()
    assert code in (1, 2) and stopped_in < 10
    assert "process 1 of 2 was killed by SIGKILL; stopped the others" in err
    for pid in pids:                                # no worker left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    r = _launch(["--resume", run])                # 2 processes, as run.yaml says
    assert r.returncode == 0, r.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["epochs_run"] == epochs
    _assert_close(_weights(run), one, atol=1e-4)


def test_a_lost_peer_is_said_plainly(monkeypatch):
    from dlc.runtime.distributed import peer_failure
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                        "[127.0.0.1]:5000")
    assert peer_failure(gone) is None                       # alone: not a peer's failure
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    msg = peer_failure(gone)
    assert msg.startswith("dlc: process 0 of 2 lost another process of the run (")
    assert "Connection closed by peer" in msg
    assert peer_failure(ValueError("shape mismatch")) is None


def test_nproc_must_match_world_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["train", str(_spec(tmp_path)), "--nproc", "2"]) == 2
    assert "--nproc 2 in a group of WORLD_SIZE=3" in capsys.readouterr().err


def test_boosting_refuses_several_processes(tmp_path, capsys):
    spec = _spec(tmp_path, extra="    boosting(n=3)\n")
    assert main(["train", str(spec), "--nproc", "2", "--out", str(tmp_path / "r")]) == 2
    assert "boosting trains each member on the mistakes" in capsys.readouterr().err


def test_kfold_members_run_one_per_process(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    extra = "    kfold(k=2)\n"
    assert main(["train", str(_spec(tmp_path / "a", extra=extra)), "--out",
                 str(tmp_path / "a" / "run"), "--quiet", "--backend", "reference"]) == 0
    r = _launch([_spec(tmp_path / "b", extra=extra), "--nproc", "2",
                 "--out", tmp_path / "b" / "run"])
    assert r.returncode == 0, r.stderr
    want, got = (json.loads((tmp_path / d / "run" / "final.json").read_text())
                 for d in ("a", "b"))
    assert [f["dir"] for f in got["folds"]] == ["folds/0", "folds/1"]
    assert got["test_acc"] == pytest.approx(want["test_acc"])
    for i in range(2):                              # one member per process
        _assert_close(_weights(tmp_path / "b" / "run" / "folds" / str(i)),
                      _weights(tmp_path / "a" / "run" / "folds" / str(i)), atol=1e-6)


# -- memory advice

def test_a_step_too_big_for_the_memory_limit_is_warned_with_a_micro_batch(tmp_path,
                                                                          monkeypatch, capsys):
    from dlc.runtime import memory_advice as ma
    spec = dlc.compile_spec(_spec(tmp_path, batch=32, epochs=1))
    # per example: 3 x the activations of linear(16), relu (16 each) and linear(3), f32
    per_example = 3 * (16 + 16 + 3) * 4
    fixed = 4 * 4 * (8 * 16 + 16 + 16 * 3 + 3)
    assert (ma.per_example_bytes(spec), ma.fixed_bytes(spec)) == (per_example, fixed)
    monkeypatch.setenv("DLC_MEMORY_LIMIT", str(fixed + 10 * per_example))
    assert main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "r"),
                 "--quiet", "--backend", "reference"]) == 0
    err = capsys.readouterr().err
    assert "m.dls:" in err and "warning: a training step on 32 examples needs about" in err
    assert "`accumulate 4` (micro-batches of 8" in err          # 8 divides 32; 10 does not
    monkeypatch.setenv("DLC_MEMORY_LIMIT", f"{(fixed + 8 * per_example + 1023) // 1024}KiB")
    assert ma.advice(spec, 8, 1, "cpu") is None                 # 8 fits the new limit
    monkeypatch.setenv("DLC_MEMORY_LIMIT", "1KiB")
    assert "not even one example fits" in ma.advice(spec, 32, 1, "cpu")
    monkeypatch.setenv("DLC_MEMORY_LIMIT", "lots")
    with pytest.raises(UserError, match="DLC_MEMORY_LIMIT must be a byte count"):
        ma.advice(spec, 32, 1, "cpu")
