"""The op registry and every op family; importing this package registers them all."""
from . import (boxes, collective, conv, core, dense, detection, losses, norm,  # noqa: F401
               optim, pool, roi)  # (registration side effects)
from .registry import (REQUIRED, Arg, Builder, ExecContext, LocalState, Op, ShapeError, all_ops,
                       get, layer, layer_names, register)

__all__ = ["REQUIRED", "Arg", "Builder", "ExecContext", "LocalState", "Op", "ShapeError",
           "all_ops", "get", "layer", "layer_names", "register"]
