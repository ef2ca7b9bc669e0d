"""Feeds are checked against the model's own inputs in one place (`Runner.infer`), and `compare`
refuses candidates whose inputs or outputs differ from the reference's: exit 2, one line naming
both sides and how to fix it, never a backend traceback (issue 16, item 8)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import DigitsExports
from onnx import TensorProto, helper

from sase_deploy.cli import main
from sase_deploy.errors import UserError
from sase_deploy.report.candidates import (
    check_candidates_match,
    check_output_shapes,
    resolve_candidates,
)
from sase_deploy.runtime.base import Feed, InputMetadata, Outputs, Runner, check_feed
from sase_deploy.runtime.ort import OrtRunner

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FIX = "compare models exported from the same network"


class _Recording(Runner):
    """A runner whose backend only records that it was called."""

    name = "fake"

    def __init__(self, inputs: InputMetadata | None) -> None:
        super().__init__()
        self.inputs, self.calls = inputs, 0

    def activate_impl(self) -> None:
        pass

    def input_metadata(self) -> InputMetadata | None:
        return self.inputs

    def infer_impl(self, feed: Feed) -> Outputs:
        self.calls += 1
        return {"y": np.zeros(1)}


X = {"x": (np.dtype(np.float32), (None, 1, 8, 8))}


@pytest.mark.parametrize(
    ("feed", "words"),
    [
        ({"pixels": np.zeros((2, 1, 8, 8), np.float32)}, ["x missing", "pixels not an input"]),
        ({"x": np.zeros((2, 1, 16, 16), np.float32)}, ["x has shape [2,1,16,16], not [?,1,8,8]"]),
        ({"x": np.zeros((2, 1, 8), np.float32)}, ["x has shape [2,1,8], not [?,1,8,8]"]),
        ({"x": np.zeros((2, 1, 8, 8), np.float64)}, ["x is float64, not float32"]),
        (
            {"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.zeros(3, np.int64)},
            ["y not an input"],
        ),
    ],
    ids=["name", "shape", "rank", "dtype", "count"],
)
def test_infer_checks_the_feed_before_the_backend(feed: Feed, words: list[str]) -> None:
    runner = _Recording(X)
    with runner, pytest.raises(UserError) as caught:
        runner.infer(feed)
    message = str(caught.value)
    assert message.startswith("fake takes x float32[?,1,8,8] but was fed ")
    assert all(w in message for w in words) and FIX in message
    assert "\n" not in message and runner.calls == 0


def test_a_matching_feed_runs_and_unknown_metadata_is_not_checked() -> None:
    runner = _Recording(X)
    with runner:
        runner.infer({"x": np.zeros((5, 1, 8, 8), np.float32)})  # dynamic batch: any size
    assert runner.calls == 1
    unchecked = _Recording(None)  # a backend that cannot say what it takes
    with unchecked:
        unchecked.infer({"anything": np.zeros(3, np.int8)})
    assert unchecked.calls == 1


def test_unknown_dtype_and_dims_match_anything() -> None:
    check_feed("r", {"x": (None, (None, None))}, {"x": np.zeros((3, 4), np.float16)})
    with pytest.raises(UserError, match=r"x has shape \[3\], not \[\?,\?\]"):
        check_feed("r", {"x": (None, (None, None))}, {"x": np.zeros(3, np.float16)})


def _tiny(path: Path, name: str = "x", dtype: int = TensorProto.FLOAT, dims: Any = None) -> Path:
    """y = Relu(input): the smallest graph with one named, typed input."""
    dims = dims if dims is not None else ["batch", 4]
    graph = helper.make_graph(
        [helper.make_node("Relu", [name], ["y"])],
        "tiny",
        [helper.make_tensor_value_info(name, dtype, dims)],
        [helper.make_tensor_value_info("y", dtype, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_ort_runner_reports_its_inputs(tmp_path: Path) -> None:
    path = _tiny(tmp_path / "t.onnx", dtype=TensorProto.FLOAT16)
    with OrtRunner(path) as runner:
        assert runner.input_metadata() == {"x": (np.dtype(np.float16), (None, 4))}
        assert runner.infer({"x": np.ones((2, 4), np.float16)})["y"].shape == (2, 4)
        with pytest.raises(UserError, match=r"^onnxruntime \(t\.onnx\) takes x float16\[\?,4\] "):
            runner.infer({"x": np.ones((2, 4), np.float32)})


def test_tensorrt_runner_metadata_from_polygraphy(rtx: Any) -> None:
    """Polygraphy's TensorMetadata (DataType, -1 for dynamic) read without a GPU."""
    pytest.importorskip("polygraphy")
    from polygraphy.datatype import DataType

    from sase_deploy.engines.tensorrt import TrtRunner

    runner = TrtRunner(Path("m.engine"), rtx)
    metadata = {
        "x": SimpleNamespace(dtype=DataType.FLOAT32, shape=(-1, 1, 8, 8)),
        "b": SimpleNamespace(dtype=SimpleNamespace(name="float99"), shape=(2,)),
    }
    runner._runner = SimpleNamespace(get_input_metadata=lambda: metadata)
    assert runner.input_metadata() == {
        "x": (np.dtype(np.float32), (None, 1, 8, 8)),
        "b": (None, (2,)),  # a type numpy lacks is not dtype-checked
    }
    assert runner.label == "tensorrt-rtx (m.engine)"


# ---- compare: the CLI, end to end, and the up-front check


@pytest.fixture(scope="module")
def exports(
    tmp_path_factory: pytest.TempPathFactory, digits_exports: DigitsExports
) -> dict[str, Path]:
    """The digits model as exported (the session's, dynamic batch) and edited copies: another
    input size, name, dtype or count, another output name."""
    folder = tmp_path_factory.mktemp("feeds")
    good = digits_exports.get()
    paths = {"good": good}
    for name, edit in EDITS.items():
        model = onnx.load(str(good))
        edit(model.graph)
        paths[name] = folder / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def _resize_input(graph: onnx.GraphProto) -> None:
    """x is 16x16: the model pools globally, so ORT loads it and the feed check stops it."""
    for dim in graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 16
    del graph.value_info[:]  # the 8x8 shapes recorded inside would contradict it


def _rename_input(graph: onnx.GraphProto) -> None:
    old = graph.input[0].name
    graph.input[0].name = "pixels"
    for node in graph.node:
        node.input[:] = ["pixels" if i == old else i for i in node.input]


def _double_input(graph: onnx.GraphProto) -> None:
    """x arrives as float64 and is cast to float32 inside."""
    old = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["x32" if i == old else i for i in node.input]
    graph.node.insert(0, helper.make_node("Cast", [old], ["x32"], to=TensorProto.FLOAT))
    graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE


def _extra_input(graph: onnx.GraphProto) -> None:
    graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 3]))


def _rename_output(graph: onnx.GraphProto) -> None:
    old = graph.output[0].name
    graph.output[0].name = "scores"
    for node in graph.node:
        node.output[:] = ["scores" if o == old else o for o in node.output]


EDITS: dict[str, Callable[[onnx.GraphProto], None]] = {
    "shape": _resize_input,
    "name": _rename_input,
    "dtype": _double_input,
    "count": _extra_input,
    "output": _rename_output,
}

CASES = [
    ("shape", ["x float32[?,1,16,16]", "x float32[?,1,8,8]", "--input-shape"]),
    ("name", ["pixels float32", "x float32", "pixels missing"]),
    ("dtype", ["x float64", "x is float32, not float64"]),
    ("count", ["mask float32[?,3]", "mask missing"]),
    ("output", ["scores", "logits"]),
]


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    try:
        main(args)
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else 0), capsys.readouterr().err
    except BaseException:
        return -1, capsys.readouterr().err + traceback.format_exc()
    return 0, capsys.readouterr().err


@pytest.mark.parametrize(("variant", "words"), CASES, ids=[c[0] for c in CASES])
def test_compare_with_a_mismatched_candidate_exits_2(
    exports: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    variant: str,
    words: list[str],
) -> None:
    args = ["compare", "se_resnet_digits", str(exports[variant]), "--samples", "16",
            "--runs", "1", "--warmup", "0", "--batch", "1"]  # fmt: skip
    code, err = _run(capsys, args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert FIX in lines[0] and all(w in lines[0] for w in words), lines[0]
    # inputs are checked by the runner, which names its model file; a missing output is found
    # by compare after the run, which names the backend
    assert f"{variant}.onnx" in lines[0] or variant == "output"


def _reference() -> Any:
    from sase_deploy.graph_io import GraphInput

    x = GraphInput("x", (None, 1, 8, 8), np.dtype(np.float32))
    return SimpleNamespace(inputs=(x,), output_names=("logits",), source="se_resnet_digits")


@pytest.mark.parametrize(("variant", "words"), CASES, ids=[c[0] for c in CASES])
def test_candidates_are_checked_before_anything_runs(
    exports: dict[str, Path], variant: str, words: list[str]
) -> None:
    found = resolve_candidates([exports["good"], exports[variant]])
    check_candidates_match(_reference(), found[:1])  # the good export passes
    with pytest.raises(UserError) as caught:
        check_candidates_match(_reference(), found)
    message = str(caught.value)
    assert message.startswith(f"candidate {variant}.onnx ") and "the reference" in message
    assert FIX in message and "\n" not in message
    # names and dtypes as in the CLI case; the batch dim is compare's to settle ([?,..])
    assert all(w.replace("[1,", "[?,") in message for w in words), message


def test_output_shapes_are_checked_after_a_run() -> None:
    ref = {"logits": np.zeros((4, 10), np.float32)}
    check_output_shapes("c.onnx", ref, {"logits": np.ones((4, 10), np.float16)})
    with pytest.raises(UserError, match=r"c\.onnx returns logits float32\[4, 10, 1\] but the"):
        check_output_shapes("c.onnx", ref, {"logits": np.zeros((4, 10, 1), np.float32)})
    with pytest.raises(UserError, match=r"returns logits int64\[4, 10\]"):
        check_output_shapes("c.onnx", ref, {"logits": np.zeros((4, 10), np.int64)})


def test_a_model_ort_refuses_is_a_user_error(tmp_path: Path) -> None:
    """x [?,4] + a [3] constant: ORT's shape inference refuses the graph when loading it."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("c", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(UserError) as caught, OrtRunner(tmp_path / "bad.onnx"):
        pass
    message = str(caught.value)
    assert message.startswith("onnxruntime (bad.onnx) cannot load the model: ")
    assert "onnx.checker" in message and "\n" not in message
