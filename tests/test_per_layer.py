"""`compare --per-layer`: where an ONNX candidate's error comes from, layer by layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import copy_export
from onnx import numpy_helper

from sase_deploy.runtime.per_layer import per_layer_errors, shared_tensors

# the second Conv of the second residual stage: deep enough that INT8 noise comes before it
PERTURBED_WEIGHT = "layer2.0.conv1.weight_quantized"


@pytest.fixture(scope="module")
def digits_int8(digits_exports, tmp_path_factory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """(fused FP32 digits ONNX, its INT8 version calibrated on the shipped digits data)."""
    from sase_deploy.calibration.api import calibrate_onnx
    from sase_deploy.models.digits_data import write_digits_npz

    folder = tmp_path_factory.mktemp("per_layer")
    fp32 = copy_export(digits_exports.get("se_resnet_digits"), folder)
    data = write_digits_npz(folder / "calib.npz", "calibration")
    result = calibrate_onnx(fp32, str(data), folder, samples=128)
    return fp32, Path(result.int8_onnx)


def _perturbed(int8: Path, dest: Path) -> str:
    """A copy of `int8` with one Conv's INT8 weights negated; that Conv's output name."""
    model = onnx.load(int8)
    for init in model.graph.initializer:
        if init.name == PERTURBED_WEIGHT:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, dest)
    dq = next(n for n in model.graph.node if PERTURBED_WEIGHT in n.input)
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and dq.output[0] in n.input)
    return conv.output[0]


def _digits_batch() -> np.ndarray:
    from sase_deploy.models.digits_data import digits_eval_arrays

    return digits_eval_arrays()[0][:8]


def test_perturbed_conv_is_the_first_divergence(digits_int8, tmp_path: Path) -> None:
    fp32, int8 = digits_int8
    conv_out = _perturbed(int8, tmp_path / "bad.int8.onnx")
    found = per_layer_errors(fp32, tmp_path / "bad.int8.onnx", {"x": _digits_batch()})
    assert found.first_divergence == conv_out
    # later layers may add more in absolute terms (an SE gate fed a wrong map): the first
    # divergence, not the largest jump, is where it comes from
    assert conv_out in [layer.tensor for layer in found.worst()]
    # the unperturbed INT8 model diverges elsewhere, and much less
    clean = per_layer_errors(fp32, int8, {"x": _digits_batch()})
    assert clean.first_divergence != conv_out
    bad_jump = next(layer.jump for layer in found.layers if layer.tensor == conv_out)
    assert max(layer.jump for layer in clean.layers) < 0.2 * bad_jump


def test_shared_tensors_skip_what_the_candidate_renamed(digits_int8) -> None:
    from sase_deploy.graph_io import infer_shapes, load_onnx

    fp32, int8 = digits_int8
    ref, cand = infer_shapes(load_onnx(fp32)), infer_shapes(load_onnx(int8))
    names = shared_tensors(ref, cand)
    produced = [o for n in ref.graph.node for o in n.output]
    assert names == [n for n in produced if n in names]  # the reference's order
    assert not any("QuantizeLinear" in n for n in names)
    assert ref.graph.output[0].name in names  # the model output itself is a layer too


def test_compare_per_layer_cli(digits_int8, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    fp32, int8 = digits_int8
    conv_out = _perturbed(int8, tmp_path / "bad.int8.onnx")
    report = tmp_path / "r.json"
    args = [str(fp32), str(tmp_path / "bad.int8.onnx"), "--per-layer", "--runs", "1"]
    res = run_cli("compare", *args, "--warmup", "0", "--report", str(report), "--json")
    assert res.code == 1  # the perturbed model fails parity
    row = json.loads(res.stdout)["candidates"][0]
    assert row["per_layer"]["first_divergence"] == conv_out
    assert "layers" not in row["per_layer"]  # stdout summary: the curve is in the report file
    full = json.loads(report.read_text())["candidates"][0]["per_layer"]
    assert [r["tensor"] for r in full["layers"]].index(conv_out) > 0
    text = run_cli("compare", *args, "--warmup", "0", "--report", str(tmp_path / "r.html"))
    assert f"first divergence at {conv_out} (Conv" in text.stdout
    assert "Where the error comes from" in (tmp_path / "r.html").read_text()


def test_per_layer_needs_an_onnx_reference(digits_int8, run_cli) -> None:  # type: ignore[no-untyped-def]
    _, int8 = digits_int8
    res = run_cli("compare", "se_resnet_digits", str(int8), "--per-layer")
    assert res.code == 2
    assert "--per-layer compares layers of two ONNX files" in res.stderr


def test_failing_candidates_get_per_layer_in_deploy_mode(digits_int8, tmp_path: Path) -> None:
    """`deploy` asks for `failing`: only the candidate that fails gets the per-layer entry, the
    FP32 ONNX candidate being the one its layers are compared with."""
    from sase_deploy.models.spec import ModelOptions
    from sase_deploy.report.api import CompareOptions, compare
    from sase_deploy.report.candidates import resolve_candidates
    from sase_deploy.report.reference import load_reference

    fp32, int8 = digits_int8
    _perturbed(int8, tmp_path / "bad.int8.onnx")
    found = resolve_candidates([fp32, int8, tmp_path / "bad.int8.onnx"])
    reference = load_reference("se_resnet_digits", ModelOptions())
    options = CompareOptions(samples=64, runs=1, warmup=0, batches=(8,), per_layer="failing")
    rows = {c["name"]: c for c in compare(reference, found, options)["candidates"]}
    assert rows["bad.int8.onnx"]["status"] == "fail"
    assert rows["bad.int8.onnx"]["per_layer"]["reference"] == str(fp32)
    assert "per_layer" not in rows[int8.name] and "per_layer" not in rows[fp32.name]


def test_per_layer_ranking_puts_the_broken_conv_first(digits_int8, tmp_path: Path) -> None:
    """`calibrate --auto-keep-rank per-layer`: one comparison ranks the layers; the Conv whose
    weights were broken adds the most error at its own output and comes first."""
    from sase_deploy.calibration.sensitivity import per_layer_ranking

    fp32, int8 = digits_int8
    conv_out = _perturbed(int8, tmp_path / "bad.int8.onnx")
    reference = onnx.load(fp32)
    convs = [n.name for n in reference.graph.node if n.op_type == "Conv"]
    broken = next(n.name for n in reference.graph.node if conv_out in n.output)
    rank = per_layer_ranking(reference, {"x": _digits_batch()})
    ranked = rank(convs, onnx.load(tmp_path / "bad.int8.onnx"))
    assert ranked[0] == broken
    assert sorted(ranked) == sorted(convs)


def test_cli_auto_keep_per_layer(digits_int8, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from sase_deploy.models.digits_data import write_digits_npz

    fp32, _ = digits_int8
    data = str(write_digits_npz(tmp_path / "calib.npz", "calibration"))
    res = run_cli("calibrate", str(fp32), "--data", data, "--samples", "64", "--auto-keep", "0",
                  "--auto-keep-rank", "per-layer", "--eval-samples", "64", "-o",
                  str(tmp_path / "out"), "--json")  # fmt: skip
    assert res.code == 0, res.stderr
    auto = res.json()["auto_keep"]
    assert auto["met"] and auto["per_node"] == {}  # no evaluation per layer
    assert set(auto["kept"]) <= set(res.json()["kept_float"])
