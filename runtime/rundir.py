"""Run directories: where a training run's files go, and reading a finished run back.

    fresh_default(spec_path)      runs/<spec>/<n>, n one more than the highest there
    prepare(out, overwrite=...)   a folder that holds a run is refused (hint: --resume or
                                  --overwrite); --overwrite removes that run's files
                                  (an ensemble's members and TensorBoard events too)
    read_run(folder)              the run.yaml of a run directory, or a UserError
    spec_of(run)                  the spec file a run was trained from (absolute path in run.yaml)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..spec.diagnostics import UserError

RUN_YAML = "run.yaml"
# the files a run writes; --overwrite removes these and nothing else, run.yaml last, so a
# kill part-way leaves a folder that is visibly no complete run rather than a mixed one
RUN_FILES = ("metrics.jsonl", "final.json", "checkpoint.safetensors",
             "last.safetensors", "best.safetensors", "curves.svg", "curves.png",
             "confusion.png", "detections.png", "overlay.png", "last.safetensors.tmp",
             "checkpoint.safetensors.tmp",
             "best.safetensors.tmp", "run.yaml")
RUN_GLOBS = ("epoch-*.safetensors",)
# an ensemble's members and a run's TensorBoard events: removed whole by --overwrite
RUN_FOLDERS = ("folds", "members", "tensorboard")
ENSEMBLE_FILES = ("ensemble.json",)


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("run.yaml", "metrics.jsonl", "final.json"))


def fresh_default(spec_path: Path, root: Path = Path("runs")) -> Path:
    """The default output of `dlc train SPEC`: a new numbered folder under runs/<spec>."""
    base = root / Path(spec_path).stem
    taken = [int(p.name) for p in base.glob("*") if p.name.isdigit()] if base.is_dir() else []
    return base / str(max(taken, default=0) + 1)


def prepare(out: Path, *, overwrite: bool = False) -> None:
    """Make `out` ready for a new run: refused when it holds one, unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot write the run to {out}: it is a file")
    if holds_run(out):
        if not overwrite:
            raise UserError(f"{out} already holds a training run",
                            hint=f"continue it with `dlc train --resume {out}`, replace it with "
                                 "--overwrite, or choose another --out")
        for name in RUN_FOLDERS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in ENSEMBLE_FILES + RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for pattern in RUN_GLOBS:
            for p in out.glob(pattern):
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def read_run(folder: Path) -> dict:
    """The run.yaml of the run in `folder`."""
    path = Path(folder) / RUN_YAML
    if not path.is_file():
        raise UserError(f"{folder} is not a run directory (it has no {RUN_YAML})",
                        hint="give the folder `dlc train` wrote (its --out)")
    try:
        run = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(run, dict) or "spec" not in run:
        raise UserError(f"{path} does not describe a run (no `spec`)")
    return run


def spec_of(run: dict, folder: Path) -> Path:
    """The spec file of a run: as recorded, else beside the run directory's parent."""
    spec = Path(run["spec"])
    if not spec.is_file():
        raise UserError(f"the spec of the run in {folder}, {spec}, no longer exists",
                        hint="the run keeps the spec's path; restore the file there")
    return spec
