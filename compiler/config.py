"""The resolved training configuration: what the `train { }` section (plus `--set`) says.

Plain data: the spec front end fills it in and checks it; the compiler reads the loss
and optimizer; the runtime reads data, batch, epochs and the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Call:
    """A named configuration item with arguments, e.g. `adam(lr=1e-3)`."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    span: Any = None                                   # where it was written (spec.Span)
    arg_spans: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in self.args.items()) + ")"

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v
                                      for k, v in self.args.items()}}


@dataclass
class LossTerm:
    """One loss of a (possibly multi-output) training objective: `loss(output, target)`
    times `weight`; the objective is the sum of the terms."""

    output: str | None          # the model output it reads; None: the first output
    call: Call                  # the loss and its own arguments (`label_smoothing`, `ignore`)
    target: str                 # the data field it compares with: labels, masks, targets, boxes
    weight: float = 1.0
    span: Any = None            # where the term was written


# the data field a loss compares with when `target=` is not given
DEFAULT_TARGETS = {"cross_entropy": "labels", "mse": "targets", "pixel_cross_entropy": "masks",
                   "yolo_loss": "boxes", "fast_rcnn_loss": "boxes",
                   "rpn_loss": "boxes"}
# fields the data's `y` array holds (the rest travel as extra named arrays)
PRIMARY_TARGETS = ("labels", "targets")


def target_input(field_name: str) -> str:
    """The train/eval graph input that carries a data field: `y` for the primary field (class
    labels or regression targets), else the field's own name (`masks`, `boxes`)."""
    return "y" if field_name in PRIMARY_TARGETS else field_name


@dataclass
class TrainConfig:
    data: Call = field(default_factory=lambda: Call("digits"))       # where examples come from
    loss: Call = field(default_factory=lambda: Call("cross_entropy"))
    optimizer: Call = field(default_factory=lambda: Call("sgd", {"lr": 0.01}))
    schedule: Call = field(default_factory=lambda: Call("constant"))  # learning-rate schedule
    batch: int | str = 32              # examples per step; "full" = batch gradient descent
    accumulate: int = 1                # micro-batches per optimizer step (gradient accumulation)
    epochs: int = 10                   # passes over the training split
    seed: int = 0                      # shuffling, splits, initialisation, dropout masks
    early_stopping: Call | None = None  # stop when `monitor` stops improving for `patience` epochs
    penalty: Call | None = None        # l1/l2 parameter-norm penalty added to the training loss
    proposals: Call | None = None      # region proposals for the model's `proposals` input
    clip: Call | None = None           # gradient clipping: norm(max_norm) or value(clip_value)
    param_groups: list[Call] = field(default_factory=list)   # params(match=..., lr=...) overrides
    precision: str = "f32"             # f32 | bf16: the Triton backend's matmul/conv operands
    augment: list[Call] = field(default_factory=list)   # transforms of each training batch, in order
    weight_noise: Call | None = None   # std * N(0, 1) added to every weight in each training step
    shuffle: bool = True               # a fresh permutation of the training split every epoch
    drop_last: bool = False            # leave out an epoch's last, short batch
    map_every: int = 1                 # a detector's val mAP every k-th epoch (and the last)
    ensemble: Call | None = None       # kfold(k), bagging(n) or boosting(n): several models
    spans: dict[str, Any] = field(default_factory=dict)   # key -> where it was set
    # `loss (seg=..., aux=...)`: one term per named output; empty: `loss` on the first output
    terms: list[LossTerm] = field(default_factory=list)

    def loss_terms(self) -> list[LossTerm]:
        """The objective's terms: the named ones, or the single `loss` on the first output."""
        if self.terms:
            return self.terms
        return [LossTerm(None, self.loss, DEFAULT_TARGETS.get(self.loss.name, "labels"),
                         1.0, self.loss.span)]

    def target_inputs(self) -> dict[str, str]:
        """Graph input name -> the data field it carries, for every target the terms read."""
        return {target_input(t.target): t.target for t in self.loss_terms()}

    def to_dict(self) -> dict:
        return {
            "data": self.data.to_dict(), "loss": self.loss.to_dict(),
            "optimizer": self.optimizer.to_dict(), "schedule": self.schedule.to_dict(),
            "batch": self.batch, **({"accumulate": self.accumulate} if self.accumulate > 1 else {}),
            "epochs": self.epochs, "seed": self.seed,
            "early_stopping": self.early_stopping.to_dict() if self.early_stopping else None,
            "penalty": self.penalty.to_dict() if self.penalty else None,
            "proposals": self.proposals.to_dict() if self.proposals else None,
            "clip": self.clip.to_dict() if self.clip else None,
            "params": [g.to_dict() for g in self.param_groups],
            "precision": self.precision,
            "augment": [c.to_dict() for c in self.augment],
            "weight_noise": self.weight_noise.to_dict() if self.weight_noise else None,
            "shuffle": self.shuffle, "drop_last": self.drop_last,
            **({"map_every": self.map_every} if self.map_every > 1 else {}),
            **({"losses": {t.output: {**t.call.to_dict(), "target": t.target,
                                      "weight": t.weight} for t in self.terms}}
               if self.terms else {}),
            "ensemble": self.ensemble.to_dict() if self.ensemble else None,
        }

    @property
    def label_mixer(self) -> Call | None:
        """The augment chain's mixup or cutmix, which mixes labels as well as examples."""
        return next((c for c in self.augment if c.name in ("mixup", "cutmix")), None)
