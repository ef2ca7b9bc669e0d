"""A user's own model through `deploy` and `compare`: a `module:factory` the registry does not
know (the README's examples/my_se_net.py), with torchvision-style SE blocks and random weights,
given its inputs on the command line or in the deploy TOML; a two-input model too."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import onnx
import pytest

FAST = ("--runs", "2", "--warmup", "1", "--batch", "1,2")
MODULE = "user_se_net_models"  # unique: the factory module is imported once per process

ROOT = Path(__file__).resolve().parents[1]
# The README's example network (a torchvision-style SE block), plus a two-input model.
USER_MODULE = (ROOT / "examples" / "my_se_net.py").read_text() + textwrap.dedent(
    """

    class TwoInputs(nn.Module):
        \"\"\"An image and a vector of metadata.\"\"\"

        def __init__(self):
            super().__init__()
            self.image = SmallSENet(width=16)
            self.meta = nn.Linear(5, 10)

        def forward(self, image, meta):
            return self.image(image) + self.meta(meta)


    def small(classes=10):
        return SmallSENet(classes, width=16)


    def two_inputs():
        return TwoInputs()
    """
)


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the user's module, made the working directory (as a user runs it)."""
    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _candidates(doc: dict) -> dict[tuple[str, str], dict]:
    return {(c["kind"], c["precision"]): c for c in doc["candidates"]}


@pytest.fixture(scope="module")
def se_net_deploy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The user's SE net deployed once with --triton from the folder holding its module, as a
    user runs it: (that folder, the model's entry in deploy's --json summary)."""
    import contextlib
    import io

    from sase_deploy.cli import main

    folder = tmp_path_factory.mktemp("user")
    (folder / f"{MODULE}.py").write_text(USER_MODULE)
    args = ["deploy", f"{MODULE}:small", "--input-shape", "1x3x16x16", "-o", "out", "--triton",
            *FAST, "--json"]  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        pytest.raises(SystemExit) as exc,
    ):
        patch.chdir(folder)
        main(args)
    assert exc.value.code == 0, err.getvalue()
    return folder, json.loads(out.getvalue())["models"][0]


@pytest.mark.slow
def test_deploy_user_module_with_se_block(
    se_net_deploy: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    user_dir, summary = se_net_deploy
    assert summary["verdict"] == "pass"
    assert any("int8 calibrated on random inputs (no --data)" in n for n in summary["notes"])
    doc = json.loads((user_dir / "out" / "report.json").read_text())
    rows = _candidates(doc)
    for precision in ("fp32", "fp16", "int8"):
        assert rows["onnx", precision]["status"] == "pass"
    assert doc["model"]["inputs"][0]["shape"] == ["batch", 3, 16, 16]
    fusion = json.loads((user_dir / "out" / "export" / "small.manifest.json").read_text())
    assert fusion["fusion"]["report"]["blocks_found"] == {"se": 2}
    # dynamic batch by default: the accuracy batch (2) and batch-1 latency both ran
    assert [r["batch"] for r in rows["onnx", "fp32"]["latency"]] == [1, 2]

    # Triton gets what stock Triton loads
    configs = sorted((user_dir / "out" / "triton").glob("*/config.pbtxt"))
    assert [p.parent.name for p in configs] == ["small_fp16_onnx", "small_int8_onnx", "small_onnx"]
    assert all('platform: "onnxruntime_onnx"' in p.read_text() for p in configs)
    assert any(n.startswith("triton: wrote out/triton (") for n in summary["notes"])

    # compare against PyTorch without --input-shape: the shapes come from the export
    monkeypatch.chdir(user_dir)
    compared = run_cli(
        "compare", f"{MODULE}:small", "out/calibration/small.int8.onnx", *FAST, "--json"
    )
    assert compared.code == 0, compared.stderr
    assert compared.json()["verdict"] == "pass"


@pytest.mark.slow
@pytest.mark.rtx
def test_user_module_engines_are_built_and_left_out_of_triton(
    se_net_deploy: tuple[Path, dict],
) -> None:
    """With TensorRT-RTX installed, each precision gets an engine; the Triton repository names
    them as left out (stock Triton's tensorrt_plan backend cannot load them)."""
    user_dir, summary = se_net_deploy
    rows = _candidates(json.loads((user_dir / "out" / "report.json").read_text()))
    for precision in ("fp32", "fp16", "int8"):
        assert rows["engine", precision]["backend"] == "tensorrt-rtx"
    assert (
        "triton: left out rtx/small.fp32.engine, rtx/small.fp16.engine, rtx/small.int8.engine: "
        "TensorRT-RTX engines, which stock Triton's tensorrt_plan backend cannot load"
    ) in " ".join(summary["notes"])


@pytest.mark.slow
def test_deploy_two_input_model(user_dir: Path, run_cli) -> None:
    result = run_cli(
        "deploy", f"{MODULE}:two_inputs", "--input-shape", "1x3x16x16", "--input-shape", "1x5",
        "--input-name", "image", "--input-name", "meta", "--output-name", "logits",
        "-o", "out", *FAST, "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    doc = json.loads((user_dir / "out" / "report.json").read_text())
    assert [i["name"] for i in doc["model"]["inputs"]] == ["image", "meta"]
    assert doc["model"]["outputs"] == ["logits"]
    assert {c["precision"] for c in doc["candidates"] if c["status"] == "pass"} == {
        "fp32", "fp16", "int8"
    }  # fmt: skip
    model = onnx.load(user_dir / "out" / "export" / "two_inputs.onnx")
    assert [i.name for i in model.graph.input] == ["image", "meta"]

    # the same inputs given explicitly to compare, with a fixed-batch check of the names
    compared = run_cli(
        "compare", f"{MODULE}:two_inputs", "out/export/two_inputs.onnx",
        "--input-shape", "1x3x16x16", "--input-shape", "1x5", "--input-name", "image",
        "--input-name", "meta", "--output-name", "logits", *FAST,
    )  # fmt: skip
    assert compared.code == 0, compared.stderr


@pytest.mark.slow
def test_deploy_config_takes_user_model_keys(user_dir: Path, run_cli) -> None:
    (user_dir / "deploy.toml").write_text(
        textwrap.dedent(
            f"""
            output = "out"
            targets = []
            precisions = ["fp32", "fp16"]
            [compare]
            runs = 2
            warmup = 1
            [[models]]
            name = "{MODULE}:small"
            input_shape = "2x3x16x16"
            input_name = "pixels"
            dynamic_batch = false
            model_args = {{ classes = 7 }}
            """
        )
    )
    result = run_cli("deploy", "--config", "deploy.toml", "--json")
    assert result.code == 0, result.stderr
    model = onnx.load(user_dir / "out" / "export" / "small.onnx")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "pixels" and dims == [2, 3, 16, 16]  # static batch
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 7


def test_deploy_user_module_without_shape_says_how(user_dir: Path, run_cli) -> None:
    result = run_cli("deploy", f"{MODULE}:small", "-o", "out")
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: MODEL '{MODULE}:small' has no registered input shapes; pass --input-shape "
        "once per input, e.g. --input-shape 1x3x224x224"
    ]
    assert not (user_dir / "out").exists()


def test_deploy_config_rejects_a_bad_user_key(user_dir: Path, run_cli) -> None:
    (user_dir / "deploy.toml").write_text(
        f'output = "out"\n[[models]]\nname = "{MODULE}:small"\ninput_shape = "3 by 16"\n'
    )
    result = run_cli("deploy", "--config", "deploy.toml")
    assert result.code == 2
    assert "bad --input-shape '3 by 16': write positive sizes joined by 'x'" in result.stderr
    (user_dir / "deploy.toml").write_text(
        f'output = "out"\n[[models]]\nname = "{MODULE}:small"\ndynamic_batch = "yes"\n'
    )
    result = run_cli("deploy", "--config", "deploy.toml")
    assert result.code == 2 and "'dynamic_batch' must be a boolean" in result.stderr


def test_onnx_reference_refuses_input_shapes(tmp_path: Path, run_cli) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx_file = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), onnx_file)
    result = run_cli("compare", str(onnx_file), str(onnx_file), "--input-shape", "1x3x8x8")
    assert result.code == 2
    assert "an ONNX reference carries its input shapes and names; drop --input-shape" in (
        result.stderr
    )


@pytest.mark.slow
def test_deploy_user_module_with_its_own_data(user_dir: Path, run_cli) -> None:
    """--data for a user model: INT8 calibrates on it (no random-input note) and the
    comparison runs on it, labels included, so accuracy is judged."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.savez(user_dir / "data.npz", x=x, y=rng.integers(0, 10, 40))
    result = run_cli(
        "deploy", f"{MODULE}:small", "--input-shape", "1x3x16x16", "--data", "data.npz",
        "--precisions", "fp32,int8", "-o", "out", *FAST, "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    notes = result.json()["models"][0]["notes"]
    assert not any("random inputs" in n for n in notes)
    assert "compared on the calibration data (--data); pass --eval-data for held-out" in notes
    doc = json.loads((user_dir / "out" / "report.json").read_text())
    assert doc["data"]["labels"] is True and doc["data"]["samples"] == 40
    calib = json.loads((user_dir / "out" / "calibration" / "small.calib.json").read_text())
    assert "data.npz" in json.dumps(calib)
