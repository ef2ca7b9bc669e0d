"""Dataflow analysis of SE-family gates: what a multiplier is computed from.

A channel gate is `Mul(X, g)` where X is a feature map (B, C, H, W) and g is a
(B, C, 1, 1)-broadcastable tensor computed only from pooled statistics (global or regional
pools of X or of another map) through channel-only operations. `analyse_gate` walks back from g
and classifies every tensor it meets; it never looks at names, only at ops, attributes, shapes
and constants. This walk is written by hand: no library classifies ONNX subgraphs this way.

Here: `analyse_gate` (is it a channel gate, or a near miss and why), `classify_kind` (which SE
family) and `gate_mul_downstream` (the gate Mul a channel vector feeds). The walk itself is
`gate_walk`; the op sets and shape predicates it reads graphs with are `gate_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from sase_deploy.rewrite.gate_ops import (
    LINEAR_OPS,
    RELAYOUT_OPS,
    SIGMOID_LIKE,
    is_feature_map,
    vector_channels,
)
from sase_deploy.rewrite.gate_walk import GateWalker, Source
from sase_deploy.rewrite.graph_utils import const_value, producer, shape_of
from sase_deploy.rewrite.rule import GateKind


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
        walker = GateWalker()
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


def classify_kind(analysis: GateAnalysis) -> GateKind:
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


def _gate_producer(analysis: GateAnalysis) -> gs.Node | None:
    """The node computing the gate values, behind any relayouts of the multiplier."""
    g = analysis.gate
    while (node := producer(g)) is not None and node.op in RELAYOUT_OPS:
        g = node.inputs[0]
    return producer(g)


def _last_op(analysis: GateAnalysis) -> str | None:
    node = _gate_producer(analysis)
    return None if node is None else node.op


def _is_hard_sigmoid_tail(analysis: GateAnalysis) -> bool:
    """relu6(x + 3) / 6 written out (Add -> Clip -> Div), as older exports emit it."""
    node = _gate_producer(analysis)
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
