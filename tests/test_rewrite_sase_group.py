"""SASE/SLIM group fusion: fires on faithful blocks from both exporters, declines near misses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import pytest
import torch
import torch.nn.functional as F
from numerics import assert_rewrite_equivalent
from rewrite_blocks import (
    ECA,
    CBAMChannel,
    Host,
    LinearSE,
    SleHost,
    SlimBlock,
    TimmSE,
    apply_rule,
    compute_nodes,
    export,
    export_slim,
    random_feed,
    slim_args,
)
from torch import nn

from sase_deploy.graph_io import canonicalise
from sase_deploy.rewrite.rule import Decline, Match
from sase_deploy.rewrite.rules.sase_group import SaseGroupFusion

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def _assert_equal_outputs(a: onnx.ModelProto, b: onnx.ModelProto, batch: int) -> None:
    """Equal in float64, and no less accurate in float32 on this CPU (see tests/numerics.py)."""
    assert_rewrite_equivalent(a, b, random_feed(a, batch))


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_slim_block_fuses_to_grouped_convs(dynamo: bool) -> None:
    torch.manual_seed(0)
    model = export_slim(SlimBlock(), (*slim_args()[:2], torch.zeros(2, 1, 8, 8)), dynamo)
    fused, results = apply_rule(SaseGroupFusion(), model)
    matches = [r for r in results if isinstance(r, Match)]
    assert len(matches) == 1 and matches[0].kind == "sase"
    assert matches[0].block_output is not None
    onnx.checker.check_model(fused, full_check=True)
    ops = _ops(fused)
    assert ops.count("Resize") == 1 and ops.count("MatMul") == 1 and ops.count("Split") == 0
    grouped = [n for n in fused.graph.node if n.op_type == "Conv"]
    assert len(grouped) == 6 and all(
        next(a.i for a in n.attribute if a.name == "group") == 4 for n in grouped
    )
    assert len(fused.graph.node) < 0.4 * len(_ops(model))
    _assert_equal_outputs(model, fused, batch=2)
    if not dynamo:  # dynamic batch survives the rewrite
        _assert_equal_outputs(model, fused, batch=3)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_slim_block_with_resize_scales_fuses(dynamo: bool) -> None:
    torch.manual_seed(7)
    args = (*slim_args()[:2], torch.zeros(2, 1, 8, 8))
    model = export_slim(SlimBlock(mode="nearest-scale"), args, dynamo)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"], results
    onnx.checker.check_model(fused, full_check=True)
    assert [n.op_type for n in fused.graph.node].count("Resize") == 1
    _assert_equal_outputs(model, fused, batch=2)


@pytest.mark.parametrize(
    ("dynamo", "stride"),
    [
        pytest.param(True, 1, marks=pytest.mark.slow, id="dynamo-1"),
        pytest.param(True, 2, id="dynamo-2"),
        pytest.param(False, 1, id="torchscript-1"),
        pytest.param(False, 2, id="torchscript-2"),
    ],
)
def test_sase_recognition_conv_fuses(dynamo: bool, stride: int) -> None:
    from sase_deploy.models.sase import SASEConv2d

    torch.manual_seed(1)
    block = SASEConv2d(64, 32, stride=stride)
    model = export_slim(block, (torch.randn(2, 64, 12, 12),), dynamo)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"]
    onnx.checker.check_model(fused, full_check=True)
    assert _ops(fused).count("Resize") == (1 if stride == 2 else 0)
    _assert_equal_outputs(model, fused, batch=2)


@pytest.mark.parametrize(
    "dynamo",
    [pytest.param(True, id="dynamo", marks=pytest.mark.slow), pytest.param(False, id="ts")],
)
def test_concat_noise_variant_carries_noise(dynamo: bool) -> None:
    torch.manual_seed(2)
    model = export_slim(SlimBlock(concat_noise=True, dilation=4), slim_args(), dynamo)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"]
    onnx.checker.check_model(fused, full_check=True)
    assert _ops(fused).count("Sigmoid") == 1
    _assert_equal_outputs(model, fused, batch=2)  # random (non-zero) noise input


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"mode": "bilinear"}, "interpolation"),
        ({"normalise": "eps outside"}, "eps on the wrong side"),
        ({"odd_group": True}, "mismatched shapes"),
    ],
)
def test_declines_near_misses(kwargs: dict, reason: str) -> None:
    torch.manual_seed(3)
    model = export_slim(SlimBlock(**kwargs), (*slim_args()[:2], torch.zeros(2, 1, 8, 8)), False)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert not any(isinstance(r, Match) for r in results)
    declines = [r for r in results if isinstance(r, Decline)]
    assert len(declines) == 1 and reason in declines[0].reason, declines
    assert compute_nodes(fused) == compute_nodes(model)  # nothing rewritten


LOOKS_LIKE = "looks like a SASE/SLIM block (4 groups of masks x style vectors) but "
STYLE_NOT = "is not GAP -> Linear [-> BN] -> ReLU -> ... -> Linear: "
MASK_NOT = "is not Sigmoid(convs on a channel group of the source) [-> nearest Resize]: "
# SASE-shaped blocks the rule cannot read: (module, how many inputs it takes, reason excerpt)
LOOKALIKES: dict[str, tuple[Callable[[], nn.Module], int, str]] = {
    "tanh-style": (lambda: SlimBlock(style_act=nn.Tanh), 3, f"{STYLE_NOT}Tanh"),
    "softmax-masks": (lambda: SlimBlock(masks="softmax"), 3, f"{MASK_NOT}Softmax"),
    "mean-over-groups": (
        lambda: SlimBlock(normalise="groups"),
        3,
        "is a term of the denominator (expected sum m*s / (sum m + eps))",
    ),
    "not-normalised": (
        lambda: SlimBlock(normalise="none"),
        3,
        "nothing divides the sum by the sum of the masks + eps",
    ),
    "stacked-softmax-masks": (
        lambda: _official_block("stack", "softmax_masks"),
        2,
        f"{MASK_NOT}Softmax",
    ),
}


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("lookalike", sorted(LOOKALIKES))
def test_sase_lookalikes_are_declined_with_the_reason(lookalike: str, dynamo: bool) -> None:
    """Mask x style modulations summed over groups that the matcher cannot read are reported
    (formerly silently skipped), on the canonical graph `fuse` hands the rules."""
    make, inputs, reason = LOOKALIKES[lookalike]
    torch.manual_seed(11)
    args = (*slim_args()[:2], torch.zeros(2, 1, 8, 8))[:inputs]
    model = canonicalise(export_slim(make(), args, dynamo))
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert len(results) == 1 and isinstance(results[0], Decline), results
    assert results[0].reason.startswith(LOOKS_LIKE), results[0].reason
    assert reason in results[0].reason, results[0].reason
    assert compute_nodes(fused) == compute_nodes(model)  # nothing rewritten


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_other_blocks_get_no_sase_report(dynamo: bool) -> None:
    """SE gates (timm, Linear + BN), ECA, CBAM, FastGAN's SLE and a residual SE block have no
    mask x style modulation: the rule neither matches nor declines anything in them."""
    from sase_deploy.models.resnets import SEBasicBlock

    hosts = {
        "timm_se": Host(TimmSE(16)),
        "linear_se": Host(LinearSE(16, bn=True)),
        "eca": Host(ECA()),
        "cbam": Host(CBAMChannel(16)),
        "sle": SleHost(),
        "residual_se": Host(
            nn.Sequential(SEBasicBlock(16, 16, reduction=4), SEBasicBlock(16, 16, reduction=4))
        ),
    }
    for name, host in hosts.items():
        model = canonicalise(export(host, dynamo=dynamo))
        assert apply_rule(SaseGroupFusion(), model)[1] == [], name


def _zoo_block(module: nn.Module) -> nn.Module:
    from sase_deploy.models.checkpoint import bake_spectral_norm

    bake_spectral_norm(module)
    with torch.no_grad():  # non-trivial BN statistics (the zoo starts at mean 0, var 1)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


@pytest.mark.parametrize(
    ("name", "source", "target", "dynamo"),
    [("se_128", (512, 8), (64, 128), True), ("se_256", (256, 16), (32, 256), False)],
)
def test_fastgan_slim_256_blocks_fuse(
    name: str, source: tuple, target: tuple, dynamo: bool
) -> None:
    from sase_deploy.models.slim import SLIMBlock

    torch.manual_seed(4)
    # the generator's block class, built alone at fastgan_slim_256's in-network shapes
    block = _zoo_block(SLIMBlock(source[0], source[1], target[0], target[1]))
    args = (torch.randn(1, source[0], source[1], source[1]),
            torch.randn(1, target[0], target[1], target[1]))  # fmt: skip
    model = export_slim(block, args, dynamo)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"], results
    onnx.checker.check_model(fused, full_check=True)
    assert compute_nodes(fused) <= 0.5 * compute_nodes(model)
    assert sum(n.op_type == "Conv" for n in fused.graph.node) == 6
    _assert_equal_outputs(model, fused, batch=1)


def test_slim_1024_mask_noise_input_is_carried() -> None:
    from sase_deploy.models.slim import SLIMBlock

    torch.manual_seed(5)
    block = _zoo_block(SLIMBlock(128, 8, 16, 32, dilation=4, mask_noise=True))
    assert block.noise_injection is not None
    with torch.no_grad():
        block.noise_injection.weight.fill_(0.7)  # trained weights are non-zero
    block.noise_injection.mode = "input"
    model = export_slim(block, slim_args(128, 16, 8, 32), False)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"], results
    onnx.checker.check_model(fused, full_check=True)
    assert [i.name for i in fused.graph.input] == [i.name for i in model.graph.input]
    _assert_equal_outputs(model, fused, batch=2)  # the noise input is random, not zero
    _assert_equal_outputs(model, fused, batch=1)


class HalfFusedSlim(nn.Module):
    """A zoo SLIMBlock's branches run in the half-fused form the rule also accepts: styles
    stacked (B, Cout, G) @ sigmoid(cat logits [+ noise]) (B, G, h*h), mixed at the source
    resolution, then one nearest Resize of the style (the zoo block's former forward)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, xs: torch.Tensor, xb: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b = self.block
        chunks = torch.split(xs, b.group_channels, dim=1)
        styles = torch.stack([br(x) for x, br in zip(chunks, b.channel_attn, strict=True)], 2)
        logits = torch.cat([br(x) for x, br in zip(chunks, b.spatial_attn, strict=True)], 1)
        if b.noise_injection is not None:
            logits = b.noise_injection(logits, noise)
        masks = torch.sigmoid(logits)
        side = b.size_in
        mixed = torch.matmul(styles, masks.reshape(-1, b.groups, side * side))
        mixed = mixed.reshape(-1, b.ch_out, side, side)
        style = mixed / (masks.sum(dim=1, keepdim=True) + 1e-6) + 1
        return xb * F.interpolate(style, scale_factor=b.size_out // side, mode="nearest")


@pytest.mark.parametrize(
    ("mask_noise", "dynamo"), [(False, True), (True, False)], ids=["256-dynamo", "1024-ts"]
)
def test_half_fused_slim_block_fuses(mask_noise: bool, dynamo: bool) -> None:
    from sase_deploy.models.slim import SLIMBlock

    torch.manual_seed(7)
    block = _zoo_block(SLIMBlock(128, 8, 16, 32, dilation=4, mask_noise=mask_noise))
    if block.noise_injection is not None:
        with torch.no_grad():
            block.noise_injection.weight.fill_(0.7)
        block.noise_injection.mode = "input"
    model = export_slim(HalfFusedSlim(block).eval(), slim_args(128, 16, 8, 32), dynamo)
    assert "MatMul" in _ops(model)  # really the half-fused form
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"], results
    onnx.checker.check_model(fused, full_check=True)
    assert [i.name for i in fused.graph.input] == [i.name for i in model.graph.input]
    _assert_equal_outputs(model, fused, batch=2)


def test_sase_resnet_bottleneck_fuses() -> None:
    from sase_deploy.models.resnets import sase_resnet50

    torch.manual_seed(6)
    block = _zoo_block(sase_resnet50().layer2[0])  # stride 2: the masks are resized
    model = export_slim(block, (torch.randn(2, 256, 16, 16),), False)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"], results
    onnx.checker.check_model(fused, full_check=True)
    assert compute_nodes(fused) <= 0.5 * compute_nodes(model)
    _assert_equal_outputs(model, fused, batch=3)


class OfficialStackedSlim(nn.Module):
    """The zoo SLIMBlock's parameters run through the official InceptionBlock forward: the G
    masks stacked to (B, G, 1, H, W), the styles to (B, G, Cout, 1, 1), multiplied, summed
    over the group axis (torch.sum(dim=1)) and divided by the summed masks + eps.
    `spelling` picks torch.cat of (B, 1, ...) slices or torch.stack; `variant` makes near misses
    (eps inside the numerator sum; products summed over the Cout axis instead of the groups;
    masks from a softmax across the groups instead of per-group sigmoids)."""

    def __init__(self, block: nn.Module, spelling: str = "cat", variant: str = "official") -> None:
        super().__init__()
        self.block, self.spelling, self.variant = block, spelling, variant

    def forward(self, xs: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        b = self.block
        chunks = torch.split(xs, b.group_channels, dim=1)
        styles = [br(x) for x, br in zip(chunks, b.channel_attn, strict=True)]
        if self.variant == "softmax_masks":
            logits = torch.cat([br(x) for x, br in zip(chunks, b.spatial_attn, strict=True)], 1)
            masks = list(F.interpolate(torch.softmax(logits, 1), b.size_out).split(1, 1))
        else:
            masks = [
                F.interpolate(torch.sigmoid(br(x)), b.size_out)
                for x, br in zip(chunks, b.spatial_attn, strict=True)
            ]
        if self.spelling == "cat":
            ch = torch.cat([s.unsqueeze(1) for s in styles], 1)[..., None, None]
            sp = torch.cat(masks, 1).unsqueeze(2)
        else:
            ch = torch.stack([s[:, :, None, None] for s in styles], dim=1)
            sp = torch.stack(masks, dim=1)
        if self.variant == "eps_in_numerator":
            return xb * (torch.sum(sp * ch + 1e-6, dim=1) / torch.sum(sp, dim=1) + 1)
        axis = 2 if self.variant == "wrong_axis" else 1
        return xb * (torch.sum(sp * ch, dim=axis) / (torch.sum(sp, dim=1) + 1e-6) + 1)


def _official_block(spelling: str = "cat", variant: str = "official", cout: int = 16) -> nn.Module:
    from sase_deploy.models.slim import SLIMBlock

    block = _zoo_block(SLIMBlock(64, 8, cout, 32, reduction=4))
    return OfficialStackedSlim(block, spelling, variant).eval()


@pytest.mark.parametrize(
    ("dynamo", "spelling"),
    [(True, "cat"), (False, "cat"), (True, "stack"), (False, "stack")],
    ids=["dynamo-cat", "torchscript-cat", "dynamo-stack", "torchscript-stack"],
)
def test_official_stacked_form_fuses(dynamo: bool, spelling: str) -> None:
    torch.manual_seed(8)
    model = export_slim(_official_block(spelling), slim_args()[:2], dynamo)
    assert "ReduceSum" in _ops(model) and "Concat" in _ops(model)  # really the stacked form
    fused, results = apply_rule(SaseGroupFusion(), model)
    matches = [r for r in results if isinstance(r, Match)]
    assert [m.kind for m in matches] == ["sase"] and len(results) == 1, results
    assert matches[0].block_output is not None
    onnx.checker.check_model(fused, full_check=True)
    ops = _ops(fused)
    assert ops.count("Resize") == 1 and ops.count("MatMul") == 1
    assert ops.count("Split") == ops.count("Concat") == ops.count("Unsqueeze") == 0
    grouped = [n for n in fused.graph.node if n.op_type == "Conv"]
    assert len(grouped) == 6 and all(
        next(a.i for a in n.attribute if a.name == "group") == 4 for n in grouped
    )
    assert compute_nodes(fused) <= 0.4 * compute_nodes(model)
    _assert_equal_outputs(model, fused, batch=2)
    if not dynamo:  # dynamic batch survives the rewrite
        _assert_equal_outputs(model, fused, batch=3)


@pytest.mark.parametrize(
    ("variant", "cout", "reason"),
    [
        ("eps_in_numerator", 16, "inside the numerator's group sum"),
        ("wrong_axis", 4, "summed over axis 2"),  # Cout == G so the wrong sum still broadcasts
    ],
)
def test_official_stacked_form_declines_near_misses(variant: str, cout: int, reason: str) -> None:
    torch.manual_seed(9)
    xs, xb = torch.randn(2, 64, 8, 8), torch.randn(2, cout, 32, 32)
    model = export_slim(_official_block("cat", variant, cout), (xs, xb), False)
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert not any(isinstance(r, Match) for r in results)
    declines = [r for r in results if isinstance(r, Decline)]
    assert len(declines) == 1 and reason in declines[0].reason, declines
    assert compute_nodes(fused) == compute_nodes(model)  # nothing rewritten


def _build_with_tensorrt_rtx(trt: Any, model: onnx.ModelProto) -> None:
    """Parse `model` and build an engine for one compute capability (no GPU needed), with a
    1..4 profile on every input's dynamic batch dim."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        pytest.fail(f"TensorRT-RTX rejects the graph: {parser.get_error(0).desc()}")
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        batch, *rest = tuple(tensor.shape)
        assert batch == -1, f"{tensor.name} has a static batch"
        profile.set_shape(tensor.name, (1, *rest), (2, *rest), (4, *rest))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


@pytest.mark.parametrize(
    ("side", "target"),
    [(8, "scales"), (7, "sizes")],  # 8 -> 4 is an exact scale; 7 -> 4 is not
    ids=["8to4-scales", "7to4-shape-sizes"],
)
@pytest.mark.rtx
def test_fused_dynamic_batch_graph_builds_with_tensorrt_rtx(
    side: int, target: str, rtx: Any
) -> None:
    """TensorRT's ONNX parser failed on the fused Resize (constant sizes + axes) under a
    dynamic batch: 'axis 0 with inherently negative length'."""
    from sase_deploy.engines.flavours import trt_module
    from sase_deploy.models.sase import SASEConv2d

    trt = trt_module(rtx)

    torch.manual_seed(10)
    block = _zoo_block(SASEConv2d(32, 32, stride=2, reduction=4))  # digits' 2nd stage, 4x4 out
    model = export_slim(block, (torch.randn(2, 32, side, side),), False)  # dynamic batch
    fused, results = apply_rule(SaseGroupFusion(), model)
    assert [r.kind for r in results if isinstance(r, Match)] == ["sase"], results
    onnx.checker.check_model(fused, full_check=True)
    (resize,) = [n for n in fused.graph.node if n.op_type == "Resize"]
    assert "axes" not in {a.name for a in resize.attribute}
    produced = {o: n.op_type for n in fused.graph.node for o in n.output}
    if target == "scales":
        assert len(resize.input) == 3 and resize.input[2]
    else:
        assert produced[resize.input[3]] == "Concat"
    _assert_equal_outputs(model, fused, batch=3)
    _build_with_tensorrt_rtx(trt, fused)
