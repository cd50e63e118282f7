"""MNIST (IDX) and CIFAR-10 (python batches) read from small files the test writes itself."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest

from dlc.cli import main
from dlc.runtime.formats import read_cifar10, read_idx, read_mnist
from dlc.spec.diagnostics import UserError


def write_idx(path, array, compress=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_mnist(root, n_train=60, n_test=20, compress=False):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 50, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):                       # a bright row per class: learnable
            x[i, 2 + 2 * c, :] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte", x, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, compress)
    return root


def make_cifar(root, n_per_batch=8, n_test=10):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)], b"batch_label": b"x"}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip(tmp_path, compress):
    root = make_mnist(tmp_path / "mnist", compress=compress)
    (x, y), (xt, yt) = read_mnist(root)
    assert x.shape == (60, 1, 28, 28) and xt.shape == (20, 1, 28, 28)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    raw = read_idx(root / ("train-labels-idx1-ubyte"))
    np.testing.assert_array_equal(y, raw.astype(np.int64))


def test_idx_with_wrong_size_is_a_user_error(tmp_path):
    p = tmp_path / "bad-idx"
    p.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x00" * 3)
    with pytest.raises(UserError, match="holds 3 data bytes"):
        read_idx(p)


def test_cifar_batches(tmp_path):
    (x, y), (xt, yt) = read_cifar10(make_cifar(tmp_path / "c"))
    assert x.shape == (40, 3, 32, 32) and xt.shape == (10, 3, 32, 32) and y.dtype == np.int64


def test_cifar_batch_with_arbitrary_objects_is_refused(tmp_path):
    root = make_cifar(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UserError, match="refusing to load"):
        read_cifar10(root)


def test_train_on_mnist_and_cifar_files(tmp_path, capsys):
    mnist = make_mnist(tmp_path / "mnist", n_train=200, n_test=50)
    cifar = make_cifar(tmp_path / "cifar")
    (tmp_path / "m.dls").write_text(
        "model M {\n input x: f32[1, 28, 28]\n conv(4, 3, stride=2) -> relu -> flatten\n"
        " linear(10)\n}\n"
        f'train {{\n data mnist(root="{mnist.name}", val=0.1)\n optimizer adam(lr=1e-2)\n'
        " epochs 8\n}\n")
    assert main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "r1"), "--quiet"]) == 0
    final = json.loads((tmp_path / "r1" / "final.json").read_text())
    assert final["test_acc"] >= 0.8                         # the class rows are easy to see
    (tmp_path / "c.dls").write_text(
        "model C {\n input x: f32[3, 32, 32]\n conv(4, 3) -> bn -> relu -> global_avgpool\n"
        " flatten -> linear(10)\n}\n"
        f'train {{\n data cifar10(root="{cifar.name}", val=0.25)\n epochs 1\n batch 8\n}}\n')
    assert main(["train", str(tmp_path / "c.dls"), "--out", str(tmp_path / "r2"), "--quiet"]) == 0
    run = json.loads((tmp_path / "r2" / "final.json").read_text())
    assert run["epochs_run"] == 1 and run["test_acc"] is not None


def test_missing_folder_is_located(tmp_path, capsys):
    (tmp_path / "m.dls").write_text(
        "model M {\n input x: f32[1, 28, 28]\n flatten -> linear(10)\n}\n"
        'train {\n data mnist(root="nowhere")\n}\n')
    code = main(["train", str(tmp_path / "m.dls"), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "m.dls:6:13: error: mnist: no such folder" in err
