"""INT8 + FP16 (the default): what is not quantised computes in FP16, scales in FP16, I/O float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import copy_export
from onnx import TensorProto, numpy_helper

from sase_deploy.graph_io import opset_version


@pytest.fixture(scope="module")
def calibrated(digits_exports, tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """se_resnet_digits calibrated on the shipped data: INT8+FP16 and INT8+FP32 files."""
    from sase_deploy.calibration.api import calibrate_onnx
    from sase_deploy.models.digits_data import write_digits_npz

    folder = tmp_path_factory.mktemp("int8_fp16")
    fp32 = copy_export(digits_exports.get("se_resnet_digits"), folder)
    data = str(write_digits_npz(folder / "calib.npz", "calibration"))
    files = {"fp32": fp32}
    for high in ("fp16", "fp32"):
        result = calibrate_onnx(fp32, data, folder / high, samples=256, high_precision=high)
        files[f"int8+{high}"] = Path(result.int8_onnx)
    return files


def _scales(model: onnx.ModelProto) -> set[int]:
    inits = {i.name: i for i in model.graph.initializer}
    return {
        inits[n.input[1]].data_type
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits
    }


def test_int8_fp16_graph(calibrated) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(calibrated["int8+fp16"])
    assert opset_version(model) >= 19  # FP16 scales need Q/DQ-19
    assert _scales(model) == {TensorProto.FLOAT16}
    io = [*model.graph.input, *model.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {TensorProto.FLOAT}
    floats = {i.data_type for i in model.graph.initializer} - {TensorProto.INT8, TensorProto.INT64}
    assert floats == {TensorProto.FLOAT16}  # biases and SE weights too: no FP32 compute left
    before = onnx.load(calibrated["int8+fp32"])  # the same Q/DQ places, FP32 around them
    assert [n.op_type for n in model.graph.node if "Quantize" in n.op_type] == [
        n.op_type for n in before.graph.node if "Quantize" in n.op_type
    ]


def test_int8_fp32_graph_is_as_before(calibrated) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(calibrated["int8+fp32"])
    assert opset_version(model) == opset_version(onnx.load(calibrated["fp32"]))
    assert _scales(model) == {TensorProto.FLOAT}
    assert all(i.data_type != TensorProto.FLOAT16 for i in model.graph.initializer)


def test_int8_fp16_accuracy(calibrated) -> None:  # type: ignore[no-untyped-def]
    """Top-1 on the 540 held-out images: INT8 + FP16 as accurate as INT8 + FP32 (>= 99.4 %)."""
    from sase_deploy.models.digits_data import digits_eval_arrays
    from sase_deploy.runtime.ort import OrtRunner

    x, y = digits_eval_arrays()
    for key in ("fp32", "int8+fp16", "int8+fp32"):
        with OrtRunner(calibrated[key]) as runner:
            logits = runner.infer({"x": x})[runner.output_names[0]]
        accuracy = float(np.mean(logits.argmax(1) == y))
        assert accuracy >= 0.994, (key, accuracy)


def test_weights_dequantize_to_fp16(calibrated) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(calibrated["int8+fp16"])
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = [n for n in dqs if n.input[0] in inits]
    assert weights and all(inits[n.input[0]].dtype == np.int8 for n in weights)
    assert all(inits[n.input[1]].dtype == np.float16 for n in weights)


@pytest.mark.rtx
def test_rtx_builds_int8_fp16_in_half(calibrated, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    """TensorRT-RTX (strongly typed) runs what the graph says: FP16 around the INT8 layers."""
    dtypes = {}
    for key in ("int8+fp16", "int8+fp32"):
        out = tmp_path / key
        res = run_cli("build", str(calibrated[key]), "--target", "l4", "--precision", "int8",
                      "-o", str(out), "--json")  # fmt: skip
        assert res.code == 0, res.stderr
        dtypes[key] = res.json()["compute_dtypes"]
    # every layer computes in FP16 or INT8 but the cast of the output back to float32
    assert dtypes["int8+fp16"].get("FLOAT") == 1 and dtypes["int8+fp16"]["HALF"] > 20
    assert dtypes["int8+fp32"].get("HALF", 0) == 0
    assert dtypes["int8+fp16"]["INT8"] == dtypes["int8+fp32"]["INT8"]


def _residual_model(conv_out_is_output: bool) -> onnx.ModelProto:
    """x -> Conv a -> Relu r -> Conv b -> Add(b, r): b's output may also be a graph output."""
    from onnx import helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), name)
        for name in ("wa", "wb")
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "r"], ["y"], name="add"),
    ]
    shape = [1, 4, 8, 8]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if conv_out_is_output:
        outputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        outputs, weights,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _add_inputs_quantised(model: onnx.ModelProto) -> list[bool]:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    return [producers.get(name) == "DequantizeLinear" for name in add.input]


@pytest.mark.parametrize("conv_out_is_output", [False, True])
def test_residual_add_quantises_only_the_non_fusible_input(conv_out_is_output: bool) -> None:
    """The Conv writing the Add alone keeps a float input (TensorRT folds the Add into it);
    declines when something else reads that Conv's output too: both inputs quantised."""
    from sase_deploy.calibration.qdq import quantize_qdq
    from sase_deploy.calibration.ranges import TensorRanges
    from sase_deploy.runtime.ort import OrtRunner

    model = _residual_model(conv_out_is_output)
    ranges = TensorRanges("minmax", {"x": 5.0, "a": 40.0, "r": 40.0, "b": 120.0}, samples=1)
    quantized = quantize_qdq(model, ranges, {"conv_a", "conv_b", "add"})
    onnx.checker.check_model(quantized, full_check=True)
    assert _add_inputs_quantised(quantized) == [conv_out_is_output, True]
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with OrtRunner(model) as ref, OrtRunner(quantized) as got:
        want, have = ref.infer({"x": x})["y"], got.infer({"x": x})["y"]
    assert np.abs(want - have).max() / np.abs(want).max() < 0.05  # INT8 noise, not a broken graph


def _modelopt_style(int8_fp16: Path, dest: Path) -> Path:
    """ModelOpt's INT8 layout (its ONNX PTQ, high_precision_dtype="fp16"), written here without
    ModelOpt (its onnx/onnxruntime-gpu pins conflict with ours): every weight a float tensor
    behind its own QuantizeLinear -> DequantizeLinear pair with FP16 scales, opset 19."""
    from onnx import helper

    model = onnx.load(int8_fp16)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type == TensorProto.INT8:
            q = numpy_helper.to_array(weight).astype(np.float32)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [-1 if d == axis else 1 for d in range(q.ndim)]
            real = (q * scale.reshape(shape)).astype(np.float16)  # float weights, as ModelOpt
            name = weight.name.removesuffix("_quantized") + "_float"
            model.graph.initializer.append(numpy_helper.from_array(real, name))
            nodes.append(helper.make_node("QuantizeLinear", [name, *node.input[1:]],
                                          [name + "_q"], name=name + "_Q", axis=axis))  # fmt: skip
            node.input[0] = name + "_q"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, dest)
    return dest


def test_modelopt_qdq_file_runs_compares_and_builds(calibrated, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from sase_deploy.graph_io import load_onnx

    path = _modelopt_style(calibrated["int8+fp16"], tmp_path / "digits.modelopt.onnx")
    model = load_onnx(path)  # the checked loader accepts it
    assert _scales(model) == {TensorProto.FLOAT16} and opset_version(model) >= 19
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    source = onnx.load(calibrated["int8+fp16"])
    int8 = {i.name for i in source.graph.initializer if i.data_type == TensorProto.INT8}
    int8_weights = sum(
        n.op_type == "DequantizeLinear" and n.input[0] in int8 for n in source.graph.node
    )
    assert (
        sum("_float" in n.input[0] for n in quantize) == int8_weights > 0
    )  # weights quantised in the graph, not stored as int8
    res = run_cli("compare", str(calibrated["fp32"]), str(path), "--runs", "1", "--warmup", "0",
                  "--json")  # fmt: skip
    assert res.code == 0, res.stderr
    row = res.json()["candidates"][0]
    assert row["precision"] == "int8" and row["status"] == "pass"


@pytest.mark.rtx
def test_modelopt_qdq_file_builds_with_rtx(calibrated, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    path = _modelopt_style(calibrated["int8+fp16"], tmp_path / "digits.modelopt.onnx")
    res = run_cli("build", str(path), "--target", "l4", "--precision", "int8", "-o",
                  str(tmp_path / "out"), "--json")  # fmt: skip
    assert res.code == 0, res.stderr
    assert res.json()["tensor_dtypes"].get("HALF", 0) > 0


def test_min_channels_leaves_small_layers_float() -> None:
    from sase_deploy.calibration.qdq import small_weighted_nodes

    model = _residual_model(False)  # 4-channel Convs
    everything = {"conv_a", "conv_b", "add"}
    assert small_weighted_nodes(model, everything, 16) == {"conv_a", "conv_b"}
    assert small_weighted_nodes(model, everything, 4) == set()  # 4 channels are not below 4
    assert small_weighted_nodes(model, {"conv_a"}, 16) == {"conv_a"}  # only what is asked about


def test_cli_min_channels(digits_exports, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from sase_deploy.models.digits_data import write_digits_npz

    fp32 = copy_export(digits_exports.get("se_resnet_digits"), tmp_path)
    data = str(write_digits_npz(tmp_path / "calib.npz", "calibration"))
    res = run_cli("calibrate", str(fp32), "--data", data, "--samples", "32", "--min-channels",
                  "16", "-o", str(tmp_path / "out"), "--json")  # fmt: skip
    assert res.code == 0, res.stderr
    kept = res.json()["kept_float"]
    # the first Conv reads 1 channel, the classifier writes 10
    assert sum(why == "fewer than 16 channels" for why in kept.values()) == 2
