"""`sase-deploy deploy`: the whole flow, stage skipping, resume, TOML matrix, Triton, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sase_deploy.report.schema import validate_report

FAST = ("--runs", "2", "--warmup", "1")
DIGITS = ("se_resnet_digits", "sase_resnet_digits")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Both digits models through a deploy.toml matrix, with a Triton repository."""
    from sase_deploy.cli import main

    folder = tmp_path_factory.mktemp("deploy")
    config = folder / "deploy.toml"
    config.write_text(
        'output = "out"\ntriton = true\n[compare]\nruns = 2\nwarmup = 1\nbatches = [1, 8]\n'
        + "".join(f'[[models]]\nname = "{name}"\n' for name in DIGITS)
    )
    out_json = folder / "stdout.json"
    with pytest.raises(SystemExit) as exc, open(out_json, "w") as sink:
        import contextlib

        with contextlib.redirect_stdout(sink):
            main(["deploy", "--config", str(config), "--json"])
    assert exc.value.code == 0
    return folder / "out", json.loads(out_json.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model", DIGITS)
def test_digits_deploy_reports_every_precision(matrix: tuple[Path, dict], model: str):
    out, _ = matrix
    doc = json.loads((out / model / "report.json").read_text())
    validate_report(doc)
    assert doc["verdict"] == "pass" and doc["data"]["labels"] is True
    onnx_rows = [c for c in doc["candidates"] if c["kind"] == "onnx"]
    assert [c["precision"] for c in onnx_rows] == ["fp32", "fp16", "int8"]
    for row in onnx_rows:
        assert row["status"] == "pass" and row["metrics"]["accuracy"] > 0.95
        assert [r["batch"] for r in row["latency"]] == [1, 8]
    for name in ("report.md", "report.html", "export", "calibration"):
        assert (out / model / name).exists(), name
    assert "<svg" in (out / model / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.rtx
@pytest.mark.parametrize("model", DIGITS)
def test_digits_deploy_builds_an_rtx_engine_per_precision(matrix: tuple[Path, dict], model: str):
    """With TensorRT-RTX installed, deploy's default target (rtx) gets an engine per precision,
    run where a GPU is, else reported as built, not run."""
    out, _ = matrix
    doc = json.loads((out / model / "report.json").read_text())
    engines = [c for c in doc["candidates"] if c["kind"] == "engine"]
    assert [c["precision"] for c in engines] == ["fp32", "fp16", "int8"]
    for row in engines:
        assert row["backend"] == "tensorrt-rtx" and row["target"] == "rtx"
        assert row["build"]["engine_bytes"] > 10_000
        if row["status"] == "not_run":
            assert row["reason"] == "built, not run: no GPU" and row["latency"] == []
    assert (out / model / "engines" / "rtx").is_dir()


@pytest.mark.slow
def test_deploy_writes_a_triton_repository(matrix: tuple[Path, dict]) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out, _ = matrix
    configs = sorted((out / "sase_resnet_digits" / "triton").glob("*/config.pbtxt"))
    platforms = set()
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        platforms.add(config.platform)
        assert config.max_batch_size == 8 and config.input[0].name == "x"
        assert list(config.input[0].dims) == [1, 8, 8]
    assert "onnxruntime_onnx" in platforms and len(configs) >= 3


@pytest.mark.slow
def test_rerun_skips_unchanged_stages_and_redoes_a_missing_one(matrix, run_cli) -> None:
    out, first = matrix
    target = out / "se_resnet_digits"
    (target / "export" / "se_resnet_digits.fp16.onnx").unlink()  # as if killed mid-stage
    result = run_cli("deploy", "se_resnet_digits", "-o", str(target), *FAST, "--json")
    assert result.code == 0, result.stderr
    stages = {s["stage"]: s["skipped"] for s in result.json()["models"][0]["stages"]}
    assert stages["export"] and stages["calibrate"] and not stages["fp16"]
    assert (target / "export" / "se_resnet_digits.fp16.onnx").is_file()
    again = run_cli("deploy", "se_resnet_digits", "-o", str(target), *FAST, "--json")
    assert all(s["skipped"] for s in again.json()["models"][0]["stages"])
    assert first["models"][0]["verdict"] == "pass"


@pytest.mark.slow
def test_generator_deploy_reports_psnr_and_shows_images(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "gan"
    result = run_cli(
        "deploy", "fastgan_slim_256", "--precisions", "fp32,fp16", "--samples", "2",
        "--batch", "1", *FAST, "-o", str(out), "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    doc = json.loads((out / "report.json").read_text())
    validate_report(doc)
    rows = {c["precision"]: c for c in doc["candidates"] if c["kind"] == "onnx"}
    assert rows["fp32"]["metrics"]["psnr_db"] > 60 and rows["fp16"]["metrics"]["psnr_db"] > 35
    assert rows["fp16"]["metrics"]["ssim"] > 0.99
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # reference, candidate, difference x 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope_net", "-o", "{tmp}/o"), "unknown model"),
        (("se_resnet_digits", "--targets", "gtx480", "-o", "{tmp}/o"), "unknown target"),
        (("se_resnet_digits", "--precisions", "fp64", "-o", "{tmp}/o"), "--precisions"),
        (("se_resnet_digits",), "-o OUT"),
        (("se_resnet_digits", "--config", "{tmp}/d.toml", "-o", "{tmp}/o"), "not both"),
        (("--config", "{tmp}/bad.toml", "-o", "{tmp}/o"), "not valid TOML"),
        (("--config", "{tmp}/empty.toml", "-o", "{tmp}/o"), "[[models]]"),
        (("se_resnet_d", "--precisions", "int8", "-o", "{tmp}/o"), "unknown model"),
        (("se_resnet_digits", "--input-shape", "1xbx8", "-o", "{tmp}/o"), "bad --input-shape"),
        (("no_such_module_xyz:make", "-o", "{tmp}/o"), "cannot import 'no_such_module_xyz'"),
        (("se_resnet_digits", "--data", "{tmp}/none.npz", "-o", "{tmp}/o"), "does not exist"),
        (("se_resnet_digits", "--tolerance", "x=1", "-o", "{tmp}/o"), "--tolerance"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, run_cli, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "d.toml").write_text('[[models]]\nname = "se_resnet_digits"\n')
    (tmp_path / "bad.toml").write_text("models = [\n")
    (tmp_path / "empty.toml").write_text('output = "x"\n')
    result = run_cli("deploy", *[a.format(tmp=tmp_path) for a in args])
    assert result.code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_without_tensorrt_rtx_deploy_says_how_to_add_engines(monkeypatch, tmp_path: Path) -> None:
    from sase_deploy.deploy import api
    from sase_deploy.deploy.state import DeployState
    from sase_deploy.engines import flavours

    missing = flavours.Flavour("tensorrt-rtx", "tensorrt_rtx", None, "not installed")
    monkeypatch.setattr(flavours, "find_flavour", lambda name: missing)
    run = api._Run(api.DeployRequest("se_resnet_digits", tmp_path), DeployState(tmp_path), print)
    assert api._default_targets(run) == ()
    assert "pip install 'sase-deploy[trt-rtx]'" in run.notes[0]
    run.request.targets = ("l4",)
    assert api._default_targets(run) == ("l4",)
