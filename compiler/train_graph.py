"""Build the train graph: training-mode lowering, the loss, autodiff, optimizer updates."""
from __future__ import annotations

from .autodiff import backward
from .config import TrainConfig
from .ir import Graph, TensorType
from .lower import live_nodes, lower
from .ops import Builder
from .optimizers import lower_optimizer


def label_type(model: Graph, loss: str) -> TensorType:
    out = model.outputs[0].type
    if loss == "cross_entropy":
        return TensorType((out.shape[0],), "i64")
    return out


def build_train_graph(model: Graph, cfg: TrainConfig) -> Graph:
    """inputs (%x..., %y, %lr) -> outputs (loss, model outputs...), with state updates."""
    g = lower(model, "train", name=f"{model.name}.train")
    y = g.add_input("y", label_type(model, cfg.loss.name))
    lr = g.add_input("lr", TensorType(()))
    b = Builder(g, loc=cfg.loss.span, scope="loss")
    loss = b.emit1(cfg.loss.name, [g.outputs[0], y], dict(cfg.loss.args))
    params = [v for v in g.state.values() if v.state.trainable]
    grads = backward(g, loss, params)
    g.grads = {p.state.name: grads[id(p)] for p in params}
    lower_optimizer(g, cfg.optimizer, params, grads, lr)
    g.outputs = [loss, *g.outputs]
    g.output_names = ["loss", *g.output_names]
    g.nodes = live_nodes(g)                      # drop gradients nothing consumes
    return g
