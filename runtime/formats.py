"""Readers for the classic image data sets as distributed, from a local folder.

    MNIST     train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
              t10k-labels-idx1-ubyte (each optionally .gz)          -> x (n, 1, 28, 28)
    CIFAR-10  cifar-10-batches-py/: data_batch_1..5, test_batch     -> x (n, 3, 32, 32)

Pixels become float32 in [0, 1]; labels int64.  CIFAR-10's batches are Python pickles:
they are read with an unpickler that admits only the builtin containers and numpy's array
reconstruction, never arbitrary objects.  No network: a missing file is a `UserError`
that says where the files should be.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from ..spec.diagnostics import UserError

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path) -> bytes:
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            data = p.read_bytes()
            return gzip.decompress(data) if p.suffix == ".gz" else data
    raise UserError(f"missing data file {path} (or {path.name}.gz)")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (the MNIST format): magic 0x0000TTDD, DD big-endian int32 sizes, data."""
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}i", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(shape)) if shape else 0
    if len(data) - header != count * dtype.itemsize:
        raise UserError(f"{path}: the header says {list(shape)} but the file holds "
                        f"{len(data) - header} data bytes")
    return np.frombuffer(data, dtype, count, header).reshape(shape)


def read_mnist(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)) with x (n, 1, 28, 28) in [0, 1]."""
    out = []
    for prefix in ("train", "t10k"):
        x = read_idx(root / f"{prefix}-images-idx3-ubyte")
        y = read_idx(root / f"{prefix}-labels-idx1-ubyte")
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{root}: {prefix} images {list(x.shape)} and labels "
                            f"{list(y.shape)} do not pair up")
        out.append(((x.astype(np.float32) / 255.0)[:, None], y.astype(np.int64)))
    return out[0], out[1]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, strings, numbers and numpy arrays — nothing else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"missing data file {path}; dlc reads CIFAR-10's python batches "
                        "(cifar-10-python.tar.gz, unpacked) from a local folder")
    try:
        d = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise UserError(f"{path} is not a CIFAR-10 batch ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a CIFAR-10 batch (no dict inside)")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise UserError(f"{path} is not a CIFAR-10 batch (no data/labels entries)")
    x = np.asarray(data, dtype=np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise UserError(f"{path}: expected data [n, 3072] and n labels, got {list(x.shape)} "
                        f"and {len(y)}")
    return (x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0), y


def read_cifar10(root: Path):
    """((x_train, y_train), (x_test, y_test)) with x (n, 3, 32, 32) in [0, 1]."""
    parts = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, _read_cifar_batch(root / "test_batch")
