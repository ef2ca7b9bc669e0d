"""Targets (device facts, impossible requests, local GPU) and trtexec bundles (no GPU needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sase_deploy._io import sha256_file
from sase_deploy.engines import bundle, targets
from sase_deploy.engines.bundle import write_bundle
from sase_deploy.engines.targets import (
    check_request,
    get_target,
    load_targets,
    local_target,
    parse_nvidia_smi,
)
from sase_deploy.engines.trtexec import TRTEXEC_OPTIONS, trtexec_args
from sase_deploy.errors import UserError
from sase_deploy.vocabulary import HARDWARE_PRECISIONS

# Build options each trtexec documents in its --help (samples/common/sampleOptions.cpp of
# NVIDIA/TensorRT at 8.5.2, v10.3.0 and v11.0), written out here independently of bundle.py.
_BUILD_COMMON = {
    "--onnx", "--saveEngine", "--memPoolSize", "--minShapes", "--optShapes", "--maxShapes",
    "--noTF32", "--useDLACore", "--allowGPUFallback", "--timingCacheFile", "--verbose",
    "--inputIOFormats", "--outputIOFormats", "--directIO", "--sparsity", "--safe",
    "--tacticSources", "--profilingVerbosity", "--loadEngine", "--refit",
}  # fmt: skip
TRT_8_5 = _BUILD_COMMON | {
    "--workspace", "--fp16", "--int8", "--best", "--calib", "--buildOnly", "--precisionConstraints",
    "--minShapesCalib", "--optShapesCalib", "--maxShapesCalib", "--layerPrecisions",
}  # fmt: skip
TRT_10_3 = _BUILD_COMMON | {
    "--fp16", "--bf16", "--int8", "--fp8", "--int4", "--best", "--calib", "--skipInference",
    "--stronglyTyped", "--builderOptimizationLevel", "--precisionConstraints", "--layerPrecisions",
}  # fmt: skip
TRT_11 = _BUILD_COMMON | {"--skipInference", "--stronglyTyped", "--builderOptimizationLevel"}

NAMES = {
    "h100", "a100", "l4", "t4", "rtx", "rtx4090", "rtx5090",
    "orin-agx", "orin-nx", "orin-nano", "xavier-nx",
}  # fmt: skip


def test_independent_option_lists_hold_what_changed() -> None:
    assert not {"--workspace", "--explicitBatch", "--buildOnly"} & TRT_10_3
    assert not {"--stronglyTyped", "--skipInference"} & TRT_8_5
    assert not {"--fp16", "--int8", "--calib", "--workspace"} & TRT_11
    # bundle.py's table claims nothing the documentation does not have
    assert TRTEXEC_OPTIONS["8.5"] <= TRT_8_5
    assert TRTEXEC_OPTIONS["10"] <= TRT_10_3
    assert TRTEXEC_OPTIONS["11"] <= TRT_11


# ---------------------------------------------------------------- targets


def test_every_target_loads() -> None:
    found = load_targets()
    assert set(found) == NAMES
    for name, target in found.items():
        assert target.name == name and target.title.startswith("NVIDIA")
        assert target.kind in ("datacenter", "rtx", "jetson")
        assert set(target.precisions) <= set(HARDWARE_PRECISIONS) and "fp32" in target.precisions
        assert re.fullmatch(r"SM\d{2,3}(,SM\d{2,3})*", target.sm)
        assert target.default_workspace_mb > 0 and target.memory_gb > 0
        assert (target.tensorrt is None) == (target.kind != "jetson") == (target.jetpack is None)
        json.dumps(target.to_dict())
    found.pop("h100")
    assert "h100" in load_targets()  # each call gives a fresh dict


@pytest.mark.parametrize(
    ("name", "sm", "tensorrt", "jetpack", "dla", "memory", "has", "lacks"),
    [
        ("orin-nano", "SM87", "10.3", "6.1", 0, 8, {"fp16", "int8"}, {"fp8", "fp4"}),
        ("orin-nx", "SM87", "10.3", "6.1", 2, 16, {"fp16", "int8"}, {"fp8"}),
        ("orin-agx", "SM87", "10.3", "6.1", 2, 64, {"fp16", "int8"}, {"fp8"}),
        ("xavier-nx", "SM72", "8.5", "5.1", 2, 8, {"fp16", "int8"}, {"bf16", "fp8"}),
        ("h100", "SM90", None, None, 0, 80, {"bf16", "fp8"}, {"fp4"}),
        ("a100", "SM80", None, None, 0, 80, {"bf16", "int8"}, {"fp8"}),
        ("l4", "SM89", None, None, 0, 24, {"fp8"}, {"fp4"}),
        ("t4", "SM75", None, None, 0, 16, {"fp16", "int8"}, {"bf16", "fp8"}),
        ("rtx4090", "SM89", None, None, 0, 24, {"fp8"}, {"fp4"}),
        ("rtx5090", "SM120", None, None, 0, 32, {"fp8", "fp4"}, set()),
    ],
)
def test_target_facts(
    name: str,
    sm: str,
    tensorrt: str | None,
    jetpack: str | None,
    dla: int,
    memory: float,
    has: set[str],
    lacks: set[str],
) -> None:
    target = get_target(name)
    assert (target.sm, target.tensorrt, target.jetpack) == (sm, tensorrt, jetpack)
    assert (target.dla_cores, target.memory_gb) == (dla, memory)
    assert has <= set(target.precisions) and not lacks & set(target.precisions)


def test_get_target_is_case_insensitive_and_rejects_unknown_names() -> None:
    assert get_target(" L4 ").name == "l4"
    with pytest.raises(UserError) as err:
        get_target("x")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown target 'x'; choose one of: a100, h100, l4, orin-agx")


def _one_line_error(target: str, precision: str, dla_core: int | None) -> str:
    with pytest.raises(UserError) as err:
        check_request(get_target(target), precision, dla_core)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_impossible_requests_name_alternatives() -> None:
    fp8 = _one_line_error("orin-nano", "fp8", None)
    assert fp8.startswith("orin-nano has no FP8 (SM87); use fp16 or int8")
    assert "h100" in fp8 and "l4" in fp8  # the targets that have it
    assert _one_line_error("h100", "int8", 0) == (
        "h100 has no DLA; drop --dla-core or pick orin-agx, orin-nx, xavier-nx"
    )
    assert "has no DLA" in _one_line_error("orin-nano", "fp16", 0)
    assert "use 0 or 1" in _one_line_error("orin-nx", "int8", 2)
    assert "use 0 or 1" in _one_line_error("xavier-nx", "int8", -1)
    assert "DLA runs fp16 or int8 only" in _one_line_error("orin-agx", "fp32", 0)
    assert "DLA runs fp16 or int8 only" in _one_line_error("orin-agx", "bf16", 1)
    assert _one_line_error("t4", "bf16", None).startswith("t4 has no BF16 (SM75); use fp16 or int8")
    assert "rtx5090" in _one_line_error("h100", "fp4", None)
    assert "choose one of" in _one_line_error("l4", "int4", None)


def test_possible_requests_pass() -> None:
    check_request(get_target("h100"), "fp8", None)
    check_request(get_target("xavier-nx"), "int8", 1)
    check_request(get_target("orin-nx"), "fp16", 0)
    check_request(get_target("orin-nano"), "fp32", None)


def test_local_target_is_none_without_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi to find
    start = time.perf_counter()
    assert local_target() is None
    assert time.perf_counter() - start < 2
    with pytest.raises(UserError, match="--target local: no NVIDIA GPU found"):
        get_target("local")


def test_local_target_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert kwargs["timeout"] == 5 and cmd[0] == "nvidia-smi"
        return subprocess.CompletedProcess(cmd, 0, "NVIDIA H200, 9.0, 143771 MiB\n", "")

    monkeypatch.setattr(targets.subprocess, "run", fake_run)
    gpu = local_target()
    assert gpu is not None and gpu is not get_target("local")
    assert (gpu.name, gpu.kind, gpu.title, gpu.sm) == ("local", "local", "NVIDIA H200", "SM90")
    assert gpu.memory_gb == pytest.approx(140.4) and "fp8" in gpu.precisions

    def hung(cmd: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd, 5)

    monkeypatch.setattr(targets.subprocess, "run", hung)
    assert local_target() is None


def test_parse_nvidia_smi() -> None:
    orin = parse_nvidia_smi("Orin, 8.7, 7620 MiB")
    assert orin is not None and orin.sm == "SM87" and "fp8" not in orin.precisions
    blackwell = parse_nvidia_smi("NVIDIA GeForce RTX 5090, 12.0, 32607 MiB\nNVIDIA L4, 8.9, 1 MiB")
    assert blackwell is not None and "fp4" in blackwell.precisions and "2 GPUs" in blackwell.notes
    turing = parse_nvidia_smi("Tesla T4, 7.5, 15360 MiB")
    assert turing is not None and {"bf16", "fp8"}.isdisjoint(turing.precisions)
    assert parse_nvidia_smi("") is None
    assert parse_nvidia_smi("Some GPU, [N/A], [N/A]") is None


# ---------------------------------------------------------------- trtexec arguments


def _flags(args: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in args}


def test_trtexec_args_per_version() -> None:
    shapes = {"x": ((1, 1, 8, 8), (4, 1, 8, 8), (8, 1, 8, 8))}
    implicit = trtexec_args("10.3", "m.onnx", "m.engine", "int8", shapes, 512, None, "m.cache")
    # INT8 + FP16: what is not quantised may run in FP16 (as the strongly typed INT8 graph does)
    assert {"--int8", "--fp16", "--calib=m.cache", "--skipInference"} <= set(implicit)
    assert "--minShapes=x:1x1x8x8" in implicit and "--maxShapes=x:8x1x8x8" in implicit
    assert "--memPoolSize=workspace:512" in implicit
    typed = trtexec_args("10.3", "m.onnx", "m.engine", "int8", strongly_typed_graph=True)
    assert "--stronglyTyped" in typed and not {"--int8", "--calib"} & _flags(typed)
    on_dla = trtexec_args("10.3", "m.onnx", "e", "int8", dla_core=1, strongly_typed_graph=True)
    assert {"--int8", "--fp16", "--useDLACore=1", "--allowGPUFallback"} <= set(on_dla)
    assert "--calib" not in _flags(on_dla)
    xavier = trtexec_args("8.5.2", "m.onnx", "m.engine", "fp16", dla_core=0)
    assert {"--fp16", "--buildOnly", "--useDLACore=0"} <= set(xavier)
    assert _flags(xavier) <= TRT_8_5
    assert "--skipInference" in trtexec_args("8.6", "m.onnx", "m.engine", "fp32")
    new = trtexec_args("11.1", "m.onnx", "m.engine", "fp16", shapes, strongly_typed_graph=True)
    assert _flags(new) <= TRT_11 and "--stronglyTyped" not in new  # a no-op there
    quoted = trtexec_args("10.3", "m.onnx", "e", "fp32", {"in:0": ((1, 3), (2, 3), (2, 3))})
    assert "--optShapes='in:0':2x3" in quoted


@pytest.mark.parametrize(
    ("version", "precision", "kwargs", "match"),
    [
        ("11.0", "fp16", {}, "TensorRT 11 takes fp16 from the graph"),
        ("11.0", "int8", {"calib_cache": "c"}, "calibration cache"),
        ("10.3", "int8", {}, "needs a calibration cache"),
        ("10.3", "fp16", {"calib_cache": "c"}, "calibration cache"),
        ("10.3", "fp32", {"dla_core": 0}, "DLA runs fp16 or int8 only"),
        ("10.3", "fp8", {}, "bundles build fp32, fp16, int8"),
        ("9.2", "fp32", {}, "not supported for bundles"),
        ("7.1.3", "fp32", {}, "not supported for bundles"),
        ("ten", "fp32", {}, "not like 10.3"),
        ("10.3", "fp32", {"shapes": {"x": ((2,), (1,), (2,))}}, "min <= opt <= max"),
        ("10.3", "fp32", {"shapes": {"a,b": ((1,), (1,), (1,))}}, "cannot carry"),
    ],
)
def test_trtexec_args_refuses(version: str, precision: str, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        trtexec_args(version, "m.onnx", "m.engine", precision, **kwargs)


def test_trtexec_args_checks_its_own_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TRTEXEC_OPTIONS, "10", TRTEXEC_OPTIONS["10"] - {"--skipInference"})
    with pytest.raises(ValueError, match="--skipInference"):
        trtexec_args("10.3", "m.onnx", "m.engine", "fp32")


# ---------------------------------------------------------------- bundles


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A dynamic-batch 1x1 conv with its weights in an external data file."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])
    w = numpy_helper.from_array(np.full((1, 1, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "src" / "net.onnx"
    path.parent.mkdir()
    onnx.save_model(proto, str(path), save_as_external_data=True, location="net.onnx.data",
                    size_threshold=0)  # fmt: skip
    return path


def _cache(path: Path, header: str) -> Path:
    path.write_text(f"{header}\nx: 3c010204\ny: 3c010204\n")
    return path


SHAPES = {"x": ((1, 1, 8, 8), (4, 1, 8, 8), (8, 1, 8, 8))}


def _script_flags(script: Path) -> list[str]:
    """The options build.sh hands to trtexec (its `"$TRTEXEC" \\` … `"$@"` block)."""
    text = script.read_text()
    block = text.split('"$TRTEXEC" \\\n', 1)[1].split('"$@"', 1)[0]
    return re.findall(r"(?<![\w-])(--[A-Za-z][A-Za-z0-9]*)", block)


def _check_bundle(out: Path, result: dict, documented: set[str]) -> dict:
    script = out / "build.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    flags = _script_flags(script)
    assert flags and set(flags) <= documented, set(flags) - documented
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trtexec_args"] == result["trtexec_args"]
    assert set(result["files"]) == {p.name for p in out.iterdir()}
    for name, digest in manifest["files_sha256"].items():
        assert sha256_file(out / name) == digest
    return manifest


def test_orin_nano_int8_bundle(model: Path, tmp_path: Path) -> None:
    cache = _cache(tmp_path / "src" / "net.calib.cache", "TRT-100300-EntropyCalibration2")
    out = tmp_path / "bundle"
    result = write_bundle(out, get_target("orin-nano"), model, "int8", calib_cache=cache,
                          shapes=SHAPES, manifest={"exported_from": Path("x.pt")})  # fmt: skip
    manifest = _check_bundle(out, result, TRT_10_3)
    flags = _script_flags(out / "build.sh")
    assert {"--int8", "--calib", "--skipInference"} <= set(flags)
    assert not {"--workspace", "--explicitBatch", "--buildOnly", "--stronglyTyped"} & set(flags)
    text = (out / "build.sh").read_text()
    assert "--minShapes=x:1x1x8x8" in text and "--optShapes=x:4x1x8x8" in text
    assert "/usr/src/tensorrt/bin/trtexec" in text and "set -euo pipefail" in text
    assert (out / "net.onnx.data").read_bytes() == (model.parent / "net.onnx.data").read_bytes()
    weight = onnx.load(str(out / "net.onnx")).graph.initializer[0]  # reads net.onnx.data
    assert numpy_helper.to_array(weight).item() == 0.5
    assert manifest["target"]["sm"] == "SM87" and manifest["tensorrt"]["version"] == "10.3"
    assert manifest["source"] == {"exported_from": "x.pt"} and manifest["warnings"] == []
    assert (
        "--target orin-nano --precision int8 --backend tensorrt" in manifest["sase_deploy_command"]
    )
    readme = (out / "README.md").read_text()
    assert "SM87" in readme and "TensorRT 10.3 (JetPack 6.1)" in readme


def test_xavier_nx_fp16_dla_bundle(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "xavier"
    result = write_bundle(out, get_target("xavier-nx"), model, "fp16", shapes=SHAPES,
                          dla_core=1, workspace_mb=256)  # fmt: skip
    _check_bundle(out, result, TRT_8_5)
    flags = _script_flags(out / "build.sh")
    assert {"--fp16", "--useDLACore", "--allowGPUFallback", "--buildOnly"} <= set(flags)
    assert not {"--stronglyTyped", "--skipInference", "--workspace"} & set(flags)
    assert "--memPoolSize=workspace:256" in result["trtexec_args"]
    assert any("DLA wants static shapes" in w for w in result["warnings"])


def test_h100_bundle_suits_tensorrt_10_and_11(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "h100"
    result = write_bundle(out, get_target("h100"), model, "fp16", strongly_typed_graph=True)
    _check_bundle(out, result, TRT_10_3 & TRT_11)
    assert "--stronglyTyped" in result["trtexec_args"] and result["tensorrt"] == "10.x or 11+"
    assert "10.*|1[1-9].*) ;;" in (out / "build.sh").read_text()
    assert any("'x' is dynamic but has no shapes" in w for w in result["warnings"])
    flagged = write_bundle(tmp_path / "h100b", get_target("h100"), model, "fp16")
    assert "--fp16" in flagged["trtexec_args"] and flagged["tensorrt"].startswith("10.x (11")


def test_bundle_warns_about_cache_versions(model: Path, tmp_path: Path) -> None:
    target = get_target("xavier-nx")
    ten = _cache(tmp_path / "ten.cache", "TRT-100300-EntropyCalibration2")
    found = write_bundle(tmp_path / "a", target, model, "int8", calib_cache=ten, shapes=SHAPES)[
        "warnings"
    ]
    assert any("from TensorRT 10.3, not 8.5" in w for w in found)
    odd = _cache(tmp_path / "odd.cache", "TRT-80502-EntropyCalibration2")
    found = write_bundle(tmp_path / "b", target, model, "int8", calib_cache=odd)["warnings"]
    assert any("should read TRT-8502-" in w for w in found)
    native = _cache(tmp_path / "ok.cache", "TRT-8502-EntropyCalibration2")
    ok = write_bundle(tmp_path / "c", target, model, "int8", calib_cache=native, shapes=SHAPES)
    assert ok["warnings"] == [] and "--calib=ok.cache" in ok["trtexec_args"]
    typed = write_bundle(tmp_path / "d", get_target("orin-agx"), model, "int8", calib_cache=native,
                         strongly_typed_graph=True)  # fmt: skip
    assert typed["calibration_cache"] is None and "not shipped" in typed["warnings"][0]
    assert not (tmp_path / "d" / "ok.cache").exists()


def test_bundle_refuses_impossible_requests(model: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="orin-nano has no DLA"):
        write_bundle(tmp_path / "a", get_target("orin-nano"), model, "int8", dla_core=0)
    with pytest.raises(UserError, match="no such file"):
        write_bundle(tmp_path / "b", get_target("l4"), tmp_path / "missing.onnx", "fp32")
    with pytest.raises(UserError, match="needs a calibration cache"):
        write_bundle(tmp_path / "c", get_target("orin-nx"), model, "int8")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def _fake_trtexec(folder: Path, version_code: int) -> Path:
    """A trtexec that prints its version banner and records the options it was given."""
    folder.mkdir()
    fake = folder / "trtexec"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{version_code}] # trtexec $*"\n'
        '[ "${1:-}" = --help ] && exit 0\n'
        'printf "%s\\n" "$@" > "$(dirname "$0")/args.txt"\n'
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_build_script_runs_trtexec_with_the_manifest_args(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = write_bundle(out, get_target("xavier-nx"), model, "fp16", dla_core=0, shapes=SHAPES)
    env = {**os.environ, "TRTEXEC": str(_fake_trtexec(tmp_path / "t85", 8502))}
    done = subprocess.run([str(out / "build.sh"), "--verbose"], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    recorded = (tmp_path / "t85" / "args.txt").read_text().splitlines()
    assert recorded == [*result["trtexec_args"], "--verbose"]
    env["TRTEXEC"] = str(_fake_trtexec(tmp_path / "t103", 100300))
    done = subprocess.run([str(out / "build.sh")], env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 3 and "TensorRT 8.5" in done.stderr and "10.3" in done.stderr
    assert not (tmp_path / "t103" / "args.txt").exists()


def test_build_script_without_trtexec(model: Path, tmp_path: Path) -> None:
    if shutil.which("trtexec") or Path(bundle.JETSON_TRTEXEC).exists():
        pytest.skip("trtexec is installed here")
    out = tmp_path / "bundle"
    write_bundle(out, get_target("orin-nano"), model, "fp16", shapes=SHAPES)
    done = subprocess.run([str(out / "build.sh")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "no trtexec on PATH" in done.stderr


def test_targets_lists_the_precisions_build_makes() -> None:
    """`targets` shows what `build --precision` accepts; what the hardware also runs (BF16,
    FP8, FP4) is marked as not built by sase-deploy yet, in --json and in the text."""
    from click.testing import CliRunner

    from sase_deploy.cli import cli
    from sase_deploy.vocabulary import PRECISIONS as BUILT

    done = CliRunner().invoke(cli, ["targets", "--json"])
    assert done.exit_code == 0, done.output
    rows = {row["name"]: row for row in json.loads(done.stdout)["targets"]}
    assert set(rows) == NAMES
    for name, row in rows.items():
        hardware = load_targets()[name].precisions
        assert row["precisions"] == [p for p in BUILT if p in hardware]
        assert row["not_built_yet"] == [p for p in hardware if p not in BUILT]
        assert row["hardware_precisions"] == list(hardware)
    assert rows["rtx5090"]["not_built_yet"] == ["bf16", "fp8", "fp4"]
    assert rows["t4"]["not_built_yet"] == []
    text = CliRunner().invoke(cli, ["targets"], terminal_width=200).stdout
    assert "not built by sase-deploy yet" in text and "fp4 (rtx5090)" in text
    h100 = next(line for line in text.splitlines() if "│ h100" in line)
    assert "fp32,fp16,int8" in h100 and "bf16" not in h100 and "fp8" not in h100
