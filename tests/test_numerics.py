"""The portable equality check itself: passes exact rewrites on any CPU, fails real errors."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from numerics import assert_rewrite_equivalent
from onnx import numpy_helper
from rewrite_blocks import SlimBlock, apply_rule, export_slim, random_feed, slim_args

from sase_deploy.rewrite.rules.sase_group import SaseGroupFusion


@pytest.fixture(scope="module")
def slim_pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    torch.manual_seed(0)
    model = export_slim(SlimBlock(), (*slim_args()[:2], torch.zeros(2, 1, 8, 8)), False)
    fused, _ = apply_rule(SaseGroupFusion(), model)
    return model, fused


def _scale_weight(model: onnx.ModelProto, name: str, relative: float) -> onnx.ModelProto:
    """Initializer `name` scaled by (1 + relative): a rewrite off by that much."""
    changed = copy.deepcopy(model)
    init = next(t for t in changed.graph.initializer if t.name == name)
    values = numpy_helper.to_array(init) * np.float32(1 + relative)
    init.CopyFrom(numpy_helper.from_array(values.astype(np.float32), init.name))
    return changed


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_fusion_passes(
    slim_pair: tuple[onnx.ModelProto, onnx.ModelProto], threads: int
) -> None:
    model, fused = slim_pair
    assert_rewrite_equivalent(model, fused, random_feed(model, 2), threads=threads)


def test_perturbed_weight_fails(slim_pair: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    model, fused = slim_pair
    # the grouped style projection's weight (the fused block's last Conv before the mix)
    wrong = _scale_weight(fused, "sase_group//Div/style1_W", 1e-4)
    with pytest.raises(AssertionError, match="differs in float64"):
        assert_rewrite_equivalent(model, wrong, random_feed(model, 2))
