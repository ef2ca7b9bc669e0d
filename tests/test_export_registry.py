"""Every registered model exports, passes parity on ORT CPU, and keeps its registered I/O.

One export per model (module-scoped fixture), reused by every assertion about it. The
ResNet-50s and GAN generators are marked slow (tens of seconds each on a 2-core CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from sase_deploy.export import export_model
from sase_deploy.export.graph import RANDOM_OPS
from sase_deploy.models.registry import get_model_spec, list_model_specs

FAST = {"se_resnet_digits"}
STATIC_ONLY = {"fastgan_slim_1024"}  # big: exported at batch 1 only, to keep the suite bearable
TOLERANCE = 1e-4


def _params() -> list[Any]:
    params = []
    for spec in list_model_specs():
        marks: list[Any] = [] if spec.name in FAST else [pytest.mark.slow]
        params.append(pytest.param(spec.name, marks=marks))
    return params


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return {}


def _export(cache: dict[str, dict[str, Any]], folder: Path, name: str) -> dict[str, Any]:
    if name not in cache:
        spec = get_model_spec(name)
        dynamic = spec.dynamic_batch and name not in STATIC_ONLY
        torch.manual_seed(0)  # the zoo draws random weights: make every run the same
        result = export_model(name, folder / f"{name}.onnx", dynamic_batch=dynamic)
        cache[name] = {
            "manifest": json.loads(result.manifest_path.read_text()),
            "model": onnx.load(str(result.onnx_path)),
            "dynamic": dynamic,
        }
    return cache[name]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry_exports")


def test_registry_is_not_empty():
    assert len(list_model_specs()) > 0


@pytest.mark.parametrize("name", _params())
def test_registered_model_exports_with_parity(name: str, exported, out_dir: Path):
    entry = _export(exported, out_dir, name)
    manifest, model = entry["manifest"], entry["model"]
    spec = get_model_spec(name)
    assert manifest["status"] == "ok"
    parity = manifest["parity"]
    # within 1e-4 of the output scale, or of PyTorch's own float32 noise floor (x 2) where that
    # is larger: fastgan_slim_1024 on an AVX2 CPU (float32 vs float64 3e-4, ORT vs torch 1.1e-4)
    assert parity["passed"] and parity["worst_rel_max_abs"] <= parity["effective_tolerance"]
    assert parity["tolerance"] == TOLERANCE
    if parity["worst_rel_max_abs"] > TOLERANCE:
        assert parity["noise_floor"] is not None and parity["noise_floor"] > TOLERANCE / 2
    assert all(d["finite"] for run in parity["runs"] for d in run["outputs"])
    assert [run["batch"] for run in parity["runs"]] == ([1, 4] if entry["dynamic"] else [1])
    assert [i.name for i in model.graph.input] == [i.name for i in spec.input_specs()]
    assert [o.name for o in model.graph.output] == list(spec.output_names)
    if entry["dynamic"]:
        assert all(i["shape"][0] == "batch" for i in manifest["inputs"] + manifest["outputs"])
    ops = {node.op_type for node in model.graph.node}
    assert not ops & set(RANDOM_OPS)
    assert "GatherND" not in ops  # uneven adaptive pools were lowered, not gathered
    assert manifest["node_counts"]["final"] == len(model.graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["input", "seed:3"])
def test_generator_noise_modes_export_without_random_ops(noise: str, tmp_path: Path):
    spec = get_model_spec("fastgan_sle_256")
    torch.manual_seed(0)
    result = export_model(
        "fastgan_sle_256", tmp_path / "g.onnx", model_args={"noise": noise}, fuse=False
    )
    model = onnx.load(str(result.onnx_path))
    assert not {n.op_type for n in model.graph.node} & set(RANDOM_OPS)
    names = [i.name for i in model.graph.input]
    assert names == [i.name for i in spec.input_specs(noise=noise)]
    assert (len(names) > 1) == (noise == "input")  # z plus one input per noise site
    assert result.manifest.parity["passed"]


@pytest.mark.slow
def test_generator_with_random_noise_is_refused(run_cli, tmp_path: Path):
    result = run_cli(
        "export", "fastgan_sle_256", "--model-arg", "noise=random", "-o", str(tmp_path / "g.onnx")
    )
    assert result.code == 2
    assert "draws random numbers in forward" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_registry_model_with_wrong_channel_count_is_a_user_error(run_cli, tmp_path: Path):
    result = run_cli(
        "export", "se_resnet_digits", "--input-shape", "1x3x8x8", "-o", str(tmp_path / "d.onnx")
    )
    assert result.code == 2
    assert "model rejected input shape 1x3x8x8" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_registry_model_with_too_many_shapes_is_a_user_error(run_cli, tmp_path: Path):
    result = run_cli(
        "export",
        "se_resnet_digits",
        "--input-shape",
        "1x1x8x8",
        "--input-shape",
        "1x1x8x8",
        "-o",
        str(tmp_path / "d.onnx"),
    )
    assert result.code == 2
    assert "takes 1 inputs" in result.stderr


def test_registry_model_at_another_resolution(run_cli, tmp_path: Path):
    out = tmp_path / "d.onnx"
    result = run_cli(
        "export", "se_resnet_digits", "--input-shape", "2x1x16x16", "-o", str(out), "--json"
    )
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["parity"]["runs"][0]["batch"] == 2
    manifest = json.loads((tmp_path / "d.manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [2, 1, 16, 16]
    assert manifest["source"]["family"] == get_model_spec("se_resnet_digits").family
