"""Reading op attributes whose place moved between opsets, for both graph representations the
stages use (onnx protos in calibration, onnx-graphsurgeon nodes in the rewrite rules)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reduce_axes(
    attribute: Sequence[int] | None, axes_input: np.ndarray | None, inputs: int
) -> list[int] | None:
    """The axes a Reduce* node reduces over.

    Args:
        attribute: its `axes` attribute (opsets before 18; ReduceSum before 13), if set.
        axes_input: the value of its second input (opset 18+) when that input is a constant.
        inputs: how many inputs the node has (a missing second input means "every axis").

    Returns the axes (possibly negative, as written), `[]` for "every axis", or None when the
    axes are computed at run time.
    """
    if attribute is not None:
        return [int(a) for a in attribute]
    if inputs > 1:
        return None if axes_input is None else [int(a) for a in axes_input.reshape(-1)]
    return []
