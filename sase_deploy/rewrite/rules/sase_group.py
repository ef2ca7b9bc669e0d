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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sase_deploy.rewrite.graph_utils import (
    attr_ints,
    batchnorm_params,
    const_value,
    fold_batchnorm,
    make_constant,
    make_node,
    producer,
    scalar_value,
    shape_of,
)
from sase_deploy.rewrite.rule import Decline, Match, RewriteRule

RESHAPE_LIKE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


class _NoMatch(Exception):
    """Not a SASE block at all (match returns None)."""


class _NearMiss(Exception):
    """A SASE-shaped block the rule cannot rewrite exactly (match returns a Decline)."""


@dataclass
class _Layer:
    """One conv/linear with BN folded: weight (out, in, kh, kw) and bias (out,), float32."""

    weight: np.ndarray
    bias: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)  # conv geometry (empty for linears)

    def signature(self) -> tuple[Any, ...]:
        return (self.weight.shape, tuple(sorted((k, str(v)) for k, v in self.attrs.items())))


@dataclass
class _Chunk:
    source: gs.Tensor
    start: int
    stop: int
    channels: int  # channel count of the source


@dataclass
class _Mask:
    chunk: _Chunk
    layers: list[_Layer]
    concat: gs.Node | None = None  # 1024 variant: the Concat of all groups' logits
    position: int = 0  # index of this group's logit in that Concat / channel of the slice
    extra: gs.Tensor | None = None  # tensor added to the logits before the sigmoid (noise)
    resize: gs.Node | None = None


@dataclass
class _Style:
    chunk: _Chunk
    layers: list[_Layer]


# ---------------------------------------------------------------- small graph readers


def _node(tensor: gs.Tensor) -> gs.Node:
    node = producer(tensor)
    if node is None:
        raise _NoMatch
    return node


def _is_const(tensor: gs.Tensor) -> bool:
    return const_value(tensor) is not None


def _sum_terms(tensor: gs.Tensor) -> list[gs.Tensor]:
    """Leaves of an Add tree of non-constant tensors (a single tensor is a one-term sum)."""
    node = producer(tensor)
    is_sum = node is not None and node.op in ("Add", "Sum") and len(node.inputs) >= 2
    if is_sum and all(not _is_const(t) for t in node.inputs):  # type: ignore[union-attr]
        terms: list[gs.Tensor] = []
        for t in node.inputs:  # type: ignore[union-attr]
            terms.extend(_sum_terms(t))
        return terms
    return [tensor]


def _chunk_of(tensor: gs.Tensor) -> _Chunk:
    """The channel range of `tensor` inside its source (Split output or Slice on axis 1)."""
    node = _node(tensor)
    if node.op == "Split":
        source = node.inputs[0]
        if int(node.attrs.get("axis", 0)) not in (1, -3):
            raise _NearMiss("the groups are split along an axis other than channels")
        sizes = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if sizes is None and "split" in node.attrs:
            sizes = np.asarray(node.attrs["split"])
        shape = shape_of(source)
        total = shape[1] if shape is not None and len(shape) == 4 else None
        if sizes is None:
            if total is None or total % len(node.outputs):
                raise _NearMiss("the source channel count is unknown or not divisible by G")
            sizes = np.full(len(node.outputs), total // len(node.outputs))
        widths = [int(s) for s in np.asarray(sizes).reshape(-1)]
        index = next(i for i, t in enumerate(node.outputs) if t is tensor)
        start = sum(widths[:index])
        return _Chunk(source, start, start + widths[index], sum(widths))
    if node.op == "Slice":
        source = node.inputs[0]
        shape = shape_of(source)
        if shape is None or len(shape) != 4 or shape[1] is None:
            raise _NearMiss("the source of the channel slices has no static channel count")
        values = [
            const_value(t) if i < len(node.inputs) else None for i, t in enumerate(node.inputs[1:5])
        ]
        starts, ends = values[0], values[1]
        axes = values[2] if len(values) > 2 and values[2] is not None else np.array([0])
        steps = values[3] if len(values) > 3 and values[3] is not None else np.array([1])
        if starts is None or ends is None or starts.size != 1:
            raise _NoMatch
        if int(axes.reshape(-1)[0]) not in (1, -3) or int(steps.reshape(-1)[0]) != 1:
            raise _NoMatch
        total = int(shape[1])
        start = min(max(int(starts.reshape(-1)[0]), 0), total)
        stop = min(max(int(ends.reshape(-1)[0]), 0), total)
        return _Chunk(source, start, stop, total)
    raise _NoMatch


def _conv_layer(node: gs.Node) -> _Layer:
    weight = const_value(node.inputs[1])
    if weight is None or weight.ndim != 4:
        raise _NearMiss("a mask conv has non-constant weights")
    if int(node.attrs.get("group", 1)) != 1:
        raise _NearMiss("a mask conv is already grouped")
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", b"NOTSET"):
        raise _NearMiss("a mask conv uses auto_pad")
    bias = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
    if bias is None:
        bias = np.zeros(weight.shape[0], dtype=np.float32)
    attrs = {
        "strides": attr_ints(node, "strides", [1, 1]),
        "pads": attr_ints(node, "pads", [0, 0, 0, 0]),
        "dilations": attr_ints(node, "dilations", [1, 1]),
    }
    return _Layer(weight.astype(np.float32), bias.astype(np.float32), attrs)


def _with_bn(layer: _Layer, bn: gs.Node | None) -> _Layer:
    if bn is None:
        return layer
    params = batchnorm_params(bn)
    if params is None:
        raise _NearMiss("a BatchNormalization in a branch is in training mode or not constant")
    weight, bias = fold_batchnorm(layer.weight, layer.bias, params)
    return _Layer(weight, bias, layer.attrs)


def _conv_chain(tensor: gs.Tensor) -> tuple[list[_Layer], gs.Tensor]:
    """Convs (BN folded) separated by ReLUs, read backwards: (layers in order, chain input)."""
    layers: list[_Layer] = []
    current = tensor
    while True:
        node = _node(current)
        bn = None
        if node.op == "BatchNormalization":
            bn, node = node, _node(node.inputs[0])
        if node.op != "Conv":
            raise _NoMatch
        layers.append(_with_bn(_conv_layer(node), bn))
        current = node.inputs[0]
        before = producer(current)
        if before is None or before.op != "Relu":
            break
        current = before.inputs[0]
    layers.reverse()
    return layers, current


def _linear(node: gs.Node) -> tuple[_Layer, gs.Tensor] | None:
    """Gemm, or MatMul (+ Add bias), with constant weights -> (layer (out, in), input)."""
    if node.op == "Gemm":
        weight = const_value(node.inputs[1])
        if weight is None or int(node.attrs.get("transA", 0)) != 0:
            return None
        if not int(node.attrs.get("transB", 0)):
            weight = weight.T
        weight = weight * float(node.attrs.get("alpha", 1.0))
        bias = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
        bias = (
            np.zeros(weight.shape[0]) if bias is None else bias * float(node.attrs.get("beta", 1.0))
        )
        if bias.size not in (1, weight.shape[0]):
            return None
        bias = np.broadcast_to(bias.reshape(-1), (weight.shape[0],))
        return _Layer(weight.astype(np.float32), bias.astype(np.float32)), node.inputs[0]
    add_bias = None
    if node.op == "Add":
        consts = [const_value(t) for t in node.inputs]
        if len(node.inputs) != 2 or (consts[0] is None) == (consts[1] is None):
            return None
        add_bias = consts[0] if consts[0] is not None else consts[1]
        inner = node.inputs[1] if consts[0] is not None else node.inputs[0]
        node = _node(inner)
    if node.op != "MatMul":
        return None
    weight = const_value(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    weight = weight.T
    bias = np.zeros(weight.shape[0]) if add_bias is None else add_bias.reshape(-1)
    if bias.size not in (1, weight.shape[0]):
        return None
    bias = np.broadcast_to(bias, (weight.shape[0],))
    return _Layer(weight.astype(np.float32), bias.astype(np.float32)), node.inputs[0]


def _reduce_axes(node: gs.Node) -> list[int] | None:
    if len(node.inputs) > 1:
        axes = const_value(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return attr_ints(node, "axes") or None


def _style_branch(tensor: gs.Tensor) -> _Style:
    """GAP -> [flatten] -> Linear [-> BN] -> ReLU -> ... -> Linear -> [unsqueeze] (backwards)."""
    current = tensor
    while (node := _node(current)).op in RESHAPE_LIKE:
        current = node.inputs[0]
    layers: list[_Layer] = []
    while True:
        node = _node(current)
        bn = None
        if node.op == "BatchNormalization":
            bn, node = node, _node(node.inputs[0])
        found = _linear(node)
        if found is None:
            raise _NoMatch
        layer, current = found
        layers.append(_with_bn(layer, bn))
        before = producer(current)
        if before is None or before.op != "Relu":
            break
        current = before.inputs[0]
    while (node := _node(current)).op in RESHAPE_LIKE:
        current = node.inputs[0]
    if node.op == "GlobalAveragePool":
        pass
    elif node.op == "ReduceMean":
        axes = _reduce_axes(node)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            raise _NoMatch
    else:
        raise _NoMatch
    layers.reverse()
    for layer in layers:
        layer.weight = layer.weight.reshape(*layer.weight.shape, 1, 1)
    return _Style(_chunk_of(node.inputs[0]), layers)


def _mask_branch(tensor: gs.Tensor) -> _Mask:
    """Backwards: [channel slice] <- [nearest Resize] <- Sigmoid <- [+noise] <- convs."""
    current = tensor
    position = 0
    sliced = False
    node = _node(current)
    if node.op in ("Slice", "Split", "Gather"):
        position = _channel_index(node, current)
        current, sliced = node.inputs[0], True
        node = _node(current)
    resize = None
    if node.op == "Resize":
        resize, current = node, node.inputs[0]
        node = _node(current)
    if node.op != "Sigmoid":
        raise _NoMatch
    current = node.inputs[0]
    extra = None
    node = _node(current)
    if node.op == "Add" and sliced:
        # logits + noise term: keep whichever operand is not the Concat of the logits
        a, b = node.inputs
        a_node = producer(a)
        logits, extra = (a, b) if a_node is not None and a_node.op == "Concat" else (b, a)
        current = logits
        node = _node(current)
    if sliced:
        if node.op != "Concat" or int(node.attrs.get("axis", 0)) not in (1, -3):
            raise _NoMatch
        if position >= len(node.inputs):
            raise _NoMatch
        layers, inp = _conv_chain(node.inputs[position])
        mask = _Mask(_chunk_of(inp), layers, node, position, extra, resize)
    else:
        layers, inp = _conv_chain(current)
        mask = _Mask(_chunk_of(inp), layers, None, 0, None, resize)
    if mask.layers[-1].weight.shape[0] != 1:
        raise _NearMiss("a group mask has more than one channel")
    return mask


def _channel_index(node: gs.Node, tensor: gs.Tensor) -> int:
    """Which single channel of its input a Slice/Split/Gather output is."""
    if node.op == "Gather":
        index = const_value(node.inputs[1])
        if int(node.attrs.get("axis", 0)) not in (1, -3) or index is None or index.size != 1:
            raise _NoMatch
        raise _NearMiss("a group mask is taken with Gather (drops the channel axis)")
    chunk = _chunk_of(tensor)
    if chunk.stop - chunk.start != 1:
        raise _NoMatch
    return chunk.start


def _resize_signature(node: gs.Node | None) -> tuple[Any, ...] | None:
    if node is None:
        return None
    attrs = tuple(sorted((k, str(v)) for k, v in node.attrs.items()))
    scales = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
    sizes = _resize_spatial_sizes(node)
    return (attrs, None if scales is None else tuple(scales.tolist()), sizes)


def _resize_spatial_sizes(node: gs.Node) -> tuple[int, int] | None:
    """The (H, W) a Resize with a `sizes` input targets, when it can be read statically."""
    if len(node.inputs) < 4:
        return None
    sizes_t = node.inputs[3]
    sizes = const_value(sizes_t)
    if sizes is not None and sizes.size == 4:
        return int(sizes[2]), int(sizes[3])
    concat = producer(sizes_t)
    if concat is not None and concat.op == "Concat":
        tail = const_value(concat.inputs[-1])
        if tail is not None and tail.size == 2:
            return int(tail[0]), int(tail[1])
    shape = shape_of(node.outputs[0])
    if shape is not None and len(shape) == 4 and shape[2] is not None and shape[3] is not None:
        return int(shape[2]), int(shape[3])
    return None


def _block_nodes(final: gs.Tensor, source: gs.Tensor, extra: gs.Tensor | None) -> list[gs.Node]:
    """Every node between `source` (and the noise term) and `final`: what the rewrite replaces."""
    stops = {id(source)} | ({id(extra)} if extra is not None else set())
    seen: dict[int, gs.Node] = {}
    stack = [final]
    while stack and len(seen) < 4096:
        tensor = stack.pop()
        node = producer(tensor)
        if id(tensor) in stops or node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(node.inputs)
    return list(seen.values())


def _summed_groups(num: gs.Tensor, den_sum: gs.Tensor) -> tuple[list[_Mask], list[_Style]]:
    """Official form: sum_g Mul(m_g, s_g) over sum_g m_g, each m_g its own (resized) mask."""
    products = [_node(t) for t in _sum_terms(num)]
    if any(p.op != "Mul" or len(p.inputs) != 2 for p in products):
        raise _NoMatch
    den_masks = _sum_terms(den_sum)
    den_ids = {id(t) for t in den_masks}
    pairs: list[tuple[gs.Tensor, gs.Tensor]] = []
    for product in products:
        a, b = product.inputs
        if id(a) in den_ids:
            pairs.append((a, b))
        elif id(b) in den_ids:
            pairs.append((b, a))
        else:
            raise _NoMatch
    if len(pairs) != len(den_masks) or {id(m) for m, _ in pairs} != den_ids:
        raise _NoMatch
    return [_mask_branch(m) for m, _ in pairs], [_style_branch(s) for _, s in pairs]


def _batched_groups(num: gs.Tensor, den_sum: gs.Tensor) -> tuple[list[_Mask], list[_Style]]:
    """Half-fused form: Reshape(stack(s_g) @ Reshape(M)) over ReduceSum_G(M), M = sigmoid(cat)."""
    node = _node(num)
    if node.op == "Reshape":
        node = _node(node.inputs[0])
    if node.op != "MatMul":
        raise _NoMatch
    stacked, flat = node.inputs
    flat_node = _node(flat)
    if flat_node.op != "Reshape":
        raise _NoMatch
    masks_all = flat_node.inputs[0]
    reduce = _node(den_sum)
    if reduce.op != "ReduceSum" or reduce.inputs[0] is not masks_all:
        raise _NoMatch
    axes = _reduce_axes(reduce)
    if axes is None or [a % 4 for a in axes] != [1] or not int(reduce.attrs.get("keepdims", 1)):
        raise _NoMatch
    stack = _node(stacked)
    if stack.op != "Concat" or int(stack.attrs.get("axis", 0)) not in (2, -1):
        raise _NoMatch
    sigmoid = _node(masks_all)
    if sigmoid.op != "Sigmoid":
        raise _NoMatch
    logits = sigmoid.inputs[0]
    extra = None
    node = _node(logits)
    if node.op == "Add":
        a, b = node.inputs
        a_node = producer(a)
        logits, extra = (a, b) if a_node is not None and a_node.op == "Concat" else (b, a)
        node = _node(logits)
    if node.op != "Concat" or int(node.attrs.get("axis", 0)) not in (1, -3):
        raise _NoMatch
    if len(node.inputs) != len(stack.inputs):
        raise _NearMiss("the stacked styles and concatenated masks differ in group count")
    masks = []
    for position, logit in enumerate(node.inputs):
        layers, inp = _conv_chain(logit)
        if layers[-1].weight.shape[0] != 1:
            raise _NearMiss("a group mask has more than one channel")
        masks.append(_Mask(_chunk_of(inp), layers, node, position, extra, None))
    styles = [_style_branch(t) for t in stack.inputs]
    return masks, styles


def _stacked_items(tensor: gs.Tensor) -> tuple[list[gs.Tensor], int]:
    """A tensor built as Concat of G per-group tensors (each 1 wide on the concat axis), then
    Unsqueezes that leave that axis alone: (the per-group tensors, the group axis in `tensor`).

    torch.stack exports as Unsqueeze(x, axis) per group + Concat; torch.cat of (B, 1, ...) maps
    as Concat alone: both give the same items (a stacking Unsqueeze is looked through).
    """
    outer_axes: list[list[int]] = []  # Unsqueeze axes met walking back, outermost first
    current = tensor
    while (node := _node(current)).op == "Unsqueeze":
        out_shape = shape_of(current)
        axes = _reduce_axes(node)
        if out_shape is None or axes is None:
            raise _NoMatch
        outer_axes.append(sorted(a % len(out_shape) for a in axes))
        current = node.inputs[0]
    if node.op != "Concat" or len(node.inputs) < 2:
        raise _NoMatch
    cat_shape = shape_of(current)
    if cat_shape is None:
        raise _NoMatch
    cat_axis = int(node.attrs.get("axis", 0)) % len(cat_shape)
    position = cat_axis
    for axes in reversed(outer_axes):  # carry the concat axis forward through the Unsqueezes
        for a in axes:
            if a <= position:
                position += 1
    items: list[gs.Tensor] = []
    for item in node.inputs:
        shape = shape_of(item)
        if shape is None or len(shape) != len(cat_shape) or shape[cat_axis] != 1:
            raise _NoMatch
        stacker = producer(item)
        if stacker is not None and stacker.op == "Unsqueeze":
            axes = _reduce_axes(stacker)
            if axes is not None and [a % len(shape) for a in axes] == [cat_axis]:
                item = stacker.inputs[0]
        items.append(item)
    return items, position


def _group_sum(tensor: gs.Tensor) -> tuple[gs.Tensor, int, bool]:
    """ReduceSum over one axis: (its input, the axis, keepdims)."""
    node = _node(tensor)
    if node.op != "ReduceSum":
        raise _NoMatch
    shape = shape_of(node.inputs[0])
    axes = _reduce_axes(node)
    if shape is None or axes is None or len(axes) != 1:
        raise _NoMatch
    return node.inputs[0], axes[0] % len(shape), bool(int(node.attrs.get("keepdims", 1)))


def _stacked_groups(num: gs.Tensor, den_sum: gs.Tensor) -> tuple[list[_Mask], list[_Style]]:
    """Stacked form (official InceptionBlock code): masks (B,G,1,H,W) * styles (B,G,Cout,1,1),
    ReduceSum over the group axis, over ReduceSum_G(masks). Normalised to the per-group masks
    and style vectors that the summed form yields, so both share one rewrite."""
    product, num_axis, num_keep = _group_sum(num)
    node = _node(product)
    eps_inside = False
    if node.op == "Add" and len(node.inputs) == 2:  # sum_g(m_g s_g + c): a near miss
        consts = [scalar_value(t) for t in node.inputs]
        if (consts[0] is None) == (consts[1] is None):
            raise _NoMatch
        eps_inside = True
        node = _node(node.inputs[1] if consts[0] is not None else node.inputs[0])
    if node.op != "Mul" or len(node.inputs) != 2:
        raise _NoMatch
    stacked = [_stacked_items(t) for t in node.inputs]
    masks_all, den_axis, den_keep = _group_sum(den_sum)
    den_items, den_group_axis = _stacked_items(masks_all)
    den_ids = [id(t) for t in den_items]
    order = [i for i in (0, 1) if [id(t) for t in stacked[i][0]] == den_ids]
    if not order:
        raise _NoMatch
    (mask_items, mask_axis), (style_items, style_axis) = stacked[order[0]], stacked[1 - order[0]]
    if len(style_items) != len(mask_items):
        raise _NearMiss("the stacked styles and masks differ in group count")
    if mask_axis != style_axis:
        raise _NearMiss("the masks and styles are stacked along different axes")
    if num_axis != mask_axis or den_axis != den_group_axis:
        raise _NearMiss(
            f"the products are summed over axis {num_axis} and the masks over axis {den_axis}, "
            f"but the groups are stacked along axis {mask_axis} (and {den_group_axis})"
        )
    if eps_inside:
        raise _NearMiss(
            "eps on the wrong side: a constant is added inside the numerator's group sum "
            "(expected sum m*s / (sum m + eps))"
        )
    # the per-group slices must be m_g (B, 1, H, W) and s_g (B, Cout, 1, 1), so the reduced
    # product is the (B, Cout, H, W) style the rewrite emits
    product_shape = shape_of(node.outputs[0])
    mask_shape, style_shape = shape_of(node.inputs[order[0]]), shape_of(node.inputs[1 - order[0]])
    den_shape = shape_of(masks_all)
    if product_shape is None or mask_shape is None or style_shape is None or den_shape is None:
        raise _NearMiss("the stacked group tensors have no inferred shape")
    mask_rest = [d for i, d in enumerate(mask_shape) if i != mask_axis]
    style_rest = [d for i, d in enumerate(style_shape) if i != mask_axis]
    num_rank = len(product_shape) - (0 if num_keep else 1)
    den_rank = len(den_shape) - (0 if den_keep else 1)
    if len(mask_rest) != 4 or len(style_rest) != 4 or num_rank != 4 or den_rank != 4:
        raise _NearMiss("the group sums do not reduce to (B, C, H, W) maps")
    if mask_rest[1] != 1 or style_rest[2:] != [1, 1]:
        raise _NearMiss("the stacked masks are not (B, G, 1, H, W) or the styles (B, G, C, 1, 1)")
    return [_mask_branch(m) for m in mask_items], [_style_branch(s) for s in style_items]


# ---------------------------------------------------------------- the rule


class SaseGroupFusion(RewriteRule):
    """Fuse a SASE/SLIM block's G branches into grouped convs + one batched aggregation."""

    name = "sase_group"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        return (node for node in graph.nodes if node.op == "Div")

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match | Decline | None:
        try:
            return self._match(graph, anchor)
        except _NoMatch:
            return None
        except _NearMiss as miss:
            return Decline(self.name, anchor.name, str(miss))

    def _match(self, graph: gs.Graph, div: gs.Node) -> Match:
        if len(div.inputs) != 2:
            raise _NoMatch
        den_node = producer(div.inputs[1])
        eps = None
        den_sum = div.inputs[1]
        if den_node is not None and den_node.op == "Add" and len(den_node.inputs) == 2:
            for i in (0, 1):
                value = scalar_value(den_node.inputs[i])
                if value is not None:
                    eps, den_sum = value, den_node.inputs[1 - i]
        num_node = _node(div.inputs[0])
        if num_node.op in ("Reshape", "MatMul"):
            masks, styles = _batched_groups(div.inputs[0], den_sum)
        elif num_node.op == "ReduceSum":
            masks, styles = _stacked_groups(div.inputs[0], den_sum)
        else:
            masks, styles = _summed_groups(div.inputs[0], den_sum)
        if eps is None:
            raise _NearMiss(
                "eps on the wrong side: the denominator sum of masks has no added constant "
                "(expected sum m*s / (sum m + eps))"
            )
        self._check_groups(masks, styles)
        # the optional "+ 1" (any scalar offset) after the division
        final = div.outputs[0]
        offset = None
        users = list(final.outputs)
        if len(users) == 1 and users[0].op == "Add" and len(users[0].inputs) == 2:
            other = users[0].inputs[1] if users[0].inputs[0] is final else users[0].inputs[0]
            offset = scalar_value(other)
            if offset is not None:
                final = users[0].outputs[0]
        order = sorted(range(len(masks)), key=lambda g: masks[g].chunk.start)
        block_output = None
        users = list(final.outputs)
        if len(users) == 1 and users[0].op == "Resize":  # style resized after the mix
            users = list(users[0].outputs[0].outputs)
        if len(users) == 1 and users[0].op == "Mul":
            block_output = users[0].outputs[0].name
        return Match(
            rule=self.name,
            anchor=div.name,
            kind="sase",
            nodes=_block_nodes(final, masks[0].chunk.source, masks[0].extra),
            captures={
                "masks": [masks[g] for g in order],
                "styles": [styles[g] for g in order],
                "eps": eps,
                "offset": offset,
                "final": final,
            },
            block_output=block_output,
        )

    @staticmethod
    def _check_groups(masks: list[_Mask], styles: list[_Style]) -> None:
        source = masks[0].chunk.source
        for mask, style in zip(masks, styles, strict=True):
            if mask.chunk.source is not source or style.chunk.source is not source:
                raise _NearMiss("the groups read different source tensors")
            if (mask.chunk.start, mask.chunk.stop) != (style.chunk.start, style.chunk.stop):
                raise _NearMiss("the style and mask of one term read different channel groups")
        spans = sorted((m.chunk.start, m.chunk.stop) for m in masks)
        width = spans[0][1] - spans[0][0]
        total = masks[0].chunk.channels
        expected = [(g * width, (g + 1) * width) for g in range(len(masks))]
        if spans != expected or width * len(masks) != total:
            raise _NearMiss(
                f"the groups' channel ranges {spans} are not {len(masks)} equal, contiguous "
                f"chunks covering all {total} source channels"
            )
        if len({tuple(layer.signature() for layer in m.layers) for m in masks}) != 1:
            raise _NearMiss("the groups' mask branches have mismatched shapes")
        if len({tuple(layer.signature() for layer in s.layers) for s in styles}) != 1:
            raise _NearMiss("the groups' style branches have mismatched shapes")
        out_channels = {s.layers[-1].weight.shape[0] for s in styles}
        if len(out_channels) != 1:
            raise _NearMiss("the groups' style vectors have different lengths")
        resizes = {_resize_signature(m.resize) for m in masks}
        if len(resizes) != 1:
            raise _NearMiss("the groups' masks are resized differently")
        resize = masks[0].resize
        if resize is not None:
            mode = resize.attrs.get("mode", "nearest")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            if mode != "nearest":
                raise _NearMiss(
                    f"the masks are resized with '{mode}' interpolation; only nearest resizing "
                    "commutes with the per-pixel aggregation"
                )
        concats = {id(m.concat) for m in masks}
        if len(concats) != 1:
            raise _NearMiss("some group masks come from a shared Concat and some do not")
        if masks[0].concat is not None:
            by_start = sorted(masks, key=lambda m: m.chunk.start)
            if [m.position for m in by_start] != list(range(len(masks))):
                raise _NearMiss("the concatenated mask logits are not in channel-group order")
            if len(masks[0].concat.inputs) != len(masks):
                raise _NearMiss("the concatenated mask logits hold more maps than groups")

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        masks: list[_Mask] = match.captures["masks"]
        source = masks[0].chunk.source
        shape = shape_of(source)
        if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
            return "the source map has no static spatial size (needed to flatten the masks)"
        resize = masks[0].resize
        if resize is not None:
            mask_hw = _mask_size(source, masks[0].layers)
            problem = _resize_problem(int(graph.opset or 0), resize, mask_hw)
            if problem is not None:
                return problem
        if match.captures["eps"] <= 0.0:
            return f"eps = {match.captures['eps']} is not positive"
        return None

    def rewrite(self, graph: gs.Graph, match: Match) -> None:
        masks: list[_Mask] = match.captures["masks"]
        styles: list[_Style] = match.captures["styles"]
        final: gs.Variable = match.captures["final"]
        groups = len(masks)
        prefix = f"{self.name}/{match.anchor}"
        old = producer(final)
        assert old is not None
        old.outputs.remove(final)  # the new chain produces `final` (name and consumers kept)
        xs = masks[0].chunk.source
        out_channels = styles[0].layers[-1].weight.shape[0]

        # styles: GAP -> grouped 1x1 convs, ReLU between -> (B, G*Cout, 1, 1)
        s = make_node(graph, "GlobalAveragePool", f"{prefix}/gap", [xs])
        s = _grouped_chain(graph, f"{prefix}/style", s, [st.layers for st in styles])
        s = _reshape(graph, f"{prefix}/style_3d", s, [0, groups, out_channels])
        s = make_node(graph, "Transpose", f"{prefix}/style_t", [s], attrs={"perm": [0, 2, 1]})

        # masks: grouped conv chain -> (B, G, h, w) logits [+ noise] -> Sigmoid
        logits = _grouped_chain(graph, f"{prefix}/mask", xs, [m.layers for m in masks])
        if masks[0].extra is not None:
            logits = make_node(graph, "Add", f"{prefix}/noise", [logits, masks[0].extra])
        m = make_node(graph, "Sigmoid", f"{prefix}/sigmoid", [logits])
        h, w = _mask_size(xs, masks[0].layers)
        m_flat = _reshape(graph, f"{prefix}/mask_3d", m, [0, groups, -1])

        num = make_node(graph, "MatMul", f"{prefix}/weighted", [s, m_flat])  # (B, Cout, hw)
        axes = make_constant(graph, f"{prefix}/axes", np.array([1], dtype=np.int64))
        den = make_node(
            graph, "ReduceSum", f"{prefix}/mask_sum", [m_flat, axes], attrs={"keepdims": 1}
        )
        eps = make_constant(graph, f"{prefix}/eps", np.array(match.captures["eps"], np.float32))
        den = make_node(graph, "Add", f"{prefix}/mask_sum_eps", [den, eps])
        style = make_node(graph, "Div", f"{prefix}/normalise", [num, den])
        if match.captures["offset"] is not None:
            one = make_constant(
                graph, f"{prefix}/offset", np.array(match.captures["offset"], np.float32)
            )
            style = make_node(graph, "Add", f"{prefix}/plus_offset", [style, one])
        resize = masks[0].resize
        if resize is None:
            _reshape(graph, f"{prefix}/style_4d", style, [0, out_channels, h, w], output=final)
        else:
            style = _reshape(graph, f"{prefix}/style_4d", style, [0, out_channels, h, w])
            _resize_like(graph, f"{prefix}/resize", style, resize, (h, w), output=final)


def _grouped_chain(
    graph: gs.Graph, name: str, x: gs.Tensor, per_group: list[list[_Layer]]
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
    sizes = _resize_spatial_sizes(like)
    if sizes is None:
        return None
    ratios = [Fraction(target, source) for target, source in zip(sizes, mask_hw, strict=True)]
    if any(Fraction(float(np.float32(r))) != r for r in ratios):
        return None
    return np.array([1.0, 1.0, *(float(r) for r in ratios)], dtype=np.float32)


def _resize_problem(opset: int, like: gs.Node, mask_hw: tuple[int, int]) -> str | None:
    """Why the fused style cannot be resized the way `like` resizes each mask, or None."""
    if opset < 11:
        return "the mask Resize predates opset 11 (no scales/sizes inputs)"
    policy = like.attrs.get("keep_aspect_ratio_policy", "stretch")
    policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    if policy != "stretch":
        return f"the mask Resize keeps the aspect ratio ('{policy}'): its output size is not sizes"
    scales = _resize_scales(like, mask_hw)
    if scales is not None:
        if float(scales[0]) != 1.0 or float(scales[1]) != 1.0:
            return "the mask Resize scales the batch or channel axis"
        return None
    if _resize_spatial_sizes(like) is None:
        return "the mask Resize target size cannot be read statically"
    if opset < 15:
        return "resizing to sizes built from the input's Shape (start/end) needs opset >= 15"
    return None


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
    sizes = _resize_spatial_sizes(like)
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


def _mask_size(xs: gs.Tensor, layers: list[_Layer]) -> tuple[int, int]:
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
