"""SPSE/RGSE pooling collapse: multi-scale pools + depthwise convs + BN -> one depthwise conv.

The squeeze of SPSE (pools to 1/2/4 -> depthwise conv per scale -> sum -> BN) and of RGSE
(AvgPool 7x7 windows -> strided depthwise conv -> BN) is, for a static map size H x W, one
per-channel linear functional of the map X: `d[c] = sum_hw K[c, h, w] X[c, h, w] + b[c]`. This
rule computes K and b and replaces the whole squeeze by ONE depthwise Conv with an H x W kernel
(BN folded into it), so the descriptor costs one pass over X instead of one per scale.

Exporters lower the pools many ways (ReduceMean, GlobalAveragePool, AveragePool, constant
averaging MatMuls, GatherND/Gather/Slice chains for uneven adaptive bins). Rather than pattern-
match each, the pooling subgraph of every scale is *probed*: run on ORT with a batch of basis
images (one channel each), its output is exactly the pooling matrix P (H*W -> pooled bins). The
depthwise conv weights are then contracted with P in numpy. The result is verified against the
original subgraph on a random full-channel input before anything is rewritten. Probing a linear
subgraph this way is exporter-independent; it is written by hand because no library does it.
The parts (package `pool`): `read` reads the squeeze back from the graph, `weights` probes,
contracts and verifies its collapsed weights.

When not to collapse (static cost check, no timing at rewrite time): a squeeze that is already
one strided AveragePool + one depthwise conv (RGSE layers 1-3) reads X once with a cheap kernel;
the H x W depthwise conv is slower on ORT CPU there (see `_reads_map_once`). Such a squeeze keeps
its pool and gets its BN (and constant terms) folded into the depthwise conv, or is reported
unchanged ("already minimal") when there is nothing to fold; either way it counts as `rgse`.

Which blocks: the squeeze must end in a ReLU (SPSE/RGSE ReLU their descriptor, SE does not) and
yield a (B, C, 1, 1) descriptor. Several summed scales report kind `spse`; one scale (a region
pool, with or without a depthwise conv) reports `rgse`, which includes RGSE's layer4 squeeze
(AvgPool 7x7 on a 7x7 map -> ReLU; indistinguishable from "GAP -> ReLU" in any other net).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from sase_deploy.rewrite.gate_analysis import gate_mul_downstream
from sase_deploy.rewrite.graph_utils import (
    batchnorm_params,
    const_value,
    make_constant,
    make_node,
    producer,
    shape_of,
)
from sase_deploy.rewrite.rule import (
    BlockKind,
    Captures,
    Match,
    NoMatch,
    ReportValue,
    RewriteRule,
)
from sase_deploy.rewrite.rules.pool.read import Squeeze, read_squeeze
from sase_deploy.rewrite.rules.pool.weights import squeeze_weights, verify_weights


def _is_global_mean(kernel: np.ndarray, bias: np.ndarray) -> bool:
    height, width = kernel.shape[2:]
    return np.allclose(kernel, 1.0 / (height * width), rtol=1e-6, atol=0) and not bias.any()


def _reads_map_once(squeeze: Squeeze) -> bool:
    """Static cost check: is the squeeze already one strided AveragePool + one depthwise conv?

    Such a squeeze reads X once with a cheap kernel; the collapsed H x W depthwise conv also
    reads X once but with a full-map kernel, which ORT CPU runs slower (measured 256@56:
    AveragePool(7,7) + dwconv(8) 0.57 ms, 56x56 dwconv 0.69 ms, Mul + ReduceSum 0.61 ms,
    Reshape + MatMul 10 ms). Collapsing pays only when the original reads X several times.
    """
    if len(squeeze.branches) != 1:
        return False
    branch = squeeze.branches[0]
    pools = branch.pool_nodes
    return branch.conv is not None and len(pools) == 1 and pools[0].op == "AveragePool"


@dataclass
class PoolCaptures(Captures):
    """A squeeze to collapse; `check` fills in the collapsed weights and the form chosen."""

    squeeze: Squeeze
    kernel: np.ndarray | None = None  # (C, 1, H, W): the whole squeeze as one depthwise conv
    bias: np.ndarray | None = None  # (C,)
    form: str | None = None  # reported: what the rewrite makes of the squeeze
    folded_weight: np.ndarray | None = None  # the kept pool's dw conv with BN folded in

    def report(self) -> dict[str, ReportValue]:
        fields = super().report()
        if self.form is not None:
            fields["form"] = self.form
        return fields


class SpatialPoolCollapse(RewriteRule[PoolCaptures]):
    """Collapse SPSE/RGSE multi-scale pooling squeezes into one depthwise full-map conv."""

    name = "spatial_pool"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        return (node for node in graph.nodes if node.op == "Relu")

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match[PoolCaptures]:
        squeeze = read_squeeze(anchor.inputs[0])
        shape = shape_of(squeeze.x)
        if shape is None or len(shape) != 4 or shape[1] is None:
            raise NoMatch(f"the map '{squeeze.x.name}' is not (B, C, H, W) with a known C")
        if shape[2] is None or shape[3] is None:
            raise NoMatch.near(
                "the pooled map has a dynamic spatial size; collapsing the pools into one "
                "weighted reduction needs static H and W"
            )
        kind: BlockKind = "spse" if len(squeeze.branches) >= 2 else "rgse"
        gate = gate_mul_downstream(anchor.outputs[0])
        return Match(
            rule=self.name,
            anchor=anchor.name,
            kind=kind,
            nodes=squeeze.nodes,
            captures=PoolCaptures(squeeze),
            block_output=None if gate is None else gate.outputs[0].name,
        )

    def check(self, graph: gs.Graph, match: Match[PoolCaptures]) -> None:
        captures = match.captures
        squeeze = captures.squeeze
        kernel, bias = squeeze_weights(graph, squeeze)
        captures.kernel = kernel.astype(np.float32)
        captures.bias = bias.astype(np.float32)
        verify_weights(graph, squeeze, captures.kernel, captures.bias)
        if _reads_map_once(squeeze):
            self._keep_pool(squeeze, bias, captures)
        elif _is_global_mean(captures.kernel, captures.bias):
            captures.form = "global mean"
        else:
            captures.form = "collapsed depthwise conv"

    @staticmethod
    def _keep_pool(squeeze: Squeeze, bias: np.ndarray, captures: PoolCaptures) -> None:
        """Keep the strided AveragePool; fold BN and constant terms into its depthwise conv."""
        conv = squeeze.branches[0].conv
        assert conv is not None
        weight = const_value(conv.inputs[1])
        assert weight is not None
        weight = weight.astype(np.float64)
        if squeeze.bn is not None:
            params = batchnorm_params(squeeze.bn)
            assert params is not None  # check() declined otherwise
            weight = weight * params.scale[:, None, None, None]
        if squeeze.bn is None and not squeeze.bias_terms:
            captures.canonical = True
            captures.form = "already minimal: one pool + one depthwise conv"
            return
        captures.form = "pool + depthwise conv (folded)"
        captures.folded_weight = weight.astype(np.float32)
        captures.bias = bias.astype(np.float32)

    def rewrite(self, graph: gs.Graph, match: Match[PoolCaptures]) -> None:
        captures = match.captures
        if captures.canonical:
            return
        squeeze, kernel, bias = captures.squeeze, captures.kernel, captures.bias
        assert kernel is not None and bias is not None  # check() computed them
        prefix = f"{self.name}/{match.anchor}"
        old = producer(squeeze.end)
        assert old is not None
        old.outputs.remove(squeeze.end)
        if captures.folded_weight is not None:
            conv = squeeze.branches[0].conv
            assert conv is not None
            w = make_constant(graph, f"{prefix}/W", captures.folded_weight)
            b = make_constant(graph, f"{prefix}/B", bias)
            make_node(graph, "Conv", f"{prefix}/pooled_conv", [conv.inputs[0], w, b],
                      attrs=dict(conv.attrs), output=squeeze.end)  # fmt: skip
            return
        channels, _, height, width = kernel.shape
        if _is_global_mean(kernel, bias):  # a plain global mean (RGSE layer4): one cheap node
            make_node(graph, "GlobalAveragePool", f"{prefix}/mean", [squeeze.x], output=squeeze.end)
            return
        w = make_constant(graph, f"{prefix}/W", kernel)
        b = make_constant(graph, f"{prefix}/B", bias)
        attrs = {"kernel_shape": [height, width], "group": int(channels)}
        make_node(graph, "Conv", f"{prefix}/weighted_sum", [squeeze.x, w, b], attrs=attrs,
                  output=squeeze.end)  # fmt: skip
