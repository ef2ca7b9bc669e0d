"""One SASE group's branches read back from the graph: the style MLP, the mask CNN and the
mask's Resize (what makes two groups' resizes equal, and the size a Resize targets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx_graphsurgeon as gs

from sase_deploy.rewrite.gate_ops import reduce_axes
from sase_deploy.rewrite.graph_utils import const_value, producer, shape_of
from sase_deploy.rewrite.rules.sase.read import (
    Chunk,
    Layer,
    NoMatch,
    chunk_of,
    conv_chain,
    found,
    linear_layer,
    node_of,
    with_bn,
)

RESHAPE_LIKE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
STYLE_FORM = "GAP -> Linear [-> BN] -> ReLU -> ... -> Linear"
MASK_FORM = "Sigmoid(convs on a channel group of the source) [-> nearest Resize]"


@dataclass
class Mask:
    """One group's spatial mask: conv chain on its chunk -> [+ extra] -> Sigmoid [-> Resize]."""

    chunk: Chunk
    layers: list[Layer]
    concat: gs.Node | None = None  # 1024 variant: the Concat of all groups' logits
    position: int = 0  # index of this group's logit in that Concat / channel of the slice
    extra: gs.Tensor | None = None  # tensor added to the logits before the sigmoid (noise)
    resize: gs.Node | None = None


@dataclass
class Style:
    """One group's style vector: linear layers (as 1x1 conv weights) on its chunk's GAP.

    `vector` is the tensor the branch computes (what `gates` walks back for its nodes)."""

    chunk: Chunk
    layers: list[Layer]
    vector: gs.Tensor


def style_branch(tensor: gs.Tensor) -> Style:
    """GAP -> [flatten] -> Linear [-> BN] -> ReLU -> ... -> Linear -> [unsqueeze] (backwards)."""
    try:
        return _style_branch(tensor)
    except NoMatch as miss:
        if miss.near_miss:
            raise
        raise NoMatch(f"the style vector '{tensor.name}' is not {STYLE_FORM}: {miss}") from None


def _style_branch(tensor: gs.Tensor) -> Style:
    current = tensor
    while (node := node_of(current)).op in RESHAPE_LIKE:
        current = node.inputs[0]
    layers: list[Layer] = []
    while True:
        node = node_of(current)
        bn = None
        if node.op == "BatchNormalization":
            bn, node = node, node_of(node.inputs[0])
        linear = linear_layer(node)
        if linear is None:
            raise NoMatch(found(node, "a Linear (Gemm or MatMul with constant weights)"))
        layer, current = linear
        layers.append(with_bn(layer, bn))
        before = producer(current)
        if before is None or before.op != "Relu":
            break
        current = before.inputs[0]
    while (node := node_of(current)).op in RESHAPE_LIKE:
        current = node.inputs[0]
    if node.op == "ReduceMean":
        axes = reduce_axes(node)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            raise NoMatch(f"ReduceMean '{node.name}' does not average over H and W")
    elif node.op != "GlobalAveragePool":
        raise NoMatch(found(node, "a ReLU between linears or the global average pool"))
    layers.reverse()
    for layer in layers:
        layer.weight = layer.weight.reshape(*layer.weight.shape, 1, 1)
    return Style(chunk_of(node.inputs[0]), layers, tensor)


def mask_branch(tensor: gs.Tensor) -> Mask:
    """Backwards: [channel slice] <- [nearest Resize] <- Sigmoid <- [+noise] <- convs."""
    try:
        return _mask_branch(tensor)
    except NoMatch as miss:
        if miss.near_miss:
            raise
        raise NoMatch(f"the mask '{tensor.name}' is not {MASK_FORM}: {miss}") from None


def _mask_branch(tensor: gs.Tensor) -> Mask:
    current = tensor
    position = 0
    node = node_of(current)
    sliced = node.op in ("Slice", "Split", "Gather")
    if sliced:
        position = _channel_index(node, current)
        current = node.inputs[0]
        node = node_of(current)
    resize = None
    if node.op == "Resize":
        resize, current = node, node.inputs[0]
        node = node_of(current)
    if node.op != "Sigmoid":
        raise NoMatch(found(node, "the mask Sigmoid"))
    if not sliced:
        layers, inp = conv_chain(node.inputs[0])
        return _single_channel(Mask(chunk_of(inp), layers, None, 0, None, resize))
    logits, extra = concat_logits(node.inputs[0])
    concat = node_of(logits)
    if position >= len(concat.inputs):
        raise NoMatch(f"the mask takes channel {position} of {len(concat.inputs)} logits")
    layers, inp = conv_chain(concat.inputs[position])
    return _single_channel(Mask(chunk_of(inp), layers, concat, position, extra, resize))


def concat_logits(logits: gs.Tensor) -> tuple[gs.Tensor, gs.Tensor | None]:
    """The Concat of all groups' mask logits (1024 variant) and the term added to it, if any."""
    extra = None
    node = node_of(logits)
    if node.op == "Add":
        # logits + noise term: keep whichever operand is not the Concat of the logits
        a, b = node.inputs
        a_node = producer(a)
        logits, extra = (a, b) if a_node is not None and a_node.op == "Concat" else (b, a)
        node = node_of(logits)
    if node.op != "Concat" or int(node.attrs.get("axis", 0)) not in (1, -3):
        raise NoMatch(found(node, "a channel Concat of the groups' mask logits"))
    return logits, extra


def _single_channel(mask: Mask) -> Mask:
    if mask.layers[-1].weight.shape[0] != 1:
        raise NoMatch.near("a group mask has more than one channel")
    return mask


def _channel_index(node: gs.Node, tensor: gs.Tensor) -> int:
    """Which single channel of its input a Slice/Split/Gather output is."""
    if node.op == "Gather":
        index = const_value(node.inputs[1])
        if int(node.attrs.get("axis", 0)) not in (1, -3) or index is None or index.size != 1:
            raise NoMatch(f"Gather '{node.name}' does not pick one channel")
        raise NoMatch.near("a group mask is taken with Gather (drops the channel axis)")
    chunk = chunk_of(tensor)
    if chunk.stop - chunk.start != 1:
        raise NoMatch(f"'{tensor.name}' takes {chunk.stop - chunk.start} channels, not one")
    return chunk.start


# ---------------------------------------------------------------- mask resizes


def resize_signature(node: gs.Node | None) -> tuple[Any, ...] | None:
    """What makes two mask Resizes equal: attributes, constant scales, static target size."""
    if node is None:
        return None
    attrs = tuple(sorted((k, str(v)) for k, v in node.attrs.items()))
    scales = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
    sizes = resize_spatial_sizes(node)
    return (attrs, None if scales is None else tuple(scales.tolist()), sizes)


def resize_spatial_sizes(node: gs.Node) -> tuple[int, int] | None:
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
