"""Recognition networks: official layouts, block formulas, pooling lowering, specs, export."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sase_deploy.models import resnets
from sase_deploy.models.pooling import (
    ExportableAdaptiveAvgPool2d,
    adaptive_avg_pool2d_exportable,
    adaptive_avg_pool_matrix,
    adaptive_pool_bins,
)
from sase_deploy.models.sase import STYLE_EPS, SASEConv2d
from sase_deploy.models.se import SqueezeExcitation
from sase_deploy.models.spec import sample_inputs
from sase_deploy.models.spse import RGSEBottleneck, SPSEBottleneck, rgse_resnet50, spse_resnet50

LAYOUTS = Path("/work/shared/official_layouts")
GATE_TYPES = {
    "se": SqueezeExcitation,
    "sase": SASEConv2d,
    "spse": SPSEBottleneck,
    "rgse": RGSEBottleneck,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small CPU kernels: extra OpenMP threads only spin-wait on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _layout(name: str) -> dict:
    path = LAYOUTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"official layout {path} not available on this machine")
    return json.loads(path.read_text())


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running stats so eval-mode BN is not the identity in formula checks."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            n = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


# ---------------------------------------------------------------- pooling


@pytest.mark.parametrize("in_size", [7, 14, 28, 56])
@pytest.mark.parametrize("out_size", [1, 2, 4])
def test_exportable_pool_equals_adaptive_avg_pool(in_size: int, out_size: int) -> None:
    x = torch.randn(2, 5, in_size, in_size, dtype=torch.float64)
    expected = nn.AdaptiveAvgPool2d(out_size)(x)
    got = ExportableAdaptiveAvgPool2d(out_size)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((7, 14), (4, 2)), ((3, 5), (4, 4)), ((9, 6), (2, 3))]
)
def test_exportable_pool_non_square_and_upsampling(
    in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> None:
    x = torch.randn(1, 3, *in_hw)
    torch.testing.assert_close(
        adaptive_avg_pool2d_exportable(x, out_hw), F.adaptive_avg_pool2d(x, out_hw)
    )


def test_pool_matrix_rows_average_the_overlapping_bins() -> None:
    assert adaptive_pool_bins(7, 4) == [(0, 2), (1, 4), (3, 6), (5, 7)]
    matrix = adaptive_avg_pool_matrix(7, 4)
    torch.testing.assert_close(matrix.sum(1), torch.ones(4))
    assert matrix[1].tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    with pytest.raises(ValueError):
        ExportableAdaptiveAvgPool2d(0)


# ---------------------------------------------------------------- blocks


def test_se_gate_matches_hand_formula() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=8).eval()
    x = torch.randn(2, 32, 5, 5)
    pooled = x.mean((2, 3))
    w1, b1 = se.fc1.weight.flatten(1), se.fc1.bias
    w2, b2 = se.fc2.weight.flatten(1), se.fc2.bias
    gate = torch.sigmoid(F.linear(F.relu(F.linear(pooled, w1, b1)), w2, b2))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert se.fc1.out_channels == 4


def _sase_by_hand(block: SASEConv2d, x: torch.Tensor) -> torch.Tensor:
    """The SASE formula written out with functional ops from the block's parameters."""

    def bn(t: torch.Tensor, m: nn.Module) -> torch.Tensor:
        assert isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    y = F.conv2d(x, block.conv.weight, stride=block.conv.stride, padding=1)
    numerator = torch.zeros_like(y)
    denominator = torch.zeros(y.shape[0], 1, *y.shape[2:])
    cg = x.shape[1] // block.groups
    for g in range(block.groups):
        chunk = x[:, g * cg : (g + 1) * cg]
        c, s = block.channel_attn[g], block.spatial_attn[g]
        style = F.linear(chunk.mean((2, 3)), c[2].weight, c[2].bias)
        style = F.linear(F.relu(bn(style, c[3])), c[5].weight, c[5].bias)
        mask = F.relu(bn(F.conv2d(chunk, s[0].weight, s[0].bias), s[1]))
        for conv_i, bn_i in ((3, 4), (6, 7)):
            mask = F.conv2d(mask, s[conv_i].weight, s[conv_i].bias, padding=2, dilation=2)
            mask = F.relu(bn(mask, s[bn_i]))
        mask = torch.sigmoid(F.conv2d(mask, s[9].weight, s[9].bias))
        mask = F.interpolate(mask, size=y.shape[2:], mode="nearest")
        numerator = numerator + mask * style[:, :, None, None]
        denominator = denominator + mask
    return y * (numerator / (denominator + STYLE_EPS) + 1)


@pytest.mark.parametrize(("groups", "reduction", "stride"), [(4, 16, 1), (2, 2, 1), (4, 2, 2)])
def test_sase_block_reduces_to_the_style_formula(groups: int, reduction: int, stride: int) -> None:
    torch.manual_seed(1)
    block = SASEConv2d(16, 12, stride=stride, groups=groups, reduction=reduction)
    for branch in block.channel_attn:  # a strong style so the check is not dominated by y * 1
        nn.init.normal_(branch[5].weight, std=0.5)
    _randomise_bn(block)
    block.eval()
    x = torch.randn(2, 16, 8, 8)
    expected = _sase_by_hand(block, x)
    got = block(x)
    assert got.shape == (2, 12, 8 // stride, 8 // stride)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, block.conv(x), atol=1e-2), "style must modulate the conv"


def test_sase_block_is_configurable() -> None:
    block = SASEConv2d(64, 64, groups=8, reduction=4)
    assert len(block.channel_attn) == len(block.spatial_attn) == 8
    assert block.channel_attn[0][2].weight.shape == (2, 8)  # Linear(Cg=8 -> Cr=2)
    assert block.spatial_attn[0][9].weight.shape == (1, 2, 1, 1)
    assert block.spatial_attn[0][3].dilation == (2, 2)
    tiny = SASEConv2d(8, 8, groups=4, reduction=16)  # Cg = 2 < r: Cr is guarded to 1
    assert tiny.hidden == 1 and tiny.channel_attn[0][2].weight.shape == (1, 2)
    with pytest.raises(ValueError, match="divisible"):
        SASEConv2d(10, 10, groups=4)
    model = resnets.sase_resnet26(groups=2, reduction=8)
    conv2 = model.layer1[0].conv2
    assert isinstance(conv2, SASEConv2d) and conv2.groups == 2 and conv2.hidden == 4


def test_random_init_sase_masks_stay_out_of_the_sigmoid_tail() -> None:
    """ORT's Sigmoid flushes to 0 below about -17 where torch does not; with eps = 1e-6 that
    tail would decide the style, so random-init nets must keep mask logits moderate."""
    torch.manual_seed(5)
    model = resnets.sase_resnet26().eval()
    logits: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, SASEConv2d):
            for mask_net in module.spatial_attn:
                mask_net.get_submodule("9").register_forward_hook(
                    lambda _m, _i, out: logits.append(out)
                )
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224))
    assert len(logits) == 8 * 4
    assert max(float(t.abs().max()) for t in logits) < 10
    assert max(float(t.std()) for t in logits) > 1e-3  # masks still vary spatially


def _spse_gate_reference(block: SPSEBottleneck, res: torch.Tensor) -> torch.Tensor:
    """SPSE gate computed with torch's own nn.AdaptiveAvgPool2d (the official semantics)."""
    summed = (
        block.fc_spatial1(nn.AdaptiveAvgPool2d(1)(res))
        + block.fc_spatial2(nn.AdaptiveAvgPool2d(2)(res))
        + block.fc_spatial4(nn.AdaptiveAvgPool2d(4)(res))
    )
    hidden = F.relu(block.fc_reduction(F.relu(block.fc_bn(summed)).flatten(1)))
    return torch.sigmoid(block.fc_extention(hidden))[:, :, None, None]


@pytest.mark.parametrize("size", [7, 14, 28])
def test_spse_gate_matches_adaptive_pool_semantics(size: int) -> None:
    torch.manual_seed(2)
    block = SPSEBottleneck(64, 16)
    _randomise_bn(block)
    block.eval()
    res = torch.randn(2, 64, size, size)
    torch.testing.assert_close(block.gate(res), _spse_gate_reference(block, res))


def test_rgse_layer4_has_no_spatial_conv_and_keeps_its_relu() -> None:
    model = rgse_resnet50().eval()
    assert len(model.layer4[0].fc_spatial) == 0
    assert model.layer3[0].fc_spatial.fc_spatial.kernel_size == (2, 2)
    block = model.layer4[1]
    res = torch.randn(1, 2048, 7, 7)
    pooled = F.relu(res.mean((2, 3)))
    hidden = F.relu(block.fc_reduction(pooled))
    expected = torch.sigmoid(block.fc_extention(hidden))[:, :, None, None]
    torch.testing.assert_close(block.gate(res), expected)


# ---------------------------------------------------------------- official layouts


# Fingerprints of the official layouts (sha256 of the ordered [key, shape, dtype] list and of
# parameters_in_order, as JSON) so the check also runs where /work/shared is absent (CI).
OFFICIAL = {
    "spse_resnet50": {
        "factory": spse_resnet50,
        "layout_sha": "ea05b1b066a37dddb40f52884becf9a60a4f8e709bc487398d174dde18933cfa",
        "params_sha": "9e12d1d46ed35cc3436e32034d035805e5cd08a1d1fa27d990b659147b318543",
        "counts": (560, 28_480_728, 353, 207, 28_564_125),
    },
    "rgse_resnet50": {
        "factory": rgse_resnet50,
        "layout_sha": "59f74018fc80ab7429e4ef396ee7d7d6644da14e2ba5e2b2f0b760869a8a1a4d",
        "params_sha": "26f2290cd18b7a8fbddf25888c947be0c90840743473dd9e5777559ac14cc30d",
        "counts": (462, 28_212_440, 264, 198, 28_283_546),
    },
}


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def _fingerprint(model: nn.Module) -> tuple[str, str, tuple[int, ...]]:
    state = model.state_dict()
    layout = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
    params = [n for n, _ in model.named_parameters()]
    counts = (
        len(state),
        sum(p.numel() for p in model.parameters()),
        len(params),
        len(list(model.buffers())),
        sum(t.numel() for t in state.values()),
    )
    return _sha(layout), _sha(params), counts


@pytest.fixture(scope="module", params=sorted(OFFICIAL))
def official_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    return request.param, OFFICIAL[request.param]["factory"]()


def test_official_layout_fingerprint(official_model: tuple[str, nn.Module]) -> None:
    name, model = official_model
    expected = OFFICIAL[name]
    assert _fingerprint(model) == (
        expected["layout_sha"],
        expected["params_sha"],
        expected["counts"],
    )


def test_official_layout_matches_the_json_key_by_key(official_model: tuple[str, nn.Module]) -> None:
    name, model = official_model
    layout = _layout(name)
    state = model.state_dict()
    assert list(state) == list(layout["keys"])  # same keys, same order
    for key, shape in layout["keys"].items():
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype).removeprefix("torch.") == layout["dtypes"][key], key
    assert [n for n, _ in model.named_parameters()] == layout["parameters_in_order"]
    counts = (
        layout["num_keys"],
        layout["num_parameters"],
        layout["num_parameter_tensors"],
        layout["num_buffer_tensors"],
        layout["num_state_dict_elements"],
    )
    assert _fingerprint(model)[2] == counts
    # the fingerprint constants above are derived from this very file
    digest = [[k, v, layout["dtypes"][k]] for k, v in layout["keys"].items()]
    assert _sha(digest) == OFFICIAL[name]["layout_sha"]
    assert _sha(layout["parameters_in_order"]) == OFFICIAL[name]["params_sha"]
    # An official checkpoint (after stripping DataParallel's 'module.') loads strictly.
    official = {f"module.{k}": torch.zeros(v) for k, v in layout["keys"].items()}
    model.load_state_dict({k.removeprefix("module."): v for k, v in official.items()})


# ---------------------------------------------------------------- networks and specs


@pytest.fixture(scope="module", params=[s.name for s in resnets.SPECS])
def built(request: pytest.FixtureRequest) -> tuple:
    spec = next(s for s in resnets.SPECS if s.name == request.param)
    torch.manual_seed(0)
    return spec, spec.factory().eval()


def test_forward_shape_dtype_and_determinism(built: tuple) -> None:
    spec, model = built
    x = torch.from_numpy(sample_inputs(spec.inputs[:1], seed=0)[spec.inputs[0].name])
    assert tuple(x.shape) == (1, 3, 224, 224)
    with torch.inference_mode():
        first = model(x)
        second = model(x)
    assert first.shape == (1, 1000) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


def test_spec_counts_the_gates_really_present(built: tuple) -> None:
    spec, model = built
    counts = {
        kind: sum(isinstance(m, cls) for m in model.modules()) for kind, cls in GATE_TYPES.items()
    }
    assert {k: v for k, v in counts.items() if v} == dict(spec.se_blocks)
    assert spec.family in spec.se_blocks
    assert spec.task == "classification" and spec.output_names == ("logits",)
    assert spec.preprocess is not None and spec.preprocess.size == (224, 224)
    assert spec.source
    if spec.family == "sase":
        assert spec.source == "reconstruction"


def test_specs_cover_the_zoo() -> None:
    names = [s.name for s in resnets.SPECS]
    assert names == [
        "se_resnet18",
        "se_resnet50",
        "sase_resnet26",
        "sase_resnet50",
        "spse_resnet50",
        "rgse_resnet50",
    ]
    params = {s.name: sum(p.numel() for p in s.factory().parameters()) for s in resnets.SPECS[:2]}
    assert params == {"se_resnet18": 11_778_592, "se_resnet50": 28_088_024}  # as timm's SE nets


# ---------------------------------------------------------------- export


def _onnx_parity(module: nn.Module, x: torch.Tensor, path: Path, dynamo: bool) -> float:
    import onnxruntime as ort

    module.eval()
    with torch.inference_mode():
        ref = module(x).numpy()
    torch.onnx.export(module, (x,), str(path), dynamo=dynamo, input_names=["x"], opset_version=18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_uneven_pools_export_with_torchscript_exporter(tmp_path: Path) -> None:
    torch.manual_seed(3)
    pool = nn.Sequential(ExportableAdaptiveAvgPool2d(4))
    x = torch.randn(1, 8, 7, 7)
    assert _onnx_parity(pool, x, tmp_path / "pool.onnx", dynamo=False) < 1e-6
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "pool.onnx")).graph.node}
    assert "MatMul" in ops and "Gather" not in ops


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_spse_block_exports_on_a_7x7_map(tmp_path: Path, dynamo: bool) -> None:
    torch.manual_seed(4)
    block = SPSEBottleneck(64, 16)
    _randomise_bn(block)
    assert _onnx_parity(block, torch.randn(1, 64, 7, 7), tmp_path / "spse.onnx", dynamo) < 1e-5
