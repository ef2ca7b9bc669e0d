"""Reading an SPSE/RGSE squeeze back from the descriptor tensor its ReLU reads.

`read_squeeze` walks back from the descriptor: an optional inference BatchNormalization, an
Add/Sum tree of branch outputs and constants, per branch an optional depthwise conv and the
pooling subgraph (ops linear in X or pure data movement) up to the map X that every branch
pools. It reads what the graph computes, never names; anything else is not a squeeze (a plain
`NoMatch`: not reported, SE gates and every other ReLU are candidates too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from sase_deploy.rewrite.graph_utils import const_value, producer
from sase_deploy.rewrite.rule import NoMatch

# Ops a pooling subgraph may contain: linear in X or pure data movement. Anything else bounds it.
POOLING_OPS = frozenset(
    {
        "ReduceMean", "ReduceSum", "GlobalAveragePool", "AveragePool", "MatMul", "Einsum",
        "Gather", "GatherND", "GatherElements", "Slice", "Concat", "Transpose", "Reshape",
        "Squeeze", "Unsqueeze", "Flatten", "Identity", "Add", "Sum", "Mul", "Div", "Split",
    }
)  # fmt: skip
# At least one of these must be present: a subgraph of pure data movement is not a pool.
AVERAGING_OPS = frozenset(
    {"ReduceMean", "ReduceSum", "GlobalAveragePool", "AveragePool", "MatMul", "Einsum"}
)
MAX_POOL_NODES = 256


@dataclass
class Branch:
    """One scale: pooling subgraph `pool_nodes` from X to `pooled`, then an optional dw conv."""

    pooled: gs.Tensor
    pool_nodes: list[gs.Node]
    conv: gs.Node | None


@dataclass
class Squeeze:
    """A squeeze read back: map `x`, summed `branches` and constant `bias_terms`, optional `bn`.

    `nodes` are all of its nodes (what the rewrite replaces).
    """

    x: gs.Tensor
    end: gs.Tensor  # the descriptor tensor the ReLU reads (B, C, 1, 1)
    branches: list[Branch]
    bias_terms: list[np.ndarray] = field(default_factory=list)
    bn: gs.Node | None = None
    nodes: list[gs.Node] = field(default_factory=list)


def read_squeeze(end: gs.Tensor) -> Squeeze:
    """Read the squeeze back from `end`; the map X is where the pooling region escapes.

    A tensor inside the pooling region that is also read outside it (X feeds the gate Mul
    too) bounds the region: parsing repeats with such tensors as stops until none is left.
    Raises `NoMatch` when `end` is not computed by a squeeze.
    """
    stop: set[int] = set()
    for _ in range(4):
        squeeze = _parse_once(end, stop)
        inside = {id(n) for n in squeeze.nodes}
        pooled = {id(b.pooled) for b in squeeze.branches}
        escaping = {
            id(t)
            for b in squeeze.branches
            for n in b.pool_nodes
            for t in n.outputs
            if id(t) not in pooled and any(id(c) not in inside for c in t.outputs)
        }
        if escaping <= stop:
            return squeeze
        stop |= escaping
    raise NoMatch(f"the pooling region behind '{end.name}' does not settle")


def _parse_once(end: gs.Tensor, stop: set[int]) -> Squeeze:
    nodes: list[gs.Node] = []
    node = producer(end)
    if node is None:
        raise NoMatch(f"'{end.name}' is a graph input or constant")
    bn = None
    summed = end
    if node.op == "BatchNormalization":
        bn, summed = node, node.inputs[0]
        nodes.append(node)
    leaves = _sum_leaves(summed, nodes)
    branches: list[Branch] = []
    bias_terms: list[np.ndarray] = []
    xs: list[gs.Tensor] = []
    for leaf in leaves:
        value = const_value(leaf)
        if value is not None:
            bias_terms.append(value)
            continue
        conv = producer(leaf)
        if conv is not None and _depthwise(conv):
            pooled = conv.inputs[0]
            nodes.append(conv)
        else:
            conv, pooled = None, leaf
        pool_nodes, _, boundary = _pool_region(pooled, stop)
        if len(boundary) != 1:
            raise NoMatch(f"'{pooled.name}' pools more than one map")
        if conv is None and not any(n.op in AVERAGING_OPS for n in pool_nodes):
            raise NoMatch(f"'{pooled.name}' is not pooled")
        nodes.extend(pool_nodes)
        branches.append(Branch(pooled, pool_nodes, conv))
        xs.append(boundary[0])
    if not branches or any(x is not xs[0] for x in xs):
        raise NoMatch("the branches do not pool one map")
    averaging = any(n.op in AVERAGING_OPS for b in branches for n in b.pool_nodes)
    if not averaging and not all(b.conv is not None for b in branches):
        raise NoMatch("no branch averages the map")
    bare = len(branches) == 1 and branches[0].conv is None and bn is None and not bias_terms
    if bare and not any(n.op == "AveragePool" for n in branches[0].pool_nodes):
        # a bare pool -> ReLU: only a region pool (RGSE layer4) is claimed
        raise NoMatch("a bare global pool, not a squeeze")
    return Squeeze(xs[0], end, branches, bias_terms, bn, nodes)


def _sum_leaves(tensor: gs.Tensor, nodes: list[gs.Node]) -> list[gs.Tensor]:
    """Leaves of an Add/Sum tree (constants included as leaves); the Adds go to `nodes`."""
    node = producer(tensor)
    if (
        node is not None
        and node.op in ("Add", "Sum")
        and len(node.inputs) >= 2
        and any(const_value(t) is None for t in node.inputs)
        and _is_descriptor_sum(node)
    ):
        nodes.append(node)
        leaves: list[gs.Tensor] = []
        for t in node.inputs:
            leaves.extend(_sum_leaves(t, nodes))
        return leaves
    return [tensor]


def _is_descriptor_sum(node: gs.Node) -> bool:
    """An Add of branch outputs: every non-constant input comes from a dw conv or another Add."""
    for t in node.inputs:
        if const_value(t) is not None:
            continue
        p = producer(t)
        if p is None or (p.op not in ("Conv", "Add", "Sum") and p.op not in AVERAGING_OPS):
            return False
    return True


def _depthwise(node: gs.Node) -> bool:
    weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.op != "Conv" or weight is None or weight.ndim != 4 or weight.shape[1] != 1:
        return False
    return int(node.attrs.get("group", 1)) == weight.shape[0] > 1


def _pool_region(
    pooled: gs.Tensor, stop: set[int]
) -> tuple[list[gs.Node], set[int], list[gs.Tensor]]:
    """Backward closure of pooling ops from `pooled` up to `stop`: (nodes, ids, boundary)."""
    nodes: list[gs.Node] = []
    seen: set[int] = set()
    boundary: list[gs.Tensor] = []
    stack = [pooled]
    while stack:
        tensor = stack.pop()
        if const_value(tensor) is not None:
            continue
        node = producer(tensor)
        if (
            node is None
            or node.op not in POOLING_OPS
            or id(tensor) in stop
            or len(nodes) > MAX_POOL_NODES
        ):
            if all(t is not tensor for t in boundary):
                boundary.append(tensor)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(node.inputs)
    return nodes, seen, boundary
