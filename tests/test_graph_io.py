"""sase_deploy.graph_io: the one load / canonicalise / save path every stage uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from numerics import assert_rewrite_equivalent
from onnx import TensorProto, helper

from sase_deploy.errors import UserError
from sase_deploy.graph_io import (
    canonicalise,
    external_data_name,
    load_onnx,
    save_onnx,
    toposorted,
)
from sase_deploy.graph_io.canonical import drop_identity_arithmetic


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int = 18):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _shape_arithmetic_model() -> onnx.ModelProto:
    """TorchScript's habit: a reshape target computed from Shape at run time, an accumulator
    started at 0, a scale of 1, and nodes without names."""
    f32 = np.float32
    inits = [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("idx", TensorProto.INT64, [], [1]),
        helper.make_tensor("tail", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.eye(4, dtype=f32).ravel()),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "idx"], ["ch"], axis=0),
        helper.make_node("Unsqueeze", ["ch", "zero_axes"], ["ch1"]),
        helper.make_node("Concat", ["tail", "ch1"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["r"], name="conv"),  # a repeated name
        helper.make_node("Add", ["zero", "r"], ["acc"]),
        helper.make_node("Mul", ["acc", "one"], ["y"]),
    ]
    inits.append(helper.make_tensor("zero_axes", TensorProto.INT64, [1], [0]))
    return _model(nodes, inits)


def test_canonicalise_folds_shape_arithmetic_and_identities() -> None:
    model = _shape_arithmetic_model()
    canonical = canonicalise(model)
    ops = [n.op_type for n in canonical.graph.node]
    # the graph output keeps its producer (and name); x + 0 goes, Shape/Gather/Concat fold
    assert ops == ["Conv", "Reshape", "Mul"]
    names = [n.name for n in canonical.graph.node]
    assert names[0] == "conv" and len(set(names)) == 3 and all(names)
    runnable = onnx.ModelProto()
    runnable.CopyFrom(model)
    runnable.graph.node[5].name = "reshape"  # ORT refuses repeated names; canonicalise fixes them
    feed = {"x": np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    assert_rewrite_equivalent(runnable, canonical, feed)
    onnx.checker.check_model(canonical, full_check=True)


def test_canonicalise_is_idempotent() -> None:
    once = canonicalise(_shape_arithmetic_model())
    twice = canonicalise(once)
    assert twice.SerializeToString() == once.SerializeToString()


def test_identity_arithmetic_that_broadcasts_is_kept() -> None:
    """x (4,) + zeros (2, 4) is a (2, 4) tensor, not x: the Add must stay."""
    graph = gs.Graph(opset=18)
    x = gs.Variable("x", np.float32, (4,))
    zeros = gs.Constant("z", np.zeros((2, 4), np.float32))
    y = gs.Variable("y", np.float32, (2, 4))
    out = gs.Variable("out", np.float32, (2, 4))
    graph.nodes = [gs.Node("Add", inputs=[x, zeros], outputs=[y]), gs.Node("Relu", [y], [out])]
    graph.inputs, graph.outputs = [x], [out]
    assert drop_identity_arithmetic(graph) == 0
    graph.nodes[0].inputs[1] = gs.Constant("z1", np.zeros((1,), np.float32))
    assert drop_identity_arithmetic(graph) == 1  # (4,) + (1,) stays (4,)


def test_toposorted_orders_nodes() -> None:
    model = _shape_arithmetic_model()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    onnx.checker.check_model(toposorted(model))


def _relu_model(weights: int) -> onnx.ModelProto:
    bias = onnx.numpy_helper.from_array(np.arange(weights, dtype=np.float32), "b")
    nodes = [helper.make_node("Add", ["v", "b"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [weights])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [weights])],
        [bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_save_onnx_external_data_over_threshold(tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    written = save_onnx(_relu_model(4096), dest, threshold=1024)
    data = tmp_path / external_data_name(dest)
    assert written == [dest, data] and data.is_file()
    loaded = load_onnx(dest)
    assert onnx.numpy_helper.to_array(loaded.graph.initializer[0])[4095] == 4095
    # saved again small: one file, and the data file that nobody would read is gone
    assert save_onnx(_relu_model(8), dest, threshold=1024) == [dest]
    assert not data.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no staging leftovers


def test_save_onnx_onto_a_folder_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    dest.mkdir()
    with pytest.raises(UserError, match="cannot write"):
        save_onnx(_relu_model(4096), dest, threshold=1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert not any(dest.iterdir())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: setattr(m, "ir_version", onnx.IR_VERSION + 1), "newer than the"),
        (lambda m: m.opset_import[0].__setattr__("version", 11), "older than 13"),
        (lambda m: m.opset_import[0].__setattr__("version", 99), "opset 99, newer"),
        (lambda m: m.graph.node[0].input.append("nowhere"), "fails onnx.checker"),
    ],
    ids=["ir-too-new", "opset-too-old", "opset-too-new", "checker"],
)
def test_load_refuses_with_one_line(edit, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _relu_model(4)
    edit(model)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match=message) as info:
        load_onnx(path)
    assert "\n" not in str(info.value)


def test_external_data_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """`m.onnx.data` beside the model, but a symlink to a file elsewhere: refused like `..`;
    one to a file inside the folder is refused by onnx itself, also as one line."""
    folder = tmp_path / "model"
    dest = folder / "m.onnx"
    save_onnx(_relu_model(4096), dest, threshold=1024)
    data = folder / external_data_name(dest)
    elsewhere = tmp_path / "weights.bin"
    data.rename(elsewhere)
    data.symlink_to(elsewhere)
    with pytest.raises(UserError, match="lies outside the model's folder"):
        load_onnx(dest)
    inside = folder / "real.bin"  # onnx refuses any symlinked data file; the message says so
    elsewhere.rename(inside)
    data.unlink()
    data.symlink_to(inside)
    with pytest.raises(UserError, match=r"cannot read its external data.*symbolic link"):
        load_onnx(dest)


def test_unsorted_files_are_sorted_by_stages_that_rewrite_and_refused_by_the_others(
    tmp_path: Path,
) -> None:
    """ORT runs a graph whose nodes are out of order (old float16-converter output does that);
    the checker and TensorRT's parser do not. fuse/calibrate/convert write a new graph anyway,
    so they sort it (`sort=True`); build, compare and triton hand the file on: one line, exit 2."""
    from sase_deploy.rewrite.api import fuse_file

    model = _shape_arithmetic_model()
    model.graph.node[5].name = "reshape"
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    path = tmp_path / "unsorted.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match=r"out of topological order.*'sase-deploy fuse'"):
        load_onnx(path)
    sorted_model = load_onnx(path, sort=True)
    assert sorted_model.graph.node[0].op_type == "Conv"
    summary = fuse_file(path, tmp_path / "fused.onnx")
    assert summary["nodes_in_file"] == 8 and summary["nodes_after"] == 3
    load_onnx(tmp_path / "fused.onnx")  # what fuse wrote is sorted
