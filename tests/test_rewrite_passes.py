"""The pass driver (self-check, revert, report), cleanup and --as-functions."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper
from rewrite_blocks import ECA, CBAMChannel, Host, LinearSE, SleHost, export

from sase_deploy.graph_io import replace_uses
from sase_deploy.rewrite import fuse_model
from sase_deploy.rewrite.graph_utils import const_value, import_graph
from sase_deploy.rewrite.rule import Captures, Match, RewriteRule
from sase_deploy.rewrite.rules import CLEANUP_RULES, SE_GATE_RULES
from sase_deploy.rewrite.rules.se_gate import SeGateCanonicalise
from sase_deploy.rewrite.self_check import NOISE_FLOOR_FACTOR, SelfChecker, self_check_feed
from sase_deploy.runtime.ort import run_onnx


class DropScalarMul(RewriteRule):
    """A deliberately unsound rule: removes every Mul by a scalar constant (exact only for 1)."""

    name = "drop_scalar_mul"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        return (n for n in list(graph.nodes) if n.op == "Mul")

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match | None:
        value = const_value(anchor.inputs[1])
        if value is None or value.size != 1:
            return None
        return Match(self.name, anchor.name, Captures(), nodes=[anchor])

    def rewrite(self, graph: gs.Graph, match: Match) -> None:
        node = match.nodes[0]
        replace_uses(graph, node.outputs[0], node.inputs[0])
        node.outputs.clear()


def _scalar_mul_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["a"], name="times_one"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Mul", ["b", "two"], ["c"], name="times_two"),
        helper.make_node("Relu", ["c"], ["y"], name="out"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        onnx.numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_self_check_reverts_only_the_wrong_match() -> None:
    model = _scalar_mul_model()
    result = fuse_model(model, rules=(DropScalarMul(),), canonical=True)
    entry = result.report["rules"][0]
    status = {m["anchor"]: m["status"] for m in entry["matches"]}
    assert status == {"times_one": "applied", "times_two": "reverted"}
    reverted = next(m for m in entry["matches"] if m["anchor"] == "times_two")
    assert "self-check" in reverted["reason"]
    assert entry["applied"] == 1 and entry["reverted"] == 1
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Mul", "Relu"]
    feed = self_check_feed(model)
    np.testing.assert_allclose(run_onnx(result.model, feed)["y"], run_onnx(model, feed)["y"])


class NudgeScalarMul(RewriteRule):
    """A deliberately wrong block rewrite: scales each scalar Mul by 1 + 1e-4 (its output is
    the block output), too small to see by eye, 10x over the block tolerance."""

    name = "nudge_scalar_mul"

    def candidates(self, graph: gs.Graph) -> Iterator[gs.Node]:
        return (n for n in list(graph.nodes) if n.op == "Mul")

    def match(self, graph: gs.Graph, anchor: gs.Node) -> Match | None:
        value = const_value(anchor.inputs[1])
        if value is None or value.size != 1:
            return None
        return Match(self.name, anchor.name, Captures(), kind="se", nodes=[anchor],
                     block_output=anchor.outputs[0].name)  # fmt: skip

    def rewrite(self, graph: gs.Graph, match: Match) -> None:
        node = match.nodes[0]
        value = np.asarray(const_value(node.inputs[1]), dtype=np.float32) * np.float32(1 + 1e-4)
        node.inputs[1] = gs.Constant(f"{node.name}/nudged", np.array(value, dtype=np.float32))


def test_block_output_check_reverts_a_slightly_wrong_block() -> None:
    result = fuse_model(_scalar_mul_model(), rules=(NudgeScalarMul(),), canonical=True)
    entry = result.report["rules"][0]
    assert entry["applied"] == 0 and entry["reverted"] == 2
    reasons = [m["reason"] for m in entry["matches"]]
    assert all("block output" in r for r in reasons), reasons  # caught at the block, first
    assert result.report["self_check"]["blocks_checked"] == 2


def test_network_tolerance_follows_the_noise_floor() -> None:
    model = _scalar_mul_model()
    wrong = copy.deepcopy(model)
    wrong.graph.initializer[1].CopyFrom(
        onnx.numpy_helper.from_array(np.array(2.0002, dtype=np.float32), "two")
    )  # network output off by 1e-4 of its scale; no block outputs named
    check = SelfChecker(model, enabled=True, tolerance=1e-5, seed=0)
    assert check.noise_floor == 0.0  # Mul/Relu: no reassociation anywhere, ORT agrees exactly
    result = check(wrong)
    assert not result.ok and result.reason is not None and "noise floor" in result.reason
    assert 5e-5 < result.stats["max_rel_diff"] < 2e-4
    check.noise_floor = 1e-4  # a chaotic network: the original is this far from itself
    assert check.network_tolerance == NOISE_FLOOR_FACTOR * 1e-4
    assert check(wrong).ok
    assert not check(wrong, ["c"]).ok  # the block output still has to match at 1e-5
    assert check.block_floor == {"c": 0.0}  # measured for the block: ORT agrees exactly
    check.block_floor["c"] = 1e-4  # a block that differs from itself this much on this CPU
    assert check.block_tolerance("c") == NOISE_FLOOR_FACTOR * 1e-4 and check(wrong, ["c"]).ok


def test_import_graph_reads_identity_of_a_constant_as_the_constant() -> None:
    # TorchScript dedupes equal initializers through Identity nodes
    nodes = [
        helper.make_node("Identity", ["zero"], ["zero_again"], name="dedup"),
        helper.make_node("Add", ["x", "zero_again"], ["y"], name="add"),
    ]
    zero = onnx.numpy_helper.from_array(np.zeros((1, 4), np.float32), "zero")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [zero]),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=9,
    )
    graph = import_graph(model)
    assert [n.op for n in graph.nodes] == ["Add"]
    assert const_value(graph.nodes[0].inputs[1]) is not None


def test_without_self_check_the_unsound_rewrite_stays() -> None:
    # proves the self-check is what reverted it above
    result = fuse_model(
        _scalar_mul_model(), rules=(DropScalarMul(),), self_check=False, canonical=True
    )
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Relu"]
    assert result.report["rules"][0]["reverted"] == 0


def test_block_counted_once_across_rules() -> None:
    model = export(Host(LinearSE(16)))
    result = fuse_model(model, rules=(SeGateCanonicalise(), SeGateCanonicalise()))
    assert result.report["blocks_found"] == {"se": 1}
    second = result.report["rules"][1]["matches"]
    assert [m["status"] for m in second] == ["unchanged"]  # canonical form is a fixed point


def test_report_fields() -> None:
    report = fuse_model(export(Host(LinearSE(16)))).report
    for key in ("blocks_found", "nodes_before", "nodes_after", "rules", "self_check"):
        assert key in report
    # nodes_before counts the canonical form: the TorchScript Shape arithmetic (15 nodes in the
    # export) is folded first
    assert report["nodes_before"] == 12 and report["nodes_after"] == 9
    assert [e["rule"] for e in report["rules"]][-2:] == ["se_gate", "cleanup"]
    assert report["self_check"]["max_rel_diff"] <= 1e-5
    assert report["self_check"]["runs"] >= 2  # the se_gate batch and the final check


def _duplicate_pool_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p1"], name="gap1"),
        helper.make_node("GlobalAveragePool", ["x"], ["p2"], name="gap2"),
        helper.make_node("Identity", ["p2"], ["p3"], name="ident"),
        helper.make_node("Add", ["p1", "c1"], ["a1"], name="add1"),
        helper.make_node("Add", ["p3", "c2"], ["a2"], name="add2"),
        helper.make_node("Mul", ["a1", "a2"], ["y"], name="mul"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "c1"),
        onnx.numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "c2"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])
    graph = helper.make_graph(nodes, "dups", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_cleanup_merges_duplicates_and_identities() -> None:
    model = _duplicate_pool_model()
    result = fuse_model(model, rules=CLEANUP_RULES)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["GlobalAveragePool", "Add", "Mul"]  # equal pools, constants, Adds merged
    assert len(result.model.graph.initializer) == 1
    onnx.checker.check_model(result.model)
    match = result.report["rules"][0]["matches"][0]
    assert match["identity_nodes"] == 1 and match["duplicate_nodes"] >= 1


def test_cleanup_declines_nothing_to_do() -> None:
    model = export(Host(LinearSE(16)))
    fused = fuse_model(model, rules=SE_GATE_RULES).model
    again = fuse_model(fused, rules=CLEANUP_RULES)
    assert again.report["rules"][0]["matches"] == []
    assert again.report["nodes_after"] == again.report["nodes_before"]


def test_as_functions_runs_on_ort_and_matches() -> None:
    for module, name in (
        (Host(LinearSE(16, bn=True)), "SqueezeExcite"),
        (Host(ECA()), "ECA"),
        (Host(CBAMChannel(16)), "CBAMChannel"),
    ):
        model = export(module)
        result = fuse_model(model, as_functions=True)
        onnx.checker.check_model(result.model)
        calls = [n for n in result.model.graph.node if n.domain == "sase_deploy"]
        assert [n.op_type for n in calls] == [name]
        assert [f.name for f in result.model.functions] == [name]
        assert result.report["as_functions"]["functions"] == {name: 1}
        feed = self_check_feed(model)
        got = run_onnx(result.model, feed)
        ref = run_onnx(model, feed)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-5)


def test_as_functions_wraps_a_fused_sase_block() -> None:
    from sase_deploy.models.sase import SASEConv2d

    model = export(SASEConv2d(16, 16), shape=(1, 16, 8, 8))
    plain = fuse_model(model)
    result = fuse_model(model, as_functions=True)
    assert result.report["blocks_found"] == {"sase": 1}
    assert result.report["as_functions"]["functions"] == {"SASE": 1}
    onnx.checker.check_model(result.model)
    calls = [n for n in result.model.graph.node if n.domain == "sase_deploy"]
    assert [n.op_type for n in calls] == ["SASE"]
    assert len(result.model.graph.node) < len(plain.model.graph.node) - 10
    feed = self_check_feed(model)
    np.testing.assert_allclose(
        run_onnx(result.model, feed)["y"], run_onnx(plain.model, feed)["y"], rtol=0, atol=1e-6
    )


def test_as_functions_sle_takes_two_maps() -> None:
    result = fuse_model(export(SleHost(), (1, 3, 32, 32)), as_functions=True)
    call = next(n for n in result.model.graph.node if n.domain == "sase_deploy")
    assert call.op_type == "SLE"
    function = result.model.functions[0]
    assert "AveragePool" in [n.op_type for n in function.node]


class RaisingRule(DropScalarMul):
    """A rule whose rewrite crashes: the driver must revert and report, not die."""

    name = "raising"

    def rewrite(self, graph: gs.Graph, match: Match) -> None:
        raise ValueError("boom")


def test_rewrite_exception_is_reverted_and_reported() -> None:
    model = _scalar_mul_model()
    result = fuse_model(model, rules=(RaisingRule(),), canonical=True)
    entry = result.report["rules"][0]
    assert entry["reverted"] == 2 and entry["applied"] == 0
    assert all("boom" in m["reason"] for m in entry["matches"])
    assert len(result.model.graph.node) == len(model.graph.node)


def test_overflowing_original_compares_inf_positions() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["a"], name="times_one"),
        helper.make_node("Mul", ["a", "big"], ["b"], name="times_big"),
        helper.make_node("Exp", ["b"], ["y"], name="exp"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        onnx.numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "big"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    graph = helper.make_graph(nodes, "overflow", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    result = fuse_model(model, rules=(DropScalarMul(),), canonical=True)
    status = {m["anchor"]: m["status"] for m in result.report["rules"][0]["matches"]}
    assert status == {"times_one": "applied", "times_big": "reverted"}
    assert 0.0 < result.report["self_check"]["reference_finite_fraction"] < 1.0
