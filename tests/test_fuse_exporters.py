"""`fuse` finds the same blocks in a TorchScript export as in the dynamo export of a module.

Users bring ONNX files from their own scripts, often `torch.onnx.export(..., dynamo=False,
opset_version=17)`. TorchScript writes split points, reshape targets and resize sizes as
run-time `Shape` arithmetic; `fuse` canonicalises first (sase_deploy.graph_io), so the rules
see the same graph either way. Each zoo block and user-style block is exported by both
exporters at opsets 17 and 18 (TorchScript also with a dynamic batch) and fused from the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from export_user_models import LinearSE, UserStyleSlim
from torch import nn

from sase_deploy.models.blocks_fastgan import SLEBlock
from sase_deploy.models.resnets import SEBasicBlock
from sase_deploy.models.sase import SASEConv2d
from sase_deploy.models.slim import SLIMBlock
from sase_deploy.models.spse import RGSEBottleneck, SPSEBottleneck
from sase_deploy.rewrite.api import fuse_file

Block = tuple[Callable[[], nn.Module], tuple[tuple[int, ...], ...], dict[str, int]]

BLOCKS: dict[str, Block] = {
    "slim": (lambda: SLIMBlock(64, 8, 16, 32), ((2, 64, 8, 8), (2, 16, 32, 32)), {"sase": 1}),
    "sase_conv": (lambda: SASEConv2d(64, 32), ((2, 64, 12, 12),), {"sase": 1}),
    "sle": (lambda: SLEBlock(32, 16), ((2, 32, 8, 8), (2, 16, 32, 32)), {"sle": 1}),
    "se_basic": (lambda: SEBasicBlock(32, 32, reduction=4), ((2, 32, 8, 8),), {"se": 1}),
    "spse": (lambda: SPSEBottleneck(64, 16), ((2, 64, 16, 16),), {"spse": 1}),
    "rgse": (lambda: RGSEBottleneck(64, 16, 1, 2), ((2, 64, 14, 14),), {"rgse": 1}),
    "user_slim": (UserStyleSlim, ((2, 64, 8, 8), (2, 16, 32, 32)), {"sase": 1}),
    "user_se": (lambda: LinearSE(32), ((2, 32, 8, 8),), {"se": 1}),
}
# (exporter, opset, dynamic batch): TorchScript is where the shape arithmetic comes from.
EXPORTS = [
    pytest.param("dynamo", 18, False, id="dynamo18"),
    pytest.param("dynamo", 17, False, id="dynamo17", marks=pytest.mark.slow),
    pytest.param("torchscript", 17, False, id="ts17"),
    pytest.param("torchscript", 17, True, id="ts17-dynbatch"),
    pytest.param("torchscript", 18, False, id="ts18"),
]


def _module(name: str) -> nn.Module:
    torch.manual_seed(0)
    module = BLOCKS[name][0]().eval()
    with torch.no_grad():  # BN statistics that make folding them matter
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module


def _export(name: str, exporter: str, opset: int, dynamic: bool, path: Path) -> Path:
    args = tuple(torch.randn(shape) for shape in BLOCKS[name][1])
    inputs = [f"in{i}" for i in range(len(args))]
    axes = {n: {0: "batch"} for n in [*inputs, "out"]} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _module(name),
            args,
            str(path),
            dynamo=exporter == "dynamo",
            opset_version=opset,
            input_names=inputs,
            output_names=["out"],
            dynamic_axes=axes,
            external_data=False,
        )
    return path


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize(("exporter", "opset", "dynamic"), EXPORTS)
def test_same_blocks_from_every_exporter(
    name: str, exporter: str, opset: int, dynamic: bool, tmp_path: Path
) -> None:
    src = _export(name, exporter, opset, dynamic, tmp_path / "block.onnx")
    summary = fuse_file(src, tmp_path / "fused.onnx")
    assert summary["blocks_found"] == BLOCKS[name][2]
    rules = {entry["rule"]: entry for entry in summary["rules"]}
    assert all(entry["reverted"] == 0 for entry in rules.values())
    assert rules["sase_group"]["declines"] == []  # found blocks fuse; nothing else looks SASE
    fused = onnx.load(tmp_path / "fused.onnx")
    onnx.checker.check_model(fused, full_check=True)
    if dynamic:  # the batch stays dynamic through canonicalisation and the rewrite
        assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", ["user_slim", "slim", "sase_conv"])
def test_torchscript_fuses_to_the_dynamo_graph(name: str, tmp_path: Path) -> None:
    """The fused TorchScript export has the dynamo export's fused op histogram."""
    histograms = []
    for exporter, opset in (("dynamo", 18), ("torchscript", 17)):
        src = _export(name, exporter, opset, False, tmp_path / f"{exporter}.onnx")
        histograms.append(fuse_file(src, tmp_path / f"{exporter}.fused.onnx")["ops_after"])
    assert histograms[0] == histograms[1]


@pytest.mark.slow
@pytest.mark.rtx
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_fused_torchscript_file_builds_with_tensorrt_rtx(name: str, tmp_path: Path) -> None:
    """ORT accepting a fused graph is not enough (a fused dynamic-batch Resize once passed ORT
    and failed TensorRT's parser): NVIDIA's parser must take every fused dynamic-batch file and
    its builder make an engine (TensorRT-RTX builds ahead of time without a GPU)."""
    from sase_deploy.engines.build import build
    from sase_deploy.engines.request import BuildRequest

    src = _export(name, "torchscript", 17, True, tmp_path / "block.onnx")
    fuse_file(src, tmp_path / "fused.onnx")
    result = build(
        BuildRequest(
            onnx=tmp_path / "fused.onnx",
            target="rtx",
            output_dir=tmp_path / "engines",
            batch=(1, 2, 4),
        )
    )
    assert result.artifact.suffix == ".engine" and result.artifact.stat().st_size > 0
    assert (result.manifest.layers or 0) > 0


def test_fuse_text_says_why_a_sase_look_alike_is_left_alone(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A SLIM block with a Tanh in its style MLP is no block the rule can rewrite exactly; the
    plain-text output (not only --json) says so."""
    torch.manual_seed(0)
    module = UserStyleSlim(style_act="tanh").eval()
    src = tmp_path / "lookalike.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = (torch.randn(2, 64, 8, 8), torch.randn(2, 16, 32, 32))
        torch.onnx.export(module, args, str(src), dynamo=False, opset_version=17)
    result = run_cli("fuse", str(src), "-o", str(tmp_path / "out.onnx"))
    assert result.code == 0, result.stderr
    assert "blocks found: none" in result.stdout
    (line,) = [ln for ln in result.stdout.splitlines() if "looks like a SASE/SLIM block" in ln]
    assert line.startswith("    declined at ") and "4 groups of masks x style vectors" in line
    assert "Tanh" in line and "(expected" not in line
