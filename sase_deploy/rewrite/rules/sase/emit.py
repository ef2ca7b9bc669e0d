"""Emitting the fused SASE block: grouped convs on the unsplit source, one batched aggregation.

`emit_block` builds, under node names `<prefix>/<role>`, the chain that the rule's module
docstring describes, and hands its result the matched block's `final` tensor (name and
consumers kept). `check_resize` is the static check that the fused style can be resized the
way each mask was.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sase_deploy.rewrite.graph_utils import (
    attr_ints,
    const_value,
    make_constant,
    make_node,
    producer,
    shape_of,
)
from sase_deploy.rewrite.rule import NoMatch
from sase_deploy.rewrite.rules.sase.branches import resize_spatial_sizes
from sase_deploy.rewrite.rules.sase.match import SaseCaptures
from sase_deploy.rewrite.rules.sase.read import Layer


def emit_block(graph: gs.Graph, prefix: str, captures: SaseCaptures) -> None:
    """Replace the block ending in `captures.final` by the fused chain."""
    masks, final = captures.masks, captures.final
    old = producer(final)
    assert old is not None
    old.outputs.remove(final)  # the new chain produces `final` (name and consumers kept)
    xs = masks[0].chunk.source
    out_channels = captures.styles[0].layers[-1].weight.shape[0]
    s = _styles(graph, prefix, xs, captures)
    m_flat = _masks(graph, prefix, xs, captures)

    num = make_node(graph, "MatMul", f"{prefix}/weighted", [s, m_flat])  # (B, Cout, hw)
    axes = make_constant(graph, f"{prefix}/axes", np.array([1], dtype=np.int64))
    den = make_node(graph, "ReduceSum", f"{prefix}/mask_sum", [m_flat, axes], attrs={"keepdims": 1})
    eps = make_constant(graph, f"{prefix}/eps", np.array(captures.eps, np.float32))
    den = make_node(graph, "Add", f"{prefix}/mask_sum_eps", [den, eps])
    style = make_node(graph, "Div", f"{prefix}/normalise", [num, den])
    if captures.offset is not None:
        one = make_constant(graph, f"{prefix}/offset", np.array(captures.offset, np.float32))
        style = make_node(graph, "Add", f"{prefix}/plus_offset", [style, one])
    h, w = mask_size(xs, masks[0].layers)
    resize = masks[0].resize
    if resize is None:
        _reshape(graph, f"{prefix}/style_4d", style, [0, out_channels, h, w], output=final)
        return
    style = _reshape(graph, f"{prefix}/style_4d", style, [0, out_channels, h, w])
    _resize_like(graph, f"{prefix}/resize", style, resize, (h, w), output=final)


def _styles(graph: gs.Graph, prefix: str, xs: gs.Tensor, captures: SaseCaptures) -> gs.Variable:
    """GAP -> grouped 1x1 convs, ReLU between -> (B, Cout, G), ready to weight the masks."""
    groups = len(captures.styles)
    out_channels = captures.styles[0].layers[-1].weight.shape[0]
    s = make_node(graph, "GlobalAveragePool", f"{prefix}/gap", [xs])
    s = _grouped_chain(graph, f"{prefix}/style", s, [st.layers for st in captures.styles])
    s = _reshape(graph, f"{prefix}/style_3d", s, [0, groups, out_channels])
    return make_node(graph, "Transpose", f"{prefix}/style_t", [s], attrs={"perm": [0, 2, 1]})


def _masks(graph: gs.Graph, prefix: str, xs: gs.Tensor, captures: SaseCaptures) -> gs.Variable:
    """Grouped conv chain -> (B, G, h, w) logits [+ noise] -> Sigmoid -> (B, G, h*w)."""
    masks = captures.masks
    logits = _grouped_chain(graph, f"{prefix}/mask", xs, [m.layers for m in masks])
    if masks[0].extra is not None:
        logits = make_node(graph, "Add", f"{prefix}/noise", [logits, masks[0].extra])
    m = make_node(graph, "Sigmoid", f"{prefix}/sigmoid", [logits])
    return _reshape(graph, f"{prefix}/mask_3d", m, [0, len(masks), -1])


def _grouped_chain(
    graph: gs.Graph, name: str, x: gs.Tensor, per_group: list[list[Layer]]
) -> gs.Variable:
    """Stack the G groups' layers into grouped convs (ReLU between), applied to `x`."""
    groups = len(per_group)
    current: gs.Tensor = x
    depth = len(per_group[0])
    for i in range(depth):
        weight = np.concatenate([layers[i].weight for layers in per_group], axis=0)
        bias = np.concatenate([layers[i].bias for layers in per_group], axis=0)
        attrs: dict[str, Any] = {"kernel_shape": list(weight.shape[2:]), "group": groups}
        attrs.update(per_group[0][i].attrs)
        w = make_constant(graph, f"{name}{i}_W", weight.astype(np.float32))
        b = make_constant(graph, f"{name}{i}_B", bias.astype(np.float32))
        current = make_node(graph, "Conv", f"{name}{i}", [current, w, b], attrs=attrs)
        if i + 1 < depth:
            current = make_node(graph, "Relu", f"{name}{i}_relu", [current])
    assert isinstance(current, gs.Variable)
    return current


def _reshape(
    graph: gs.Graph, name: str, x: gs.Tensor, shape: list[int], output: gs.Variable | None = None
) -> gs.Variable:
    target = make_constant(graph, f"{name}_shape", np.array(shape, dtype=np.int64))
    return make_node(graph, "Reshape", name, [x, target], output=output)


def mask_size(xs: gs.Tensor, layers: list[Layer]) -> tuple[int, int]:
    """Spatial size of the mask logits: conv arithmetic from the source's static size."""
    shape = shape_of(xs)
    assert shape is not None and shape[2] is not None and shape[3] is not None
    size = [int(shape[2]), int(shape[3])]
    for layer in layers:
        kernel = layer.weight.shape[2:]
        pads, strides, dil = layer.attrs["pads"], layer.attrs["strides"], layer.attrs["dilations"]
        for a in (0, 1):
            span = dil[a] * (kernel[a] - 1) + 1
            size[a] = (size[a] + pads[a] + pads[a + 2] - span) // strides[a] + 1
    return size[0], size[1]


# ---------------------------------------------------------------- the style's resize


def _resize_scales(like: gs.Node, mask_hw: tuple[int, int]) -> np.ndarray | None:
    """Constant full-rank scales that resize the (h, w) mask exactly as `like` does, if any.

    `like`'s own constant scales are kept (spread over all four axes when it has `axes`). A
    `sizes` target becomes scales only when H/h and W/w are exact in float32: then
    floor(h * scale) is H and every nearest source pixel is the one `sizes` picks.
    """
    scales = const_value(like.inputs[2]) if len(like.inputs) > 2 else None
    if scales is not None and scales.size > 0:
        axes = [a % 4 for a in attr_ints(like, "axes", range(4))]
        if len(axes) != scales.size:
            return None
        full = np.ones(4, dtype=np.float32)
        full[axes] = scales.astype(np.float32).reshape(-1)
        return full
    sizes = resize_spatial_sizes(like)
    if sizes is None:
        return None
    ratios = [Fraction(target, source) for target, source in zip(sizes, mask_hw, strict=True)]
    if any(Fraction(float(np.float32(r))) != r for r in ratios):
        return None
    return np.array([1.0, 1.0, *(float(r) for r in ratios)], dtype=np.float32)


def check_resize(opset: int, like: gs.Node, mask_hw: tuple[int, int]) -> None:
    """Raises `NoMatch.near` with why the fused style cannot be resized the way `like`
    resizes each mask."""
    if opset < 11:
        raise NoMatch.near("the mask Resize predates opset 11 (no scales/sizes inputs)")
    policy = like.attrs.get("keep_aspect_ratio_policy", "stretch")
    policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    if policy != "stretch":
        raise NoMatch.near(
            f"the mask Resize keeps the aspect ratio ('{policy}'): its output size is not sizes"
        )
    scales = _resize_scales(like, mask_hw)
    if scales is not None:
        if float(scales[0]) != 1.0 or float(scales[1]) != 1.0:
            raise NoMatch.near("the mask Resize scales the batch or channel axis")
        return
    if resize_spatial_sizes(like) is None:
        raise NoMatch.near("the mask Resize target size cannot be read statically")
    if opset < 15:
        raise NoMatch.near(
            "resizing to sizes built from the input's Shape (start/end) needs opset >= 15"
        )


def _resize_like(
    graph: gs.Graph,
    name: str,
    x: gs.Tensor,
    like: gs.Node,
    mask_hw: tuple[int, int],
    output: gs.Variable,
) -> gs.Variable:
    """A Resize with `like`'s attributes and spatial target, for any channel count.

    Always full rank, never `axes`: TensorRT's ONNX parser fills constant `sizes` with `axes`
    from the input's build-time dims, so a dynamic batch became a -1 output dim ("inherently
    negative length"). Constant scales when exact (one node), else sizes = Shape(x)[N, C] ++ H, W.
    """
    attrs = {k: v for k, v in like.attrs.items() if k != "axes"}
    scales = _resize_scales(like, mask_hw)
    if scales is not None:
        scales_c = make_constant(graph, f"{name}_scales", scales)
        return make_node(
            graph, "Resize", name, [x, gs.Variable.empty(), scales_c], attrs=attrs, output=output
        )
    sizes = resize_spatial_sizes(like)
    assert sizes is not None  # check() guarantees it
    batch_channels = make_node(
        graph, "Shape", f"{name}_nc", [x], attrs={"start": 0, "end": 2}, dtype=np.int64, shape=[2]
    )
    spatial = make_constant(graph, f"{name}_hw", np.array(sizes, dtype=np.int64))
    target = make_node(
        graph,
        "Concat",
        f"{name}_sizes",
        [batch_channels, spatial],
        attrs={"axis": 0},
        dtype=np.int64,
        shape=[4],
    )
    empty = [gs.Variable.empty(), gs.Variable.empty()]
    return make_node(graph, "Resize", name, [x, *empty, target], attrs=attrs, output=output)
