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
from typing import Generic, Literal, TypeVar

import onnx_graphsurgeon as gs

# A scalar a match shows in the report (JSON-able).
ReportValue = bool | int | float | str
# The SE-family channel gates `gates.classify_kind` tells apart (see docs/fuse.md).
GateKind = Literal["se", "sle", "spse", "rgse", "eca", "cbam_channel", "se_like"]
# What `blocks_found` counts: the channel gates and SASE/SLIM modulation blocks.
BlockKind = GateKind | Literal["sase"]


class NoMatch(Exception):
    """Why a candidate is not rewritten: the one way rules and their helpers say "no match".

    `reason` is one sentence; `node` names the node the decline is reported at (None: the
    candidate anchor). `near_miss` says whether it is reported: a near miss (the block is
    there but cannot be rewritten exactly) becomes a `Decline` in the report; anything else
    (not even the shape of a block: an ordinary Mul, a residual Add) is dropped silently.
    Raised by `RewriteRule.match` and `check` (a `check` failure is always reported).
    """

    def __init__(self, reason: str, node: str | None = None, *, near_miss: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node
        self.near_miss = near_miss

    @classmethod
    def near(cls, reason: str, node: str | None = None) -> NoMatch:
        """A near miss: reported as a decline with `reason`."""
        return cls(reason, node, near_miss=True)


@dataclass(kw_only=True)
class Captures:
    """What a match carries from `match`/`check` to `rewrite`. Each rule subclasses it with the
    typed fields its rewrite needs; rules that need none use it as is.

    `canonical`: the block is already in the rule's target form (found and counted, left as is;
    the driver reports it `unchanged`).
    """

    canonical: bool = False

    def report(self) -> dict[str, ReportValue]:
        """The scalars listed in this match's entry of the fusion report."""
        return {"canonical": True} if self.canonical else {}


C = TypeVar("C", bound=Captures)


@dataclass
class Match(Generic[C]):
    """A subgraph a rule may rewrite.

    `kind` is the block kind reported in `blocks_found` or None for rules that do not find
    blocks (cleanup).
    `anchor` names the node that identifies the match (stable across runs), `nodes` are the
    nodes the rewrite replaces, `captures` the rule's typed record of what the rewrite needs.
    `block_output` names the tensor that holds the block's result (the gate Mul's output for
    SE-family gates, `xb * style` for SASE); rewrites keep that name, and the driver counts a
    block once per `block_output` over the whole pass (the first rule in the tuple that reports
    it names its kind), so a block that several rules touch is not counted twice.
    """

    rule: str
    anchor: str
    captures: C
    kind: BlockKind | None = None
    nodes: list[gs.Node] = field(default_factory=list)
    block_output: str | None = None


@dataclass(frozen=True)
class Decline:
    """A candidate the rule looked at and left alone, and why (one sentence)."""

    rule: str
    anchor: str
    reason: str


class RewriteRule(abc.ABC, Generic[C]):
    """One rewrite, its matches carrying captures of type `C`. Subclasses set `name` and
    implement the steps."""

    name: str = "rule"

    @abc.abstractmethod
    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        """Nodes at which a match may be anchored (e.g. every Mul)."""

    @abc.abstractmethod
    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match[C]:
        """Structural match around `anchor`; raises `NoMatch` (a near miss is reported)."""

    def check(self, graph: gs.Graph, match: Match[C]) -> None:
        """Conditions for an exact rewrite; raises `NoMatch` with the reason to decline."""

    @abc.abstractmethod
    def rewrite(self, graph: gs.Graph, match: Match[C]) -> None:
        """Replace `match` in `graph` in place (the driver cleans up and toposorts)."""


def match_and_check(
    rule: RewriteRule[C], graph: gs.Graph, anchor: gs.Node
) -> Match[C] | Decline | None:
    """`rule.match` then `rule.check` at `anchor`: the checked match, the reported `Decline`,
    or None when the candidate is not even a near miss (the driver's and tests' one reading
    of `NoMatch`)."""
    try:
        match = rule.match(graph, anchor)
    except NoMatch as miss:
        if not miss.near_miss:
            return None
        return Decline(rule.name, miss.node or anchor.name, miss.reason)
    try:
        rule.check(graph, match)
    except NoMatch as miss:
        return Decline(rule.name, miss.node or match.anchor, miss.reason)
    return match
