"""The three ways a SASE block aggregates its G groups, each read into per-group masks and styles.

Every reader takes the Div's numerator and its denominator without eps (`den_sum`) and returns
(masks, styles), one per group, so all forms share one rewrite:

* summed (the zoo's `SLIMBlock`): `sum_g Mul(m_g, s_g)` over `sum_g m_g`, each m_g its own mask;
* batched (half-fused): `Reshape(stack(s_g) @ Reshape(M))` over `ReduceSum_G(M)`,
  M = sigmoid(cat(logits) [+ noise]);
* stacked (the official InceptionBlock code): masks (B,G,1,H,W) * styles (B,G,Cout,1,1),
  ReduceSum over the group axis, over ReduceSum_G(masks); torch.cat or torch.stack spelling.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from sase_deploy.rewrite.gate_ops import reduce_axes
from sase_deploy.rewrite.graph_utils import producer, scalar_value, shape_of
from sase_deploy.rewrite.rules.sase.branches import (
    Mask,
    Style,
    concat_logits,
    mask_branch,
    style_branch,
)
from sase_deploy.rewrite.rules.sase.read import (
    NoMatch,
    chunk_of,
    conv_chain,
    found,
    node_of,
    sum_terms,
)

Groups = tuple[list[Mask], list[Style]]


def summed_groups(num: gs.Tensor, den_sum: gs.Tensor) -> Groups:
    """Official form: sum_g Mul(m_g, s_g) over sum_g m_g, each m_g its own (resized) mask."""
    products = [node_of(t) for t in sum_terms(num)]
    for product in products:
        if product.op != "Mul" or len(product.inputs) != 2:
            raise NoMatch(found(product, "a mask x style product in the numerator sum"))
    den_masks = sum_terms(den_sum)
    den_ids = {id(t) for t in den_masks}
    pairs: list[tuple[gs.Tensor, gs.Tensor]] = []
    for product in products:
        a, b = product.inputs
        if id(a) in den_ids:
            pairs.append((a, b))
        elif id(b) in den_ids:
            pairs.append((b, a))
        else:
            raise NoMatch(
                f"neither factor of the product '{product.name}' is a term of the "
                "denominator (expected sum m*s / (sum m + eps))"
            )
    if len(pairs) != len(den_masks) or {id(m) for m, _ in pairs} != den_ids:
        raise NoMatch(
            f"the denominator sums {len(den_masks)} maps, not the {len(pairs)} masks of "
            "the numerator's products"
        )
    return [mask_branch(m) for m, _ in pairs], [style_branch(s) for _, s in pairs]


def batched_groups(num: gs.Tensor, den_sum: gs.Tensor) -> Groups:
    """Half-fused form: Reshape(stack(s_g) @ Reshape(M)) over ReduceSum_G(M), M = sigmoid(cat)."""
    node = node_of(num)
    if node.op == "Reshape":
        node = node_of(node.inputs[0])
    if node.op != "MatMul":
        raise NoMatch(found(node, "the MatMul of stacked styles and flattened masks"))
    stacked, flat = node.inputs
    flat_node = node_of(flat)
    if flat_node.op != "Reshape":
        raise NoMatch(found(flat_node, "a Reshape flattening the masks"))
    masks_all = flat_node.inputs[0]
    reduce = node_of(den_sum)
    if reduce.op != "ReduceSum" or reduce.inputs[0] is not masks_all:
        raise NoMatch("the denominator is not ReduceSum over the masks the MatMul reads")
    axes = reduce_axes(reduce)
    if axes is None or [a % 4 for a in axes] != [1] or not int(reduce.attrs.get("keepdims", 1)):
        raise NoMatch(f"ReduceSum '{reduce.name}' does not sum the masks over the group axis")
    stack = node_of(stacked)
    if stack.op != "Concat" or int(stack.attrs.get("axis", 0)) not in (2, -1):
        raise NoMatch(found(stack, "a Concat stacking the style vectors on the last axis"))
    sigmoid = node_of(masks_all)
    if sigmoid.op != "Sigmoid":
        raise NoMatch(found(sigmoid, "the mask Sigmoid"))
    logits, extra = concat_logits(sigmoid.inputs[0])
    concat = node_of(logits)
    if len(concat.inputs) != len(stack.inputs):
        raise NoMatch.near("the stacked styles and concatenated masks differ in group count")
    masks = []
    for position, logit in enumerate(concat.inputs):
        layers, inp = conv_chain(logit)
        if layers[-1].weight.shape[0] != 1:
            raise NoMatch.near("a group mask has more than one channel")
        masks.append(Mask(chunk_of(inp), layers, concat, position, extra, None))
    return masks, [style_branch(t) for t in stack.inputs]


def _stacked_items(tensor: gs.Tensor) -> tuple[list[gs.Tensor], int]:
    """A tensor built as Concat of G per-group tensors (each 1 wide on the concat axis), then
    Unsqueezes that leave that axis alone: (the per-group tensors, the group axis in `tensor`).

    torch.stack exports as Unsqueeze(x, axis) per group + Concat; torch.cat of (B, 1, ...) maps
    as Concat alone: both give the same items (a stacking Unsqueeze is looked through).
    """
    try:
        return _read_stack(tensor)
    except NoMatch as miss:
        if miss.near_miss:
            raise
        raise NoMatch(f"'{tensor.name}' is not a stack of per-group tensors: {miss}") from None


def _read_stack(tensor: gs.Tensor) -> tuple[list[gs.Tensor], int]:
    outer_axes: list[list[int]] = []  # Unsqueeze axes met walking back, outermost first
    current = tensor
    while (node := node_of(current)).op == "Unsqueeze":
        out_shape = shape_of(current)
        axes = reduce_axes(node)
        if out_shape is None or axes is None:
            raise NoMatch(f"Unsqueeze '{node.name}' has no static axes or shape")
        outer_axes.append(sorted(a % len(out_shape) for a in axes))
        current = node.inputs[0]
    cat_shape = shape_of(current)
    if node.op != "Concat" or len(node.inputs) < 2 or cat_shape is None:
        raise NoMatch(found(node, "a Concat stacking the groups"))
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
            raise NoMatch(f"'{item.name}' is not one group wide on the stacking axis")
        stacker = producer(item)
        if stacker is not None and stacker.op == "Unsqueeze":
            axes = reduce_axes(stacker)
            if axes is not None and [a % len(shape) for a in axes] == [cat_axis]:
                item = stacker.inputs[0]
        items.append(item)
    return items, position


def _group_sum(tensor: gs.Tensor) -> tuple[gs.Tensor, int, bool]:
    """ReduceSum over one axis: (its input, the axis, keepdims)."""
    node = node_of(tensor)
    shape = shape_of(node.inputs[0]) if node.op == "ReduceSum" else None
    axes = reduce_axes(node) if node.op == "ReduceSum" else None
    if shape is None or axes is None or len(axes) != 1:
        raise NoMatch(found(node, "a ReduceSum over the group axis"))
    return node.inputs[0], axes[0] % len(shape), bool(int(node.attrs.get("keepdims", 1)))


def stacked_product(num: gs.Tensor) -> tuple[gs.Node, int, bool, bool]:
    """The stacked form's numerator ReduceSum_axis(masks * styles [+ c]): (the Mul, the summed
    axis, keepdims, whether a constant c is added inside the sum)."""
    product, num_axis, num_keep = _group_sum(num)
    node = node_of(product)
    eps_inside = False
    if node.op == "Add" and len(node.inputs) == 2:  # sum_g(m_g s_g + c): a near miss
        consts = [scalar_value(t) for t in node.inputs]
        if (consts[0] is None) == (consts[1] is None):
            raise NoMatch(found(node, "the group product (or it plus a constant)"))
        eps_inside = True
        node = node_of(node.inputs[1] if consts[0] is not None else node.inputs[0])
    if node.op != "Mul" or len(node.inputs) != 2:
        raise NoMatch(found(node, "the product of the stacked masks and styles"))
    return node, num_axis, num_keep, eps_inside


def stacked_groups(num: gs.Tensor, den_sum: gs.Tensor) -> Groups:
    """Stacked form (official InceptionBlock code): masks (B,G,1,H,W) * styles (B,G,Cout,1,1),
    ReduceSum over the group axis, over ReduceSum_G(masks). Normalised to the per-group masks
    and style vectors that the summed form yields, so both share one rewrite."""
    node, num_axis, num_keep, eps_inside = stacked_product(num)
    stacked = [_stacked_items(t) for t in node.inputs]
    masks_all, den_axis, den_keep = _group_sum(den_sum)
    den_items, den_group_axis = _stacked_items(masks_all)
    den_ids = [id(t) for t in den_items]
    order = [i for i in (0, 1) if [id(t) for t in stacked[i][0]] == den_ids]
    if not order:
        raise NoMatch("the denominator does not sum the masks the numerator's product stacks")
    (mask_items, mask_axis), (style_items, style_axis) = stacked[order[0]], stacked[1 - order[0]]
    if len(style_items) != len(mask_items):
        raise NoMatch.near("the stacked styles and masks differ in group count")
    if mask_axis != style_axis:
        raise NoMatch.near("the masks and styles are stacked along different axes")
    if num_axis != mask_axis or den_axis != den_group_axis:
        raise NoMatch.near(
            f"the products are summed over axis {num_axis} and the masks over axis {den_axis}, "
            f"but the groups are stacked along axis {mask_axis} (and {den_group_axis})"
        )
    if eps_inside:
        raise NoMatch.near(
            "eps on the wrong side: a constant is added inside the numerator's group sum "
            "(expected sum m*s / (sum m + eps))"
        )
    mask_shape, style_shape = shape_of(node.inputs[order[0]]), shape_of(node.inputs[1 - order[0]])
    _check_stacked_shapes(
        [shape_of(node.outputs[0]), mask_shape, style_shape, shape_of(masks_all)],
        mask_axis,
        num_keep,
        den_keep,
    )
    return [mask_branch(m) for m in mask_items], [style_branch(s) for s in style_items]


def _check_stacked_shapes(
    shapes: list[tuple[int | None, ...] | None], axis: int, num_keep: bool, den_keep: bool
) -> None:
    """The per-group slices must be m_g (B, 1, H, W) and s_g (B, Cout, 1, 1), so the reduced
    product is the (B, Cout, H, W) style the rewrite emits. `shapes`: product, masks, styles,
    stacked masks of the denominator."""
    product_shape, mask_shape, style_shape, den_shape = shapes
    if product_shape is None or mask_shape is None or style_shape is None or den_shape is None:
        raise NoMatch.near("the stacked group tensors have no inferred shape")
    mask_rest = [d for i, d in enumerate(mask_shape) if i != axis]
    style_rest = [d for i, d in enumerate(style_shape) if i != axis]
    num_rank = len(product_shape) - (0 if num_keep else 1)
    den_rank = len(den_shape) - (0 if den_keep else 1)
    if len(mask_rest) != 4 or len(style_rest) != 4 or num_rank != 4 or den_rank != 4:
        raise NoMatch.near("the group sums do not reduce to (B, C, H, W) maps")
    if mask_rest[1] != 1 or style_rest[2:] != [1, 1]:
        raise NoMatch.near(
            "the stacked masks are not (B, G, 1, H, W) or the styles (B, G, C, 1, 1)"
        )
