"""`dlc predict`'s files: inputs from .npy, .npz or CSV, every model output to .npy,
.npz or CSV, as logits, probabilities or labels.

    read_inputs(path, names, data)          {input name: array}; a CSV like the run's
                                            training CSV is encoded as it was (run.yaml's
                                            data.columns and data.vocabulary)
    as_kind(y, kind)                        logits unchanged, probs (softmax over dim 1),
                                            labels (argmax over dim 1)
    write_outputs(path, outputs)            one .npy per output (`y.npy`, then `y.<name>.npy`),
                                            one .npz with an array per output, or one CSV
                                            with the columns `<output>` / `<output>_<j>`
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..spec.diagnostics import UserError
from .data import is_number, numbers, one_hot

KINDS = ("logits", "probs", "labels")


def read_inputs(path: str | Path, names: list[str], data: dict | None = None
                ) -> dict[str, np.ndarray]:
    """The arrays that feed the model's inputs `names`, from a .npy, .npz or CSV file;
    `data`: run.yaml's description of the training data."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        columns = (data or {}).get("columns")
        arrays = {names[0]: read_csv_like_training(path, columns, data["vocabulary"] or {})
                  if columns else read_csv_matrix(path)}
    elif suffix == ".npz":
        arrays = _read_npz(path, names)
    else:
        try:
            arrays = {names[0]: np.load(path, allow_pickle=False)}
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is not a readable .npy array ({e})",
                            hint="predict reads .npy, .npz (an array per input) and .csv") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError(f"the model has {len(names)} inputs ({', '.join(names)}), but {path} "
                        f"gives no array for {missing[0]!r}",
                        hint="give an .npz file with one array named after each input")
    return arrays


def _read_npz(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npz file ({e})") from None
    if len(names) == 1 and names[0] not in arrays:
        if len(arrays) != 1:
            raise UserError(f"{path} holds {len(arrays)} arrays ({', '.join(arrays)}) and none "
                            f"is named after the model's input {names[0]!r}")
        return {names[0]: next(iter(arrays.values()))}
    return arrays


def read_csv_matrix(path: Path) -> np.ndarray:
    """A CSV file of numbers as an (n, columns) float32 array; a first row that is not all
    numbers is taken for a header."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    first = 1
    if rows and not all(is_number(c) for c in rows[0]):
        rows, first = rows[1:], 2
    if not rows:
        raise UserError(f"{path} holds no data rows")
    width = len(rows[0])
    out = np.empty((len(rows), width), dtype=np.float32)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise UserError(f"{path}:{i + first}: expected {width} columns, got {len(r)}")
        for j, c in enumerate(r):
            if not is_number(c):
                raise UserError(f"{path}:{i + first}: column {j + 1} is not a number: {c!r}")
            out[i, j] = float(c)
    return out


def read_csv_like_training(path: Path, columns: list, vocabulary: dict) -> np.ndarray:
    """A CSV file with the training CSV's feature columns (the label column may be there or
    not), encoded as training encoded them: categories one-hot over the run's vocabulary,
    numbers checked finite. With a header the columns are matched by name, in any order."""
    try:
        with open(path, newline="") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    names = [c["name"] for c in columns]
    header = None
    if rows and any(c.strip() in names and not is_number(c) for c in rows[0][1]):
        header = [c.strip() for c in rows.pop(0)[1]]
    if not rows:
        raise UserError(f"{path} holds no data rows")
    features = [c for c in columns if c["kind"] != "label"]
    where = _column_positions(path, header, len(rows[0][1]), columns, features)
    for line, r in rows:
        if len(r) != len(rows[0][1]):
            raise UserError(f"{path}:{line}: expected {len(rows[0][1])} columns, got {len(r)}")
    parts = []
    for c in features:
        j = where[c["name"]]
        cells = [(line, r[j].strip()) for line, r in rows]
        title = repr(c["name"]) if header else str(j + 1)
        parts.append(one_hot(cells, vocabulary[c["name"]], path, title) if c["kind"] == "category"
                     else numbers(cells, path, title)[:, None])
    return np.concatenate(parts, axis=1).astype(np.float32)


def _column_positions(path: Path, header, width: int, columns: list, features: list) -> dict:
    """Where each training feature column is in this file: by header name, or by position
    (the file has all the training columns, or all but the label)."""
    if header is not None:
        missing = [c["name"] for c in features if c["name"] not in header]
        if missing:
            raise UserError(f"{path} has no column {missing[0]!r}, which the model was trained "
                            f"on (its columns: {', '.join(c['name'] for c in features)})")
        return {c["name"]: header.index(c["name"]) for c in features}
    if width == len(columns):
        return {c["name"]: j for j, c in enumerate(columns) if c["kind"] != "label"}
    if width == len(features):
        return {c["name"]: j for j, c in enumerate(features)}
    raise UserError(f"{path} has {width} columns, but the model was trained on a CSV with "
                    f"{len(columns)} ({len(features)} without the label)",
                    hint="give the training CSV's columns, with a header row to match them by name")


def standardized(inputs: dict[str, np.ndarray], data: dict) -> dict[str, np.ndarray]:
    """Inputs scaled as the run's training data was (run.yaml's data.standardize)."""
    stats = data.get("standardize")
    if not stats or len(inputs) != 1:
        return inputs
    name, x = next(iter(inputs.items()))
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if flat.shape[1] != len(stats["mean"]):
        return inputs                      # the shape error is the model's to report
    scaled = (flat - np.asarray(stats["mean"])) / np.asarray(stats["std"])
    return {name: scaled.astype(np.float32).reshape(np.shape(x))}


def as_kind(y: np.ndarray, kind: str, name: str) -> np.ndarray:
    """One output as logits, probabilities (softmax over dim 1) or labels (argmax)."""
    if kind == "logits":
        return y
    if y.ndim < 2:
        raise UserError(f"--output-kind {kind} needs class scores, but the output {name!r} "
                        f"has shape {list(y.shape)}", hint="use --output-kind logits")
    if kind == "labels":
        return y.argmax(axis=1)
    z = y - y.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def write_outputs(path: str | Path, outputs: dict[str, np.ndarray]) -> list[Path]:
    """Write every output; the files written."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            _write_csv(path, outputs)
            return [path]
        if suffix == ".npz":
            np.savez(path, **outputs)
            return [path]
        written = []
        for i, (name, y) in enumerate(outputs.items()):
            p = path if i == 0 else path.with_name(f"{path.stem}.{name}{path.suffix or '.npy'}")
            np.save(p, y)
            written.append(p)
        return written
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def _write_csv(path: Path, outputs: dict[str, np.ndarray]) -> None:
    columns, header = [], []
    for name, y in outputs.items():
        flat = y.reshape(len(y), -1)
        columns.append(flat)
        header += [name] if flat.shape[1] == 1 else [f"{name}_{j}" for j in range(flat.shape[1])]
    table = np.concatenate(columns, axis=1) if columns else np.zeros((0, 0))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in table.tolist():
            w.writerow([f"{v:.9g}" for v in row])
