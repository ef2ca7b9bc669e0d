"""The shape of one rewrite rule: match, check (says why it declines), rewrite.

A rule finds candidate anchors in an onnx-graphsurgeon graph, matches the subgraph around each by
what it computes (never by node names), checks the conditions under which its rewrite is exact,
and rewrites in place. The pass driver (`sase_deploy.rewrite.passes`) applies rule sets (explicit
tuples), records matches and declines with their reasons, and self-checks every change on ORT.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs


@dataclass
class Match:
    """A subgraph a rule may rewrite.

    `kind` is the block kind reported in `blocks_found` (`se`, `sle`, `sase`, `spse`, `rgse`,
    `eca`, `cbam_channel`, `se_like`) or None for rules that do not find blocks (cleanup).
    `anchor` names the node that identifies the match (stable across runs), `nodes` are the
    nodes the rewrite replaces, `captures` whatever the rewrite needs (tensors, constants).
    `block_output` names the tensor that holds the block's result (the gate Mul's output for
    SE-family gates, `xb * style` for SASE); rewrites keep that name, and the driver counts a
    block once per `block_output` over the whole pass (the first rule in the tuple that reports
    it names its kind), so a block that several rules touch is not counted twice.
    """

    rule: str
    anchor: str
    kind: str | None = None
    nodes: list[gs.Node] = field(default_factory=list)
    captures: dict[str, Any] = field(default_factory=dict)
    block_output: str | None = None


@dataclass(frozen=True)
class Decline:
    """A candidate the rule looked at and left alone, and why (one sentence)."""

    rule: str
    anchor: str
    reason: str


class RewriteRule(abc.ABC):
    """One rewrite. Subclasses set `name` and implement the four steps."""

    name: str = "rule"

    @abc.abstractmethod
    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        """Nodes at which a match may be anchored (e.g. every Mul)."""

    @abc.abstractmethod
    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match | Decline | None:
        """Structural match around `anchor`. None: not even a near miss (not reported)."""

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        """Conditions for an exact rewrite; a string is the reason to decline."""
        return None

    @abc.abstractmethod
    def rewrite(self, graph: gs.Graph, match: Match) -> None:
        """Replace `match` in `graph` in place (the driver cleans up and toposorts)."""
