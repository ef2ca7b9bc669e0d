"""`sase-deploy triton`: model repositories whose configs Triton's own schema accepts.

Every config.pbtxt is parsed with `tritonclient.grpc.model_config_pb2` (the `triton` extra) and
compared with the ONNX graph the artifact runs. Engines are TensorRT-RTX builds on this CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import DigitsExports
from onnx import TensorProto, helper

from sase_deploy.engines.build import build
from sase_deploy.engines.request import BuildRequest
from sase_deploy.errors import UserError
from sase_deploy.serving.triton import (
    TritonModel,
    TritonTensor,
    config_pbtxt,
    default_model_name,
    triton_model_from,
    write_triton_repository,
)

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install '.[triton]'")
text_format = pytest.importorskip("google.protobuf.text_format")

ONNX_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16",
              TensorProto.INT64: "TYPE_INT64"}  # fmt: skip


@pytest.fixture(scope="module")
def exports(digits_exports: DigitsExports) -> dict[str, Path]:
    """se_resnet_digits with a dynamic batch and with the default fixed batch 1 (the session's
    exports, only read: repositories and engines are written elsewhere)."""
    return {"dynamic": digits_exports.get(), "fixed": digits_exports.get(batch=1)}


@pytest.fixture(scope="session")
def half_io(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph with float16 I/O and an int64 batch-only output (ArgMax): dtypes are read."""
    bias = helper.make_tensor("bias", TensorProto.FLOAT16, [4], np.ones(4, np.float16).tobytes(),
                              raw=True)  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "bias"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
        ],
        "half_io",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path_factory.mktemp("half_io") / "half_io.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def fp16_engine(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An FP16 TensorRT-RTX engine (profile 1:4:16): for tests marked rtx only."""
    out = tmp_path_factory.mktemp("triton_engines")
    request = BuildRequest(
        onnx=exports["dynamic"], target="l4", output_dir=out, precision="fp16",
        backend="tensorrt-rtx", batch=(1, 4, 16),
    )  # fmt: skip
    return build(request)


def _parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def _onnx_io(path: Path) -> tuple[list[Any], list[Any]]:
    """(inputs, outputs) as (name, Triton type, dims with -1 for dynamic) from the graph."""
    graph = onnx.load(path, load_external_data=False).graph

    def rows(values: Any) -> list[Any]:
        return [(v.name, ONNX_TYPES[v.type.tensor_type.elem_type],
                 [d.dim_value if d.HasField("dim_value") else -1
                  for d in v.type.tensor_type.shape.dim]) for v in values]  # fmt: skip

    return rows(graph.input), rows(graph.output)


def _io(config: Any) -> tuple[list[Any], list[Any]]:
    def rows(values: Any) -> list[Any]:
        return [(v.name, pb2.DataType.Name(v.data_type), list(v.dims)) for v in values]

    return rows(config.input), rows(config.output)


def _batched(io: list[Any]) -> list[Any]:
    return [(name, dtype, dims[1:]) for name, dtype, dims in io]


@pytest.mark.rtx
def test_engine_repository_matches_profile_and_built_onnx(fp16_engine: Any, tmp_path: Path) -> None:
    """FP16 engine: tensorrt_plan, max batch = profile max, I/O types as its built ONNX
    declares (float32: convert keeps float I/O), model.plan is the engine's bytes."""
    model = triton_model_from(fp16_engine.artifact)
    assert model.name == "se_resnet_digits_fp16_l4" and model.engine_backend == "tensorrt-rtx"
    written = write_triton_repository([model], tmp_path / "repo")
    folder = tmp_path / "repo" / model.name
    assert written == [folder / "1" / "model.plan", folder / "config.pbtxt"]
    config = _parse(folder / "config.pbtxt")
    assert config.name == model.name and config.platform == "tensorrt_plan"
    assert config.max_batch_size == 16
    built_onnx = fp16_engine.manifest.built_onnx.path
    assert built_onnx.name == "se_resnet_digits.fp16.onnx"
    inputs, outputs = _onnx_io(built_onnx)
    assert _io(config) == (_batched(inputs), _batched(outputs))
    assert inputs[0][1] == "TYPE_FP32"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert all(
        size <= config.max_batch_size for size in config.dynamic_batching.preferred_batch_size
    )
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (pb2.ModelInstanceGroup.KIND_GPU, 1)
    ]
    assert (folder / "1" / "model.plan").read_bytes() == fp16_engine.artifact.read_bytes()
    assert not (folder / "1" / "model.plan").is_symlink()
    capped = triton_model_from(fp16_engine.artifact, max_batch=8)
    assert capped.max_batch_size == 8 and capped.preferred_batch_sizes == (4, 8)
    with pytest.raises(UserError, match="exceeds the engine's profile max 16"):
        triton_model_from(fp16_engine.artifact, max_batch=32)


@pytest.mark.rtx
def test_half_io_engine_and_onnx_keep_their_declared_types(half_io: Path, tmp_path: Path) -> None:
    """float16 in and out, an int64 batch-only output: Triton's [1] + reshape [] form."""
    engine = build(BuildRequest(onnx=half_io, target="l4", output_dir=tmp_path, precision="fp16",
                                backend="tensorrt-rtx"))  # fmt: skip
    models = [triton_model_from(engine.artifact), triton_model_from(half_io)]
    write_triton_repository(models, tmp_path / "repo")
    for model in models:
        config = _parse(tmp_path / "repo" / model.name / "config.pbtxt")
        assert config.max_batch_size == 8
        assert [pb2.DataType.Name(v.data_type) for v in config.input] == ["TYPE_FP16"]
        assert [(v.name, pb2.DataType.Name(v.data_type), list(v.dims)) for v in config.output] == [
            ("y", "TYPE_FP16", [4]),
            ("label", "TYPE_INT64", [1]),
        ]
        assert config.output[1].HasField("reshape") and list(config.output[1].reshape.shape) == []
    assert models[0].platform == "tensorrt_plan" and models[1].platform == "onnxruntime_onnx"


def test_onnx_models_batch_and_copy_external_data(exports: dict[str, Path], tmp_path: Path) -> None:
    """A dynamic-batch ONNX: max batch 8 (or --max-batch), no instance_group (Triton picks GPU
    or CPU), the file copied byte for byte with its external data."""
    source = exports["dynamic"]
    heavy = tmp_path / "src" / "heavy.onnx"
    heavy.parent.mkdir()
    onnx.save(onnx.load(source), heavy, save_as_external_data=True, location="heavy.onnx.data",
              size_threshold=0)  # fmt: skip
    models = [triton_model_from(source), triton_model_from(heavy, max_batch=4)]
    assert [m.name for m in models] == ["se_resnet_digits_onnx", "heavy_onnx"]
    written = write_triton_repository(models, tmp_path / "repo")
    assert tmp_path / "repo" / "heavy_onnx" / "1" / "heavy.onnx.data" in written
    for model, max_batch in zip(models, (8, 4), strict=True):
        folder = tmp_path / "repo" / model.name
        config = _parse(folder / "config.pbtxt")
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == max_batch
        assert list(config.dynamic_batching.preferred_batch_size) == [max_batch]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert not config.instance_group
        inputs, outputs = _onnx_io(model.artifact)
        assert _io(config) == (_batched(inputs), _batched(outputs))
        assert (folder / "1" / "model.onnx").read_bytes() == model.artifact.read_bytes()
    copied = onnx.load(tmp_path / "repo" / "heavy_onnx" / "1" / "model.onnx")  # loads the data
    assert onnx.numpy_helper.to_array(copied.graph.initializer[0]).size > 0
    again = write_triton_repository(models[:1], tmp_path / "repo")  # re-deploy overwrites
    assert again[-1].read_text() == config_pbtxt(models[0])


def test_fixed_batch_export_gives_max_batch_0_and_full_dims(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    model = triton_model_from(exports["fixed"])
    write_triton_repository([model], tmp_path)
    config = _parse(tmp_path / model.name / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert _io(config) == _onnx_io(exports["fixed"])
    assert list(config.input[0].dims) == [1, 1, 8, 8]
    with pytest.raises(UserError, match="needs a dynamic batch dim"):
        triton_model_from(exports["fixed"], max_batch=4)


def test_engine_built_by_a_bundle_on_the_device(exports: dict[str, Path], tmp_path: Path) -> None:
    """A bundle is refused; the engine its build.sh writes is served with the bundle's ONNX
    and the profile of the build that wrote the bundle."""
    bundle = build(BuildRequest(onnx=exports["dynamic"], target="orin-nano", output_dir=tmp_path,
                                precision="fp16", batch=(1, 2, 4)))  # fmt: skip
    with pytest.raises(UserError, match="build the engine on the device first") as error:
        triton_model_from(bundle.artifact)
    assert "\n" not in str(error.value)
    engine = bundle.artifact / bundle.manifest.bundle["engine"]
    engine.write_bytes(b"plan made by trtexec on the device")
    model = triton_model_from(engine)
    assert model.name == "se_resnet_digits_orin-nano_fp16"  # the target named once
    assert model.platform == "tensorrt_plan" and model.max_batch_size == 4
    assert model.source_onnx == bundle.artifact / "se_resnet_digits.onnx"
    assert not model.notes  # built by TensorRT proper: no TensorRT-RTX caveat


@pytest.mark.parametrize(
    ("batch", "expect"),
    [((4, 4, 4), (0, [4, 1, 8, 8])), ((2, 4, 8), "rebuild with --batch 1:4:8")],
)
def test_engine_profile_decides_batching(
    exports: dict[str, Path], tmp_path: Path, batch: tuple[int, int, int], expect: Any
) -> None:
    """An engine for one batch size is served unbatched at that size; a profile starting above
    1 is refused (Triton sends batches from 1); a changed built ONNX is refused too."""
    bundle = build(BuildRequest(onnx=exports["dynamic"], target="orin-nano", output_dir=tmp_path,
                                precision="fp16", batch=batch))  # fmt: skip
    engine = bundle.artifact / bundle.manifest.bundle["engine"]
    engine.write_bytes(b"plan")
    if isinstance(expect, str):
        with pytest.raises(UserError, match=expect):
            triton_model_from(engine)
        return
    model = triton_model_from(engine)
    assert (model.max_batch_size, list(model.inputs[0].dims)) == expect
    assert list(model.outputs[0].dims) == [4, 10]
    (bundle.artifact / "se_resnet_digits.onnx").write_bytes(exports["fixed"].read_bytes())
    with pytest.raises(UserError, match="changed since the bundle was written"):
        triton_model_from(engine)


def test_unservable_inputs_are_one_line_user_errors(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    orphan = tmp_path / "orphan.engine"
    orphan.write_bytes(b"no manifest")
    cases = [
        (lambda: triton_model_from(text), "cannot serve a '.txt' file"),
        (lambda: triton_model_from(orphan), "no build manifest beside it"),
        (lambda: triton_model_from(tmp_path), "is a folder"),
        (lambda: triton_model_from(tmp_path / "gone.onnx"), "no such file"),
        (lambda: triton_model_from(exports["dynamic"], name="bad/name"), "model name 'bad/name'"),
        (lambda: triton_model_from(exports["dynamic"], name=".hidden"), "model name '.hidden'"),
        (
            lambda: write_triton_repository(
                [triton_model_from(exports["dynamic"]), triton_model_from(exports["fixed"])],
                tmp_path / "repo",
            ),
            "two models named 'se_resnet_digits_onnx'",
        ),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "repo").exists()


def test_default_names() -> None:
    assert default_model_name(Path("out/l4/m.fp16.engine"), "l4") == "m_fp16_l4"
    assert default_model_name(Path("out/a100/m.int8.plan")) == "m_int8_a100"  # folder name
    assert default_model_name(Path("m.fp16.h100.fp16.engine"), "h100") == "m_fp16_h100_fp16"
    assert default_model_name(Path("x/m.int8.qdq.onnx")) == "m_int8_qdq_onnx"
    assert default_model_name(Path("my model+v2.onnx")) == "my_model_v2_onnx"


def test_config_text_escapes_names_and_parses() -> None:
    odd = 'in "q" é\\'
    model = TritonModel(
        name="m",
        artifact=Path("m.onnx"),
        platform="onnxruntime_onnx",
        inputs=(TritonTensor(odd, "TYPE_FP32", (-1, 3)),),
        outputs=(TritonTensor("out", "TYPE_BOOL", ()),),
    )
    config = text_format.Parse(config_pbtxt(model), pb2.ModelConfig())
    assert config.input[0].name == odd and list(config.input[0].dims) == [-1, 3]
    assert config_pbtxt(model) == config_pbtxt(model)  # deterministic


def test_cli_json_lists_the_models(exports: dict[str, Path], tmp_path: Path) -> None:
    from sase_deploy.commands.triton import triton_command

    repo = tmp_path / "repo"
    args = [str(exports["dynamic"]), "-o", str(repo), "--json", "--max-batch", "2"]
    result = CliRunner().invoke(triton_command, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["command"] == "triton" and summary["repository"] == str(repo)
    (row,) = summary["models"]
    assert row["name"] == "se_resnet_digits_onnx" and row["max_batch_size"] == 2
    assert row["platform"] == "onnxruntime_onnx"
    assert row["inputs"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert row["outputs"][0]["name"] == "logits"
    assert _parse(Path(row["config"])).max_batch_size == 2
    assert Path(row["model_file"]).read_bytes() == exports["dynamic"].read_bytes()
    plain = CliRunner().invoke(triton_command, [str(exports["fixed"]), "-o", str(repo)])
    assert plain.exit_code == 0 and plain.stdout.startswith("wrote se_resnet_digits_onnx")
    assert "max batch 0" in plain.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a"], "--name names one model"),
        (["--max-batch", "4"], "needs a dynamic batch dim"),
    ],
)
def test_cli_bad_input_fails(
    exports: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    from sase_deploy.commands.triton import triton_command

    paths = [str(exports["fixed"])] * (2 if "--name" in args else 1)
    result = CliRunner().invoke(triton_command, [*paths, "-o", str(tmp_path / "r"), *args])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    assert message in str(result.exception)
    assert not (tmp_path / "r").exists()
