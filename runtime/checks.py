"""Checks of a spec against its data and its run, made before the first step: every error
is a located UserError pointing at the spec line to change (the train setting when it is
written, else the model's output or input).

    check_data              each loss term's target field and shape, the model's input
    check_augment           image transforms need image inputs
    check_augment_targets   only mask-safe transforms with masks, box-safe with boxes
    check_batch_norm        batch norm gets more than one value per channel per batch
    check_sync_bn           bn(sync=true) on several processes needs the reference backend
"""
from __future__ import annotations

from ..compiler.config import target_input
from ..compiler.ops import get as get_op
from ..compiler.pipeline import term_output
from ..spec.diagnostics import UserError
from .augment import BOX_SAFE, GEOMETRIC, IMAGE_ONLY, MASK_SAFE
from .distributed import World
from .model import Model


def check_data(model: Model, data, cfg) -> None:
    """The data fits each loss and the model's outputs and input; errors point at the spec
    line to change (the train setting when written, else the model's output or input)."""
    g = model.spec.graph
    for term in cfg.loss_terms():
        check_term(model, data, cfg, term)
        check_augment_targets(cfg, term)
    try:
        model.shape_inputs(data.train.take(slice(0, 1)).x, f"{data.name} examples")
    except UserError as e:
        default = "data" not in cfg.spans
        raise UserError(e.message, g.input_locs.get(g.inputs[0].input_name) or cfg.spans.get("data"),
                        hint=("the train section names no data, so digits is used; add a "
                              "`data` setting that fits the model's input") if default else
                        "the data and the model's input must hold the same values per example"
                        ) from None


def check_term(model: Model, data, cfg, term) -> None:
    """The data has the field the loss term reads, of a shape its output can score."""
    out = term_output(model.spec.graph, term).type
    span = term.span or cfg.loss.span or cfg.data.span
    g = model.spec.graph
    # the model's last layer: where a wrong class count or output shape is fixed
    out_loc = next((n.loc for n in reversed(g.nodes) if n.loc is not None), None)
    what = f"output '{term.output}'" if term.output else "the model's output"
    if term.call.name == "cross_entropy" and data.classes is None:
        raise UserError("cross_entropy needs class labels, but the data has regression "
                        "targets", span)
    if term.target not in data.train.fields():
        if term.call.name == "mse":
            raise UserError(f"mse needs numeric targets, but {data.name} has class labels",
                            span, hint="use cross_entropy, or classes=false for csv/npz targets")
        raise UserError(f"the loss of {what} reads {term.target}, but {data.name} has "
                        f"{', '.join(data.train.fields())}", span)
    have = tuple(data.train.target(target_input(term.target)).shape[1:])
    if getattr(get_op(term.call.name), "box_target", False):
        if len(have) != 2 or have[1] != 5:
            raise UserError(f"{term.call.name} reads ground-truth boxes (class, x0, y0, x1, y1) "
                            f"per example, but the {term.target} of {data.name} are "
                            f"{list(have)} per example", span,
                            hint="target=boxes reads the boxes of shapes(...), voc(...) or "
                                 "coco(...)")
    elif term.call.name == "cross_entropy":
        if out.rank != 2 or out.shape[1] < data.classes:
            raise UserError(f"the model's output {out} cannot score {data.classes} classes of "
                            f"{data.name}", out_loc or span,
                            hint=f"end the model with linear({data.classes})")
    elif term.call.name == "pixel_cross_entropy":
        sized = all(isinstance(d, int) for d in out.shape[2:])
        if out.shape[1] < (data.classes or 0) or (sized and tuple(out.shape[2:]) != have):
            raise UserError(f"{what} {out} cannot score the {term.target} of {data.name} "
                            f"({data.classes} classes, {list(have)} per example)", span)
    elif tuple(out.shape[1:]) != have:
        raise UserError(f"the model's output {out} does not match the targets of "
                        f"{data.name} ({list(have)} per example)", out_loc or span)


def check_augment_targets(cfg, term) -> None:
    """An augment chain may move a segmentation mask (MASK_SAFE transforms) or ground-truth
    boxes (BOX_SAFE) with its image; label mixing of either, geometric transforms beside
    precomputed proposals and any transform of other targets are errors."""
    target = target_input(term.target)
    if not cfg.augment or target == "y":
        return
    if term.call.name == "pixel_cross_entropy":
        bad = next((c for c in cfg.augment if c.name not in MASK_SAFE), None)
        if bad is None:
            return
        raise UserError(f"{bad.name} cannot be applied to a segmentation mask: the "
                        f"{term.target} would no longer match the images", bad.span,
                        hint=f"with masks, augment takes {', '.join(MASK_SAFE)}")
    if term.target == "boxes":
        bad = next((c for c in cfg.augment if c.name not in BOX_SAFE), None)
        if bad is not None:
            raise UserError(f"{bad.name} cannot be applied to ground-truth boxes: mixing "
                            "two images' boxes is not defined", bad.span,
                            hint=f"with boxes, augment takes {', '.join(BOX_SAFE)}")
        if cfg.proposals is not None and any(c.name in GEOMETRIC for c in cfg.augment):
            raise UserError("augment would move the objects but not the proposals computed "
                            "for the unaugmented images", cfg.spans.get("augment", term.span),
                            hint="with a `proposals` setting, augment takes "
                                 "jitter, noise, cutout")
        return
    raise UserError(f"augment transforms the images only, so their {term.target} would "
                    "no longer match them", cfg.spans.get("augment", term.span),
                    hint="leave augment out when a loss reads other targets")


def check_augment(spec, model: Model) -> None:
    """Image transforms need image inputs, (C, H, W) per example."""
    x = model.spec.graph.inputs[0].type
    for call in spec.config.augment:
        if call.name in IMAGE_ONLY and x.rank != 4:
            raise UserError(f"{call.name} transforms images, but the model's input is {x}",
                            call.span, hint="the input must be [channels, height, width]; "
                            "noise and mixup work on any input")


def check_batch_norm(spec, smallest: int, *, at_layer: bool = False,
                     hint: str = "use a batch of at least 2") -> None:
    """Batch norm in training needs more than one value per channel in every batch: an
    error at the train section's `batch` (or, `at_layer`, at the batch-norm layer)."""
    for node in spec.graph.nodes:
        if node.op == "batch_norm":
            t = node.inputs[0].type
            per_channel = smallest * (t.per_sample() or 1) // t.shape[1]
            if per_channel < 2:
                where = node.loc if at_layer else spec.config.spans.get("batch", node.loc)
                raise UserError("batch norm in training needs more than one value per channel, "
                                f"but a batch of {smallest} gives {node.scope} one", where,
                                hint=hint)


def check_sync_bn(spec, model: Model, world: World) -> None:
    """The Triton backend's batch-norm kernels see one process's batch: bn(sync=true) on
    several processes needs the reference backend."""
    if model.backend != "triton" or world.size == 1:
        return
    for node in spec.graph.nodes:
        if node.op == "batch_norm" and node.attrs.get("sync"):
            raise UserError(f"bn(sync=true) has no Triton kernel that shares statistics "
                            f"across the {world.size} processes", node.loc,
                            hint="use --backend reference, or bn without sync")
