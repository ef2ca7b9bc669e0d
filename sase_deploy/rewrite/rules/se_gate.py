"""Rule 1: find every SE-family channel gate and bring it to one canonical form.

Canonical form: one pooling node per pooled source (ReduceMean / ReduceMax over H, W with
keepdims — ORT CPU runs them faster than GlobalAveragePool/GlobalMaxPool; regional
AveragePool kept for SLE/RGSE/SPSE) -> 1x1 Convs (Gemm/MatMul on flattened vectors become Convs
with reshaped weights, BatchNorm and bias Adds folded in) -> activations -> broadcasting
`Mul(X, gate)`. Reshape/Flatten/Squeeze/Unsqueeze/Transpose/Expand/Shape chains disappear
(the Mul broadcasts (B, C, 1, 1) itself). ECA keeps its Conv1d between two Reshapes: a Conv1d over
channels as a dense 1x1 Conv would cost C^2 multiplies.

The rule re-emits the gate from the analysis in `gate_analysis`: every gate tensor maps to a
canonical (B, C, 1, 1) value (or to itself, for pooled maps), op by op (`se_gate_emit`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from sase_deploy.rewrite.gate_analysis import GateAnalysis, analyse_gate, classify_kind
from sase_deploy.rewrite.gate_ops import BINARY_OPS, UNARY_OPS, is_spatial_matmul
from sase_deploy.rewrite.graph_utils import const_value, detach, make_node
from sase_deploy.rewrite.rule import Captures, Match, NoMatch, RewriteRule
from sase_deploy.rewrite.rules.se_gate_emit import GateEmitter, is_global_window

# Ops a canonical gate may contain; anything else in a gate means there is work to do.
CANONICAL_OPS = frozenset(
    {"ReduceMean", "ReduceMax", "AveragePool", "MaxPool", "Conv", "Mul", "MatMul"}
    | UNARY_OPS - {"Identity"}
    | BINARY_OPS
)


@dataclass
class GateCaptures(Captures):
    """A recognised gate: its dataflow analysis (`canonical` once `check` finds nothing to do)."""

    analysis: GateAnalysis


class SeGateCanonicalise(RewriteRule[GateCaptures]):
    """Recognise SE-family gates by dataflow and rewrite them to the canonical form."""

    name = "se_gate"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        return (node for node in list(graph.nodes) if node.op == "Mul")

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match[GateCaptures]:
        analysis = analyse_gate(anchor)
        if analysis is None:
            raise NoMatch(f"Mul '{anchor.name}' does not read pooled statistics")
        if analysis.problem is not None:
            raise NoMatch.near(analysis.problem)
        return Match(
            rule=self.name,
            anchor=anchor.name,
            kind=classify_kind(analysis),
            nodes=[*analysis.nodes, anchor],
            captures=GateCaptures(analysis),
            block_output=anchor.outputs[0].name,
        )

    def check(self, graph: gs.Graph, match: Match[GateCaptures]) -> None:
        analysis = match.captures.analysis
        inside = {id(n) for n in match.nodes}
        for node in analysis.nodes:
            for out in node.outputs:
                if any(id(user) not in inside for user in out.outputs):
                    raise NoMatch.near(f"'{out.name}' inside the gate is also used outside it")
                if any(out is t for t in graph.outputs):
                    raise NoMatch.near(f"'{out.name}' inside the gate is a graph output")
        GateEmitter(gs.Graph(), analysis, dry_run=True).emit()  # raises what it cannot express
        canonical_ops = all(
            n.op in CANONICAL_OPS and (n.op != "MatMul" or is_spatial_matmul(n))
            for n in analysis.nodes
        )
        if canonical_ops and not _foldable(analysis):
            match.captures.canonical = True

    def rewrite(self, graph: gs.Graph, match: Match[GateCaptures]) -> None:
        if match.captures.canonical:
            return  # already canonical: found and counted, nothing to change
        analysis = match.captures.analysis
        emitter = GateEmitter(graph, analysis, prefix=f"{self.name}/{match.anchor}")
        gate = emitter.emit()
        mul = analysis.mul
        out = mul.outputs[0]
        detach([*analysis.nodes, mul])
        make_node(graph, "Mul", f"{self.name}/{match.anchor}/scale", [analysis.x, gate], output=out)


def _foldable(analysis: GateAnalysis) -> bool:
    """True when the emitter would change something: a bias Add after a Conv to fold, or a
    whole-map window pool to turn into a global pool."""
    for node in analysis.nodes:
        if node.op in ("AveragePool", "MaxPool") and is_global_window(node):
            return True
        if node.op in ("ReduceMean", "ReduceMax") and int(node.attrs.get("keepdims", 1)) != 1:
            return True
        if node.op == "Add" and any(const_value(t) is not None for t in node.inputs):
            src = [t for t in node.inputs if const_value(t) is None]
            if src and src[0].inputs and src[0].inputs[0].op == "Conv":
                return True
    return False
