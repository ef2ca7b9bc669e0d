"""The one gate detector on what `deploy` calibrates: the fused export, SASE blocks included."""

from __future__ import annotations

import onnx
import pytest

from sase_deploy.models.registry import get_model_spec
from sase_deploy.rewrite.gates import find_gates


@pytest.mark.parametrize("name", ["se_resnet_digits", "sase_resnet_digits"])
def test_fused_export_has_the_designed_gates(name: str, digits_exports) -> None:  # type: ignore[no-untyped-def]
    """Fused or not, the gates found are the registry's `se_blocks`; in the fused SASE form
    (one batched style MLP per block) the path is the pool and the style MLP."""
    for fuse in (False, True):
        gates = find_gates(onnx.load(digits_exports.get(name, fuse=fuse)))
        kinds: dict[str, int] = {}
        for gate in gates:
            kinds[gate.kind] = kinds.get(gate.kind, 0) + 1
        assert kinds == dict(get_model_spec(name).se_blocks), (fuse, kinds)
    fused = onnx.load(digits_exports.get(name))
    ops = {n.name: n.op_type for n in fused.graph.node}
    for gate in find_gates(fused):
        path_ops = [ops[n] for n in gate.path]
        assert path_ops[0] in ("GlobalAveragePool", "ReduceMean") and "Conv" in path_ops


def test_int8_keeps_fused_sase_style_branches_float(digits_exports, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sase_deploy.calibration.api import calibrate_onnx
    from sase_deploy.models.digits_data import write_digits_npz

    fused = digits_exports.get("sase_resnet_digits")
    data = str(write_digits_npz(tmp_path / "calib.npz", "calibration"))
    result = calibrate_onnx(fused, data, tmp_path, samples=32)
    model = onnx.load(fused)
    ops = {n.name: n.op_type for n in model.graph.node}
    styles = {n for g in find_gates(model) for n in g.path if ops[n] == "Conv"}
    assert len(styles) == 4  # two blocks, two style Convs each
    assert styles <= set(result.kept_float) and not styles & set(result.quantized_nodes)
