"""Portable equality of two ONNX graphs: judged in float64, not against a flat float32 tolerance.

Float32 kernels differ between CPUs (AVX2 / AVX-512, AMD / Intel), so how far an exact rewrite
moves a float32 output depends on the machine, and a flat 1e-5 is a property of one CPU. Here
both graphs are converted to float64 and run on ONNX's reference evaluator (numpy): an exact
rewrite then agrees up to the float32 rounding of the constants it folds (BN into convs: a few
float32 ulps), while a rewrite really off by 1e-5 still fails. The
float32 ORT run of the rewritten graph is held to the original's own float32 error against the
same float64 reference (its measured noise floor on *this* CPU), not to a constant.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from sase_deploy.runtime.compare import compare_outputs, worst_relative
from sase_deploy.runtime.ort import OrtRunner

F32, F64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
# An exact rewrite differs in float64 only by the float32 rounding of folded constants (each
# ~6e-8 relative; measured up to 5e-9 of the output scale on the SLIM blocks): 1e-6 leaves 200x
# margin and still fails any rewrite that is really off by 1e-5.
FLOAT64_TOLERANCE = 1e-6
# The rewritten float32 graph may be this many times further from float64 than the original.
NOISE_FACTOR = 4.0
# ... or this far (scale-relative) when the original happens to be closer than float32 epsilon.
FLOAT32_FLOOR = 1e-6


def _to_double_tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == F32:
        tensor.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)
        )


def float64_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float64: float initializers, constants, casts and IO."""
    double = copy.deepcopy(model)
    graph = double.graph
    for init in graph.initializer:
        _to_double_tensor(init)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == F32:
            value.type.tensor_type.elem_type = F64
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _to_double_tensor(attr.t)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == F32:
                attr.i = F64
    return double


def run_float64(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of `model` evaluated in float64 by onnx's numpy reference evaluator."""
    double = float64_model(model)
    session = ReferenceEvaluator(double)
    names = [o.name for o in double.graph.output]
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feed.items()}
    with np.errstate(over="ignore"):  # exp overflow in Sigmoid of large logits is exact (0 or 1)
        return dict(zip(names, session.run(None, wide), strict=True))


def _run_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray], threads: int | None) -> dict:
    with OrtRunner(model, intra_op_threads=threads) as runner:
        return runner.infer(feed)


def assert_rewrite_equivalent(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    threads: int | None = None,
) -> None:
    """The rewrite computes the same function (float64) and loses no float32 accuracy on ORT
    (run with `threads` intra-op threads: other counts sum in another order)."""
    ref = run_float64(original, feed)
    exact = worst_relative(compare_outputs(ref, run_float64(rewritten, feed)))
    assert exact < FLOAT64_TOLERANCE, f"rewrite differs in float64 by {exact:.2e} of scale"
    base = worst_relative(compare_outputs(ref, _run_ort(original, feed, threads)))
    got = worst_relative(compare_outputs(ref, _run_ort(rewritten, feed, threads)))
    bound = max(NOISE_FACTOR * base, FLOAT32_FLOOR)
    assert got <= bound, f"float32 error {got:.2e} vs original's {base:.2e} (bound {bound:.1e})"
