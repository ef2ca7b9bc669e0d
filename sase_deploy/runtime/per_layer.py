"""Where a candidate's error comes from: every tensor both graphs compute, compared layer by layer.

After Polygraphy's `--mark all` / `debug precision` idea: the reference ONNX and the candidate
ONNX (its FP16 or INT8 version) are run on the same inputs with every intermediate tensor that
both graphs hold under the same name and shape marked as an output. Each tensor's error is
relative to its own scale (`max|ref - got| / max|ref|`, `sase_deploy.runtime.compare`); its
*jump* is that error minus the worst error of the shared tensors it is computed from, so a
layer that adds error stands out from the layers that only carry it on. The first layer, in the
reference's order, whose jump is at least half of the largest jump is where the output starts to
diverge. Written by hand: Polygraphy marks outputs and compares them, but ranks no layers and
needs its own TensorRT binding chosen at import, which a process running both flavours cannot
afford; onnx-graphsurgeon marks the outputs here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sase_deploy.graph_io import infer_shapes, load_onnx
from sase_deploy.runtime.compare import Residual
from sase_deploy.runtime.ort import OrtRunner

JUMP_SHARE = 0.5  # a jump at least this share of the largest one counts as a divergence
MAX_SAMPLES = 8  # inputs per run: the marked outputs of a large model are large
TOP = 5  # layers listed by jump


@dataclass(frozen=True)
class LayerError:
    """One shared tensor: its position in the reference, producer, error and jump."""

    tensor: str
    op: str
    depth: int  # index of its producer in the reference's topological order
    rel_err: float
    jump: float


@dataclass(frozen=True)
class PerLayer:
    """A candidate's error, layer by layer, against the reference ONNX."""

    reference: str
    layers: tuple[LayerError, ...]  # in the reference's order
    first_divergence: str | None  # tensor name; None when no layer adds error

    def worst(self, count: int = TOP) -> list[LayerError]:
        """The `count` layers that add the most error, largest first."""
        ranked = sorted(
            self.layers, key=lambda layer: -layer.jump if np.isfinite(layer.jump) else -np.inf
        )
        return ranked[:count]

    def to_dict(self) -> dict[str, Any]:
        """The report's `per_layer` entry: the curve, the first divergence and the worst."""
        return {
            "reference": self.reference,
            "first_divergence": self.first_divergence,
            "worst": [_row(layer) for layer in self.worst()],
            "layers": [_row(layer) for layer in self.layers],
        }


def _row(layer: LayerError) -> dict[str, Any]:
    """A layer as JSON: a non-finite error is null (the report format has no NaN)."""
    row = asdict(layer)
    for key in ("rel_err", "jump"):
        row[key] = row[key] if math.isfinite(row[key]) else None
    return row


def _produced(model: onnx.ModelProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    """Tensor name -> (position, node) for every node output."""
    return {out: (i, node) for i, node in enumerate(model.graph.node) for out in node.output if out}


def _typed(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[Any, ...]]]:
    """Tensor name -> (element type, dims) where shape inference knows them."""
    found = {}
    for info in (*model.graph.value_info, *model.graph.output):
        t = info.type.tensor_type
        if t.elem_type:
            dims = tuple(d.dim_value or d.dim_param or None for d in t.shape.dim)
            found[info.name] = (t.elem_type, dims)
    return found


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def shared_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[str]:
    """Float tensors both graphs compute under the same name and rank, in the reference's order.

    Args:
        reference: shape-inferred reference graph.
        candidate: shape-inferred candidate graph (its Q/DQ and Cast outputs have new names and
            are not shared).
    """
    ref_types, cand_types = _typed(reference), _typed(candidate)
    cand_made = _produced(candidate)
    shared = []
    for name in _produced(reference):
        ref_t, cand_t = ref_types.get(name), cand_types.get(name)
        if name not in cand_made or ref_t is None or cand_t is None:
            continue
        if ref_t[0] in _FLOATS and cand_t[0] in _FLOATS and len(ref_t[1]) == len(cand_t[1]):
            shared.append(name)
    return shared


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are its own plus `names` (their inferred types)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    present = {t.name for t in graph.outputs}
    graph.outputs = [*graph.outputs, *(tensors[n] for n in names if n not in present)]
    return gs.export_onnx(graph)


def _run_marked(model: onnx.ModelProto, names: list[str], feed: Mapping[str, np.ndarray]) -> dict:
    with OrtRunner(_with_outputs(model, names)) as runner:
        return runner.infer(dict(feed))


def _ancestors(model: onnx.ModelProto, shared: set[str]) -> dict[str, set[str]]:
    """For each shared tensor, the nearest shared tensors (or nothing: graph inputs and
    weights) its producer reads, looking through tensors the candidate does not share."""
    made = _produced(model)
    nearest: dict[str, set[str]] = {}
    for node in model.graph.node:
        found: set[str] = set()
        for name in node.input:
            if name in shared:
                found.add(name)
            elif name in made:
                found |= nearest.get(name, set())
        for out in node.output:
            nearest[out] = found
    return {name: nearest.get(name, set()) for name in shared}


def per_layer_errors(
    reference: str | Path, candidate: str | Path, feed: Mapping[str, np.ndarray]
) -> PerLayer:
    """Run both ONNX files on `feed` with every shared tensor marked; each one's error and jump.

    Args:
        reference: the FP32 ONNX the candidate was made from (the same tensor names).
        candidate: its FP16 / INT8 version.
        feed: one batch of inputs, by input name (at most `MAX_SAMPLES` of it are used).
    """
    found = layer_errors(load_onnx(Path(reference)), load_onnx(Path(candidate)), feed)
    return dataclasses.replace(found, reference=str(reference))


def layer_errors(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, feed: Mapping[str, np.ndarray]
) -> PerLayer:
    """`per_layer_errors` of two models in memory (`reference` is named by its graph)."""
    ref_model, cand_model = infer_shapes(reference), infer_shapes(candidate)
    names = shared_tensors(ref_model, cand_model)
    feed = {k: v[:MAX_SAMPLES] for k, v in feed.items()}
    ref_out = _run_marked(ref_model, names, feed)
    got_out = _run_marked(cand_model, names, feed)
    errors = {n: Residual.of(n, ref_out[n], got_out[n]).summary().rel_max_abs for n in names}
    parents = _ancestors(ref_model, set(names))
    made = _produced(ref_model)
    layers = []
    for name in names:
        carried = max((errors[p] for p in parents[name]), default=0.0)
        depth, node = made[name]
        layers.append(LayerError(name, node.op_type, depth, errors[name], errors[name] - carried))
    return PerLayer(ref_model.graph.name, tuple(layers), _first_divergence(layers))


def _first_divergence(layers: list[LayerError]) -> str | None:
    """The first layer whose jump is not finite or at least `JUMP_SHARE` of the largest."""
    largest = max((layer.jump for layer in layers if np.isfinite(layer.jump)), default=0.0)
    for layer in layers:
        if not np.isfinite(layer.jump) or (largest > 0.0 and layer.jump >= JUMP_SHARE * largest):
            return layer.tensor
    return None
