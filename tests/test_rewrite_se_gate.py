"""SE-gate recognition and canonicalisation: fires on every export style, declines near misses."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rewrite_blocks import (
    ECA,
    CBAMChannel,
    Host,
    LinearSE,
    SleHost,
    TimmSE,
    TorchvisionSE,
    export,
)
from torch import nn

from sase_deploy.rewrite import fuse_model
from sase_deploy.rewrite.rules import SE_GATE_RULES

NON_CANONICAL = {
    *("Reshape", "Flatten", "Expand", "Shape", "Gemm", "MatMul", "Squeeze", "Unsqueeze"),
    *("Transpose", "BatchNormalization", "GlobalAveragePool", "GlobalMaxPool"),
}

CASES: dict[str, tuple[Callable[[], nn.Module], str, tuple[int, ...]]] = {
    "timm_mean_conv": (lambda: Host(TimmSE(16)), "se", (1, 3, 16, 16)),
    "torchvision_gap": (lambda: Host(TorchvisionSE(16)), "se", (1, 3, 16, 16)),
    "linear_view_expand": (lambda: Host(LinearSE(16)), "se", (1, 3, 16, 16)),
    "linear_bn1d": (lambda: Host(LinearSE(16, bn=True)), "se", (1, 3, 16, 16)),
    "efficientnet_silu": (lambda: Host(TorchvisionSE(16, act=nn.SiLU())), "se", (1, 3, 16, 16)),
    "mobilenetv3_hardsigmoid": (
        lambda: Host(TorchvisionSE(16, gate=nn.Hardsigmoid())),
        "se",
        (1, 3, 16, 16),
    ),
    "eca": (lambda: Host(ECA()), "eca", (1, 3, 16, 16)),
    "cbam_channel": (lambda: Host(CBAMChannel(16)), "cbam_channel", (1, 3, 16, 16)),
    "sle": (lambda: SleHost(), "sle", (1, 3, 32, 32)),
}
# The dynamo exporter takes seconds per model: the styles it changes most run by default.
FAST_DYNAMO = {"linear_view_expand", "eca"}


@functools.cache
def exported(case: str, dynamo: bool) -> onnx.ModelProto:
    factory, _, shape = CASES[case]
    return export(factory(), shape, dynamo=dynamo)


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        params.append(pytest.param(case, False, id=f"{case}-torchscript"))
        marks = () if case in FAST_DYNAMO else (pytest.mark.slow,)
        params.append(pytest.param(case, True, id=f"{case}-dynamo", marks=marks))
    return params


@pytest.mark.parametrize(("case", "dynamo"), _params())
def test_gate_found_and_canonicalised(case: str, dynamo: bool) -> None:
    model = exported(case, dynamo)
    result = fuse_model(model, rules=SE_GATE_RULES)
    report = result.report
    assert report["blocks_found"] == {CASES[case][1]: 1}
    onnx.checker.check_model(result.model)
    ops = [n.op_type for n in result.model.graph.node]
    leftover = NON_CANONICAL & set(ops)
    if case == "eca":  # Conv1d over channels keeps the two Reshapes around it, nothing else
        assert ops.count("Reshape") == 2 and leftover == {"Reshape"}
    else:
        assert not leftover, f"non-canonical ops left: {leftover}"
    pools = [op for op in ops if op in ("ReduceMean", "ReduceMax", "AveragePool")]
    assert len(pools) == (2 if case in ("cbam_channel", "sle") else 1)
    assert ops.count("Mul") >= 1 and report["nodes_after"] <= report["nodes_before"]
    assert report["self_check"]["max_rel_diff"] <= 1e-5
    entry = report["rules"][0]
    assert entry["rule"] == "se_gate" and entry["reverted"] == 0
    # graph I/O untouched
    assert [i.name for i in result.model.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]


def test_canonical_pool_is_reduce_mean_keepdims() -> None:
    result = fuse_model(exported("linear_view_expand", False), rules=SE_GATE_RULES)
    pools = [n for n in result.model.graph.node if n.op_type == "ReduceMean"]
    assert len(pools) == 1
    assert [a.i for a in pools[0].attribute if a.name == "keepdims"] == [1]
    axes = next(i for i in result.model.graph.initializer if i.name == pools[0].input[1])
    assert onnx.numpy_helper.to_array(axes).tolist() == [2, 3]


def test_opset13_axes_attribute() -> None:
    model = export(Host(LinearSE(16)), opset=13)
    result = fuse_model(model, rules=SE_GATE_RULES)
    assert result.report["blocks_found"] == {"se": 1}
    pool = next(n for n in result.model.graph.node if n.op_type == "ReduceMean")
    assert len(pool.input) == 1
    assert [list(a.ints) for a in pool.attribute if a.name == "axes"] == [[2, 3]]
    onnx.checker.check_model(result.model)


def test_gate_mul_downstream_finds_the_gate() -> None:
    from sase_deploy.rewrite.gate_analysis import gate_mul_downstream
    from sase_deploy.rewrite.graph_utils import import_graph

    graph = import_graph(exported("torchvision_gap", False))
    pool = next(n for n in graph.nodes if n.op == "GlobalAveragePool")
    mul = gate_mul_downstream(pool.outputs[0])
    assert mul is not None and mul.op == "Mul"
    assert pool.inputs[0] in mul.inputs  # the gate scales the very map it pooled
    head = next(n for n in graph.nodes if n.op == "Conv" and n.outputs[0] in graph.outputs)
    assert gate_mul_downstream(head.outputs[0]) is None  # the network output feeds no gate


def test_gemm_becomes_conv_with_folded_bn() -> None:
    result = fuse_model(exported("linear_bn1d", False), rules=SE_GATE_RULES)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Conv") == 4 and "Gemm" not in ops and "BatchNormalization" not in ops


# ---------------------------------------------------------------- near misses (hand-built)

C, H = 8, 6


def _vi(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _const(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
    outputs: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "near_miss", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _se_nodes(w1: str = "w1") -> list[onnx.NodeProto]:
    return [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Conv", ["p", w1], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["g"]),
    ]


def _declines(model: onnx.ModelProto) -> tuple[dict[str, int], list[str]]:
    report = fuse_model(model, rules=SE_GATE_RULES).report
    entry = report["rules"][0]
    return report["blocks_found"], [d["reason"] for d in entry["declines"]]


def test_hand_built_se_fires() -> None:
    model = _model(
        [*_se_nodes(), helper.make_node("Mul", ["x", "g"], ["y"])],
        [_vi("x", [1, C, H, H])],
        [_const("w1", (2, C, 1, 1)), _const("w2", (C, 2, 1, 1), 1)],
        [_vi("y", [1, C, H, H])],
    )
    found, reasons = _declines(model)
    assert found == {"se": 1} and reasons == []


def test_declines_non_constant_weight() -> None:
    model = _model(
        [*_se_nodes(), helper.make_node("Mul", ["x", "g"], ["y"])],
        [_vi("x", [1, C, H, H]), _vi("w1", [2, C, 1, 1])],
        [_const("w2", (C, 2, 1, 1), 1)],
        [_vi("y", [1, C, H, H])],
    )
    found, reasons = _declines(model)
    assert found == {}
    assert any("non-constant weight" in r or "graph input" in r for r in reasons), reasons


def test_declines_spatial_multiplier() -> None:
    # the multiplier mixes the pooled vector with a 3x3 conv of the map: not a channel gate
    nodes = [
        *_se_nodes(),
        helper.make_node("Conv", ["x", "w3"], ["sp"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["g", "sp"], ["m"]),
        helper.make_node("Mul", ["x", "m"], ["y"]),
    ]
    model = _model(
        nodes,
        [_vi("x", [1, C, H, H])],
        [_const("w1", (2, C, 1, 1)), _const("w2", (C, 2, 1, 1), 1), _const("w3", (C, C, 3, 3), 2)],
        [_vi("y", [1, C, H, H])],
    )
    found, reasons = _declines(model)
    assert found == {}
    assert any("spatial tensor" in r for r in reasons), reasons


def test_declines_outer_product_with_mask() -> None:
    # SASE/SLIM modulation: a C-vector from pooled stats times a 1-channel spatial mask
    nodes = [
        *_se_nodes(),
        helper.make_node("Conv", ["x", "wm"], ["ml"]),
        helper.make_node("Sigmoid", ["ml"], ["mask"]),
        helper.make_node("Mul", ["mask", "g"], ["y"]),
    ]
    model = _model(
        nodes,
        [_vi("x", [1, C, H, H])],
        [_const("w1", (2, C, 1, 1)), _const("w2", (C, 2, 1, 1), 1), _const("wm", (1, C, 1, 1), 2)],
        [_vi("y", [1, C, H, H])],
    )
    found, reasons = _declines(model)
    assert found == {}
    assert any("outer product" in r for r in reasons), reasons


def test_declines_reduction_over_channels() -> None:
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["p"], keepdims=1),
        helper.make_node("Sigmoid", ["p"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    axes = onnx.numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")
    model = _model(nodes, [_vi("x", [1, C, H, H])], [axes], [_vi("y", [1, C, H, H])])
    found, reasons = _declines(model)
    assert found == {}
    assert any("does not reduce exactly H and W" in r for r in reasons), reasons


def test_declines_gate_tensor_used_elsewhere() -> None:
    model = _model(
        [*_se_nodes(), helper.make_node("Mul", ["x", "g"], ["y"])],
        [_vi("x", [1, C, H, H])],
        [_const("w1", (2, C, 1, 1)), _const("w2", (C, 2, 1, 1), 1)],
        [_vi("y", [1, C, H, H]), _vi("h", [1, 2, 1, 1])],
    )
    found, reasons = _declines(model)
    assert found == {}
    assert any("graph output" in r or "used outside" in r for r in reasons), reasons


def test_plain_products_are_not_reported() -> None:
    # SiLU on a map (x * sigmoid(x)) reads no pooled statistics: not even a near miss
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    model = _model(nodes, [_vi("x", [1, C, H, H])], [], [_vi("y", [1, C, H, H])])
    found, reasons = _declines(model)
    assert found == {} and reasons == []


def test_dynamic_batch_shape_chains_disappear() -> None:
    # view(b, c) with a symbolic batch exports Shape -> Gather -> Unsqueeze -> Concat chains
    import io

    import torch
    from rewrite_blocks import randomise

    module = randomise(Host(LinearSE(16, bn=True)))
    buf = io.BytesIO()
    torch.onnx.export(
        module, (torch.randn(2, 3, 16, 16),), buf, dynamo=False, opset_version=18,
        input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
    )  # fmt: skip
    model = onnx.load_from_string(buf.getvalue())
    assert {"Shape", "Gather", "Concat"} <= {n.op_type for n in model.graph.node}
    result = fuse_model(model, rules=SE_GATE_RULES)
    assert result.report["blocks_found"] == {"se": 1}
    ops = {n.op_type for n in result.model.graph.node}
    assert ops == {"Conv", "Relu", "ReduceMean", "Sigmoid", "Mul"}
    assert result.model.graph.input[0].type == model.graph.input[0].type  # batch stays symbolic
