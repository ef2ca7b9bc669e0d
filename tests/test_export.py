"""Export of users' models (module:factory, TorchScript, nn.Module): CLI, API, manifest, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sase_deploy._io import sha256_file
from sase_deploy.errors import ParityError, UserError
from sase_deploy.export import export_model
from sase_deploy.runtime.ort import run_onnx

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _user_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("factory", ["user_se_linear", "user_se_mean"])
def test_user_style_se_exports_through_module_factory(run_cli, tmp_path: Path, factory: str):
    out = tmp_path / f"{factory}.onnx"
    result = run_cli(
        "export",
        f"export_user_models:{factory}",
        "--input-shape",
        "2x3x16x16",
        "--dynamic-batch",
        "-o",
        str(out),
        "--json",
    )
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["status"] == "ok"
    assert summary["parity"]["passed"]
    assert [run["batch"] for run in summary["parity"]["runs"]] == [1, 4]
    assert summary["parity"]["worst_rel_max_abs"] <= 1e-4
    manifest = json.loads((tmp_path / f"{factory}.manifest.json").read_text())
    assert manifest["inputs"] == [
        {"name": "input_0", "shape": ["batch", 3, 16, 16], "dtype": "float32"}
    ]
    assert manifest["outputs"][0]["name"] == "output_0"
    # The dynamic batch really works in ORT at a size never traced or tested.
    got = run_onnx(out, {"input_0": np.zeros((3, 3, 16, 16), np.float32)})
    assert got["output_0"].shape == (3, 10)


def test_manifest_records_source_versions_parity_and_counts(tmp_path: Path):
    out = tmp_path / "se.onnx"
    result = export_model(
        "export_user_models:user_se_linear",
        out,
        input_shapes=[(1, 3, 8, 8)],
        model_args={"width": 8},
    )
    manifest = json.loads(result.manifest_path.read_text())
    assert result.manifest_path == tmp_path / "se.manifest.json"
    assert manifest["status"] == "ok"
    assert manifest["onnx"] == "se.onnx"
    assert manifest["sha256"] == sha256_file(out)
    assert manifest["source"] == {
        "model": "export_user_models:user_se_linear",
        "kind": "factory",
        "model_args": {"width": 8},
        "family": None,
        "task": None,
    }
    assert manifest["checkpoint"] is None and manifest["checkpoint_sha256"] is None
    assert manifest["opset"] == 18 == onnx.load(str(out)).opset_import[0].version
    assert manifest["exporter"] == "dynamo" and manifest["exporter_failures"] == []
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["onnx"] == onnx.__version__
    counts = manifest["node_counts"]
    assert counts["final"] == len(onnx.load(str(out)).graph.node)
    assert counts["exported"] >= counts["simplified"] > 0
    assert sum(manifest["ops"].values()) == counts["final"]
    run = manifest["parity"]["runs"][0]
    assert run["batch"] == 1
    assert set(run["outputs"][0]) >= {"max_abs", "mean_abs", "rel_max_abs", "scale"}
    assert set(manifest["timings_s"]) == {"load", "export", "simplify", "fuse", "check", "parity"}
    assert manifest["fusion"]["status"]  # fused, or says why not


def test_node_names_are_deterministic(tmp_path: Path):
    kwargs = {"input_shapes": [(1, 3, 8, 8)], "fuse": False}
    torch.manual_seed(0)  # the factory draws random weights: same seed, same weights
    a = export_model("export_user_models:user_se_mean", tmp_path / "a.onnx", **kwargs)
    torch.manual_seed(0)
    b = export_model("export_user_models:user_se_mean", tmp_path / "b.onnx", **kwargs)
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()
    names = [node.name for node in onnx.load(str(a.onnx_path)).graph.node]
    assert names == [
        f"{n.op_type}_{i}" for i, n in enumerate(onnx.load(str(a.onnx_path)).graph.node)
    ]


def test_uneven_adaptive_pool_is_lowered_and_exact(tmp_path: Path):
    out = tmp_path / "spse.onnx"
    result = export_model(
        "export_user_models:spse_toy",
        out,
        input_shapes=[(1, 3, 7, 7)],
        exporter="torchscript",
        dynamic_batch=True,
        fuse=False,
    )
    lowered = {entry["module"] for entry in result.manifest.lowerings}
    assert lowered == {"1.pools.1", "1.pools.2"}  # 7 -> 2 and 7 -> 4 are uneven, 7 -> 1 is not
    assert result.manifest.exporter == "torchscript"  # it refuses uneven pools unlowered
    assert "Gather" not in _ops(out) and "MatMul" in _ops(out)
    assert result.manifest.parity["worst_rel_max_abs"] <= 1e-5


def test_dynamo_failure_falls_back_to_torchscript_with_a_note(tmp_path: Path):
    result = export_model(
        "export_user_models:data_dependent",
        tmp_path / "dd.onnx",
        input_shapes=[(1, 3, 8, 8)],
        fuse=False,
    )
    manifest = result.manifest
    assert manifest.exporter == "torchscript"
    assert manifest.exporter_failures[0]["exporter"] == "dynamo"
    assert "fell back to the torchscript exporter" in manifest.notes[0]
    assert manifest.parity["passed"]


def test_explicit_dynamo_exporter_does_not_fall_back(run_cli, tmp_path: Path):
    result = run_cli(
        "export",
        "export_user_models:data_dependent",
        "--input-shape",
        "1x3x8x8",
        "--exporter",
        "dynamo",
        "-o",
        str(tmp_path / "dd.onnx"),
    )
    assert result.code == 2
    assert "dynamo: TorchExportError" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_random_noise_in_forward_is_refused(run_cli, tmp_path: Path):
    result = run_cli(
        "export",
        "export_user_models:noisy",
        "--input-shape",
        "1x3x8x8",
        "-o",
        str(tmp_path / "n.onnx"),
    )
    assert result.code == 2
    assert "draws random numbers in forward" in result.stderr
    assert "RandomNormal" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_spectral_norm_is_baked_and_glu_exports(tmp_path: Path):
    result = export_model(
        "export_user_models:spectral", tmp_path / "sn.onnx", input_shapes=[(1, 3, 8, 8)], fuse=False
    )
    model = onnx.load(str(result.onnx_path))
    assert {n.op_type for n in model.graph.node} == {"Conv", "Split", "Sigmoid", "Mul"}
    assert not any(
        "orig" in init.name or init.name.endswith("_u") for init in model.graph.initializer
    )
    assert result.manifest.parity["worst_rel_max_abs"] <= 1e-5


def test_multiple_inputs_and_outputs_with_names(tmp_path: Path):
    result = export_model(
        "export_user_models:two_inputs",
        tmp_path / "two.onnx",
        input_shapes=[(2, 8), (2, 1, 4, 4)],
        input_names=["z", "noise"],
        output_names=["img", "gated"],
        dynamic_batch=True,
        fuse=False,
    )
    manifest = result.manifest
    assert [i["name"] for i in manifest.inputs] == ["z", "noise"]
    assert [o["name"] for o in manifest.outputs] == ["img", "gated"]
    assert manifest.outputs[1]["shape"] == ["batch", 1, 4, 2]
    assert manifest.parity["passed"]


def test_torchscript_file_input(run_cli, tmp_path: Path):
    from export_user_models import user_se_linear

    scripted = torch.jit.trace(user_se_linear(width=8).eval(), torch.zeros(1, 3, 8, 8))
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    out = tmp_path / "ts.onnx"
    result = run_cli("export", str(path), "--input-shape", "1x3x8x8", "-o", str(out), "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["exporter"] == "torchscript"
    assert summary["parity"]["passed"]


def test_checkpoint_is_loaded_and_hashed(run_cli, tmp_path: Path):
    from export_user_models import user_se_linear

    trained = user_se_linear(width=8)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    ckpt = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    out = tmp_path / "ck.onnx"
    result = run_cli(
        "export",
        "export_user_models:user_se_linear",
        "--model-arg",
        "width=8",
        "-c",
        str(ckpt),
        "--input-shape",
        "1x3x8x8",
        "-o",
        str(out),
        "--json",
    )
    assert result.code == 0, result.stderr
    manifest = json.loads((tmp_path / "ck.manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == sha256_file(ckpt)
    assert manifest["checkpoint"]["prefixes_stripped"] == ["module."]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = trained.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnx(out, {"input_0": x})["output_0"], want, atol=1e-5)


def test_external_data_stays_beside_the_model(tmp_path: Path):
    result = export_model(
        "export_user_models:user_se_linear",
        tmp_path / "big.onnx",
        input_shapes=[(1, 3, 8, 8)],
        external_data_threshold=0,
        fuse=False,
    )
    assert result.manifest.external_data == "big.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.manifest.json",
        "big.onnx",
        "big.onnx.data",
    ]
    onnx.checker.check_model(str(tmp_path / "big.onnx"), full_check=True)
    locations = {
        entry.value
        for init in onnx.load(
            str(tmp_path / "big.onnx"), load_external_data=False
        ).graph.initializer
        for entry in init.external_data
        if entry.key == "location"
    }
    assert locations == {"big.onnx.data"}


def test_parity_failure_exits_1_and_keeps_a_failed_file(run_cli, tmp_path: Path):
    # The model scales by a per-call counter: export freezes the traced call's value, so ORT
    # really differs from the PyTorch reference at the default tolerance.
    out = tmp_path / "step.onnx"
    result = run_cli(
        "export",
        "export_user_models:step_counter",
        "--input-shape",
        "1x3x8x8",
        "--no-fuse",
        "-o",
        str(out),
        "--json",
    )
    assert result.code == 1
    assert result.stderr.startswith("parity failure:")
    summary = result.json()
    assert summary["status"] == "parity-failed"
    assert summary["parity"]["worst_rel_max_abs"] > 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step.parity-failed.manifest.json",
        "step.parity-failed.onnx",
    ]
    manifest = json.loads((tmp_path / "step.parity-failed.manifest.json").read_text())
    assert manifest["status"] == "parity-failed"
    assert manifest["onnx"] == "step.parity-failed.onnx"
    onnx.checker.check_model(str(tmp_path / "step.parity-failed.onnx"), full_check=True)


def test_parity_error_from_the_api_carries_the_summary(tmp_path: Path):
    with pytest.raises(ParityError) as exc:
        export_model(
            "export_user_models:step_counter",
            tmp_path / "t.onnx",
            input_shapes=[(1, 3, 8, 8)],
            fuse=False,
        )
    assert exc.value.details["status"] == "parity-failed"
    assert exc.value.details["onnx"].endswith("t.parity-failed.onnx")


def test_tolerance_is_configurable(tmp_path: Path):
    result = export_model(
        "export_user_models:step_counter",
        tmp_path / "t.onnx",
        input_shapes=[(1, 3, 8, 8)],
        fuse=False,
        tolerance=10.0,
    )
    assert result.passed and result.onnx_path.name == "t.onnx"
    assert result.manifest.parity["tolerance"] == 10.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_model"], "unknown model 'no_such_model'"),
        (["no_such_package.mod:factory", "--input-shape", "1x3x8x8"], "cannot import"),
        (["export_user_models:missing", "--input-shape", "1x3x8x8"], "has no attribute"),
        (["export_user_models:not_a_module", "--input-shape", "1x3x8x8"], "not a torch.nn.Module"),
        (["export_user_models:user_se_mean"], "pass --input-shape"),
        (["export_user_models:user_se_mean", "--input-shape", "1x3xfoo"], "bad --input-shape"),
        (
            ["export_user_models:user_se_mean", "--input-shape", "1x3x8x8", "--model-arg", "w"],
            "bad --model-arg",
        ),
        (
            [
                "export_user_models:user_se_mean",
                "--input-shape",
                "1x3x8x8",
                "--model-arg",
                "depth=3",
            ],
            "check the --model-arg names",
        ),
        (
            ["export_user_models:fixed_size", "--input-shape", "1x3x9x9"],
            "model rejected input shape 1x3x9x9",
        ),
        (
            ["export_user_models:user_se_mean", "--input-shape", "1x3x8x8", "-c", "missing.pth"],
            "checkpoint 'missing.pth' does not exist",
        ),
        (
            ["export_user_models:user_se_mean", "--input-shape", "1x3x8x8", "--opset", "9"],
            "opset 9 is not supported",
        ),
        (
            ["export_user_models:user_se_mean", "--input-shape", "1x3x8x8", "--exporter", "nope"],
            "Invalid value",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_file(run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "m.onnx"
    result = run_cli("export", *args, "-o", str(out))
    assert result.code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    assert result.stdout == ""
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_wrong_output_suffix_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match=r"must end in \.onnx"):
        export_model(
            "export_user_models:user_se_mean", tmp_path / "m.txt", input_shapes=[(1, 3, 8, 8)]
        )


def test_python_api_takes_an_nn_module_and_leaves_it_untouched(tmp_path: Path):
    from export_user_models import spectral

    model = spectral()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_model(model, tmp_path / "m.onnx", input_shapes=[(1, 3, 8, 8)], fuse=False)
    assert result.passed
    after = model.state_dict()
    assert before.keys() == after.keys()  # spectral norm still attached (weight_orig, _u, _v)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_help_lists_the_options(run_cli):
    result = run_cli("export", "--help")
    assert result.code == 0
    for option in (
        "--input-shape",
        "--dynamic-batch",
        "--opset",
        "--no-fuse",
        "--exporter",
        "--checkpoint-key",
        "--unsafe-load",
        "--tolerance",
        "--json",
    ):
        assert option in result.stdout


def test_factory_module_in_the_current_folder_is_importable(run_cli, tmp_path, monkeypatch):
    (tmp_path / "my_se_model.py").write_text(
        "import torch\n"
        "class Gate(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 4)\n"
        "    def forward(self, x):\n"
        "        w = torch.sigmoid(self.fc(x.mean((2, 3))))\n"
        "        return x * w[:, :, None, None]\n"
        "def build():\n"
        "    return Gate()\n"
    )
    monkeypatch.chdir(tmp_path)
    import sys

    path_before = list(sys.path)
    result = run_cli("export", "my_se_model:build", "--input-shape", "1x4x5x5", "-o", "g.onnx")
    assert result.code == 0, result.stderr
    assert (tmp_path / "g.onnx").is_file()
    assert sys.path == path_before
