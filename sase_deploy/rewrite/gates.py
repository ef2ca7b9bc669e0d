"""The one SE-gate detector: which subgraphs are gates, by what the graph computes.

Fusion and INT8 calibration ask the same question ("is this a gate, and which nodes compute
it?") and get the same answer from here:

- a *channel gate* (SE family) is `Mul(X, g)` where g is a (B, C, 1, 1)-broadcastable vector
  computed only from pooled statistics through channel-only ops (`gate_analysis.analyse_gate`;
  which pools count and how small a pooled map must be: `gate_walk`, docs/fuse.md). Its kind
  (`se`, `sle`, `spse`, `rgse`, `eca`, `cbam_channel`, `se_like`) is `classify_kind`'s;
- a *SASE/SLIM block* (kind `sase`) is what the `sase_group` matcher reads; its gate paths are
  the G style branches (pooled descriptor -> MLP), each walked back like a channel gate.

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
from sase_deploy.rewrite.graph_utils import import_graph
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
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        path = tuple(n.name for n in sorted(walker.nodes.values(), key=lambda n: order[id(n)]))
        output = match.block_output or f"sase_group:{match.anchor}"
        gates.append(Gate("sase", output, path))
    return gates


def find_gates(model: onnx.ModelProto) -> list[Gate]:
    """Channel gates, then SASE blocks, of `model` (shape-inferred and imported here)."""
    graph = import_graph(model)
    return channel_gates(graph) + sase_gates(graph)
