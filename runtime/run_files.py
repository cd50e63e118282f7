"""The run directory's reports beside the checkpoints and metrics.jsonl: run.yaml (the
resolved configuration and versions), the test split's extra metrics (per-class scores and
confusion.png, or regression errors), and the pictures of a few validation images
(overlay.png for a segmentation model, detections.png for a detector)."""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from . import metrics
from .confusion_png import write_confusion
from .detect import class_names, detector_of
from .distributed import World
from .model import Model


def write_run_yaml(path: Path, spec, cfg, model: Model, seed: int, data,
                    world: World = World()) -> None:
    doc = {
        "spec": str(Path(spec.path).resolve()), "model": spec.graph.name, "spec_sha256": spec.spec_hash,
        "sets": list(spec.sets), "seed": seed, "backend": model.backend,
        "device": str(model.device), "params": spec.num_params(),
        **({"nproc": world.size} if world.size > 1 else {}),
        "data": data.describe(),
        "train": {**cfg.to_dict(), "seed": seed}, "versions": _versions(),
        "command": " ".join(sys.argv),
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _versions() -> dict:
    import lark
    from .. import __version__
    return {"dlc": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": np.__version__, "lark": lark.__version__}


def test_metrics(model: Model, data, out_dir: Path) -> dict:
    """Regression: test_mae, test_rmse, test_r2. Classification: test_classes (per-class
    precision, recall, F1, support, macro means, the confusion matrix), also drawn as
    confusion.png."""
    test = data.test
    if len(test) == 0:
        return {}
    pred = model.predict(test.x)
    if data.classes is None:
        return {f"test_{k}": v for k, v in metrics.regression(pred, test.y).items()}
    if pred.ndim != 2 or model.spec.config.loss.name != "cross_entropy":
        return {}                # per-pixel classes: pixel accuracy and mean IoU say it
    scores = metrics.classification(pred, test.y, data.classes)
    write_confusion(scores["confusion"], out_dir / "confusion.png",
                    getattr(data, "class_names", None))
    return {"test_classes": scores}


def write_overlay(model: Model, split, path: Path, count: int = 4) -> None:
    """For a segmentation model: a few images beside their true and predicted masks."""
    obj = model.objective()
    if obj.seg is None or len(split) == 0:
        return
    from .segviz import overlay_sheet
    _, target, _, _ = obj.seg
    x = split.x[:count]
    pred = model.predict(x, output=model.segmentation_output()).argmax(axis=1)
    overlay_sheet(model.shape_batch(x, "images").cpu().numpy(), split.target(target)[:count],
                  pred, path)


def write_detections(model: Model, split, names, path: Path, count: int = 4) -> None:
    """For a detector: a few images with their detections (class colours) and truth (white)."""
    det = detector_of(model.spec.config)
    if det is None or len(split) == 0:
        return
    from .detviz import detection_sheet
    part = split.take(slice(0, count))
    found = model.detect(part.x)
    images = part.x[model.input_names[0]] if isinstance(part.x, dict) else part.x
    detection_sheet(model.shape_batch(images, "images").cpu().numpy(), found,
                    class_names(names, det.classes(model.spec.graph)), path,
                    truth=part.target(det.target))
