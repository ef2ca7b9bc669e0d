"""`sase-deploy build`: real TensorRT-RTX engines on this CPU, cache, bundles, errors, runners."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import DigitsExports

from sase_deploy.engines.build import build, graph_precision, plan_backend
from sase_deploy.engines.request import BuildRequest
from sase_deploy.engines.targets import get_target
from sase_deploy.errors import UserError


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sase_deploy.cli", *args], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def digits(
    tmp_path_factory: pytest.TempPathFactory, digits_exports: DigitsExports
) -> dict[str, Path]:
    """Both trained digits models, fused, dynamic batch (the session's exports: only read,
    builds write elsewhere), and 256 calibration samples."""
    from sase_deploy.models.digits_data import load_digits_split

    paths = {name: digits_exports.get(name) for name in ("se_resnet_digits", "sase_resnet_digits")}
    split = load_digits_split()
    paths["data"] = tmp_path_factory.mktemp("digits") / "calib.npz"
    np.savez(paths["data"], x=split.x_train[:256], y=split.y_train[:256])
    return paths


@pytest.mark.rtx
@pytest.mark.parametrize("model", ["se_resnet_digits", "sase_resnet_digits"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_engine_builds_on_cpu(
    digits: dict[str, Path], tmp_path: Path, model: str, precision: str
) -> None:
    request = BuildRequest(
        digits[model], "l4", tmp_path, precision=precision, data=str(digits["data"]), samples=64
    )
    result = build(request)
    assert result.backend == "tensorrt-rtx" and not result.cached
    assert result.artifact.stat().st_size == result.manifest.engine_bytes > 10_000
    types, dtypes = result.manifest.layer_types, result.manifest.tensor_dtypes
    assert types["CONVOLUTION"] >= 10
    built = onnx.load(str(result.manifest.built_onnx.path), load_external_data=False)
    assert graph_precision(built) == precision
    if precision == "int8":
        assert types["QUANTIZE"] > 0 and types["DEQUANTIZE"] > 0 and dtypes["INT8"] > 0
    elif precision == "fp16":
        assert dtypes["HALF"] > 0 and "QUANTIZE" not in types
    else:
        assert set(dtypes) <= {"FLOAT", "INT64", "INT32", "BOOL"}
    ((low, _, high),) = (result.manifest.profile or {}).values()
    assert low[0] == 1 and high[0] == 8


@pytest.mark.rtx
def test_identical_build_is_a_cache_hit_and_a_change_rebuilds(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    request = BuildRequest(digits["se_resnet_digits"], "rtx4090", tmp_path, precision="fp16")
    first = build(request)
    again = build(request)
    assert again.cached and again.artifact == first.artifact
    assert again.manifest.cache_key == first.manifest.cache_key
    other = build(BuildRequest(digits["se_resnet_digits"], "rtx4090", tmp_path, "fp16",
                               batch=(1, 4, 16)))  # fmt: skip
    assert not other.cached and other.manifest.cache_key != first.manifest.cache_key
    first.artifact.write_bytes(b"truncated")  # a damaged engine is rebuilt, never reused
    assert not build(BuildRequest(digits["se_resnet_digits"], "rtx4090", tmp_path, "fp16",
                                  batch=(1, 4, 16))).cached  # fmt: skip


@pytest.mark.rtx
def test_cli_build_json_then_cached(digits: dict[str, Path], tmp_path: Path) -> None:
    args = ["build", str(digits["se_resnet_digits"]), "--target", "a100", "-o", str(tmp_path)]
    first = _cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["command"] == "build" and summary["backend"] == "tensorrt-rtx"
    assert Path(summary["artifact"]).is_file() and summary["cached"] is False
    second = json.loads(_cli(*args, "--json").stdout)
    assert second["cached"] is True


def test_bundles_for_jetson(digits: dict[str, Path], tmp_path: Path) -> None:
    orin = build(BuildRequest(digits["se_resnet_digits"], "orin-nano", tmp_path, "int8",
                              data=str(digits["data"]), samples=64))  # fmt: skip
    assert orin.backend == "bundle"
    script = (orin.artifact / "build.sh").read_text()
    assert "--int8" in script and "--calib=" in script and "--memPoolSize=workspace:" in script
    assert "--workspace=" not in script and "--explicitBatch" not in script
    xavier = build(BuildRequest(digits["se_resnet_digits"], "xavier-nx", tmp_path, "fp16"))
    script = (xavier.artifact / "build.sh").read_text()
    assert "--fp16" in script and "--stronglyTyped" not in script
    assert subprocess.run(["bash", "-n", str(xavier.artifact / "build.sh")]).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "unknown target 'nope'; choose one of:"),
        (["--target", "h100", "--dla-core", "0"], "h100 has no DLA"),
        (["--target", "orin-nano", "--precision", "int8"], "INT8 needs calibration ranges"),
        (["--target", "l4", "--batch", "8:1:2"], "--batch '8:1:2'"),
        (["--target", "h100", "--backend", "tensorrt-rtx"], "cannot build h100 with TensorRT-RTX"),
    ],
)
def test_impossible_requests_exit_2(
    digits: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    done = _cli("build", str(digits["se_resnet_digits"]), "-o", str(tmp_path / "out"), *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert not any(p.suffix == ".engine" for p in tmp_path.rglob("*"))


@pytest.mark.rtx
def test_parser_rejection_names_the_node(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NotAnOp", ["x"], ["y"], name="mystery_0", domain="acme")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("acme", 1)]
    )
    onnx.save(model, tmp_path / "odd.onnx")
    done = _cli("build", str(tmp_path / "odd.onnx"), "--target", "l4", "-o", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "mystery_0" in done.stderr and "NotAnOp" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "o").rglob("*.engine"))


def test_plan_backend_never_uses_rtx_for_jetson_or_sm90() -> None:
    assert plan_backend(get_target("orin-agx"), "auto", None)[0] == "bundle"
    assert plan_backend(get_target("h100"), "auto", None)[0] == "bundle"
    with pytest.raises(UserError, match="TensorRT"):
        plan_backend(get_target("orin-agx"), "tensorrt-rtx", None)


def test_targets_and_doctor_json(rtx: Any) -> None:
    targets = json.loads(_cli("targets", "--json").stdout)
    names = {t["name"] for t in targets["targets"]}
    assert {"h100", "a100", "l4", "t4", "rtx4090", "rtx5090", "orin-nano", "xavier-nx"} <= names
    doctor = _cli("doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    facts = json.loads(doctor.stdout)
    assert facts["flavours"]["tensorrt-rtx"]["installed"] == rtx.installed
    assert set(facts["targets"]) == names
    if facts["gpu"] is None:
        assert any(item["what"] == "GPU" for item in facts["missing"])


@pytest.mark.tensorrt
def test_rtx_engine_runs_and_matches_onnx(
    digits: dict[str, Path], tmp_path: Path, rtx: Any
) -> None:
    from sase_deploy.engines.tensorrt import TrtRunner
    from sase_deploy.runtime.compare import compare_outputs, worst_relative
    from sase_deploy.runtime.ort import run_onnx

    local = get_target("local")
    result = build(BuildRequest(digits["se_resnet_digits"], "local", tmp_path, "fp32",
                                backend="tensorrt-rtx"))  # fmt: skip
    feed = {"x": np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)}
    with TrtRunner(result.artifact, rtx) as runner:
        got = runner.infer(feed)
    assert local.compute_capability in rtx.compute_capabilities
    assert worst_relative(compare_outputs(run_onnx(digits["se_resnet_digits"], feed), got)) < 1e-3


@pytest.mark.cuda
def test_ort_cuda_runner_uses_the_gpu(digits: dict[str, Path]) -> None:
    from sase_deploy.runtime.ort import OrtCudaRunner, run_onnx

    feed = {"x": np.zeros((2, 1, 8, 8), np.float32)}
    with OrtCudaRunner(digits["se_resnet_digits"]) as runner:
        got = runner.infer(feed)
    want = run_onnx(digits["se_resnet_digits"], feed)
    assert np.allclose(got["logits"], want["logits"], atol=1e-3)


@pytest.mark.rtx
def test_builder_rejection_says_why(digits: dict[str, Path], tmp_path: Path) -> None:
    """TensorRT-RTX cannot compile FP32 GEMM for Turing: exit 2 with the builder's reason and
    what to build instead; nothing is left in the output folder (no folder, no lock file)."""
    out = tmp_path / "out"
    done = _cli("build", str(digits["se_resnet_digits"]), "--target", "t4", "-o", str(out))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "FP32 GEMM is not supported" in lines[0] and "Turing (SM75)" in lines[0]
    assert "use --precision fp16 or a TensorRT build" in lines[0]
    assert not out.exists()
    fp16 = build(BuildRequest(digits["se_resnet_digits"], "t4", out, "fp16"))  # the way out
    assert fp16.backend == "tensorrt-rtx" and fp16.artifact.is_file()


@pytest.mark.rtx
def test_builds_leave_no_lock_files(digits: dict[str, Path], tmp_path: Path) -> None:
    request = BuildRequest(digits["se_resnet_digits"], "l4", tmp_path, "fp16")
    assert not build(request).cached and build(request).cached
    assert [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")] == []


def test_lock_is_exclusive_and_removed(tmp_path: Path) -> None:
    """Builders that find the lock file unlinked by the holder they waited for start over on a
    new one: never two inside at once, and no lock file left (also not a stale one)."""
    import threading

    from sase_deploy.engines.cache import locked

    lock = tmp_path / "out" / ".m.fp16.lock"
    lock.parent.mkdir()
    lock.touch()  # left by a builder killed with SIGKILL
    inside: list[int] = []
    overlaps: list[int] = []

    def builder() -> None:
        for _ in range(50):
            with locked(lock):
                inside.append(1)
                overlaps.append(len(inside))
                assert lock.exists()
                inside.pop()

    threads = [threading.Thread(target=builder) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 200 and set(overlaps) == {1}
    assert not lock.exists()


@pytest.mark.rtx
def test_fp16_graph_is_shared_not_copied(digits: dict[str, Path], tmp_path: Path) -> None:
    """The FP16 graph `convert` wrote beside the source, and the one built for another target,
    are hard-linked into the engine folder and the bundle, not copied; the manifest records
    the path and sha256, and a later change to the shared file is noticed."""
    import shutil

    from sase_deploy._io import sha256_model
    from sase_deploy.calibration import convert_onnx

    source = tmp_path / "src" / "m.onnx"
    source.parent.mkdir()
    shutil.copyfile(digits["se_resnet_digits"], source)
    beside = convert_onnx(source, precision="fp16").output
    assert beside == tmp_path / "src" / "m.fp16.onnx"
    out = tmp_path / "engines"
    l4, a100, h100 = (build(BuildRequest(source, t, out, "fp16")) for t in ("l4", "a100", "h100"))
    shipped = h100.artifact / "m.fp16.onnx"
    graphs = [r.manifest.built_onnx.path for r in (l4, a100, h100)]
    assert graphs == [out / t / "m.fp16.onnx" for t in ("l4", "a100", "h100")]
    assert all(g.samefile(beside) for g in [*graphs, shipped]) and beside.stat().st_nlink == 5
    assert l4.manifest.built_onnx.shared_with == beside
    assert l4.manifest.built_onnx_sha256 == sha256_model(graphs[0])
    beside.unlink()  # the engine folder keeps its name for the graph
    assert sha256_model(graphs[0]) == l4.manifest.built_onnx_sha256
    assert build(BuildRequest(source, "l4", out, "fp16")).cached
    source.write_bytes(digits["sase_resnet_digits"].read_bytes())  # another network: rebuilt
    again = build(BuildRequest(source, "l4", out, "fp16"))
    assert not again.cached and not graphs[0].samefile(graphs[1])
    assert again.manifest.built_onnx_sha256 == sha256_model(graphs[0])


@pytest.mark.rtx
@pytest.mark.parametrize("model", ["se_resnet_digits", "sase_resnet_digits"])
@pytest.mark.parametrize(("fuse", "dynamic"), [(False, False), (False, True), (True, False)])
def test_every_export_variant_builds(
    digits: dict[str, Path],
    digits_exports: DigitsExports,
    tmp_path: Path,
    model: str,
    fuse: bool,
    dynamic: bool,
) -> None:
    """Unfused and static exports too (the fused dynamic ones are built above), FP32 and INT8
    (a static export, the default fixed batch 1, calibrates at its own batch)."""
    onnx_path = digits_exports.get(model, batch=None if dynamic else 1, fuse=fuse)
    for precision in ("fp32", "int8"):
        result = build(BuildRequest(onnx_path, "l4", tmp_path / "e", precision,
                                    data=str(digits["data"]), samples=32))  # fmt: skip
        assert (result.manifest.layers or 0) > 20
        assert (result.manifest.profile is not None) == dynamic


@pytest.mark.rtx
def test_concurrent_builds_of_one_artifact(digits: dict[str, Path], tmp_path: Path) -> None:
    """Two processes asking for the same engine at once: one builds, the other waits on the
    lock and finds it cached; the engine and manifest are whole."""
    args = [sys.executable, "-m", "sase_deploy.cli", "build", str(digits["sase_resnet_digits"]),
            "--target", "l4", "--precision", "fp16", "-o", str(tmp_path), "--json"]  # fmt: skip
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate()[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["cached"] for r in results) == [False, True]
    manifest = json.loads(Path(results[0]["manifest"]).read_text())
    engine = Path(results[0]["artifact"])
    assert hashlib.sha256(engine.read_bytes()).hexdigest() == manifest["sha256"]
    assert not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.rtx
def test_engines_deserialise_without_host_code_unless_asked(rtx: Any) -> None:
    from sase_deploy.engines.tensorrt import TrtRunner, engine_runtime

    assert engine_runtime(rtx).engine_host_code_allowed is False
    assert engine_runtime(rtx, allow_host_code=True).engine_host_code_allowed is True
    assert TrtRunner(b"", rtx).allow_host_code is False


@pytest.mark.rtx
def test_calibration_of_another_model_is_refused(digits: dict[str, Path], tmp_path: Path) -> None:
    from sase_deploy.calibration import calibrate_onnx

    calibrate_onnx(digits["se_resnet_digits"], str(digits["data"]), tmp_path / "calib", samples=64)
    impostor = tmp_path / "se_resnet_digits.onnx"  # same name, other network
    impostor.write_bytes(digits["sase_resnet_digits"].read_bytes())
    request = BuildRequest(impostor, "l4", tmp_path / "out", "int8", calibration=tmp_path / "calib")
    with pytest.raises(UserError, match="calibrated on another model"):
        build(request)
    assert not (tmp_path / "out").exists()
    ok = BuildRequest(digits["se_resnet_digits"], "l4", tmp_path / "out", "int8",
                      calibration=tmp_path / "calib")  # fmt: skip
    assert build(ok).artifact.is_file()
