"""FP16 conversion: casts in the graph, float32 IO, analysed FP32 keep-list, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sase_deploy.calibration.fp16 import convert_fp16, fp16_keep_list
from sase_deploy.calibration.graph import named_copy
from sase_deploy.models.sase import SASEConv2d
from sase_deploy.runtime.ort import run_onnx

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


class _SASENet(nn.Module):
    """conv -> SASE conv (groups 4, mask normalisation) -> global mean -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.sase = SASEConv2d(16, 16, groups=4, reduction=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.sase(torch.relu(self.stem(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def sase_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fp16") / "sase.onnx"
    torch.onnx.export(
        _SASENet().eval(),
        (torch.randn(1, 3, 16, 16),),
        str(path),
        opset_version=18,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    return path


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_keep_list_finds_sase_normalisation_by_computation(sase_onnx: Path) -> None:
    model = named_copy(onnx.load(sase_onnx))
    keep = fp16_keep_list(model, reduce_limit=1 << 20)
    ops = {n.name: n.op_type for n in model.graph.node}
    kept_ops = sorted(ops[name] for name in keep)
    # one Div, the eps Add and the G-1 = 3 Adds of the mask sum
    assert kept_ops.count("Div") == 1
    assert kept_ops.count("Add") == 4
    assert all("normalisation" in why for why in keep.values())


def test_keep_list_large_reductions_and_overflowing_ranges(sase_onnx: Path) -> None:
    model = named_copy(onnx.load(sase_onnx))
    small_limit = fp16_keep_list(model, reduce_limit=16)  # the 16x16 maps exceed 16 elements
    reductions = [n for n, why in small_limit.items() if "reduction" in why]
    assert len(reductions) >= 5  # 4 group pools + the head's mean
    stem_out = next(n.output[0] for n in model.graph.node if n.op_type == "Conv")
    ranged = fp16_keep_list(model, reduce_limit=1 << 20, amax={stem_out: 1e6})
    overflow = [n for n, why in ranged.items() if "exceeds FP16" in why]
    assert len(overflow) == 1


def test_fp16_model_has_float32_io_and_keeps_listed_nodes_in_fp32(sase_onnx: Path) -> None:
    model = named_copy(onnx.load(sase_onnx))
    keep = fp16_keep_list(model, reduce_limit=16)
    converted = convert_fp16(model, keep)
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [FLOAT]
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [FLOAT]
    types = _types(converted)
    nodes = {n.name: n for n in converted.graph.node}
    for name in keep:
        assert types[nodes[name].output[0]] == FLOAT, name
    convs = [n for n in converted.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.output[0]] == FLOAT16 for n in convs)
    assert any(n.op_type == "Cast" for n in converted.graph.node)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ref, got = run_onnx(model, {"x": x})["y"], run_onnx(converted, {"x": x})["y"]
    assert got.dtype == np.float32
    assert np.abs(ref - got).max() <= 1e-2 * np.abs(ref).max()


def test_convert_cli_json_and_default_output(run_cli, sase_onnx: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("convert", str(sase_onnx), "--precision", "fp16", "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["command"] == "convert" and summary["precision"] == "fp16"
    out = Path(summary["output"])
    assert out == sase_onnx.with_name("sase.fp16.onnx") and out.is_file()
    assert any("normalisation" in why for why in summary["kept_fp32"].values())


def test_convert_auto_keep_with_data(run_cli, sase_onnx: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(2).standard_normal((32, 3, 16, 16)).astype(np.float32))
    result = run_cli(
        "convert", str(sase_onnx), "--data", str(data), "--auto-keep", "0",
        "-o", str(tmp_path / "auto.onnx"), "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    auto = result.json()["auto_keep"]
    assert auto["met"] and auto["metric"] == "top1_agreement_pct"
    assert set(auto["kept"]) <= set(result.json()["kept_fp32"])


def test_convert_errors_are_user_errors(run_cli, tmp_path: Path, sase_onnx: Path) -> None:  # type: ignore[no-untyped-def]
    missing = run_cli("convert", str(tmp_path / "nope.onnx"), "--json")
    assert missing.code == 2 and "no such ONNX file" in missing.stderr
    no_data = run_cli(
        "convert", str(sase_onnx), "--auto-keep", "0.1", "-o", str(tmp_path / "a.onnx")
    )
    assert no_data.code == 2 and "--data" in no_data.stderr
    assert not (tmp_path / "a.onnx").exists()
