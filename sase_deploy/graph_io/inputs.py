"""What a graph is fed: its real inputs, and seeded random feeds for inputs like them.

Old exporters (and opset < 9 models) also list every initializer among the graph inputs; the
inputs a caller feeds are the others. Every stage that reads a graph's inputs (calibration
sources, the parity report, `build`'s batch profile, bundles, Triton configs, the fusion
self-check) reads them here, so "an input" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import DTypeLike

from sase_deploy.errors import UserError


@dataclass(frozen=True)
class GraphInput:
    """One input of an ONNX graph: name, shape (None for a dim without a value) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any]


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers, in the graph's order.

    Args:
        model: any ONNX model (external data need not be loaded).
    """
    weights = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in weights]


def graph_inputs(model: onnx.ModelProto) -> tuple[GraphInput, ...]:
    """Name, shape and numpy dtype of each real input (`real_inputs`).

    A dim with a value keeps it (even 0); a symbolic or unknown dim is None.

    Args:
        model: any ONNX model.

    Raises:
        UserError: an input declares no element type.
    """
    result = []
    for value in real_inputs(model):
        tensor_type = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
        )
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except KeyError:
            raise UserError(
                f"input '{value.name}' declares no element type; re-export the model"
            ) from None
        result.append(GraphInput(value.name, dims, dtype))
    return tuple(result)


def random_feed(
    inputs: Iterable[tuple[str, Sequence[int], DTypeLike]], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Seeded inputs: standard normal values for float inputs, zeros for the others.

    Draws from `rng` in the order given, one array per input, so a caller that keeps its
    generator across calls (calibration latents, batch after batch) gets one stream.

    Args:
        inputs: (name, full shape, dtype) per input.
        rng: the generator to draw from (`np.random.default_rng(seed)`).
    """
    feed: dict[str, np.ndarray] = {}
    for name, shape, dtype in inputs:
        kind = np.dtype(dtype)
        if np.issubdtype(kind, np.floating):
            feed[name] = rng.standard_normal(tuple(shape)).astype(kind)
        else:
            feed[name] = np.zeros(tuple(shape), dtype=kind)
    return feed
