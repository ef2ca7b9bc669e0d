"""On every zoo model the fusion pass finds exactly the SE-family blocks the PyTorch model has."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from sase_deploy.calibration import graph
from sase_deploy.errors import ParityError
from sase_deploy.graph_io import canonicalise, load_onnx
from sase_deploy.models.registry import list_model_specs
from sase_deploy.rewrite import fuse_model
from sase_deploy.rewrite.gate_ops import RELAYOUT_OPS
from sase_deploy.rewrite.gates import find_gates

FAST = {"se_resnet_digits"}


ZOO = [
    pytest.param(s.name, marks=() if s.name in FAST else (pytest.mark.slow,))
    for s in list_model_specs()
]


@pytest.fixture(scope="module")
def zoo_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each zoo model exported unfused once for this module's tests (the path of its ONNX)."""
    folder = tmp_path_factory.mktemp("zoo")
    paths: dict[str, Path] = {}

    def export(name: str) -> Path:
        from sase_deploy.export import export_model

        if name not in paths:
            path = folder / f"{name}.onnx"
            try:
                export_model(name, path, fuse=False)
            except ParityError:  # export parity is the exporter's test, not fusion's
                path = folder / f"{name}.parity-failed.onnx"
            paths[name] = path
        return paths[name]

    return export


@pytest.mark.parametrize("name", ZOO)
def test_zoo_blocks_found(name: str, zoo_export: Callable[[str], Path]) -> None:
    spec = next(s for s in list_model_specs() if s.name == name)
    model = onnx.load(zoo_export(name))
    result = fuse_model(model)
    report = result.report
    assert report["blocks_found"] == dict(spec.se_blocks)
    # every SASE block fuses, and no SE/SLE/residual subgraph looks like one
    (sase,) = [entry for entry in report["rules"] if entry["rule"] == "sase_group"]
    assert sase["declines"] == []
    onnx.checker.check_model(result.model)
    check = report["self_check"]
    assert check["max_block_rel_diff"] <= 1e-5  # every rewritten block, at its own output
    # network outputs: 1e-5, or the model's own ORT noise floor where that is larger (README)
    assert check["max_rel_diff"] <= check["network_tolerance"]
    assert check["network_tolerance"] == max(1e-5, 2 * check["noise_floor"])
    assert report["nodes_after"] <= report["nodes_before"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_gates_kept_float_are_the_designed_ones(
    name: str, zoo_export: Callable[[str], Path]
) -> None:
    """INT8 keeps exactly the model's designed gates in float, found as fusion finds them."""
    spec = next(s for s in list_model_specs() if s.name == name)
    model = canonicalise(load_onnx(zoo_export(name), sort=True))  # as `calibrate` reads it
    shaped = graph.with_shapes(model)
    gates = find_gates(shaped)
    assert dict(collections.Counter(g.kind for g in gates)) == dict(spec.se_blocks)
    # fusion names the same blocks, by the same outputs and kinds, on the same graph
    blocks: dict[str, str] = {}
    for entry in fuse_model(model, self_check=False).report["rules"]:
        for match in entry["matches"]:  # the first rule to report a block names it
            if match["kind"] is not None:
                key = match["block_output"] or f"{entry['rule']}:{match['anchor']}"
                blocks.setdefault(key, match["kind"])
    assert {g.output: g.kind for g in gates} == blocks
    kept = graph.gate_path_nodes(shaped)
    ops = {n.name: n.op_type for n in shaped.graph.node}
    for gate in gates:
        assert set(gate.path) <= kept
        assert {ops[n] for n in gate.path} & {"Conv", "Gemm", "MatMul"}  # an MLP stays float
        if gate.kind != "sase":  # a channel gate ends in its sigmoid (then relayouts)
            computing = [ops[n] for n in gate.path if ops[n] not in RELAYOUT_OPS]
            assert computing[-1] in ("Sigmoid", "HardSigmoid", "Div", "Clip"), gate
