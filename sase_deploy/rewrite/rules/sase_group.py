"""SASE/SLIM group fusion: G per-group branches -> grouped convs and one batched aggregation.

A SASE (SLIM) block splits a source map `xs` (B, C, h, w) into G channel groups; per group a
style MLP (GAP -> Linear [-> BN] -> ReLU -> Linear) gives `s_g` (B, Cout) and a mask CNN (convs
with ReLUs, BN folded or not) -> Sigmoid [-> nearest Resize] gives `m_g` (B, 1, H, W); then
`style = sum_g m_g s_g / (sum_g m_g + eps) + 1`. Exported, that is ~G x 20 small nodes.

The rewrite computes the same thing with grouped convolutions on the unsplit `xs`:

    S = GAP(xs) -> Conv1x1(groups=G) -> ReLU -> Conv1x1(groups=G)       (B, G*Cout, 1, 1)
    M = convs(groups=G) on xs -> Sigmoid                                (B, G, h, w)
    style_src = S^T @ M / (ReduceSum_G(M) + eps) + 1                    (B, Cout, h, w)
    style = nearest Resize(style_src)                                   (when the masks were)

Nearest resizing copies pixels, so it commutes with the per-pixel aggregation: exact. The
matcher reads what the graph computes (Split or Slice groups, Gemm or MatMul+Add, BN folded or
not, Resize with scales or sizes); it never looks at names. The 1024 variant (mask logits
concatenated, a noise term added before the sigmoid, one Resize, per-group slices) is matched
too: the added term is carried along unchanged. The official InceptionBlock code's stacked form
(masks (B,G,1,H,W) * styles (B,G,Cout,1,1), ReduceSum over the group axis, over the summed masks
+ eps; torch.cat or torch.stack, either exporter) is normalised to the same per-group captures.
Written by hand: no library fuses this pattern.

What the matcher cannot read is reported only for subgraphs with the SASE modulation signature
(G >= 2 mask x style products summed): "looks like a SASE/SLIM block (G groups ...) but ...".
The parts (package `sase`): `read` and `branches` (one group's branches), `forms` (the three
aggregation forms), `match` (captures, declines, the signature), `emit` (the fused chain).
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_graphsurgeon as gs

from sase_deploy.rewrite.graph_utils import shape_of
from sase_deploy.rewrite.rule import Match, NoMatch, RewriteRule
from sase_deploy.rewrite.rules.sase.emit import check_resize, emit_block, mask_size
from sase_deploy.rewrite.rules.sase.match import ANCHOR_OPS, SaseCaptures, match_sase


class SaseGroupFusion(RewriteRule[SaseCaptures]):
    """Fuse a SASE/SLIM block's G branches into grouped convs + one batched aggregation."""

    name = "sase_group"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        # Divs anchor blocks; Add/Sum/ReduceSum roots are looked at for un-normalised sums
        return (node for node in graph.nodes if node.op in ANCHOR_OPS)

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match[SaseCaptures]:
        return match_sase(self.name, anchor)

    def check(self, graph: gs.Graph, match: Match[SaseCaptures]) -> None:
        masks = match.captures.masks
        source = masks[0].chunk.source
        shape = shape_of(source)
        if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
            raise NoMatch.near(
                "the source map has no static spatial size (needed to flatten the masks)"
            )
        resize = masks[0].resize
        if resize is not None:
            mask_hw = mask_size(source, masks[0].layers)
            check_resize(int(graph.opset or 0), resize, mask_hw)
        if match.captures.eps <= 0.0:
            raise NoMatch.near(f"eps = {match.captures.eps} is not positive")

    def rewrite(self, graph: gs.Graph, match: Match[SaseCaptures]) -> None:
        emit_block(graph, f"{self.name}/{match.anchor}", match.captures)
