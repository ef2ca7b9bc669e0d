"""Rule 4: cleanup — Identity nodes, duplicate nodes (common subexpressions), duplicate constants.

Dead nodes and topological order are handled by graphsurgeon's `cleanup()`/`toposort()`, which
the driver runs after every rule; deterministic names come from the rules (`rule/anchor/role`).
What graphsurgeon does not do is merge equal constants and equal nodes (e.g. the two
GlobalAveragePools of one map that separate rewrites leave behind): that is this rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from sase_deploy.graph_io import replace_uses
from sase_deploy.rewrite.graph_utils import is_graph_output
from sase_deploy.rewrite.rule import Captures, Match, NoMatch, ReportValue, RewriteRule

_LARGE = 1 << 16  # constants above this many bytes are compared by hash first


@dataclass
class CleanupCaptures(Captures):
    """What the cleanup found (reported; the rewrite finds it again on the graph it gets)."""

    identity_nodes: int
    duplicate_constant_groups: int
    duplicate_nodes: int

    def report(self) -> dict[str, ReportValue]:
        return {
            **super().report(),
            "identity_nodes": self.identity_nodes,
            "duplicate_constant_groups": self.duplicate_constant_groups,
            "duplicate_nodes": self.duplicate_nodes,
        }


class Cleanup(RewriteRule[CleanupCaptures]):
    """One whole-graph match: remove Identity nodes, merge equal constants and equal nodes."""

    name = "cleanup"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        return iter(graph.nodes[:1])

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match[CleanupCaptures]:
        identities = [n for n in graph.nodes if _removable_identity(graph, n)]
        constants = len(_constant_groups(graph))
        duplicates = len(_duplicate_nodes(graph))
        if not identities and not constants and not duplicates:
            raise NoMatch("nothing to clean up")
        return Match(
            rule=self.name,
            anchor="graph",
            captures=CleanupCaptures(len(identities), constants, duplicates),
        )

    def rewrite(self, graph: gs.Graph, match: Match[CleanupCaptures]) -> None:
        for node in [n for n in graph.nodes if _removable_identity(graph, n)]:
            replace_uses(graph, node.outputs[0], node.inputs[0])
            node.outputs.clear()
        for group in _constant_groups(graph):
            keep = group[0]
            for other in group[1:]:
                replace_uses(graph, other, keep)
        while True:  # merging two nodes can make their consumers equal too
            pairs = _duplicate_nodes(graph)
            if not pairs:
                break
            for keep, other in pairs:
                for old, new in zip(other.outputs, keep.outputs, strict=True):
                    replace_uses(graph, old, new)
                other.outputs.clear()
            graph.cleanup(remove_unused_graph_inputs=False)


def _removable_identity(graph: gs.Graph, node: gs.Node) -> bool:
    return (
        node.op == "Identity"
        and len(node.inputs) == 1
        and len(node.outputs) == 1
        and not is_graph_output(graph, node.outputs[0])
    )


def _constant_groups(graph: gs.Graph) -> list[list[gs.Constant]]:
    """Groups (size >= 2) of constants with equal dtype, shape and values."""
    buckets: dict[tuple[str, tuple[int, ...], bytes], list[gs.Constant]] = {}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or not tensor.outputs:
            continue
        values = np.asarray(tensor.values)
        if values.nbytes > _LARGE:
            continue  # large weights are rarely duplicated; comparing them costs time
        key = (str(values.dtype), tuple(values.shape), values.tobytes())
        buckets.setdefault(key, []).append(tensor)
    groups = [sorted(g, key=lambda t: t.name) for g in buckets.values() if len(g) > 1]
    return sorted(groups, key=lambda g: g[0].name)


def _duplicate_nodes(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node]]:
    """(kept, duplicate) pairs: same op, domain, attributes and the very same inputs."""
    seen: dict[tuple[object, ...], gs.Node] = {}
    pairs = []
    for node in graph.nodes:
        if not node.outputs or any(is_graph_output(graph, t) for t in node.outputs):
            continue
        if node.op in ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"):
            continue
        key = (
            node.op,
            node.domain,
            tuple(id(t) for t in node.inputs),
            len(node.outputs),
            repr(sorted((k, repr(v)) for k, v in node.attrs.items())),
        )
        if key in seen:
            pairs.append((seen[key], node))
        else:
            seen[key] = node
    return pairs
