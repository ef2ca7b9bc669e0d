"""Dataflow analysis of SE-family gates: what a multiplier is computed from.

A channel gate is `Mul(X, g)` where X is a feature map (B, C, H, W) and g is a
(B, C, 1, 1)-broadcastable tensor computed only from pooled statistics (global or regional
pools of X or of another map) through channel-only operations. `analyse_gate` walks back from g
and classifies every tensor it meets; it never looks at names, only at ops, attributes, shapes
and constants. This walk is written by hand: no library classifies ONNX subgraphs this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from sase_deploy.graph_io.ops import reduce_axes as read_reduce_axes
from sase_deploy.rewrite.graph_utils import (
    const_value,
    producer,
    shape_of,
    spatial_size,
)

# Ops that act on each element alone (a channel vector stays a channel vector).
UNARY_OPS = frozenset(
    {
        "Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu", "Selu",
        "Softplus", "Gelu", "Erf", "Neg", "Exp", "Clip", "Identity", "PRelu", "Celu", "Mish",
        "Softsign", "ThresholdedRelu",
    }
)  # fmt: skip
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"})
RELAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand"})
LINEAR_OPS = frozenset({"Gemm", "MatMul"})
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"})
REGION_POOLS = frozenset({"AveragePool", "MaxPool"})
SIGMOID_LIKE = frozenset({"Sigmoid", "HardSigmoid"})
MAX_POOLED_PIXELS = 64  # gates pool to a few bins (SLE 4x4, SPSE 4x4, RGSE 8x8), never more
MAX_GATE_NODES = 64  # a gate is small; stop walking long before reaching the network input


@dataclass
class Source:
    """Where a gate reads the network: a pooling node over a feature map."""

    node: gs.Node
    tensor: gs.Tensor  # the pooled feature map
    mode: str  # "avg" | "max"
    pooled: tuple[int, ...]  # output spatial size (1, 1) for global pools


@dataclass
class GateAnalysis:
    """The result of walking back from a Mul's multiplier."""

    x: gs.Tensor  # the feature map the gate scales
    gate: gs.Tensor  # the multiplier as the Mul sees it
    mul: gs.Node
    nodes: list[gs.Node] = field(default_factory=list)  # gate nodes, topological order
    sources: list[Source] = field(default_factory=list)
    problem: str | None = None  # why it is not a channel gate (a near miss)

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]


def reduce_axes(node: gs.Node) -> list[int] | None:
    """Axes of a Reduce* (or Unsqueeze/Squeeze) node, attribute before opset 18 (13), input
    since: `[]` for every axis, None when computed at run time."""
    inputs = [t for t in node.inputs if t.name]  # an omitted optional input is an empty name
    axes = const_value(inputs[1]) if len(inputs) > 1 else None
    return read_reduce_axes(node.attrs.get("axes"), axes, len(inputs))


def _is_spatial_reduce(node: gs.Node) -> bool:
    shape = shape_of(node.inputs[0])
    axes = reduce_axes(node)
    if shape is None or axes is None:
        return False
    rank = len(shape)
    return rank >= 3 and sorted(a % rank for a in axes) == list(range(2, rank))


def vector_channels(shape: tuple[int | None, ...] | None) -> int | None:
    """C when the shape is a channel vector (one non-1 dim besides batch), else None."""
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        return None
    big = [int(d) for d in shape[1:] if d is not None and d != 1]
    if len(big) > 1:
        return None
    return big[0] if big else 1


def is_feature_map(tensor: gs.Tensor) -> bool:
    """A 4-D NCHW tensor with a spatial extent larger than one pixel."""
    size = spatial_size(tensor)
    return size is not None and len(size) == 2 and size[0] * size[1] > 1


class _Walker:
    """Classifies tensors behind a multiplier: const / shape / vector / pooled / spatial."""

    def __init__(self) -> None:
        self.kinds: dict[int, str] = {}
        self.nodes: dict[int, gs.Node] = {}
        self.sources: list[Source] = []
        self.problem: str | None = None
        self.map_budget: int | None = None  # steps left while exploring a feature map

    def classify(self, tensor: gs.Tensor) -> str:
        key = id(tensor)
        if key in self.kinds:
            return self.kinds[key]
        kind = self._classify(tensor)
        self.kinds[key] = kind
        return kind

    def _fail(self, reason: str) -> str:
        if self.problem is None:
            self.problem = reason
        return "bad"

    def _classify(self, tensor: gs.Tensor) -> str:
        if const_value(tensor) is not None:
            return "const"
        if self.map_budget is not None:
            self.map_budget -= 1
            if self.map_budget < 0:
                return self._fail(f"'{tensor.name}' is a spatial tensor")
        node = producer(tensor)
        if node is None:
            return self._fail(f"the multiplier depends on graph input '{tensor.name}'")
        if len(self.nodes) >= MAX_GATE_NODES:
            return self._fail("the multiplier's subgraph is too large for a gate")
        if node.op == "Shape":
            return "shape"  # not a gate node: shape arithmetic stays (cleanup drops it if dead)
        if node.op in GLOBAL_POOLS:
            if node.op.startswith("Reduce") and not _is_spatial_reduce(node):
                # still a statistic of the map: report the near miss, do not match it
                self.sources.append(Source(node, node.inputs[0], "avg", (1, 1)))
                return self._fail(f"{node.op} '{node.name}' does not reduce exactly H and W")
            if is_feature_map(node.inputs[0]) or spatial_size(node.inputs[0]) is not None:
                mode = "max" if "Max" in node.op else "avg"
                self.nodes[id(node)] = node
                self.sources.append(Source(node, node.inputs[0], mode, (1, 1)))
                return "vector"
            return self._fail(f"pooling '{node.name}' over a tensor of unknown shape")
        if is_weighted_global_pool(node) and not _is_pooled(node.inputs[0]):  # collapsed SPSE
            self.nodes[id(node)] = node
            self.sources.append(Source(node, node.inputs[0], "weighted", (1, 1)))
            return "vector"
        if node.op in REGION_POOLS and is_feature_map(node.inputs[0]):
            pooled = spatial_size(node.outputs[0])
            if pooled is None:
                return self._fail(f"pooling '{node.name}' has an unknown output shape")
            if pooled[0] * pooled[1] > MAX_POOLED_PIXELS:
                return self._fail(f"'{node.name}' is a downsampling {node.op}, not a gate's pool")
            self.nodes[id(node)] = node
            mode = "max" if node.op == "MaxPool" else "avg"
            self.sources.append(Source(node, node.inputs[0], mode, pooled))
            return "pooled" if pooled != (1, 1) else "vector"
        if is_spatial_matmul(node):
            return self._spatial_matmul(node)
        out_kinds = [self._input_kind(node, i, t) for i, t in enumerate(node.inputs)]
        if "bad" in out_kinds:
            return "bad"
        data = [k for k in out_kinds if k in ("vector", "pooled")]
        if not data:
            if all(k in ("const", "shape") for k in out_kinds):
                return "shape"  # shape arithmetic (dynamic batch): only feeds relayouts
            return self._fail(f"'{node.name}' ({node.op}) is not computed from pooled statistics")
        if not self._op_allowed(node):
            return self._fail(
                f"{node.op} '{node.name}' is not a channel-only operation on pooled statistics"
            )
        self.nodes[id(node)] = node
        out = node.outputs[0]
        if node.op == "Expand":
            return "vector" if "vector" in data else "bad"
        size = spatial_size(out)
        if "pooled" in data and size is not None and size != (1,) * len(size):
            return "pooled"
        if vector_channels(shape_of(out)) is None and node.op not in ("Conv",):
            return self._fail(f"'{node.name}' ({node.op}) output is not a channel vector")
        return "vector"

    def _spatial_matmul(self, node: gs.Node) -> str:
        """One half of `A_h @ x @ A_w^T`: an adaptive average pool lowered to MatMuls."""
        data = next(t for t in node.inputs if const_value(t) is None)
        inner = producer(data)
        self.nodes[id(node)] = node
        pooled = spatial_size(node.outputs[0])
        if pooled is None:
            return self._fail(f"pooling MatMul '{node.name}' has an unknown output shape")
        if inner is not None and is_spatial_matmul(inner):
            kind = self.classify(data)
            if kind == "bad":
                return "bad"
            self.sources[-1] = Source(node, self.sources[-1].tensor, "avg", pooled)
        else:
            self.sources.append(Source(node, data, "avg", pooled))
        return "vector" if pooled == (1, 1) else "pooled"

    def _input_kind(self, node: gs.Node, index: int, tensor: gs.Tensor) -> str:
        if tensor is None or (isinstance(tensor, gs.Variable) and tensor.name == ""):
            return "const"  # an omitted optional input
        if const_value(tensor) is not None:
            return "const"
        # Shape operands (Reshape's shape, Expand's shape, Reduce axes) only need to be shapes.
        if index >= 1 and node.op in ("Reshape", "Expand", "Squeeze", "Unsqueeze", "Tile"):
            sub = self.classify(tensor)
            return "const" if sub in ("const", "shape", "shape-calc") else sub
        if node.op in ("Gemm", "MatMul", "Conv") and index >= 1:
            return self._fail(f"{node.op} '{node.name}' has a non-constant weight")
        if node.op in ("Gather", "Concat", "Cast", "Slice") and self._is_shape_calc(node):
            return "const"
        if is_feature_map(tensor) and producer(tensor) is not None:
            p = producer(tensor)
            assert p is not None
            if p.op not in REGION_POOLS and p.op not in GLOBAL_POOLS and not is_spatial_matmul(p):
                kind = self.classify_no_fail(tensor)
                if kind in ("pooled", "vector"):
                    return kind
                return self._fail(
                    f"the multiplier depends on the spatial tensor '{tensor.name}' "
                    f"({p.op} '{p.name}'), not only on pooled statistics"
                )
        return self.classify(tensor)

    def classify_no_fail(self, tensor: gs.Tensor) -> str:
        """Classify without recording a failure (a tensor may legitimately be a pooled map)."""
        saved = (self.problem, len(self.sources), dict(self.nodes), self.map_budget)
        if self.map_budget is None:
            self.map_budget = 6  # a pooled map is a few ops from its pool, never the network
        kind = self.classify(tensor)
        self.map_budget = saved[3]
        if kind == "bad":
            self.problem = saved[0]
            del self.sources[saved[1] :]
            self.nodes = saved[2]
            self.kinds[id(tensor)] = "spatial"
            return "spatial"
        return kind

    def _is_shape_calc(self, node: gs.Node) -> bool:
        return all(
            const_value(t) is not None or (producer(t) is not None and producer(t).op == "Shape")  # type: ignore[union-attr]
            for t in node.inputs
        )

    def _op_allowed(self, node: gs.Node) -> bool:
        op = node.op
        if op in UNARY_OPS or op in BINARY_OPS or op in RELAYOUT_OPS:
            return True
        if op in LINEAR_OPS:
            return op != "Gemm" or int(node.attrs.get("transA", 0)) == 0
        if op == "BatchNormalization":
            return all(const_value(t) is not None for t in node.inputs[1:5])
        if op == "Conv":
            return const_value(node.inputs[1]) is not None
        return op == "Cast"


def _is_pooled(tensor: gs.Tensor) -> bool:
    node = producer(tensor)
    return node is not None and (node.op in REGION_POOLS or is_spatial_matmul(node))


def is_weighted_global_pool(node: gs.Node) -> bool:
    """A Conv with constant weights whose one window covers its whole (feature-map) input."""
    if node.op != "Conv" or len(node.inputs) < 2 or const_value(node.inputs[1]) is None:
        return False
    size = spatial_size(node.inputs[0])
    weight = const_value(node.inputs[1])
    if size is None or len(size) != 2 or size[0] * size[1] <= 1 or weight is None:
        return False
    pads = node.attrs.get("pads") or [0, 0, 0, 0]
    return tuple(weight.shape[2:]) == size and not any(int(p) for p in pads)


def is_spatial_matmul(node: gs.Node) -> bool:
    """MatMul of a 4-D map by a constant non-negative matrix over H (left) or W (right)."""
    if node.op != "MatMul" or len(node.inputs) != 2:
        return False
    left, right = (const_value(t) for t in node.inputs)
    if (left is None) == (right is None):
        return False
    const = left if left is not None else right
    data = node.inputs[1] if left is not None else node.inputs[0]
    size = spatial_size(data)
    if const is None or const.ndim != 2 or size is None or len(size) != 2 or (const < 0).any():
        return False
    return const.shape[1] == size[0] if left is not None else const.shape[0] == size[1]


def analyse_gate(mul: gs.Node) -> GateAnalysis | None:
    """Analyse `mul` as `X * gate`. None when neither operand looks like a gate at all.

    A result with `problem` set is a near miss: the multiplier reads pooled statistics but
    something disqualifies it (spatial dependence, non-constant weights, a channel mismatch).
    """
    if mul.op != "Mul" or len(mul.inputs) != 2 or len(mul.outputs) != 1:
        return None
    best: GateAnalysis | None = None
    for xi in (0, 1):
        x, g = mul.inputs[xi], mul.inputs[1 - xi]
        if not is_feature_map(x) or const_value(g) is not None:
            continue
        walker = _Walker()
        kind = walker.classify(g)
        if not walker.sources:
            continue  # no pooled statistics anywhere: an ordinary product (GLU, SiLU, ...)
        analysis = GateAnalysis(x=x, gate=g, mul=mul, sources=walker.sources)
        analysis.nodes = [n for n in _toposorted(walker.nodes.values())]
        if kind != "vector":
            analysis.problem = walker.problem or (
                f"the multiplier '{g.name}' is not a (B,C,1,1) channel vector"
            )
        else:
            analysis.problem = _channel_problem(x, g, analysis)
        if best is None or (best.problem is not None and analysis.problem is None):
            best = analysis
    return best


def _channel_problem(x: gs.Tensor, g: gs.Tensor, analysis: GateAnalysis) -> str | None:
    xc = shape_of(x)
    gate_c = _gate_channels(analysis)
    if xc is None or xc[1] is None:
        return f"the feature map '{x.name}' has an unknown channel count"
    if gate_c is None:
        return f"the multiplier '{g.name}' has an unknown shape"
    if xc[1] == 1 and gate_c > 1:
        return (
            f"a {gate_c}-channel vector times the 1-channel map '{x.name}' is an outer product "
            "(SASE/SLIM style modulation by a spatial mask), not a channel gate"
        )
    if gate_c not in (1, xc[1]):
        return f"the multiplier has {gate_c} channels but the map '{x.name}' has {xc[1]}"
    return None


def _gate_channels(analysis: GateAnalysis) -> int | None:
    """Channels of the gate value before any broadcast Expand."""
    g = analysis.gate
    while (node := producer(g)) is not None and node.op == "Expand":
        g = node.inputs[0]
    return vector_channels(shape_of(g))


def _toposorted(nodes: object) -> list[gs.Node]:
    """Order a node subset so producers come first (depth-first on inputs)."""
    pending = {id(n): n for n in nodes}  # type: ignore[attr-defined]
    order: list[gs.Node] = []
    done: set[int] = set()

    def visit(node: gs.Node) -> None:
        if id(node) in done:
            return
        done.add(id(node))
        for t in node.inputs:
            p = producer(t) if t is not None else None
            if p is not None and id(p) in pending:
                visit(p)
        order.append(node)

    for node in list(pending.values()):
        visit(node)
    return order


def classify_kind(analysis: GateAnalysis) -> str:
    """Name the SE-family kind from what the gate computes (see README `fuse`)."""
    x = analysis.x
    sources = analysis.sources
    if any(n.op == "Conv" and len(shape_of(n.inputs[0]) or ()) == 3 for n in analysis.nodes):
        return "eca"
    src_tensors = {id(s.tensor) for s in sources}
    avg_and_max = len(sources) >= 2 and {s.mode for s in sources} == {"avg", "max"}
    if avg_and_max and all(s.pooled == (1, 1) for s in sources) and src_tensors == {id(x)}:
        return "cbam_channel"
    # A fixed-window strided AveragePool (RGSE's AvgPool2d(7, 7)) stays "regional" even where
    # the window happens to cover the whole map (RGSE's last stage): its only trace.
    regional = [s for s in sources if s.pooled != (1, 1) or _is_fixed_window_pool(s.node)]
    if id(x) not in src_tensors and regional:
        return "sle"
    if regional:
        scales = {s.pooled for s in sources}
        if len(scales) >= 2:
            return "spse"
        return "rgse"
    linear = [
        n
        for n in analysis.nodes
        if n.op in LINEAR_OPS or (n.op == "Conv" and len(shape_of(n.inputs[0]) or ()) != 3)
    ]
    last = _last_op(analysis)
    sigmoid_tail = last in SIGMOID_LIKE or last == "Clip" or _is_hard_sigmoid_tail(analysis)
    if len(sources) == 1 and src_tensors == {id(x)} and len(linear) == 2 and sigmoid_tail:
        return "se"
    return "se_like"


def _is_fixed_window_pool(node: gs.Node) -> bool:
    strides = node.attrs.get("strides") or [1]
    return node.op == "AveragePool" and max(int(v) for v in strides) > 1


def _last_op(analysis: GateAnalysis) -> str | None:
    g = analysis.gate
    while (node := producer(g)) is not None and node.op in RELAYOUT_OPS:
        g = node.inputs[0]
    node = producer(g)
    return None if node is None else node.op


def _is_hard_sigmoid_tail(analysis: GateAnalysis) -> bool:
    """relu6(x + 3) / 6 written out (Add -> Clip -> Div), as older exports emit it."""
    g = analysis.gate
    while (node := producer(g)) is not None and node.op in RELAYOUT_OPS:
        g = node.inputs[0]
    node = producer(g)
    if node is None or node.op not in ("Div", "Mul"):
        return False
    inner = producer(node.inputs[0])
    return inner is not None and inner.op in ("Clip", "Relu6")


def gate_mul_downstream(tensor: gs.Tensor, max_steps: int = 32) -> gs.Node | None:
    """The Mul that applies the channel vector `tensor` (after channel-only ops) to a map.

    Walks forward through single-consumer channel-only nodes; returns the first Mul whose other
    operand is a feature map, or None.
    """
    current = tensor
    for _ in range(max_steps):
        users = list(current.outputs)
        if len(users) != 1:
            muls = [u for u in users if u.op == "Mul"]
            if len(muls) == 1 and users[0] is not muls[0]:
                users = muls
            else:
                return None
        node = users[0]
        if node.op == "Mul":
            other = node.inputs[1] if node.inputs[0] is current else node.inputs[0]
            if is_feature_map(other):
                return node
        if not node.outputs:
            return None
        current = node.outputs[0]
    return None
