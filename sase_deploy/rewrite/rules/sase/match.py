"""The SASE matcher: the block around a Div read into typed captures, or why it declines.

Anchors are Divs (`sum_g m_g s_g / (sum_g m_g + eps)`) and the roots of modulation sums that no
Div normalises. What is reported:

* a block the rewrite reproduces exactly: a `Match` with `SaseCaptures`;
* a SASE-shaped block it cannot (eps on the wrong side, bilinear mask resize, ...): a near
  miss (`NoMatch.near`), reported as a decline with its reason;
* any other failure (a plain `NoMatch`) only when the anchor has the SASE modulation
  signature: G >= 2 outer products of a spatial mask (B, 1, H, W) and a style vector
  (B, C, 1, 1) summed over the groups (or the stacked / half-fused spellings of that sum).
  The reason then reads "looks like a SASE/SLIM block (G groups ...) but <what failed>".
  Without the signature (an SE gate, a residual Add, FastGAN's SLE) nothing is reported: it is
  not a SASE block at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from sase_deploy.rewrite.graph_utils import producer, scalar_value, shape_of
from sase_deploy.rewrite.rule import Captures, Match, NoMatch, ReportValue
from sase_deploy.rewrite.rules.sase.branches import Mask, Style, resize_signature
from sase_deploy.rewrite.rules.sase.forms import (
    Groups,
    batched_groups,
    stacked_groups,
    stacked_product,
    summed_groups,
)
from sase_deploy.rewrite.rules.sase.read import is_sum, node_of

ANCHOR_OPS = frozenset({"Div", "Add", "Sum", "ReduceSum"})


@dataclass
class SaseCaptures(Captures):
    """A matched SASE block: what the rewrite rebuilds as grouped convs + one aggregation."""

    masks: list[Mask]  # one per group, in channel order
    styles: list[Style]  # same order
    final: gs.Variable  # the style tensor the rewrite re-produces (name and consumers kept)
    eps: float  # sum m*s / (sum m + eps)
    offset: float | None  # the scalar added after the division ("+ 1"), if any

    def report(self) -> dict[str, ReportValue]:
        fields = {**super().report(), "eps": self.eps}
        if self.offset is not None:
            fields["offset"] = self.offset
        return fields


def match_sase(rule: str, anchor: gs.Node) -> Match[SaseCaptures]:
    """The rule's `match`; raises `NoMatch` (see the module docstring for what is reported)."""
    if anchor.op != "Div":
        groups = _unnormalised_groups(anchor)
        if groups is None:
            raise NoMatch(f"{anchor.op} '{anchor.name}' is not the root of a modulation sum")
        why = (
            "nothing divides the sum by the sum of the masks + eps "
            "(expected sum m*s / (sum m + eps))"
        )
        raise NoMatch.near(_looks_like(groups, why))
    try:
        return _match_div(rule, anchor)
    except NoMatch as miss:
        groups = None if miss.near_miss else modulation_groups(anchor)
        if groups is None:
            raise
        raise NoMatch.near(_looks_like(groups, miss.reason)) from None


def _looks_like(groups: int, why: str) -> str:
    return f"looks like a SASE/SLIM block ({groups} groups of masks x style vectors) but {why}"


# ---------------------------------------------------------------- the block around a Div


def _match_div(rule: str, div: gs.Node) -> Match[SaseCaptures]:
    if len(div.inputs) != 2:
        raise NoMatch(f"Div '{div.name}' does not have two inputs")
    eps, den_sum = _split_eps(div.inputs[1])
    masks, styles = _read_groups(div.inputs[0], den_sum)
    if eps is None:
        raise NoMatch.near(
            "eps on the wrong side: the denominator sum of masks has no added constant "
            "(expected sum m*s / (sum m + eps))"
        )
    _check_chunks(masks, styles)
    _check_branches(masks, styles)
    final, offset = _plus_offset(div.outputs[0])
    order = sorted(range(len(masks)), key=lambda g: masks[g].chunk.start)
    captures = SaseCaptures(
        masks=[masks[g] for g in order],
        styles=[styles[g] for g in order],
        final=final,
        eps=eps,
        offset=offset,
    )
    return Match(
        rule=rule,
        anchor=div.name,
        kind="sase",
        nodes=_block_nodes(final, masks[0].chunk.source, masks[0].extra),
        captures=captures,
        block_output=_block_output(final),
    )


def _split_eps(den: gs.Tensor) -> tuple[float | None, gs.Tensor]:
    """(eps, the sum of masks) for a denominator `sum + eps`; (None, den) without a constant."""
    node = producer(den)
    eps, den_sum = None, den
    if node is not None and node.op == "Add" and len(node.inputs) == 2:
        for i in (0, 1):
            value = scalar_value(node.inputs[i])
            if value is not None:
                eps, den_sum = value, node.inputs[1 - i]
    return eps, den_sum


def _read_groups(num: gs.Tensor, den_sum: gs.Tensor) -> Groups:
    op = node_of(num).op
    if op in ("Reshape", "MatMul"):
        return batched_groups(num, den_sum)
    if op == "ReduceSum":
        return stacked_groups(num, den_sum)
    return summed_groups(num, den_sum)


def _plus_offset(style: gs.Variable) -> tuple[gs.Variable, float | None]:
    """The optional "+ 1" (any scalar offset) after the division: (the final style, offset)."""
    users = list(style.outputs)
    if len(users) == 1 and users[0].op == "Add" and len(users[0].inputs) == 2:
        other = users[0].inputs[1] if users[0].inputs[0] is style else users[0].inputs[0]
        offset = scalar_value(other)
        if offset is not None:
            return users[0].outputs[0], offset
    return style, None


def _block_output(final: gs.Tensor) -> str | None:
    """The modulation `xb * style` (style resized after the mix or not), if that is next."""
    users = list(final.outputs)
    if len(users) == 1 and users[0].op == "Resize":
        users = list(users[0].outputs[0].outputs)
    if len(users) == 1 and users[0].op == "Mul":
        return users[0].outputs[0].name
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


def _check_chunks(masks: list[Mask], styles: list[Style]) -> None:
    """Every group reads its own equal, contiguous channel chunk of one source map."""
    source = masks[0].chunk.source
    for mask, style in zip(masks, styles, strict=True):
        if mask.chunk.source is not source or style.chunk.source is not source:
            raise NoMatch.near("the groups read different source tensors")
        if (mask.chunk.start, mask.chunk.stop) != (style.chunk.start, style.chunk.stop):
            raise NoMatch.near("the style and mask of one term read different channel groups")
    spans = sorted((m.chunk.start, m.chunk.stop) for m in masks)
    width = spans[0][1] - spans[0][0]
    total = masks[0].chunk.channels
    expected = [(g * width, (g + 1) * width) for g in range(len(masks))]
    if spans != expected or width * len(masks) != total:
        raise NoMatch.near(
            f"the groups' channel ranges {spans} are not {len(masks)} equal, contiguous "
            f"chunks covering all {total} source channels"
        )


def _check_branches(masks: list[Mask], styles: list[Style]) -> None:
    """The groups' branches stack into grouped convs: same shapes, resizes, logit layout."""
    if len({tuple(layer.signature() for layer in m.layers) for m in masks}) != 1:
        raise NoMatch.near("the groups' mask branches have mismatched shapes")
    if len({tuple(layer.signature() for layer in s.layers) for s in styles}) != 1:
        raise NoMatch.near("the groups' style branches have mismatched shapes")
    if len({s.layers[-1].weight.shape[0] for s in styles}) != 1:
        raise NoMatch.near("the groups' style vectors have different lengths")
    if len({resize_signature(m.resize) for m in masks}) != 1:
        raise NoMatch.near("the groups' masks are resized differently")
    resize = masks[0].resize
    if resize is not None:
        mode = resize.attrs.get("mode", "nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "nearest":
            raise NoMatch.near(
                f"the masks are resized with '{mode}' interpolation; only nearest resizing "
                "commutes with the per-pixel aggregation"
            )
    if len({id(m.concat) for m in masks}) != 1:
        raise NoMatch.near("some group masks come from a shared Concat and some do not")
    if masks[0].concat is not None:
        by_start = sorted(masks, key=lambda m: m.chunk.start)
        if [m.position for m in by_start] != list(range(len(masks))):
            raise NoMatch.near("the concatenated mask logits are not in channel-group order")
        if len(masks[0].concat.inputs) != len(masks):
            raise NoMatch.near("the concatenated mask logits hold more maps than groups")


# ---------------------------------------------------------------- the modulation signature


def modulation_groups(anchor: gs.Node) -> int | None:
    """G when `anchor` sums G >= 2 mask x style products (a Div of that sum, or the sum), by
    shapes: each mask (B, 1, H, W), each style vector (B, C, 1, 1); the half-fused MatMul
    form counts when its denominator sums the very masks the MatMul reads. Else None."""
    num = anchor.inputs[0] if anchor.op == "Div" else anchor.outputs[0]
    groups = _summed_signature(num) or _stacked_signature(num)
    if not groups and anchor.op == "Div" and len(anchor.inputs) == 2:
        groups = _batched_signature(num, _split_eps(anchor.inputs[1])[1])
    return groups if groups >= 2 else None


def _unnormalised_groups(node: gs.Node) -> int | None:
    """G for the root of a modulation sum that no Div normalises (else None: a Div anchors it,
    or it is only part of a larger sum)."""
    out = node.outputs[0]
    for user in out.outputs:
        if user.op == "Div" and user.inputs[0] is out:
            return None
        if is_sum(user):
            return None
    return modulation_groups(node)


def _mask_like(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and shape[1] == 1 and shape[2:] != (1, 1)


def _style_like(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and shape[1] != 1 and shape[2:] == (1, 1)


def _outer(a: tuple[int | None, ...] | None, b: tuple[int | None, ...] | None) -> bool:
    """A mask times a style vector, either order."""
    return (_mask_like(a) and _style_like(b)) or (_mask_like(b) and _style_like(a))


def _summed_signature(num: gs.Tensor) -> int:
    """G for an Add tree of G mask x style products. Walked without recursion and left at the
    first other term: every Add root of a network is a candidate (residual chains are long)."""
    count, stack = 0, [num]
    while stack:
        node = producer(stack.pop())
        if is_sum(node):
            stack.extend(node.inputs)
            continue
        if node is None or node.op != "Mul" or len(node.inputs) != 2:
            return 0
        if not _outer(*(shape_of(t) for t in node.inputs)):
            return 0
        count += 1
    return count if count >= 2 else 0


def _stacked_signature(num: gs.Tensor) -> int:
    """G for ReduceSum(masks (B,G,1,H,W) * styles (B,G,C,1,1)) over any axis (the wrong one is
    a decline with its own reason), the group axis being any one they share."""
    try:
        product = stacked_product(num)[0]
    except NoMatch as miss:
        if miss.near_miss:
            raise
        return 0
    a, b = (shape_of(t) for t in product.inputs)
    if a is None or b is None or len(a) != 5 or len(b) != 5:
        return 0
    for axis in range(1, 5):
        groups = a[axis]
        drop_a, drop_b = a[:axis] + a[axis + 1 :], b[:axis] + b[axis + 1 :]
        if groups is not None and groups == b[axis] and _outer(drop_a, drop_b):
            return groups
    return 0


def _batched_signature(num: gs.Tensor, den_sum: gs.Tensor) -> int:
    """G for Reshape(styles @ Reshape(M)) / ReduceSum(M): M's channels are the group masks."""
    node = producer(num)
    if node is not None and node.op == "Reshape":
        node = producer(node.inputs[0])
    flat = producer(node.inputs[1]) if node is not None and node.op == "MatMul" else None
    reduce = producer(den_sum)
    if flat is None or flat.op != "Reshape" or reduce is None or reduce.op != "ReduceSum":
        return 0
    shape = shape_of(flat.inputs[0])
    if reduce.inputs[0] is not flat.inputs[0] or shape is None or len(shape) != 4:
        return 0
    return shape[1] or 0
