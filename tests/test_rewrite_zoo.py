"""On every zoo model the fusion pass finds exactly the SE-family blocks the PyTorch model has."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from sase_deploy.errors import ParityError
from sase_deploy.models.registry import list_model_specs
from sase_deploy.rewrite import fuse_model

FAST = {"se_resnet_digits"}


def _export_unfused(name: str, folder: Path) -> onnx.ModelProto:
    from sase_deploy.export import export_model

    path = folder / f"{name}.onnx"
    try:
        export_model(name, path, fuse=False)
    except ParityError:  # export parity is the exporter's test; fusion is checked ONNX vs ONNX
        return onnx.load(folder / f"{name}.parity-failed.onnx")
    return onnx.load(path)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(s.name, marks=() if s.name in FAST else (pytest.mark.slow,))
        for s in list_model_specs()
    ],
)
def test_zoo_blocks_found(name: str, tmp_path: Path) -> None:
    spec = next(s for s in list_model_specs() if s.name == name)
    model = _export_unfused(name, tmp_path)
    result = fuse_model(model)
    report = result.report
    assert report["blocks_found"] == dict(spec.se_blocks)
    # every SASE block fuses, and no SE/SLE/residual subgraph looks like one
    (sase,) = [entry for entry in report["rules"] if entry["rule"] == "sase_group"]
    assert sase["declines"] == []
    onnx.checker.check_model(result.model)
    check = report["self_check"]
    assert check["max_block_rel_diff"] <= 1e-5  # every rewritten block, at its own output
    # network outputs: 1e-5, or the model's own ORT noise floor where that is larger (README)
    assert check["max_rel_diff"] <= check["network_tolerance"]
    assert check["network_tolerance"] == max(1e-5, 2 * check["noise_floor"])
    assert report["nodes_after"] <= report["nodes_before"]
