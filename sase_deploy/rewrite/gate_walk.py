"""The backward walk behind a multiplier: which tensors are pooled statistics, and their sources.

`GateWalker.classify` labels every tensor it meets behind a Mul's multiplier, from its producer's
op, attributes, shape and constants (never names): `const`, `shape` (shape arithmetic), `vector`
(a per-channel statistic), `pooled` (a few pooled bins), `spatial` or `bad` (with the first
reason in `problem`). On the way it records the gate's nodes and its `Source`s, the pooling nodes
where the gate reads a feature map. `gate_analysis.analyse_gate` runs it and judges the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from sase_deploy.rewrite.gate_ops import (
    BINARY_OPS,
    GLOBAL_POOLS,
    LINEAR_OPS,
    REGION_POOLS,
    RELAYOUT_OPS,
    UNARY_OPS,
    is_feature_map,
    is_pooled,
    is_spatial_matmul,
    is_spatial_reduce,
    is_weighted_global_pool,
    vector_channels,
)
from sase_deploy.rewrite.graph_utils import const_value, producer, shape_of, spatial_size

MAX_POOLED_PIXELS = 64  # gates pool to a few bins (SLE 4x4, SPSE 4x4, RGSE 8x8), never more
MAX_GATE_NODES = 64  # a gate is small; stop walking long before reaching the network input


@dataclass
class Source:
    """Where a gate reads the network: a pooling node over a feature map."""

    node: gs.Node
    tensor: gs.Tensor  # the pooled feature map
    mode: str  # "avg" | "max"
    pooled: tuple[int, ...]  # output spatial size (1, 1) for global pools


class GateWalker:
    """Classifies tensors behind a multiplier: const / shape / vector / pooled / spatial."""

    def __init__(self) -> None:
        self.kinds: dict[int, str] = {}
        self.nodes: dict[int, gs.Node] = {}
        self.sources: list[Source] = []
        self.problem: str | None = None
        self.map_budget: int | None = None  # steps left while exploring a feature map

    def classify(self, tensor: gs.Tensor) -> str:
        """The kind of `tensor` (memoised); the walk records gate nodes and sources behind it."""
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
        pool_kind = self._classify_pool(node)
        if pool_kind is not None:
            return pool_kind
        return self._classify_op(node)

    def _classify_pool(self, node: gs.Node) -> str | None:
        """The kind of a pooling node's output (recorded as a source); None for other ops."""
        if node.op in GLOBAL_POOLS:
            if node.op.startswith("Reduce") and not is_spatial_reduce(node):
                # still a statistic of the map: report the near miss, do not match it
                self.sources.append(Source(node, node.inputs[0], "avg", (1, 1)))
                return self._fail(f"{node.op} '{node.name}' does not reduce exactly H and W")
            if is_feature_map(node.inputs[0]) or spatial_size(node.inputs[0]) is not None:
                mode = "max" if "Max" in node.op else "avg"
                self.nodes[id(node)] = node
                self.sources.append(Source(node, node.inputs[0], mode, (1, 1)))
                return "vector"
            return self._fail(f"pooling '{node.name}' over a tensor of unknown shape")
        if is_weighted_global_pool(node) and not is_pooled(node.inputs[0]):  # collapsed SPSE
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
        return None

    def _classify_op(self, node: gs.Node) -> str:
        """The kind of a non-pooling node's output, from its inputs' kinds and its op."""
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
            return "const" if sub in ("const", "shape") else sub
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
