"""Data sources: scikit-learn's bundled digits, CSV and NPZ files; seeded splits.

Every source yields float32 features and labels (int64 class indices for
classification, float32 targets for regression), split into train/val/test by a
seeded permutation.  Errors in files are `UserError`s naming the file and row.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..compiler.config import Call
from ..compiler.ops.registry import Arg
from ..spec.diagnostics import UserError

_SPLITS = (Arg("val", 0.1, kind="float", doc="fraction held out for validation"),
           Arg("test", 0.2, kind="float", doc="fraction held out for testing"))

DATASOURCES: dict[str, tuple[Arg, ...]] = {
    "digits": _SPLITS,
    "csv": (Arg("path", kind="str", doc="CSV file, one example per row"),
            Arg("label", -1, kind="any", doc="label column: index or header name"),
            Arg("header", True, kind="bool", doc="first row holds column names"),
            Arg("classes", True, kind="bool", doc="labels are class indices (else targets)"),
            *_SPLITS),
    "npz": (Arg("path", kind="str", doc=".npz file with arrays x and y"),
            Arg("x", "x", kind="str"), Arg("y", "y", kind="str"),
            Arg("classes", True, kind="bool"), *_SPLITS),
    # the official test split is the test set; `val` is taken from the training images
    "mnist": (Arg("root", kind="str", doc="folder with the four IDX files"),
              Arg("val", 0.1, kind="float", doc="fraction of the training images held out")),
    "cifar10": (Arg("root", kind="str", doc="the unpacked cifar-10-batches-py folder"),
                Arg("val", 0.1, kind="float", doc="fraction of the training images held out")),
}


def check_data_args(call: Call) -> tuple[str, str] | None:
    """(problem, argument) for split fractions no data set can use, or None; the train
    section calls it where it reads `data`, so `dlc check` reports them."""
    a = call.args
    for k in ("val", "test"):
        if k in a and not 0 <= a[k] < 1:
            return f"{k} must be a fraction in [0, 1), got {a[k]}", k
    if a.get("val", 0) + a.get("test", 0) >= 1:
        return (f"val ({a['val']}) and test ({a['test']}) together must leave some training "
                "data"), "test"
    return None


@dataclass
class Split:
    x: np.ndarray            # (n, *features) float32
    y: np.ndarray            # (n,) int64, or (n, k) float32

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: int | None      # number of classes, None for regression
    name: str


def load(call: Call, seed: int, base_dir: Path = Path(".")) -> Dataset:
    """Load and split the data set `call` describes; paths are relative to the spec."""
    a = call.args
    if call.name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = (d.data / 16.0).astype(np.float32)               # pixels 0..16 -> 0..1
        y = d.target.astype(np.int64)
        return _split(x, y, a, seed, 10, "digits")
    if call.name in ("mnist", "cifar10"):
        from .formats import read_cifar10, read_mnist
        root = Path(a["root"]).expanduser()
        root = root if root.is_absolute() else base_dir / root
        if not root.is_dir():
            raise UserError(f"{call.name}: no such folder {root}",
                            call.arg_spans.get("root", call.span))
        (x, y), (xt, yt) = (read_mnist if call.name == "mnist" else read_cifar10)(root)
        if not 0 <= a["val"] < 1:
            raise UserError(f"val must be in [0, 1), got {a['val']}", call.arg_spans.get("val"))
        perm = np.random.default_rng(seed).permutation(len(x))
        n_val = int(round(len(x) * a["val"]))
        va, tr = perm[:n_val], perm[n_val:]
        return Dataset(Split(x[tr], y[tr]), Split(x[va], y[va]), Split(xt, yt), 10, call.name)
    path = Path(a["path"])
    if not path.is_absolute():
        path = base_dir / path
    if call.name == "csv":
        x, y = _read_csv(path, a["label"], a["header"], a["classes"], call)
    else:
        x, y = _read_npz(path, a["x"], a["y"], a["classes"], call)
    classes = int(y.max()) + 1 if a["classes"] else None
    return _split(x, y, a, seed, classes, path.name)


def _split(x, y, a, seed, classes, name) -> Dataset:
    n = len(x)
    val_frac, test_frac = a["val"], a["test"]
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"val ({val_frac}) and test ({test_frac}) fractions must be in [0, 1) "
                        "and leave some training data")
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_frac)), int(round(n * val_frac))
    te, va, tr = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    if len(tr) == 0:
        raise UserError(f"{name}: no training examples left after the splits ({n} in all)")
    return Dataset(Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]), classes, name)


def _read_csv(path: Path, label, header: bool, classes: bool, call: Call):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}", call.arg_spans.get("path", call.span)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}", call.span) from None
    names = rows.pop(0) if header and rows else None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{path} holds no data rows", call.span)
    width = len(rows[0])
    if isinstance(label, str):
        if names is None or label not in names:
            raise UserError(f"{path} has no column named {label!r}"
                            + (f" (columns: {', '.join(names)})" if names else ""),
                            call.arg_spans.get("label", call.span))
        col = names.index(label)
    elif isinstance(label, int) and not isinstance(label, bool) and -width <= label < width:
        col = label % width
    else:
        raise UserError(f"label column {label!r} is out of range for {width} columns",
                        call.arg_spans.get("label", call.span))
    data = np.empty((len(rows), width), dtype=np.float64)
    first = 2 if names is not None else 1
    for i, r in enumerate(rows):
        if len(r) != width:
            raise UserError(f"{path}:{i + first}: expected {width} columns, got {len(r)}")
        try:
            data[i] = [float(c) for c in r]
        except ValueError:
            raise UserError(f"{path}:{i + first}: a value is not a number: {r}") from None
    y = data[:, col]
    x = np.delete(data, col, axis=1).astype(np.float32)
    return x, _labels(y, classes, path)


def _read_npz(path: Path, xk: str, yk: str, classes: bool, call: Call):
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (xk, yk) if k not in f.files]
            if missing:
                raise UserError(f"{path} has no array {missing[0]!r} (arrays: {', '.join(f.files)})",
                                call.span)
            x, y = f[xk].astype(np.float32), f[yk]
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}", call.arg_spans.get("path", call.span)) from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}", call.span) from None
    if len(x) != len(y):
        raise UserError(f"{path}: {xk} has {len(x)} rows but {yk} has {len(y)}", call.span)
    return x, _labels(y, classes, path)


def _labels(y: np.ndarray, classes: bool, path: Path) -> np.ndarray:
    if not classes:
        return y.astype(np.float32).reshape(len(y), -1)
    if np.any(y != np.round(y)) or np.any(y < 0):
        raise UserError(f"{path}: class labels must be whole numbers >= 0 "
                        "(set classes=false for regression targets)")
    return y.astype(np.int64).reshape(-1)
