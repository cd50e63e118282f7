"""The evaluation graph: inference-mode lowering plus the loss, for val/test metrics."""
from __future__ import annotations

from .config import TrainConfig
from .ir import Graph
from .lower import lower
from .ops import Builder
from .train_graph import label_type


def build_eval_graph(model: Graph, cfg: TrainConfig) -> Graph:
    """inputs (%x..., %y) -> outputs (loss, model outputs...)."""
    g = lower(model, "eval", name=f"{model.name}.eval")
    y = g.add_input("y", label_type(model, cfg.loss.name))
    loss = Builder(g, scope="loss").emit1(cfg.loss.name, [g.outputs[0], y], dict(cfg.loss.args))
    g.outputs = [loss, *g.outputs]
    g.output_names = ["loss", *g.output_names]
    return g
