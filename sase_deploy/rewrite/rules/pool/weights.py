"""The weights of a collapsed squeeze: probe each pooling subgraph, contract, verify.

`squeeze_weights` computes the kernel K (C, 1, H, W) and bias b of the one depthwise conv that
computes a whole squeeze (the method: `rules.spatial_pool`): each branch's pooling subgraph is
run alone on ORT with basis images, which gives its pooling matrix P whatever ops the exporter
lowered the pool to; the branch's depthwise conv is contracted with P in numpy; constant terms
and the BatchNorm fold into b and K. `verify_weights` compares K and b with the original
subgraph on a random full-channel input before anything is rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from sase_deploy.rewrite.graph_utils import attr_ints, batchnorm_params, const_value, shape_of
from sase_deploy.rewrite.rule import NoMatch
from sase_deploy.rewrite.rules.pool.read import Branch, Squeeze
from sase_deploy.runtime.ort import run_onnx

MAX_PROBE_ELEMENTS = 64 * 1024 * 1024  # (H*W)^2 basis-image floats: maps up to ~90x90
VERIFY_RTOL = 1e-5


def squeeze_weights(graph: gs.Graph, squeeze: Squeeze) -> tuple[np.ndarray, np.ndarray]:
    """The whole `squeeze` (read from `graph`) as one depthwise conv.

    Returns the kernel (C, 1, H, W) and bias (C,), both float64; raises `NoMatch.near` with
    why it cannot be.
    """
    shape = shape_of(squeeze.x)
    assert shape is not None
    channels, height, width = int(shape[1]), int(shape[2]), int(shape[3])  # type: ignore[arg-type]
    if (height * width) ** 2 > MAX_PROBE_ELEMENTS:
        raise NoMatch.near(f"the pooled map ({height}x{width}) is too large to probe")
    kernel = np.zeros((channels, height * width), dtype=np.float64)
    bias = np.zeros(channels, dtype=np.float64)
    for branch in squeeze.branches:
        try:
            pool = _probe_pool(graph, squeeze.x, branch, height, width)
        except NoMatch:
            raise  # the pool ran: what it computes is the reason
        except Exception as err:
            reason = f"the pooling subgraph cannot be probed per channel ({type(err).__name__})"
            raise NoMatch.near(reason) from None
        _contract(branch, pool, channels, kernel, bias)
    for term in squeeze.bias_terms:
        if term.size not in (1, channels):
            raise NoMatch.near("a constant added to the descriptor is not per channel")
        bias += term.reshape(-1).astype(np.float64)
    if squeeze.bn is not None:
        params = batchnorm_params(squeeze.bn)
        if params is None:
            raise NoMatch.near("the descriptor BatchNormalization is not in inference form")
        kernel *= params.scale[:, None]
        bias = bias * params.scale + params.shift
    return kernel.reshape(channels, 1, height, width), bias


def verify_weights(graph: gs.Graph, squeeze: Squeeze, kernel: np.ndarray, bias: np.ndarray) -> None:
    """Check that `kernel` (C, 1, H, W) and `bias` (C,) compute what `squeeze` does in `graph`
    (relative tolerance `VERIFY_RTOL` on a seeded random input); raises `NoMatch.near` with the
    reason they do not."""
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
        reason = f"the squeeze subgraph does not run alone ({type(err).__name__})"
        raise NoMatch.near(reason) from None
    got = np.einsum("bchw,chw->bc", x.astype(np.float64), kernel[:, 0].astype(np.float64))
    got = got + bias[None, :]
    if ref.size != got.size:
        raise NoMatch.near(f"the squeeze output has shape {ref.shape}, not (B, C, 1, 1)")
    miss = float(np.abs(ref.reshape(got.shape) - got).max())
    scale = max(float(np.abs(ref).max()), 1e-12)
    if miss > VERIFY_RTOL * scale:
        raise NoMatch.near(
            f"the collapsed weights miss the original squeeze by {miss / scale:.2e} (relative)"
        )


def _probe_pool(
    graph: gs.Graph, x: gs.Tensor, branch: Branch, height: int, width: int
) -> np.ndarray:
    """The pooling matrix (H*W, ph, pw): the branch's pool run on every basis image."""
    size = height * width
    if not branch.pool_nodes:
        return np.eye(size, dtype=np.float64).reshape(size, height, width)
    model = _subgraph_model(graph, branch.pool_nodes, x, branch.pooled, ["n", 1, height, width])
    basis = np.eye(size, dtype=np.float32).reshape(size, 1, height, width)
    out = next(iter(run_onnx(model, {x.name: basis}).values()))
    zero = next(iter(run_onnx(model, {x.name: np.zeros_like(basis[:1])}).values()))
    if out.ndim != 4 or out.shape[:2] != (size, 1):
        raise NoMatch.near(
            f"the pooling subgraph does not keep channels apart (output {out.shape})"
        )
    if np.abs(zero).max() > 0:
        raise NoMatch.near(
            "the pooling subgraph is affine, not linear (non-zero output for zero input)"
        )
    return out[:, 0].astype(np.float64)


def _contract(
    branch: Branch, pool: np.ndarray, channels: int, kernel: np.ndarray, bias: np.ndarray
) -> None:
    """Add this branch's per-channel weights (conv kernel contracted with P) to `kernel`."""
    ph, pw = pool.shape[1:]
    if branch.conv is None:
        if (ph, pw) != (1, 1):
            raise NoMatch.near(f"a pooled descriptor is {ph}x{pw}, not 1x1")
        kernel += pool[:, 0, 0][None, :]
        return
    conv = branch.conv
    weight = const_value(conv.inputs[1])
    assert weight is not None
    if weight.shape[0] != channels:
        raise NoMatch.near("a depthwise conv does not keep the channel count")
    if any(attr_ints(conv, "pads", [0, 0, 0, 0])) or any(
        d != 1 for d in attr_ints(conv, "dilations", [1, 1])
    ):
        raise NoMatch.near("a depthwise conv pads or dilates its pooled input")
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise NoMatch.near("a depthwise conv uses auto_pad")
    kh, kw = weight.shape[2:]
    sh, sw = attr_ints(conv, "strides", [1, 1])
    if kh > ph or kw > pw or (ph - kh) // sh + 1 != 1 or (pw - kw) // sw + 1 != 1:
        reason = f"a depthwise conv ({kh}x{kw}) on a {ph}x{pw} pooled map does not give 1x1"
        raise NoMatch.near(reason)
    window = pool[:, :kh, :kw].reshape(pool.shape[0], kh * kw)  # (HW, kh*kw)
    kernel += weight.reshape(channels, kh * kw).astype(np.float64) @ window.T
    conv_bias = const_value(conv.inputs[2]) if len(conv.inputs) > 2 else None
    if conv_bias is not None:
        bias += conv_bias.astype(np.float64)


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
