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
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from sase_deploy.engines.ort import run_onnx
from sase_deploy.rewrite.gate_analysis import gate_mul_downstream
from sase_deploy.rewrite.graph_utils import (
    attr_ints,
    batchnorm_params,
    const_value,
    make_constant,
    make_node,
    producer,
    shape_of,
)
from sase_deploy.rewrite.rule import Captures, Decline, Match, ReportValue, RewriteRule

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
MAX_PROBE_ELEMENTS = 64 * 1024 * 1024  # (H*W)^2 basis-image floats: maps up to ~90x90
VERIFY_RTOL = 1e-5


def _is_global_mean(kernel: np.ndarray, bias: np.ndarray) -> bool:
    height, width = kernel.shape[2:]
    return np.allclose(kernel, 1.0 / (height * width), rtol=1e-6, atol=0) and not bias.any()


def _reads_map_once(squeeze: _Squeeze) -> bool:
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
class _Branch:
    """One scale: pooling subgraph `pool_nodes` from X to `pooled`, then an optional dw conv."""

    pooled: gs.Tensor
    pool_nodes: list[gs.Node]
    conv: gs.Node | None


@dataclass
class _Squeeze:
    x: gs.Tensor
    end: gs.Tensor  # the descriptor tensor the ReLU reads (B, C, 1, 1)
    branches: list[_Branch]
    bias_terms: list[np.ndarray] = field(default_factory=list)
    bn: gs.Node | None = None
    nodes: list[gs.Node] = field(default_factory=list)


class _NoMatch(Exception):
    pass


@dataclass
class PoolCaptures(Captures):
    """A squeeze to collapse; `check` fills in the collapsed weights and the form chosen."""

    squeeze: _Squeeze
    kernel: np.ndarray | None = None  # (C, 1, H, W): the whole squeeze as one depthwise conv
    bias: np.ndarray | None = None  # (C,)
    form: str | None = None  # reported: what the rewrite makes of the squeeze
    folded_weight: np.ndarray | None = None  # the kept pool's dw conv with BN folded in

    def report(self) -> dict[str, ReportValue]:
        fields = super().report()
        if self.form is not None:
            fields["form"] = self.form
        return fields


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


def _toposort(nodes: list[gs.Node], graph: gs.Graph) -> list[gs.Node]:
    ids = {id(n) for n in nodes}
    return [n for n in graph.nodes if id(n) in ids]


def _subgraph_model(
    graph: gs.Graph, nodes: list[gs.Node], x: gs.Tensor, out: gs.Tensor, x_dims: list[int | str]
) -> onnx.ModelProto:
    """The nodes as a standalone model with input `x` (given dims) and output `out`."""
    sub = gs.Graph(nodes=_toposort(nodes, graph), inputs=[x], outputs=[out], opset=graph.opset)
    model = gs.export_onnx(sub, do_type_check=False)
    del model.graph.value_info[:]
    inp = model.graph.input[0]
    inp.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    del dims[:]
    for d in x_dims:
        dim = dims.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
    out_type = model.graph.output[0].type.tensor_type
    out_type.elem_type = onnx.TensorProto.FLOAT
    out_type.ClearField("shape")
    model.ir_version = min(model.ir_version, 10)
    return model


class SpatialPoolCollapse(RewriteRule[PoolCaptures]):
    """Collapse SPSE/RGSE multi-scale pooling squeezes into one depthwise full-map conv."""

    name = "spatial_pool"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        return (node for node in graph.nodes if node.op == "Relu")

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match[PoolCaptures] | Decline | None:
        try:
            squeeze = self._parse(anchor.inputs[0])
        except _NoMatch:
            return None
        shape = shape_of(squeeze.x)
        if shape is None or len(shape) != 4 or shape[1] is None:
            return None
        if shape[2] is None or shape[3] is None:
            return Decline(
                self.name,
                anchor.name,
                "the pooled map has a dynamic spatial size; collapsing the pools into one "
                "weighted reduction needs static H and W",
            )
        kind = "spse" if len(squeeze.branches) >= 2 else "rgse"
        gate = gate_mul_downstream(anchor.outputs[0])
        return Match(
            rule=self.name,
            anchor=anchor.name,
            kind=kind,
            nodes=squeeze.nodes,
            captures=PoolCaptures(squeeze),
            block_output=None if gate is None else gate.outputs[0].name,
        )

    def _parse(self, end: gs.Tensor) -> _Squeeze:
        """Read the squeeze back from `end`; the map X is where the pooling region escapes.

        A tensor inside the pooling region that is also read outside it (X feeds the gate Mul
        too) bounds the region: parsing repeats with such tensors as stops until none is left.
        """
        stop: set[int] = set()
        for _ in range(4):
            squeeze = self._parse_once(end, stop)
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
        raise _NoMatch

    def _parse_once(self, end: gs.Tensor, stop: set[int]) -> _Squeeze:
        nodes: list[gs.Node] = []
        node = producer(end)
        if node is None:
            raise _NoMatch
        bn = None
        summed = end
        if node.op == "BatchNormalization":
            bn, summed = node, node.inputs[0]
            nodes.append(node)
        leaves = _sum_leaves(summed, nodes)
        branches: list[_Branch] = []
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
                raise _NoMatch
            if conv is None and not any(n.op in AVERAGING_OPS for n in pool_nodes):
                raise _NoMatch
            nodes.extend(pool_nodes)
            branches.append(_Branch(pooled, pool_nodes, conv))
            xs.append(boundary[0])
        if not branches or any(x is not xs[0] for x in xs):
            raise _NoMatch
        averaging = any(n.op in AVERAGING_OPS for b in branches for n in b.pool_nodes)
        if not averaging and not all(b.conv is not None for b in branches):
            raise _NoMatch
        bare = len(branches) == 1 and branches[0].conv is None and bn is None and not bias_terms
        if bare and not any(n.op == "AveragePool" for n in branches[0].pool_nodes):
            raise _NoMatch  # a bare pool -> ReLU: only a region pool (RGSE layer4) is claimed
        return _Squeeze(xs[0], end, branches, bias_terms, bn, nodes)

    def check(self, graph: gs.Graph, match: Match[PoolCaptures]) -> str | None:
        captures = match.captures
        squeeze = captures.squeeze
        shape = shape_of(squeeze.x)
        assert shape is not None
        channels, height, width = int(shape[1]), int(shape[2]), int(shape[3])  # type: ignore[arg-type]
        if (height * width) ** 2 > MAX_PROBE_ELEMENTS:
            return f"the pooled map ({height}x{width}) is too large to probe"
        kernel = np.zeros((channels, height * width), dtype=np.float64)
        bias = np.zeros(channels, dtype=np.float64)
        for branch in squeeze.branches:
            try:
                pool = self._probe_pool(graph, squeeze.x, branch, height, width)
            except Exception as err:
                return f"the pooling subgraph cannot be probed per channel ({type(err).__name__})"
            if isinstance(pool, str):
                return pool
            problem = self._contract(branch, pool, channels, kernel, bias)
            if problem is not None:
                return problem
        for term in squeeze.bias_terms:
            if term.size not in (1, channels):
                return "a constant added to the descriptor is not per channel"
            bias += term.reshape(-1).astype(np.float64)
        if squeeze.bn is not None:
            params = batchnorm_params(squeeze.bn)
            if params is None:
                return "the descriptor BatchNormalization is not in inference form"
            kernel *= params.scale[:, None]
            bias = bias * params.scale + params.shift
        captures.kernel = kernel.reshape(channels, 1, height, width).astype(np.float32)
        captures.bias = bias.astype(np.float32)
        problem = self._verify(graph, squeeze, captures.kernel, captures.bias)
        if problem is None and _reads_map_once(squeeze):
            self._keep_pool(squeeze, bias, captures)
        elif _is_global_mean(captures.kernel, captures.bias):
            captures.form = "global mean"
        else:
            captures.form = "collapsed depthwise conv"
        return problem

    @staticmethod
    def _keep_pool(squeeze: _Squeeze, bias: np.ndarray, captures: PoolCaptures) -> None:
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

    @staticmethod
    def _probe_pool(
        graph: gs.Graph, x: gs.Tensor, branch: _Branch, height: int, width: int
    ) -> np.ndarray | str:
        """The pooling matrix (H*W, ph, pw): the branch's pool run on every basis image."""
        size = height * width
        if not branch.pool_nodes:
            return np.eye(size, dtype=np.float64).reshape(size, height, width)
        model = _subgraph_model(graph, branch.pool_nodes, x, branch.pooled, ["n", 1, height, width])
        basis = np.eye(size, dtype=np.float32).reshape(size, 1, height, width)
        out = next(iter(run_onnx(model, {x.name: basis}).values()))
        zero = next(iter(run_onnx(model, {x.name: np.zeros_like(basis[:1])}).values()))
        if out.ndim != 4 or out.shape[:2] != (size, 1):
            return f"the pooling subgraph does not keep channels apart (output {out.shape})"
        if np.abs(zero).max() > 0:
            return "the pooling subgraph is affine, not linear (non-zero output for zero input)"
        return out[:, 0].astype(np.float64)

    @staticmethod
    def _contract(
        branch: _Branch, pool: np.ndarray, channels: int, kernel: np.ndarray, bias: np.ndarray
    ) -> str | None:
        """Add this branch's per-channel weights (conv kernel contracted with P) to `kernel`."""
        ph, pw = pool.shape[1:]
        if branch.conv is None:
            if (ph, pw) != (1, 1):
                return f"a pooled descriptor is {ph}x{pw}, not 1x1"
            kernel += pool[:, 0, 0][None, :]
            return None
        conv = branch.conv
        weight = const_value(conv.inputs[1])
        assert weight is not None
        if weight.shape[0] != channels:
            return "a depthwise conv does not keep the channel count"
        if any(attr_ints(conv, "pads", [0, 0, 0, 0])) or any(
            d != 1 for d in attr_ints(conv, "dilations", [1, 1])
        ):
            return "a depthwise conv pads or dilates its pooled input"
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
            return "a depthwise conv uses auto_pad"
        kh, kw = weight.shape[2:]
        sh, sw = attr_ints(conv, "strides", [1, 1])
        if kh > ph or kw > pw or (ph - kh) // sh + 1 != 1 or (pw - kw) // sw + 1 != 1:
            return f"a depthwise conv ({kh}x{kw}) on a {ph}x{pw} pooled map does not give 1x1"
        window = pool[:, :kh, :kw].reshape(pool.shape[0], kh * kw)  # (HW, kh*kw)
        kernel += weight.reshape(channels, kh * kw).astype(np.float64) @ window.T
        conv_bias = const_value(conv.inputs[2]) if len(conv.inputs) > 2 else None
        if conv_bias is not None:
            bias += conv_bias.astype(np.float64)
        return None

    @staticmethod
    def _verify(
        graph: gs.Graph, squeeze: _Squeeze, kernel: np.ndarray, bias: np.ndarray
    ) -> str | None:
        shape = shape_of(squeeze.x)
        assert shape is not None
        channels, height, width = (int(d) for d in shape[1:])  # type: ignore[arg-type]
        model = _subgraph_model(
            graph, squeeze.nodes, squeeze.x, squeeze.end, [2, channels, height, width]
        )
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, channels, height, width)).astype(np.float32)
        try:
            ref = next(iter(run_onnx(model, {squeeze.x.name: x}).values())).astype(np.float64)
        except Exception as err:
            return f"the squeeze subgraph does not run alone ({type(err).__name__})"
        got = np.einsum("bchw,chw->bc", x.astype(np.float64), kernel[:, 0].astype(np.float64))
        got = got + bias[None, :]
        if ref.size != got.size:
            return f"the squeeze output has shape {ref.shape}, not (B, C, 1, 1)"
        miss = float(np.abs(ref.reshape(got.shape) - got).max())
        scale = max(float(np.abs(ref).max()), 1e-12)
        if miss > VERIFY_RTOL * scale:
            return (
                f"the collapsed weights miss the original squeeze by {miss / scale:.2e} (relative)"
            )
        return None

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
