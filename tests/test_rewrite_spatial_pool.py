"""SPSE/RGSE pooling collapse: fires on the zoo's bottlenecks, declines near misses."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from rewrite_blocks import apply_rule, compute_nodes
from torch import nn

from sase_deploy.models.spse import RGSEBottleneck, SPSEBottleneck
from sase_deploy.rewrite.rule import Decline, Match
from sase_deploy.rewrite.rules.spatial_pool import SpatialPoolCollapse
from sase_deploy.runtime.compare import compare_outputs
from sase_deploy.runtime.ort import run_onnx

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def _randomise(module: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and biases, so folding errors would show."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)
    return module.eval()


def _export(
    module: nn.Module, x: torch.Tensor, dynamo: bool, dynamic_spatial: bool = False
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "h", 3: "w"} if dynamic_spatial else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), buffer, dynamo=True, opset_version=18,
                              input_names=["x"], verbose=False)  # fmt: skip
        else:
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=18,
                              input_names=["x"], output_names=["out"],
                              dynamic_axes={"x": axes, "out": {0: "batch"}})  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


def _assert_equal_outputs(a: onnx.ModelProto, b: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    diffs = compare_outputs(run_onnx(a, feed), run_onnx(b, feed))
    assert all(d.rel_max_abs < 1e-5 and d.finite for d in diffs), diffs


def _collapsed_convs(model: onnx.ModelProto, size: int) -> list[onnx.NodeProto]:
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
        if kernel == [size, size]:
            found.append(node)
    return found


@pytest.mark.parametrize("dynamo", EXPORTERS)
# 14: uneven 4x4 and 2x2 bins (MatMul lowering); 8: even bins (AveragePool)
@pytest.mark.parametrize("size", [14, pytest.param(8, marks=pytest.mark.slow)])
def test_spse_bottleneck_collapses(dynamo: bool, size: int) -> None:
    block = _randomise(SPSEBottleneck(64, 16))
    model = _export(block, torch.randn(2, 64, size, size), dynamo)
    fused, results = apply_rule(SpatialPoolCollapse(), model)
    matches = [r for r in results if isinstance(r, Match)]
    assert [m.kind for m in matches] == ["spse"], results
    assert matches[0].block_output is not None
    onnx.checker.check_model(fused, full_check=True)
    ops = [n.op_type for n in fused.graph.node]
    assert not {"AveragePool", "MatMul", "BatchNormalization"} & set(ops), ops
    assert len(_collapsed_convs(fused, size)) == 1
    assert len(fused.graph.node) <= len(model.graph.node) - 6
    _assert_equal_outputs(model, fused, (2, 64, size, size))
    if not dynamo:  # dynamic batch survives
        _assert_equal_outputs(model, fused, (3, 64, size, size))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_rgse_bottleneck_keeps_its_pool_and_folds_bn(dynamo: bool) -> None:
    # one strided pool + one dw conv already reads the map once: collapsing would be slower
    block = _randomise(RGSEBottleneck(64, 16, spatial_kernel=2))  # layer3: 14x14 -> 2x2 -> 1x1
    model = _export(block, torch.randn(2, 64, 14, 14), dynamo)
    fused, results = apply_rule(SpatialPoolCollapse(), model)
    matches = [r for r in results if isinstance(r, Match)]
    assert [m.kind for m in matches] == ["rgse"], results
    had_bn = "BatchNormalization" in [n.op_type for n in model.graph.node]  # dynamo folds BN
    expected = "pool + depthwise conv (folded)" if had_bn else "already minimal"
    assert matches[0].captures.form.startswith(expected)
    assert matches[0].captures.canonical is not had_bn
    onnx.checker.check_model(fused, full_check=True)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("AveragePool") == 1 and "BatchNormalization" not in ops, ops
    assert not _collapsed_convs(fused, 14)
    _assert_equal_outputs(model, fused, (2, 64, 14, 14))


def test_rgse_layer4_pool_only_is_rgse_and_becomes_global_mean() -> None:
    block = _randomise(RGSEBottleneck(64, 16, spatial_kernel=None))  # layer4: AvgPool 7 on 7x7
    model = _export(block, torch.randn(2, 64, 7, 7), True)
    fused, results = apply_rule(SpatialPoolCollapse(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["rgse"], results
    ops = [n.op_type for n in fused.graph.node]
    assert "AveragePool" not in ops and "GlobalAveragePool" in ops
    _assert_equal_outputs(model, fused, (2, 64, 7, 7))


class TorchAdaptiveSPSE(nn.Module):
    """SPSE squeeze with torch's own AdaptiveAvgPool2d (dynamo lowers 14->4 to GatherND)."""

    def __init__(self, channels: int = 32, pad: int = 0) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(k) for k in (1, 2, 4))
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, k, groups=channels, padding=pad) for k in (1, 2, 4)
        )
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = sum(c(p(x)) for p, c in zip(self.pools, self.convs, strict=True))
        d = F.relu(self.bn(summed))  # type: ignore[arg-type]
        return x * torch.sigmoid(d.mean((2, 3), keepdim=True))


def test_gather_lowered_adaptive_pools_are_probed() -> None:
    model = _export(_randomise(TorchAdaptiveSPSE()), torch.randn(1, 32, 14, 14), True)
    assert {"GatherND", "Gather"} & {n.op_type for n in model.graph.node}
    fused, results = apply_rule(SpatialPoolCollapse(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["spse"], results
    onnx.checker.check_model(fused, full_check=True)
    assert len(_collapsed_convs(fused, 14)) == 1
    _assert_equal_outputs(model, fused, (1, 32, 14, 14))


class MeanSPSE(nn.Module):
    """Two global-mean scales: exportable with a dynamic spatial size."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels, 1, groups=channels)
        self.b = nn.Conv2d(channels, channels, 1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3), keepdim=True)
        return x * F.relu(self.a(m) + self.b(m))


def test_declines_dynamic_spatial_size() -> None:
    model = _export(_randomise(MeanSPSE()), torch.randn(1, 16, 8, 8), False, dynamic_spatial=True)
    fused, results = apply_rule(SpatialPoolCollapse(), model)
    assert not any(isinstance(r, Match) for r in results)
    declines = [r for r in results if isinstance(r, Decline)]
    assert len(declines) == 1 and "dynamic spatial size" in declines[0].reason
    assert compute_nodes(fused) == compute_nodes(model)  # nothing rewritten


def test_declines_padded_depthwise_conv() -> None:
    model = _export(_randomise(TorchAdaptiveSPSE(16, pad=1)), torch.randn(1, 16, 8, 8), True)
    _, results = apply_rule(SpatialPoolCollapse(), model)
    declines = [r for r in results if isinstance(r, Decline)]
    assert not any(isinstance(r, Match) for r in results)
    assert len(declines) == 1 and "pads or dilates" in declines[0].reason


class PlainSE(nn.Module):
    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 4, 1)
        self.fc2 = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * g


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_plain_se_is_not_claimed(dynamo: bool) -> None:
    model = _export(PlainSE().eval(), torch.randn(1, 32, 8, 8), dynamo)
    _, results = apply_rule(SpatialPoolCollapse(), model)
    assert results == []
