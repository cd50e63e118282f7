"""The kernel plan's data: buffers, kernels, the plan itself, and the size and load-pattern
rules every planning pass shares (compiler/plan.py runs the passes; compiler/fuse.py groups
nodes into kernels; compiler/memory.py lays out state and the arena)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .ir import Graph, Node, TensorType, Value, numel
from .ops import get

ALIGN = 256                                   # bytes: every arena buffer starts aligned
DTYPE_BYTES = {"f32": 4, "i64": 8, "bf16": 2, "f16": 2, "i32": 4}
UPDATE_OPS = ("sgd_update", "adam_update", "rmsprop_update", "adagrad_update",
              "adadelta_update", "momentum_update")


# -- sizes ---------------------------------------------------------------------------------------

def eval_dim(d, env: dict[str, int]) -> int:
    if isinstance(d, int):
        return d
    try:
        return int(eval(d, {"__builtins__": {}, "min": min, "max": max}, dict(env)))
    except NameError as e:
        raise KeyError(str(e)) from None


def concrete(t: TensorType, env: dict[str, int]) -> tuple[int, ...]:
    return tuple(eval_dim(d, env) for d in t.shape)


def bind_inputs(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Size symbols (N, H, W, ...) bound from the shapes of actual inputs."""
    env: dict[str, int] = {}
    for v in graph.inputs:
        for d, n in zip(v.type.shape, shapes.get(v.input_name, ())):
            if isinstance(d, str) and d.isidentifier():
                env[d] = int(n)
    return env


# -- the plan -------------------------------------------------------------------------------------

@dataclass(eq=False)
class Buffer:
    """Where one value lives while the step runs."""

    name: str                       # as the IR prints it: %x, %12, @linear1.weight
    shape: tuple[int, ...]
    dtype: str
    where: str                      # input | state | arena | pinned | alias | const
    offset: int = 0                 # bytes into the arena, or elements into the flat state
    base: "Buffer | None" = None    # alias: the buffer it views
    live: tuple[int, int] = (0, 0)  # first and last kernel that touch it

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


@dataclass(eq=False)
class Kernel:
    family: str                                  # elementwise, matmul, conv, pool, ...
    anchor: Node | None = None
    body: list[Node] = field(default_factory=list)       # elementwise nodes, in order
    siblings: list[Node] = field(default_factory=list)   # extra anchor nodes of the same kernel
    multi: list[Node] = field(default_factory=list)      # multi-tensor update nodes
    scalar_updates: list[tuple[str, Value]] = field(default_factory=list)
    advance_seed: bool = False                   # the step's dropout seed += 1 (last kernel)
    pos: int = 0                                 # position of its last member in the graph
    index: int = 0
    # filled by render
    name: str = ""
    source: str = ""
    grid: tuple = ()
    argv: list = field(default_factory=list)     # launch arguments: TableRef or literal
    tunables: dict = field(default_factory=dict)  # constexpr name -> choices (autotuning)
    config: dict = field(default_factory=dict)    # tuned constexpr values in force
    reads: list[Value] = field(default_factory=list)
    writes: list[Value] = field(default_factory=list)

    def nodes(self) -> list[Node]:
        head = [self.anchor] if self.anchor is not None else []
        return head + self.siblings + self.body + self.multi


@dataclass(eq=False)
class Plan:
    graph: Graph
    training: bool
    env: dict[str, int]
    target: str = "gpu"             # gpu | interpreter (which launch configurations to pick)
    nodes: list[Node] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    inlined: dict[int, Node] = field(default_factory=dict)    # id(value) -> inlined producer
    remat: set = field(default_factory=set)                    # ids of remat nodes
    alias: dict[int, Value] = field(default_factory=dict)      # view output id -> base value
    buffers: dict[int, Buffer] = field(default_factory=dict)   # id(value) -> buffer
    state_order: list[str] = field(default_factory=list)       # flat-state layout (training)
    state_numel: int = 0
    arena_bytes: int = 0
    pinned_bytes: int = 0
    naive_peak: int = 0
    producer: dict[int, Node] = field(default_factory=dict)
    position: dict[int, int] = field(default_factory=dict)     # id(node) -> index in nodes
    consumers: dict[int, list[Node]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    module: str = ""                                           # the rendered Python module
    flat_state: bool = False

    # -- helpers used by every pass
    def shape(self, v: Value) -> tuple[int, ...]:
        return concrete(v.type, self.env)

    def base(self, v: Value) -> Value:
        while id(v) in self.alias:
            v = self.alias[id(v)]
        return v

    def name(self, v: Value) -> str:
        return self.names.get(id(v), "%?")

    def kind(self, node: Node) -> str | None:
        return get(node.op).triton

    @property
    def launches(self) -> int:
        return len(self.kernels)

    @property
    def torch_steps(self) -> int:
        """Steps that run an op's reference forward (no Triton kernel; torch_call.py)."""
        return sum(k.family == "torch" for k in self.kernels)


def pattern(vshape: tuple, ishape: tuple) -> str | None:
    """How a value of shape `vshape` is read at an element of an iteration over `ishape`:
    'full' (same shape: the flat offset), 'chan' (one value per channel, dim 1), 'scalar'."""
    if vshape == ishape:
        return "full"
    if vshape == ():
        return "scalar"
    if len(vshape) == 1 and len(ishape) >= 2 and ishape[1] == vshape[0]:
        return "chan"
    if len(vshape) == 1 and len(ishape) == 1 and vshape[0] == 1:
        return "scalar"
    if numel(vshape) == numel(ishape):         # a reshape: contiguous, same flat order
        return "full"
    return None


def sink_ids(p: Plan) -> set[int]:
    g = p.graph
    return ({id(p.base(v)) for v in g.outputs} | {id(p.base(v)) for v in g.updates.values()})
