"""Data sources: scikit-learn's bundled digits, CSV and NPZ files; seeded splits.

Every source yields float32 features and labels (int64 class indices for
classification, float32 targets for regression), split into train/val/test by a
seeded permutation.  Errors in files are `UserError`s naming the file and row.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
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
            Arg("categories", "", kind="str", doc="feature columns holding categories (names "
                "or 1-based numbers, separated by commas), one-hot encoded"),
            Arg("standardize", False, kind="bool", doc="scale features to mean 0, std 1 "
                "with the training split's statistics"),
            *_SPLITS),
    "npz": (Arg("path", kind="str", doc=".npz file with arrays x and y"),
            Arg("x", "x", kind="str", doc="the features' array; for a model with several "
                "inputs, input=array pairs (or input names that are also array names), "
                'separated by commas: "image=pixels, meta=tabular"'),
            Arg("y", "y", kind="str"),
            Arg("classes", True, kind="bool"),
            Arg("standardize", False, kind="bool", doc="scale features to mean 0, std 1 "
                "with the training split's statistics"), *_SPLITS),
    "images": (Arg("root", kind="str", doc="a folder with one subfolder of images per class"),
               Arg("size", 0, kind="int", doc="resize every image to size x size (0: keep; "
                   "then all must have one size)"),
               Arg("gray", False, kind="bool", doc="one channel instead of three (RGB)"),
               *_SPLITS),
    # the official test split is the test set; `val` is taken from the training images
    "mnist": (Arg("root", kind="str", doc="folder with the four IDX files"),
              Arg("val", 0.1, kind="float", doc="fraction of the training images held out")),
    "cifar10": (Arg("root", kind="str", doc="the unpacked cifar-10-batches-py folder"),
                Arg("val", 0.1, kind="float", doc="fraction of the training images held out")),
    # generated: images with labels, masks and boxes (runtime/shapes.py)
    "shapes": (Arg("n", 1000, kind="int", doc="number of images"),
               Arg("size", 32, kind="int", doc="image height and width"),
               Arg("max_shapes", 3, kind="int", doc="shapes per image, at most"),
               Arg("noise", 0.05, kind="float", doc="standard deviation of the pixel noise"),
               *_SPLITS),
    # a folder in Pascal VOC's layout (runtime/voc.py)
    "voc": (Arg("root", kind="str", doc="folder with JPEGImages, SegmentationClass, Annotations"),
            Arg("size", 64, kind="any", doc="images resized to size or [h, w]"),
            *_SPLITS),
    # a folder with a COCO-format instances file (runtime/coco.py)
    "coco": (Arg("root", kind="str", doc="folder with the annotation file and the images"),
             Arg("annotations", "annotations.json", kind="str",
                 doc="the instances file, relative to root"),
             Arg("images", "images", kind="str", doc="the images' folder, relative to root"),
             Arg("size", 64, kind="any", doc="images resized to size or [h, w]"),
             *_SPLITS),
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
    x: np.ndarray | dict     # (n, *features) float32, or input name -> such an array
    y: np.ndarray            # (n,) int64, or (n, k) float32
    # other per-example targets by field name: masks (n, H, W) int64, boxes (n, B, 5) float32
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx) -> Split:
        """The examples `idx` (an index array or a slice), with their extra fields."""
        x = {k: v[idx] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[idx]
        return Split(x, self.y[idx], {k: v[idx] for k, v in self.extra.items()})

    def fields(self) -> list[str]:
        return ["labels" if self.y.dtype.kind in "iu" else "targets", *self.extra]

    def target(self, input_name: str) -> np.ndarray:
        """The array a graph's target input reads: `y` or an extra field by name."""
        return self.y if input_name == "y" else self.extra[input_name]


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: int | None      # number of classes, None for regression
    name: str
    class_names: list | None = None    # a text label column's values, by class index
    vocabulary: dict = field(default_factory=dict)   # category column -> its values, in order
    standardize: dict | None = None    # {"mean": [...], "std": [...]} of the training split
    columns: list | None = None        # a CSV's columns in order: {"name", "kind"} (label,
                                       # category or number), so predict reads them alike

    def describe(self) -> dict:
        """What run.yaml keeps of the data: sizes, classes, encodings and statistics."""
        return {"name": self.name, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "classes": self.classes,
                "class_names": self.class_names, "vocabulary": self.vocabulary or None,
                "standardize": self.standardize, "columns": self.columns}


def load(call: Call, seed: int, base_dir: Path = Path(".")) -> Dataset:
    """Load and split the data set `call` describes; paths are relative to the spec."""
    a = call.args
    if call.name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = (d.data / 16.0).astype(np.float32)               # pixels 0..16 -> 0..1
        y = d.target.astype(np.int64)
        return _split(x, y, a, seed, 10, "digits")
    if call.name == "shapes":
        return _shapes(call, seed)
    if call.name == "voc":
        return _voc(call, seed, base_dir)
    if call.name == "coco":
        return _coco(call, seed, base_dir)
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
    if call.name == "images":
        from .images import read_image_folder
        root = Path(a["root"]).expanduser()
        root = root if root.is_absolute() else base_dir / root
        x, y, names = read_image_folder(root, a["size"], a["gray"], call)
        data = _split(x, y, a, seed, len(names), root.name)
        data.class_names = names
        return data
    path = Path(a["path"])
    if not path.is_absolute():
        path = base_dir / path
    encoded: dict = {}
    if call.name == "csv":
        x, y = _read_csv(path, a["label"], a["header"], a["classes"], call, encoded)
    else:
        x, y = _read_npz(path, a["x"], a["y"], a["classes"], call)
        _check_finite(x, path, call)
    classes = (len(encoded["class_names"]) if encoded.get("class_names")
               else int(y.max()) + 1 if a["classes"] and len(y) else None)
    data = _split(x, y, a, seed, classes, path.name)
    data.class_names = encoded.get("class_names")
    data.vocabulary = encoded.get("vocabulary", {})
    data.columns = encoded.get("columns")
    if a["standardize"]:
        _standardize(data, call)
    return data


def _check_finite(x, path: Path, call: Call) -> None:
    """NaN or infinity in features is a located error (file, row, column)."""
    for name, arr in (x.items() if isinstance(x, dict) else [(None, x)]):
        bad = np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))
        if len(bad):
            row, col = (int(v) for v in bad[0])
            where = f"array {name!r}, " if name else ""
            raise UserError(f"{path}: {where}example {row} (0-based), value {col} is "
                            f"{arr.reshape(len(arr), -1)[row, col]}: features must be finite "
                            "numbers", call.arg_spans.get("path", call.span),
                            hint="fill or drop missing values before training")


def _standardize(data: Dataset, call: Call) -> None:
    """Features scaled by the training split's per-feature mean and std (std 0 -> 1)."""
    if isinstance(data.train.x, dict):
        raise UserError("standardize applies to one feature array, not several inputs",
                        call.arg_spans.get("standardize", call.span))
    flat = data.train.x.reshape(len(data.train.x), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std[std == 0] = 1.0
    for split in (data.train, data.val, data.test):
        shape = split.x.shape
        split.x = ((split.x.reshape(len(split.x), -1) - mean) / std).astype(np.float32
                                                                            ).reshape(shape)
    data.standardize = {"mean": mean.tolist(), "std": std.tolist()}


def _shapes(call: Call, seed: int) -> Dataset:
    from .shapes import CLASSES, generate
    a = call.args
    for key, least in (("n", 2), ("size", 8), ("max_shapes", 1)):
        if a[key] < least:
            raise UserError(f"shapes: {key} must be at least {least}, got {a[key]}",
                            call.arg_spans.get(key, call.span))
    if a["noise"] < 0:
        raise UserError("shapes: noise must not be negative", call.arg_spans.get("noise", call.span))
    d = generate(a["n"], a["size"], a["max_shapes"], a["noise"], seed)
    data = _split(d["x"], d["y"], a, seed, len(CLASSES), "shapes",
                  extra={"masks": d["masks"], "boxes": d["boxes"]})
    data.class_names = list(CLASSES)
    return data


def _voc(call: Call, seed: int, base_dir: Path) -> Dataset:
    from .voc import CLASSES, read_voc
    root = _folder(call, base_dir)
    d = read_voc(root, _image_size(call))
    data = _split(d["x"], d["y"], call.args, seed, len(CLASSES), root.name,
                  extra={"masks": d["masks"], "boxes": d["boxes"]})
    data.class_names = list(CLASSES)
    return data


def _coco(call: Call, seed: int, base_dir: Path) -> Dataset:
    from .coco import read_coco
    root, a = _folder(call, base_dir), call.args
    d = read_coco(root / a["annotations"], root / a["images"], _image_size(call),
                  call.arg_spans.get("annotations", call.span))
    data = _split(d["x"], d["y"], a, seed, len(d["names"]), root.name,
                  extra={"boxes": d["boxes"]})
    data.class_names = d["names"]
    return data


def _folder(call: Call, base_dir: Path) -> Path:
    """The data set's folder `root` (`~` expanded, relative to the spec), which must exist."""
    root = Path(call.args["root"]).expanduser()
    root = root if root.is_absolute() else base_dir / root
    if not root.is_dir():
        raise UserError(f"{call.name}: no such folder {root}",
                        call.arg_spans.get("root", call.span))
    return root


def _image_size(call: Call) -> tuple[int, int]:
    """`size`: N for N x N, or [h, w]."""
    a = call.args
    size = a["size"] if isinstance(a["size"], (list, tuple)) else [a["size"]] * 2
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                 for v in size):
        raise UserError(f"{call.name}: size is a positive integer or a pair [h, w], got "
                        f"{a['size']}", call.arg_spans.get("size", call.span))
    return tuple(size)


def _split(x, y, a, seed, classes, name, extra: dict | None = None) -> Dataset:
    n = len(y)
    val_frac, test_frac = a["val"], a["test"]
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"val ({val_frac}) and test ({test_frac}) fractions must be in [0, 1) "
                        "and leave some training data")
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_frac)), int(round(n * val_frac))
    te, va, tr = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    if len(tr) == 0:
        raise UserError(f"{name}: no training examples left after the splits ({n} in all)")
    whole = Split(x, y, dict(extra or {}))
    return Dataset(whole.take(tr), whole.take(va), whole.take(te), classes, name)


def _read_csv(path: Path, label, header: bool, classes: bool, call: Call, encoded: dict):
    """Features and labels of a CSV file. Category columns are one-hot encoded and a text
    label column becomes class indices, each by its sorted values (kept in `encoded`)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}", call.arg_spans.get("path", call.span)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}", call.span) from None
    names = rows.pop(0) if header and rows else None
    first = 2 if names is not None else 1
    numbered = [(i + first, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not numbered:
        raise UserError(f"{path} holds no data rows", call.span)
    width = len(numbered[0][1])
    for line, r in numbered:
        if len(r) != width:
            raise UserError(f"{path}:{line}: expected {width} columns, got {len(r)}")
    col = _column(label, names, width, path, call, "label")
    cats = [_column(c.strip(), names, width, path, call, "categories")
            for c in call.args.get("categories", "").split(",") if c.strip()]
    title = lambda j: repr(names[j]) if names else str(j + 1)
    key = lambda j: names[j] if names else str(j + 1)
    encoded["columns"] = [{"name": key(j), "kind": "label" if j == col else
                           "category" if j in cats else "number"} for j in range(width)]
    columns = []
    for j in range(width):
        cells = [(line, r[j].strip()) for line, r in numbered]
        if j in cats:
            vocab = sorted({c for _, c in cells})
            encoded.setdefault("vocabulary", {})[key(j)] = vocab
            columns.append(one_hot(cells, vocab, path, title(j)))
        elif j == col and classes and not all(is_number(c) for _, c in cells):
            vocab = sorted({c for _, c in cells})
            encoded["class_names"] = vocab
            index = {v: k for k, v in enumerate(vocab)}
            y = np.array([index[c] for _, c in cells], dtype=np.float64)
        else:
            values = numbers(cells, path, title(j), call.span)
            if j == col:
                y = values
            else:
                columns.append(values[:, None])
    x = np.concatenate(columns, axis=1).astype(np.float32) if columns else np.zeros(
        (len(numbered), 0), np.float32)
    return x, _labels(y, classes, path)


def one_hot(cells: list, vocab: list, path: Path, title: str) -> np.ndarray:
    """A category column as one-hot rows over `vocab`; a value outside it (at prediction
    time) is an error naming file, row and column."""
    index = {v: k for k, v in enumerate(vocab)}
    rows = []
    for line, c in cells:
        if c not in index:
            shown = ", ".join(map(repr, vocab[:10])) + (", ..." if len(vocab) > 10 else "")
            raise UserError(f"{path}:{line}: column {title} holds {c!r}, a category the model "
                            f"was not trained on (it knows {shown})")
        rows.append(index[c])
    return np.eye(len(vocab), dtype=np.float64)[rows]


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def numbers(cells: list, path: Path, title: str, span=None) -> np.ndarray:
    """A numeric column; text or NaN/inf is an error naming file, row and column."""
    out = np.empty(len(cells), dtype=np.float64)
    for i, (line, c) in enumerate(cells):
        try:
            out[i] = float(c)
        except ValueError:
            raise UserError(f"{path}:{line}: column {title} holds {c!r}, which is not a number",
                            span, hint=f"if column {title} holds categories, name it in "
                            f"csv(categories=...)") from None
        if not np.isfinite(out[i]):
            raise UserError(f"{path}:{line}: column {title} is {c!r}: values must be finite "
                            "numbers", span,
                            hint="fill or drop missing values before training")
    return out


def _column(key, names, width: int, path: Path, call: Call, arg: str) -> int:
    """The index of a column given by header name or number (label: 0-based index, may be
    negative; categories: 1-based numbers or names)."""
    if isinstance(key, str) and not (arg == "categories" and key.isdigit()):
        if names is None or key not in names:
            raise UserError(f"{path} has no column named {key!r}"
                            + (f" (columns: {', '.join(names)})" if names else ""),
                            call.arg_spans.get(arg, call.span))
        return names.index(key)
    if arg == "categories":
        key = int(key) - 1
    if isinstance(key, int) and not isinstance(key, bool) and -width <= key < width:
        return key % width
    raise UserError(f"{arg} column {key!r} is out of range for {width} columns",
                    call.arg_spans.get(arg, call.span))


def npz_inputs(spec: str) -> dict[str, str] | None:
    """npz's `x`: None for one array feeding the model's only input, else input -> array
    ("a,b" or "image=pixels, meta=tabular")."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if len(items) == 1 and "=" not in items[0]:
        return None
    pairs = [item.partition("=") for item in items]
    return {name.strip(): (array.strip() or name.strip()) for name, _, array in pairs}


def _read_npz(path: Path, xk: str, yk: str, classes: bool, call: Call):
    named = npz_inputs(xk)
    wanted = list(named.values()) if named else [xk]
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (*wanted, yk) if k not in f.files]
            if missing:
                raise UserError(f"{path} has no array {missing[0]!r} (arrays: {', '.join(f.files)})",
                                call.arg_spans.get("x" if missing[0] != yk else "y", call.span))
            arrays = {k: f[k].astype(np.float32) for k in wanted}
            y = f[yk]
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}", call.arg_spans.get("path", call.span)) from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}", call.span) from None
    for k, x in arrays.items():
        if len(x) != len(y):
            raise UserError(f"{path}: {k} has {len(x)} rows but {yk} has {len(y)}", call.span)
    x = {name: arrays[array] for name, array in named.items()} if named else arrays[xk]
    return x, _labels(y, classes, path)


def _labels(y: np.ndarray, classes: bool, path: Path) -> np.ndarray:
    if not classes:
        return y.astype(np.float32).reshape(len(y), -1)
    if np.any(y != np.round(y)) or np.any(y < 0):
        raise UserError(f"{path}: class labels must be whole numbers >= 0 "
                        "(set classes=false for regression targets)")
    return y.astype(np.int64).reshape(-1)
