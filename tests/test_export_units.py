"""Unit tests of the export stage's parts: parsing, lowering exactness, graph inspection."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from sase_deploy.errors import UserError
from sase_deploy.export import export_model
from sase_deploy.export.exporters import Exporter
from sase_deploy.export.graph import random_nodes
from sase_deploy.export.lowering import (
    LowerUnevenAdaptivePools,
    lower_for_export,
    record_pool_inputs,
)
from sase_deploy.graph_io import name_nodes
from sase_deploy.models.pooling import ExportableAdaptiveAvgPool2d
from sase_deploy.models.source import parse_model_args, parse_shape


def test_parse_shape():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape(" 2X8 ") == (2, 8)
    for bad in ("", "1x", "x3", "1x0x4", "1x-3", "a", "1.5x2"):
        with pytest.raises(UserError, match="bad --input-shape"):
            parse_shape(bad)


def test_parse_model_args_takes_literals_and_strings():
    assert parse_model_args(["noise=input", "width=8", "scale=0.5", "flag=True", "s=seed:3"]) == {
        "noise": "input",
        "width": 8,
        "scale": 0.5,
        "flag": True,
        "s": "seed:3",
    }
    with pytest.raises(UserError, match="key=value"):
        parse_model_args(["novalue"])


class _Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.even = nn.AdaptiveAvgPool2d(7)  # 14 -> 7: even bins, left to the exporter
        self.four = nn.AdaptiveAvgPool2d(4)  # 14 -> 4: uneven
        self.rect = nn.AdaptiveAvgPool2d((2, 3))  # 14 x 14 -> 2 x 3: uneven in width
        self.one = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [p(x).flatten(1) for p in (self.even, self.four, self.rect, self.one)]
        return torch.cat(parts, dim=1)


@pytest.mark.parametrize("size", [7, 14, 9])
def test_uneven_pool_lowering_is_exact_and_leaves_the_original(size: int):
    model = _Pools().eval()
    x = torch.randn(2, 5, size, size, dtype=torch.float64)
    with record_pool_inputs(model) as seen, torch.no_grad():
        want = model(x)
    lowered, done = lower_for_export(model, seen)
    uneven = {"even": size % 7, "four": size % 4, "rect": size % 2 or size % 3, "one": 0}
    assert {d.module for d in done} == {name for name, rest in uneven.items() if rest}
    for name, rest in uneven.items():
        kind = ExportableAdaptiveAvgPool2d if rest else nn.AdaptiveAvgPool2d
        assert isinstance(getattr(lowered, name), kind)
        assert isinstance(getattr(model, name), nn.AdaptiveAvgPool2d)  # original untouched
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), want, rtol=0, atol=1e-12)
    assert not model._forward_pre_hooks and not model.four._forward_pre_hooks


def test_nothing_to_lower_returns_the_model_itself():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)).eval()
    with record_pool_inputs(model) as seen, torch.no_grad():
        model(torch.randn(1, 3, 9, 9))
    assert lower_for_export(model, seen) == (model, [])


class _Squeeze(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 3)  # a functional call inside a submodule


class _FunctionalPools(nn.Module):
    """F.adaptive_avg_pool2d in forward, even and uneven, plus a pool module reused at two
    sizes (not swappable: the function mode lowers each of its uneven calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.squeeze = _Squeeze()
        self.shared = nn.AdaptiveAvgPool2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        parts = [
            F.adaptive_avg_pool2d(x, (3, 3)),  # 8 -> 3: uneven
            F.adaptive_avg_pool2d(x, 4),  # 8 -> 4: even, left to the exporter
            F.adaptive_avg_pool2d(x, output_size=(None, 3)),  # keeps the height, uneven width
            self.squeeze(x),
            self.shared(x),  # 8 -> 3: uneven
            self.shared(x[..., :6, :6]),  # 6 -> 3: even
        ]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


def test_functional_uneven_pools_are_lowered_exactly_and_leave_the_original():
    model = _FunctionalPools().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with record_pool_inputs(model) as seen, torch.no_grad():
        want = model(x)
    lowered, done = lower_for_export(model, seen)
    assert sorted((d.module, d.original) for d in done) == [
        ("", "F.adaptive_avg_pool2d(3x3) in forward"),
        ("", "F.adaptive_avg_pool2d(8x3) in forward"),
        ("shared", "AdaptiveAvgPool2d(3x3)"),
        ("squeeze", "F.adaptive_avg_pool2d(3x3) in forward"),
    ]
    assert lowered is not model and isinstance(lowered.shared, nn.AdaptiveAvgPool2d)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), want, rtol=0, atol=1e-12)
        # the copy really runs the matrix pools: the uneven ATen op is never reached
        with torch.autograd.profiler.profile() as prof:
            lowered(x)
    calls = [e.key for e in prof.key_averages()]
    assert "aten::_adaptive_avg_pool2d" in calls  # the even 8 -> 4 and 6 -> 3 pools
    assert "aten::matmul" in calls
    assert "forward" not in vars(model)  # the original keeps its class forward, no hooks
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_pool_mode_only_rewrites_uneven_bins():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with LowerUnevenAdaptivePools():
        uneven = F.adaptive_avg_pool2d(x, (3, 5))
    torch.testing.assert_close(uneven, F.adaptive_avg_pool2d(x, (3, 5)), rtol=0, atol=1e-12)
    with torch.autograd.profiler.profile() as prof, LowerUnevenAdaptivePools():
        F.adaptive_avg_pool2d(x, 4)
    assert "aten::_adaptive_avg_pool2d" in [e.key for e in prof.key_averages()]


class _FunctionalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.conv(x), (3, 3))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_functional_uneven_pool_exports_with_either_exporter(exporter: Exporter, tmp_path: Path):
    """Unlowered, dynamo emits ~20 Gathers and a GatherND and TorchScript refuses the call."""
    torch.manual_seed(0)
    result = export_model(
        _FunctionalPool().eval(),
        tmp_path / "p.onnx",
        input_shapes=[(1, 3, 8, 8)],
        exporter=exporter,
        dynamic_batch=True,
        fuse=False,
    )
    manifest = result.manifest
    assert manifest.exporter == exporter
    assert [(e["module"], e["original"]) for e in manifest.lowerings] == [
        ("", "F.adaptive_avg_pool2d(3x3) in forward")
    ]
    ops = {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    assert ops == {"Conv", "MatMul"}
    assert [run["batch"] for run in manifest.parity["runs"]] == [1, 4]
    assert manifest.parity["worst_rel_max_abs"] <= 1e-5


def _graph_with(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_random_nodes_are_found_in_subgraphs():
    branch = helper.make_graph(
        [helper.make_node("RandomNormalLike", ["x"], ["r"], name="noise")],
        "then",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1])],
    )
    keep = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["k"])],
        "else",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])],
    )
    cond = helper.make_node("Cast", ["x"], ["c"], to=TensorProto.BOOL)
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=keep)
    model = _graph_with([cond, node])
    assert random_nodes(model) == ["RandomNormalLike 'noise'"]
    assert random_nodes(_graph_with([helper.make_node("Relu", ["x"], ["y"])])) == []


def test_name_nodes_numbers_in_graph_order_and_drops_doc_strings():
    relu = helper.make_node("Relu", ["x"], ["a"], name="/some/torch/path", doc_string="trace")
    neg = helper.make_node("Neg", ["a"], ["y"], name="whatever")
    model = name_nodes(_graph_with([relu, neg]))
    assert [(n.name, n.doc_string) for n in model.graph.node] == [("Relu_0", ""), ("Neg_1", "")]


def test_parity_falls_back_to_the_float64_noise_floor_and_still_catches_a_wrong_model(
    tmp_path: Path,
) -> None:
    """With a tolerance no float32 backend can meet (0), the bound becomes PyTorch's own float32
    error against float64 (x 2): the faithful export passes on it, a perturbed one does not."""
    from sase_deploy.export.parity import NOISE_FLOOR_FACTOR, check_parity
    from sase_deploy.models.spec import InputSpec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    inputs = (InputSpec("x", (1, 3, 12, 12)),)
    faithful = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 12, 12),), str(faithful), dynamo=False,
                      input_names=["x"], output_names=["y"])  # fmt: skip
    report = check_parity(model, faithful, inputs, ["y"], batches=[1], tolerance=0.0)
    assert report.noise_floor is not None and report.noise_floor > 0
    assert report.effective_tolerance == NOISE_FLOOR_FACTOR * report.noise_floor
    assert report.passed, report.to_dict()

    wrong = tmp_path / "wrong.onnx"
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed[0].weight[0, 0, 0, 0] += 1e-3
    torch.onnx.export(perturbed, (torch.zeros(1, 3, 12, 12),), str(wrong), dynamo=False,
                      input_names=["x"], output_names=["y"])  # fmt: skip
    report = check_parity(model, wrong, inputs, ["y"], batches=[1], tolerance=0.0)
    assert not report.passed and report.worst_rel_max_abs > report.effective_tolerance
