"""The one SE-gate detector: which subgraphs are gates, by what the graph computes.

Fusion and INT8 calibration ask the same question ("is this a gate, and which nodes compute
it?") and get the same answer from here:

- a *channel gate* (SE family) is `Mul(X, g)` where g is a (B, C, 1, 1)-broadcastable vector
  computed only from pooled statistics through channel-only ops (`gate_analysis.analyse_gate`;
  which pools count and how small a pooled map must be: `gate_walk`, docs/fuse.md). Its kind
  (`se`, `sle`, `spse`, `rgse`, `eca`, `cbam_channel`, `se_like`) is `classify_kind`'s;
- a *SASE/SLIM block* (kind `sase`) is what the `sase_group` matcher reads; its gate paths are
  the G style branches (pooled descriptor -> MLP), each walked back like a channel gate. A
  block already in the `sase_group` rule's canonical form (what `export` writes and `deploy`
  calibrates: `MatMul(Transpose(Reshape(styles)), Reshape(masks))`, the G styles one batched
  MLP) is found by that MatMul, its styles walked back the same way.

A gate's `path` is every node from its pooling up to the gate value, in topological order (the
pools included, the Mul that applies the gate not): what calibration keeps in float unless
`--quantize-gates`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from sase_deploy.rewrite.gate_analysis import analyse_gate, classify_kind
from sase_deploy.rewrite.gate_walk import GateWalker
from sase_deploy.rewrite.graph_utils import import_graph, producer
from sase_deploy.rewrite.rule import BlockKind, NoMatch
from sase_deploy.rewrite.rules.sase.match import ANCHOR_OPS, match_sase


@dataclass(frozen=True)
class Gate:
    """One gate: its kind, the tensor holding the gated result, and its gate path.

    `output` is the applying Mul's output for a channel gate and the SASE block's output (its
    `xb * style`, else `sase_group:<anchor>`) for a SASE block: the keys fusion's
    `blocks_found` counts by. `mul` names the Mul that applies a channel gate (None for SASE).
    """

    kind: BlockKind
    output: str
    path: tuple[str, ...]
    mul: str | None = None


def channel_gates(graph: gs.Graph) -> list[Gate]:
    """Every SE-family channel gate of `graph` (near misses are not gates), in node order."""
    gates = []
    for node in graph.nodes:
        analysis = analyse_gate(node) if node.op == "Mul" else None
        if analysis is None or analysis.problem is not None:
            continue
        path = tuple(n.name for n in analysis.nodes)
        gates.append(Gate(classify_kind(analysis), node.outputs[0].name, path, node.name))
    return gates


def _walked_path(graph: gs.Graph, walker: GateWalker) -> tuple[str, ...]:
    """The nodes a walk recorded, by name, in the graph's (topological) order."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return tuple(n.name for n in sorted(walker.nodes.values(), key=lambda n: order[id(n)]))


def sase_gates(graph: gs.Graph) -> list[Gate]:
    """Every SASE/SLIM block the `sase_group` matcher reads, its style branches as the path."""
    gates = []
    for anchor in list(graph.nodes):
        if anchor.op not in ANCHOR_OPS:
            continue
        try:
            match = match_sase("sase_group", anchor)
        except NoMatch:
            continue
        walker = GateWalker()
        for style in match.captures.styles:
            walker.classify(style.vector)
        output = match.block_output or f"sase_group:{match.anchor}"
        gates.append(Gate("sase", output, _walked_path(graph, walker)))
    return gates


def _through(tensor: gs.Tensor, *ops: str) -> gs.Tensor | None:
    """The tensor `ops` (outermost first) were applied to, if `tensor` is made by exactly them."""
    for op in ops:
        node = producer(tensor)
        if node is None or node.op != op:
            return None
        tensor = node.inputs[0]
    return tensor


def canonical_sase_gates(graph: gs.Graph) -> list[Gate]:
    """SASE blocks in the canonical fused form: the MatMul of the transposed styles with the
    sigmoid masks, the styles computed from pooled statistics only (the batched style MLP)."""
    gates = []
    for node in graph.nodes:
        if node.op != "MatMul" or len(node.inputs) != 2:
            continue
        styles = _through(node.inputs[0], "Transpose", "Reshape")
        masks = _through(node.inputs[1], "Reshape")
        if styles is None or masks is None or producer(masks) is None:
            continue
        if producer(masks).op not in ("Sigmoid", "HardSigmoid"):  # type: ignore[union-attr]
            continue
        walker = GateWalker()
        if walker.classify(styles) != "vector" or walker.problem is not None:
            continue
        gates.append(Gate("sase", f"sase_group:{node.name}", _walked_path(graph, walker)))
    return gates


def find_gates(model: onnx.ModelProto) -> list[Gate]:
    """Channel gates, then SASE blocks (as written by models, or fused), of `model`
    (shape-inferred and imported here)."""
    graph = import_graph(model)
    return channel_gates(graph) + sase_gates(graph) + canonical_sase_gates(graph)
