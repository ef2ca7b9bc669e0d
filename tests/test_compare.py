"""`sase-deploy compare`: metrics, tolerances, verdicts, mutations it must catch, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import DigitsExports
from onnx import helper, numpy_helper

from sase_deploy.errors import UserError
from sase_deploy.report import metrics as m
from sase_deploy.report.tolerances import describe_failure, parse_tolerances, run_checks
from sase_deploy.runtime.compare import (
    compare_outputs,
    data_range,
    psnr,
    top1_agreement,
    worst_relative,
)

MODEL = "sase_resnet_digits"


# ---- metrics -------------------------------------------------------------------------------


def test_output_metrics_of_identical_and_of_perturbed_outputs() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((16, 10)).astype(np.float32)
    same = m.output_metrics("logits", ref, ref.copy())
    assert same["max_abs"] == 0 and same["rel_max_abs"] == 0 and same["nonfinite"] == 0
    assert same["cosine"] == pytest.approx(1.0)
    got = ref.copy()
    got[3, 4] += 0.5
    diff = m.output_metrics("logits", ref, got)
    assert diff["max_abs"] == pytest.approx(0.5, rel=1e-6)
    assert diff["rel_max_abs"] == pytest.approx(0.5 / np.abs(ref).max(), rel=1e-6)
    assert diff["cosine"] < 1.0
    hist = diff["error_histogram"]
    assert sum(hist["counts"]) == ref.size and len(hist["edges"]) == len(hist["counts"]) + 1
    got[0, 0] = np.inf
    assert m.output_metrics("logits", ref, got)["nonfinite"] == 1


def test_report_and_parity_share_one_error_computation() -> None:
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((4, 6)).astype(np.float16)
    got = (ref.astype(np.float64) + rng.normal(0, 1e-2, ref.shape)).astype(np.float16)
    (diff,) = compare_outputs({"y": ref}, {"y": got})
    report = m.output_metrics("y", ref, got)
    assert {k: report[k] for k in ("max_abs", "mean_abs", "scale", "rel_max_abs")} == {
        "max_abs": diff.max_abs,
        "mean_abs": diff.mean_abs,
        "scale": diff.scale,
        "rel_max_abs": diff.rel_max_abs,
    }
    assert diff.rel_max_abs == diff.max_abs / float(np.abs(ref.astype(np.float64)).max())
    got[1, 2] = np.nan
    (bad,) = compare_outputs({"y": ref}, {"y": got})
    assert not bad.finite and np.isnan(bad.max_abs) and worst_relative([diff, bad]) == np.inf
    report = m.output_metrics("y", ref, got)
    assert report["max_abs"] is None and report["rel_max_abs"] is None
    assert report["nonfinite"] == 1 and sum(report["error_histogram"]["counts"]) == ref.size - 1
    zeros = np.zeros(3, np.float32)
    (flat,) = compare_outputs({"z": zeros}, {"z": zeros + 1})
    assert flat.scale == 1e-12 and flat.rel_max_abs == 1e12


def test_non_finite_and_empty_outputs_give_valid_json() -> None:
    """A NaN candidate has no cosine (null, not 1.0); a NaN reference has no scale; an empty
    output compares as equal. The entry must serialise as strict JSON either way."""
    ref = np.ones((2, 3), np.float32)
    got = ref.copy()
    got[0, 1] = np.nan
    entry = m.output_metrics("y", ref, got)
    assert entry["cosine"] is None and entry["nonfinite"] == 1
    bad_ref = ref.copy()
    bad_ref[1, 1] = np.inf
    entry = m.output_metrics("y", bad_ref, ref)
    assert entry["scale"] is None and entry["cosine"] is None
    json.dumps(entry, allow_nan=False)
    empty = m.output_metrics("y", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    assert empty["cosine"] == 1.0 and empty["max_abs"] == 0.0
    json.dumps(empty, allow_nan=False)


def test_classification_metrics_count_agreement_and_accuracy() -> None:
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    got = np.eye(4, dtype=np.float32)[[0, 1, 3, 3]]
    labels = np.array([0, 1, 2, 0])
    out = m.classification_metrics(ref, got, labels)
    assert out["top1_agreement"] == 0.75
    assert out["reference_accuracy"] == 0.75 and out["accuracy"] == 0.5
    assert out["accuracy_drop"] == pytest.approx(0.25)


def test_psnr_and_ssim_against_their_definitions() -> None:
    rng = np.random.default_rng(1)
    ref = rng.uniform(-1, 1, (2, 3, 32, 32))
    noisy = ref + rng.normal(0, 0.01, ref.shape)
    out = m.generation_metrics(ref, noisy)
    mse = np.mean((ref - noisy) ** 2)
    span = ref.max() - ref.min()
    assert out["psnr_db"] == pytest.approx(10 * np.log10(span**2 / mse))
    assert m.generation_metrics(ref, ref)["ssim"] == pytest.approx(1.0)
    assert 0.9 < out["ssim"] < 1.0
    worse = m.generation_metrics(ref, ref + rng.normal(0, 0.2, ref.shape))
    assert worse["ssim"] < out["ssim"] and worse["psnr_db"] < out["psnr_db"]


def test_shared_psnr_and_top1_have_no_value_for_non_finite_results() -> None:
    """One definition for the report and calibration's sensitivity: NaN/Inf never scores."""
    ref = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    assert psnr(ref, ref, data_range(ref)) == float("inf")
    assert psnr(ref, ref + 0.1, data_range(ref)) == pytest.approx(10 * np.log10(25 / 0.01))
    assert psnr(ref, np.where(ref == 4.0, np.nan, ref), data_range(ref)) is None
    assert psnr(np.full_like(ref, np.nan), ref, 1.0) is None  # a NaN reference: no PSNR either
    assert psnr(ref, ref * 1e200, data_range(ref)) is None  # the squared error overflows
    got = np.array([[0.0, 1.0, 9.0], [np.nan, 4.0, 9.0]])
    assert top1_agreement(ref, got) == 0.5
    # a plain argmax picks the NaN (index 2, the reference's class): guarded, it predicts none
    assert top1_agreement(ref[[1]], np.array([[9.0, 0.0, np.nan]])) == 0.0


# ---- tolerances ----------------------------------------------------------------------------


def test_tolerance_overrides_and_bad_text() -> None:
    table = parse_tolerances(["fp16.rel=0.05", "cosine=0.5", "int8.top1=none"])
    assert table["fp16"]["rel_max_abs"] == 0.05 and table["fp32"]["rel_max_abs"] == 1e-4
    assert {t["cosine"] for t in table.values()} == {0.5}
    assert table["int8"]["top1_agreement"] is None
    for bad in ("fp64.rel=1", "rel", "speed=3", "rel=abc", "rel=inf"):
        with pytest.raises(UserError, match="--tolerance"):
            parse_tolerances([bad])


def test_checks_name_the_output_and_the_margin() -> None:
    outputs = [{"name": "logits", "nonfinite": 0, "rel_max_abs": 0.031, "cosine": 0.9999}]
    checks = run_checks({"rel_max_abs": 0.01, "cosine": 0.999}, outputs, {}, "logits")
    failed = [describe_failure(c) for c in checks if not c["passed"]]
    assert failed == ["output logits: rel_max_abs 0.031 > 0.01 (over by 0.021)"]


# ---- compare on the trained digits model ---------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, digits_exports: DigitsExports
) -> dict[str, Path]:
    """The digits model exported (the session's: fused, dynamic, trained weights; only read),
    and in this module's folder its FP16 and INT8 graphs and mutated copies."""
    from sase_deploy.calibration.api import calibrate_onnx, convert_onnx
    from sase_deploy.models.digits_data import write_digits_npz

    folder = tmp_path_factory.mktemp("compare")
    fp32 = digits_exports.get(MODEL)
    fp16 = convert_onnx(fp32, folder / f"{MODEL}.fp16.onnx", precision="fp16").output
    calib = write_digits_npz(folder / "calib.npz", "calibration")
    int8 = calibrate_onnx(fp32, str(calib), folder / "calib").int8_onnx
    return {
        "fp32": fp32,
        "fp16": fp16,
        "int8": int8,
        "perturbed": _perturbed(fp32, folder / "perturbed.onnx"),
        "overflow": _fp16_overflow(fp32, folder / "overflow.fp16.onnx"),
        "dropped": _dropped_node(fp32, folder / "dropped.onnx"),
    }


def _perturbed(src: Path, dest: Path) -> Path:
    """One convolution weight changed by 1e-4 of its range: a subtle conversion bug."""
    model = onnx.load(src)
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.05 * float(np.abs(w).max())
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, dest)
    return dest


def _fp16_overflow(src: Path, dest: Path) -> Path:
    """An activation scaled by 1e4 is cast to FP16 and back before the output (then scaled
    back): exact in FP32, Inf where |logit| > 6.55 -- what a converter does when it puts a
    half-precision boundary on a large activation."""
    model = onnx.load(src)
    out = model.graph.output[0].name
    inner = out + "_pre"
    for node in model.graph.node:
        node.output[:] = [inner if o == out else o for o in node.output]
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1e4, np.float32), "big"),
            numpy_helper.from_array(np.array(1e-4, np.float32), "small"),
        ]
    )
    # The factor 1e4 is computed from the data (x * 0 + 1e4) so that no optimiser folds the
    # two multiplications into one across the casts.
    model.graph.node.extend(
        [
            helper.make_node("Mul", [inner, "zero"], ["x_zero"]),
            helper.make_node("Add", ["x_zero", "big"], ["factor"]),
            helper.make_node("Mul", [inner, "factor"], ["x_big"]),
            helper.make_node("Cast", ["x_big"], ["h"], to=onnx.TensorProto.FLOAT16),
            helper.make_node("Cast", ["h"], ["x_back"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", ["x_back", "small"], [out]),
        ]
    )
    onnx.save(model, dest)
    return dest


def _dropped_node(src: Path, dest: Path) -> Path:
    """The last Relu removed (its input wired to its consumers): a broken rewrite."""
    model = onnx.load(src)
    relu = [n for n in model.graph.node if n.op_type == "Relu"][-1]
    for node in model.graph.node:
        node.input[:] = [relu.input[0] if i == relu.output[0] else i for i in node.input]
    model.graph.node.remove(relu)
    onnx.save(model, dest)
    return dest


def test_digits_candidates_pass_and_the_report_validates(
    artifacts: dict[str, Path], tmp_path: Path, run_cli
) -> None:
    from sase_deploy.report.schema import validate_report

    report = tmp_path / "r.json"
    names = [str(artifacts[k]) for k in ("fp32", "fp16", "int8")]
    result = run_cli("compare", MODEL, *names, "--runs", "3", "--report", str(report), "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(report.read_text())
    validate_report(doc)
    assert doc["verdict"] == "pass" and doc["data"]["labels"] is True
    assert [c["precision"] for c in doc["candidates"]] == ["fp32", "fp16", "int8"]
    for cand in doc["candidates"]:
        assert cand["status"] == "pass" and cand["metrics"]["top1_agreement"] >= 0.98
        assert {r["batch"] for r in cand["latency"]} == {1, 8}
        assert all(r["runs"] == 3 and r["p50_ms"] > 0 for r in cand["latency"])
    assert doc["reference"]["metrics"]["accuracy"] > 0.95
    assert result.json()["verdict"] == "pass"


@pytest.mark.parametrize(
    ("mutant", "expected"),
    [
        ("perturbed", "rel_max_abs"),
        ("overflow", "NaN/Inf"),
        ("dropped", "rel_max_abs"),
    ],
)
def test_compare_catches_a_broken_candidate(
    artifacts: dict[str, Path], tmp_path: Path, run_cli, mutant: str, expected: str
) -> None:
    report = tmp_path / "r.md"
    result = run_cli(
        "compare", MODEL, str(artifacts[mutant]), "--runs", "1", "--report", str(report)
    )
    assert result.code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert artifacts[mutant].name in line and "output logits" in line and expected in line
    assert "FAIL" in report.read_text()


def test_an_onnx_reference_and_fp32_candidate_match(artifacts: dict[str, Path], run_cli) -> None:
    result = run_cli(
        "compare", str(artifacts["fp32"]), str(artifacts["fp16"]), "--runs", "1", "--json"
    )
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["reference"]["backend"] == "onnxruntime-cpu"
    assert doc["model"]["task"] == "classification"


@pytest.mark.rtx
def test_an_engine_without_a_gpu_is_built_not_run(
    artifacts: dict[str, Path], tmp_path: Path, run_cli
) -> None:
    from sase_deploy.engines.build import build
    from sase_deploy.engines.request import BuildRequest
    from sase_deploy.engines.targets import local_target

    engine = build(BuildRequest(artifacts["fp32"], "rtx", tmp_path, precision="fp16")).artifact
    result = run_cli("compare", MODEL, str(engine), "--runs", "1", "--json")
    (cand,) = result.json()["candidates"]
    if local_target() is None:
        assert result.code == 0
        assert cand["status"] == "not_run" and cand["reason"] == "built, not run: no GPU"
        assert cand["latency"] == [] and cand["outputs"] == [] and cand["metrics"] == {}
        assert cand["build"]["engine_bytes"] > 10_000 and cand["build"]["layers"] > 0
    else:  # a GPU is here: the engine must run and pass
        assert cand["status"] == "pass", cand["reason"]


@pytest.mark.tensorrt
def test_engine_runs_on_the_gpu(artifacts: dict[str, Path], tmp_path: Path) -> None:
    from sase_deploy.engines.build import build
    from sase_deploy.engines.request import BuildRequest
    from sase_deploy.report.api import CompareOptions, compare
    from sase_deploy.report.candidates import resolve_candidates
    from sase_deploy.report.reference import load_reference

    engine = build(BuildRequest(artifacts["fp32"], "local", tmp_path, precision="fp16")).artifact
    doc = compare(load_reference(MODEL), resolve_candidates([engine]), CompareOptions(runs=5))
    assert doc["candidates"][0]["status"] == "pass"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope.onnx",), "does not exist"),
        (("{fp32}", "--report", "{tmp}/r.pdf"), "suffix"),
        (("{fp32}", "--tolerance", "fp16.speed=1"), "--tolerance"),
        (("{fp32}", "--batch", "0"), "--batch"),
        (("{fp32}", "--data", "{tmp}/missing.npz"), "does not exist"),
        (("{tmp}",), "expected an .onnx"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    artifacts: dict[str, Path], tmp_path: Path, run_cli, args: tuple[str, ...], message: str
) -> None:
    filled = [a.format(fp32=artifacts["fp32"], tmp=tmp_path) for a in args]
    before = sorted(tmp_path.iterdir())
    result = run_cli("compare", MODEL, *filled, "--runs", "1")
    assert result.code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert sorted(tmp_path.iterdir()) == before
