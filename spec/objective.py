"""The training objective checked against the model: every loss term names an output the
model has, and its loss accepts that output (located errors for `dlc check`)."""
from __future__ import annotations

from ..compiler.config import Call, TrainConfig
from ..compiler.ir import Graph
from ..compiler.ops import ShapeError
from ..compiler.ops import get as get_op
from ..compiler.pipeline import read_values, target_type, term_output
from .diagnostics import Note, UserError, did_you_mean


def check_objective(graph: Graph, cfg: TrainConfig) -> None:
    """A UserError at the term when it names no output of the model or its loss cannot score
    that output. Without a `loss` setting the loss is cross_entropy, or pixel_cross_entropy
    when the first output is per-pixel scores [N, C, H, W]; the data check of training
    judges it."""
    if not cfg.terms and "loss" not in cfg.spans:
        if graph.outputs and graph.outputs[0].type.rank == 4:
            cfg.loss = Call("pixel_cross_entropy", {"ignore": 255})
        return
    for term in cfg.loss_terms():
        if term.output is not None and term.output not in graph.output_names:
            raise UserError(f"the model {graph.name} has no output '{term.output}' "
                            f"(outputs: {', '.join(graph.output_names)})", term.span,
                            hint=did_you_mean(term.output, graph.output_names)
                            or "name the outputs with `output a, b` in the model")
        out = term_output(graph, term)
        _check_decoded_reads(graph, term)
        try:
            reads = [v.type for v in read_values(graph, term)]
            op = get_op(term.call.name)
            getattr(op, "term_infer", op.infer)([out.type, *reads,
                                                 target_type(out.type, term.call.name)],
                                                dict(term.call.args))
        except ShapeError as e:
            where = out.node.loc if out.node is not None else None
            what = f"output '{term.output}'" if term.output else "the model's first output"
            raise UserError(f"loss for {what}: {e}", term.span,
                            notes=[Note(f"{what} is {out.type}, made here", where)]
                            if where is not None else []) from None


def _check_decoded_reads(graph: Graph, term) -> None:
    """A detector's loss decodes its boxes at evaluation from the tensors it reads
    (fast_rcnn_loss: the RoIs), which the evaluation sees only as outputs or inputs."""
    op = get_op(term.call.name)
    if not hasattr(op, "detect"):
        return
    inputs = {v.input_name for v in graph.inputs}
    for arg in getattr(op, "reads", ()):
        name = term.call.args.get(arg)
        if name in graph.values and name not in graph.output_names and name not in inputs:
            raise UserError(f"{term.call.name} reads {arg}={name} to decode its detections, "
                            f"but '{name}' is not an output of the model {graph.name}",
                            term.span, hint=f"add it to the output line: `output "
                            f"{', '.join([*graph.output_names, name])}`")
