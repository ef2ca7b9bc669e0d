"""FastGAN generators and the SLIM block: official layout, forward, noise control, export."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sase_deploy.errors import UserError
from sase_deploy.models import fastgan
from sase_deploy.models.blocks_fastgan import (
    SLEBlock,
    settle_spectral_norm,
)
from sase_deploy.models.checkpoint import bake_spectral_norm, has_spectral_norm
from sase_deploy.models.registry import create_model, get_model_spec
from sase_deploy.models.slim import SLIMBlock
from sase_deploy.models.spec import sample_inputs
from sase_deploy.runtime.ort import run_onnx

LAYOUTS = Path(__file__).parents[2] / "shared" / "official_layouts"
NAMES = ("fastgan_sle_256", "fastgan_slim_256", "fastgan_slim_1024")
SLOW_1024 = pytest.param("fastgan_slim_1024", marks=pytest.mark.slow)


def _layout(name: str) -> dict[str, Any]:
    path = LAYOUTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"official layout {path} absent (shared/ must sit beside the repo)")
    return json.loads(path.read_text())


_BUILT: dict[tuple[str, bool], fastgan.FastGANGenerator] = {}


def _model(name: str, settled: bool = True) -> fastgan.FastGANGenerator:
    """One model per (name, settled) for the module; tests that mutate it must restore it.

    Unsettled builds skip the spectral-norm/BN preparation (a second each): fine wherever only
    the structure matters.
    """
    if (name, settled) not in _BUILT:
        torch.manual_seed(0)
        model = get_model_spec(name).factory(settle=settled).eval()
        assert isinstance(model, fastgan.FastGANGenerator)
        _BUILT[name, settled] = model
    return _BUILT[name, settled]


def _tiny(im_size: int = 256, attention: fastgan.Attention = "sle", **kwargs: Any) -> Any:
    """Same code paths as the registered generators at 1/4 (1024: 1/4) of the channels."""
    torch.manual_seed(0)
    return fastgan.FastGANGenerator(im_size, attention, ngf=16, reduction=4, **kwargs).eval()


def _z(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, fastgan.NZ), generator=torch.Generator().manual_seed(seed))


def _run(model: torch.nn.Module, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(model(*args))


# ---------------------------------------------------------------- official layout


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_layout_equals_official(name: str) -> None:
    layout = _layout(name)
    state = _model(name, settled=False).state_dict()
    assert set(state) == set(layout["keys"])
    assert {k: list(v.shape) for k, v in state.items()} == layout["keys"]
    assert {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()} == layout["dtypes"]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_order_and_count_equal_official(name: str) -> None:
    layout = _layout(name)
    model = _model(name, settled=False)
    assert [n for n, _ in model.named_parameters()] == layout["parameters_in_order"]
    assert sum(p.numel() for p in model.parameters()) == layout["num_parameters"]


@pytest.mark.parametrize("name", NAMES)
def test_official_state_dict_and_ema_list_load_as_is(name: str) -> None:
    layout = _layout(name)
    generator = torch.Generator().manual_seed(1)
    official = {
        key: torch.zeros(shape, dtype=torch.int64)
        if layout["dtypes"][key] == "int64"
        else torch.randn(shape, generator=generator)
        for key, shape in layout["keys"].items()
    }
    model = get_model_spec(name).factory(settle=False)  # the checkpoint brings u/v and stats
    model.load_state_dict(official, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, official[key]), key
    # FastGAN's g_ema: a bare tensor list in parameters() order.
    ema = [official[key] + 1 for key in layout["parameters_in_order"]]
    for param, value in zip(model.parameters(), ema, strict=True):
        param.data.copy_(value)
    assert torch.equal(
        model.get_parameter("to_big.weight_orig"), official["to_big.weight_orig"] + 1
    )


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("name", ["fastgan_sle_256", "fastgan_slim_256", SLOW_1024])
def test_eval_forward_shapes_finite_deterministic(name: str) -> None:
    layout = _layout(name)
    model = _model(name)
    batch = 2 if "256" in name else 1  # batch 2 at 1024 px costs seconds on a small CPU
    first, second = _run(model, _z(batch)), _run(model, _z(batch))
    expected = [[batch, *shape[1:]] for shape in layout["eval_output_shapes"]]
    assert [list(out.shape) for out in first] == expected
    for out, again in zip(first, second, strict=True):
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert torch.equal(out, again)
        # settle=True gives usable scales (raw spectral-norm init gives ~1e-5 or inf).
        assert 0.05 < float(out.std()) < 50
    if name == "fastgan_slim_1024":
        assert all(float(out.abs().max()) <= 1 for out in first)  # tanh on both outputs


@pytest.mark.parametrize("name", ["fastgan_sle_256", "fastgan_slim_256", SLOW_1024])
def test_settled_batchnorm_gains_stay_moderate(name: str) -> None:
    """BN stats come from several latents: no channel is divided by one sample's tiny value
    (with one latent, SLIM channel-branch BatchNorm1d gains reached 2e3)."""
    model = _model(name)
    for bn_name, bn in model.named_modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            assert bn.running_var is not None
            assert float(bn.running_var.rsqrt().max()) < 100, bn_name


@pytest.mark.slow
def test_settled_1024_is_well_conditioned_in_float32() -> None:
    """Random-init SLIM-1024 keeps features at unit scale through the upsampling stack, so
    float32 stays close to float64 (was 2e-2 x scale with a batch-1 BN calibration)."""
    model = copy.deepcopy(_model("fastgan_slim_1024"))
    bake_spectral_norm(model)
    rms: dict[str, float] = {}
    blocks = ["feat_128", "se_128", "se_256", "feat_512", "se_512", "feat_1024", "to_big"]
    for block in blocks:
        model.get_submodule(block).register_forward_hook(
            lambda _m, _a, out, block=block: rms.__setitem__(block, float(out.pow(2).mean().sqrt()))
        )
    z = _z(1, seed=1)  # not a calibration latent
    img32, _ = _run(model, z)
    assert all(0.1 < value < 4 for value in rms.values()), rms  # with batch-1 BN: up to 27
    img64, _ = _run(model.double(), z.double())
    rel = float((img32.double() - img64).abs().max() / img64.abs().max())
    # measured 3.0e-5 on an AVX-512 Xeon and 3.2e-4 on an AVX2 EPYC (float32 conv kernels
    # differ by CPU); the batch-1 BN calibration gave 2e-2. Export judges ORT against this
    # model's own float64 noise floor when it exceeds 1e-4 (export/parity.py).
    assert rel < 2e-3, rel


def test_with_tanh_option_applies_tanh_to_both_outputs() -> None:
    raw, with_tanh = _tiny(), _tiny(with_tanh=True, settle=False)
    with_tanh.load_state_dict(raw.state_dict())
    for tanh_out, raw_out in zip(_run(with_tanh, _z(1)), _run(raw, _z(1)), strict=True):
        torch.testing.assert_close(tanh_out, torch.tanh(raw_out))
    assert create_model("fastgan_slim_256", settle=False).with_tanh is False
    assert create_model("fastgan_slim_1024", settle=False).with_tanh is True


@pytest.mark.parametrize(
    ("im_size", "attention"), [(256, "sle"), pytest.param(1024, "slim", marks=pytest.mark.slow)]
)
def test_remove_spectral_norm_keeps_eval_output(im_size: int, attention: Any) -> None:
    model = _tiny(im_size, attention)
    before = _run(model, _z(1))
    bake_spectral_norm(model)
    assert not has_spectral_norm(model)
    keys = set(model.state_dict())
    assert "to_big.weight" in keys and not any(k.endswith("weight_orig") for k in keys)
    for out, ref in zip(_run(model, _z(1)), before, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- noise control


def _noisy(im_size: int) -> fastgan.FastGANGenerator:
    """A small FastGAN-SLIM generator with noise weights 0.5 (1024: also SLIM mask noise)."""
    model = _tiny(im_size, "slim")
    for injection in model.noise_injections().values():
        injection.weight.data.fill_(0.5)
    return model


@pytest.fixture(scope="module")
def noisy() -> fastgan.FastGANGenerator:
    return _noisy(256)


def test_noise_off_equals_zero_noise_weight() -> None:
    model = _tiny(256, "slim")
    off = _run(model, _z(1))
    model.set_noise("seed:5")  # weights are 0 in a fresh model: noise has no effect
    for a, b in zip(off, _run(model, _z(1)), strict=True):
        assert torch.equal(a, b)


def test_seed_noise_is_deterministic_and_matters(noisy: fastgan.FastGANGenerator) -> None:
    off = _run(noisy.set_noise("off"), _z(1))
    seeded = _run(noisy.set_noise("seed:1"), _z(1))
    assert all(torch.equal(a, b) for a, b in zip(seeded, _run(noisy, _z(1)), strict=True))
    assert not torch.allclose(seeded[0], off[0])
    other = _run(noisy.set_noise("seed:2"), _z(1))
    assert not torch.allclose(seeded[0], other[0])


@pytest.mark.parametrize("im_size", [256, pytest.param(1024, marks=pytest.mark.slow)])
def test_input_noise_equals_seed_noise(im_size: int) -> None:
    model, batch = _noisy(im_size), 2
    seeded = _run(model.set_noise("seed:7"), _z(batch))
    maps = model.noise_maps(7)
    assert len(maps) == (6 if im_size == 256 else 11)  # 1024: + mask noise of se_128/256/512
    noise = [maps[site.name].expand(batch, -1, -1, -1) for site in model.sites]
    fed = _run(model.set_noise("input"), _z(batch), *noise)
    for a, b in zip(seeded, fed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # Each sample may get its own noise in input mode; every input is used (at 1024 only the
    # SLIM mask-noise inputs are checked here: the others are the 256 px ones, checked at 256).
    sites = [i for i, site in enumerate(model.sites) if im_size == 256 or "_se_" in site.name]
    for index in sites:
        changed = list(noise)
        changed[index] = torch.randn(batch, 1, *noise[index].shape[2:])
        assert not torch.allclose(_run(model, _z(batch), *changed)[0], fed[0]), index


def test_random_noise_differs_per_call(noisy: fastgan.FastGANGenerator) -> None:
    noisy.set_noise("random")
    assert not torch.allclose(_run(noisy, _z(1))[1], _run(noisy, _z(1))[1])


def test_noise_argument_errors(noisy: fastgan.FastGANGenerator) -> None:
    noisy.set_noise("off")
    with pytest.raises(UserError, match="noise mode"):
        noisy(_z(1), torch.zeros(1, 1, 8, 8))  # noise passed in mode "off"
    with pytest.raises(UserError, match="unknown noise mode"):
        noisy.set_noise("gaussian")
    noisy.set_noise("input")
    with pytest.raises(UserError, match="needs 6 noise tensors"):
        noisy(_z(1))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fastgan_sle_256", ["feat_8_0", "feat_8_1", "feat_32_0", "feat_32_1", "feat_128_0"]),
        ("fastgan_slim_1024", ["feat_128_1", "se_128", "se_256", "feat_512_0", "se_512"]),
    ],
)
def test_noise_sites_and_input_specs(name: str, expected: list[str]) -> None:
    spec = get_model_spec(name)
    assert [s.name for s in spec.input_specs()] == ["z"]
    specs = spec.input_specs(noise="input")
    assert specs[0].name == "z" and specs[0].shape == (1, 256) and specs[0].kind == "latent"
    names = [s.name.removeprefix("noise_") for s in specs[1:]]
    assert all(n in names for n in expected)
    sites = fastgan.noise_sites(1024 if "1024" in name else 256, "sle" if "sle" in name else "slim")
    assert [s.name for s in specs[1:]] == [site.name for site in sites]
    for input_spec, site in zip(specs[1:], sites, strict=True):
        assert input_spec.shape == (1, 1, site.size, site.size) and input_spec.kind == "noise"
    assert len(sites) == (6 if "256" in name else 11)


# ---------------------------------------------------------------- SLIM / SLE blocks


def _official_slim(block: SLIMBlock, xs: torch.Tensor, xb: torch.Tensor, noise: Any) -> Any:
    """Independent reference in the official code's own spelling: masks stacked (B, G, 1, H, H),
    styles stacked (B, G, Cout, 1, 1), one broadcast product summed over G; `size=` resizes.
    The 256 variant sigmoids and resizes each mask; the 1024 one adds noise to the concatenated
    logits first."""
    size = xb.shape[-1]
    chunks = torch.split(xs, xs.shape[1] // block.groups, dim=1)
    styles = torch.stack([b(x) for x, b in zip(chunks, block.channel_attn, strict=True)], dim=1)
    logits = [b(x) for x, b in zip(chunks, block.spatial_attn, strict=True)]
    if block.noise_injection is None:
        masks = torch.cat([F.interpolate(torch.sigmoid(t), size) for t in logits], dim=1)
    else:
        noisy = torch.cat(logits, dim=1) + block.noise_injection.weight * noise
        masks = F.interpolate(torch.sigmoid(noisy), size)
    masks = masks.unsqueeze(2)
    styles = styles[:, :, :, None, None]
    style = (masks * styles).sum(dim=1) / (masks.sum(dim=1) + 1e-6) + 1
    return xb * style


def _slim_block(mask_noise: bool, seed: int = 0) -> SLIMBlock:
    """A small eval-mode block: spectral norm settled, non-trivial BN stats, noise weight 0.7."""
    torch.manual_seed(seed)
    block = SLIMBlock(64, 8, 16, 64, groups=4, reduction=4, dilation=2, mask_noise=mask_noise)
    settle_spectral_norm(block).eval()  # raw u/v blow the weights up and saturate the masks
    for bn in block.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
            bn.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
    if block.noise_injection is not None:
        block.noise_injection.weight.data.fill_(0.7)
    return block


@pytest.mark.parametrize("mask_noise", [False, True])
def test_slim_block_equals_official_formula(mask_noise: bool) -> None:
    block = _slim_block(mask_noise)
    noise = torch.randn(3, 1, 8, 8)
    xs, xb = torch.randn(3, 64, 8, 8), torch.randn(3, 16, 64, 64)
    with torch.no_grad():
        ours = block(xs, xb, noise)
        reference = _official_slim(block, xs, xb, noise)
        if mask_noise:  # the noise really enters (before the sigmoid), so order is tested
            without = _official_slim(block, xs, xb, torch.zeros_like(noise))
            assert not torch.allclose(reference, without, atol=1e-3)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, xb)  # the block does modulate


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("mask_noise", [False, True])
def test_slim_block_exports_in_official_order(mask_noise: bool, dynamo: bool) -> None:
    """Both exporters, dynamic batch, no random ops, ORT parity; the masks are resized to the
    target before the mix (G Resizes, or one for the concatenated 1024 masks) and the mix
    runs at the target resolution."""
    import io

    import onnx

    block = _slim_block(mask_noise, seed=1)
    bake_spectral_norm(block)  # baked, as deployed
    args = (torch.randn(2, 64, 8, 8), torch.randn(2, 16, 64, 64), torch.randn(2, 1, 8, 8))
    names = ["xs", "xb", "noise"]
    buffer = io.BytesIO()
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=16)
        torch.onnx.export(
            block, args, buffer, dynamo=True, input_names=names, output_names=["out"],
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
        )  # fmt: skip
    else:
        torch.onnx.export(
            block, args, buffer, dynamo=False, opset_version=18, input_names=names,
            output_names=["out"], dynamic_axes={n: {0: "batch"} for n in [*names, "out"]},
        )  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    ops = [n.op_type for n in model.graph.node]
    assert not any(op.startswith("Random") for op in ops)
    assert ops.count("Resize") == (1 if mask_noise else 4)
    # the styles are mixed at the target resolution: the mix's Div is (B, Cout, 64, 64)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: v.type.tensor_type.shape.dim for v in inferred.value_info}
    (div,) = [n for n in inferred.node if n.op_type == "Div"]
    assert [d.dim_value for d in shapes[div.output[0]]][1:] == [16, 64, 64]
    xs, xb, noise = torch.randn(3, 64, 8, 8), torch.randn(3, 16, 64, 64), torch.randn(3, 1, 8, 8)
    feed = {"xs": xs.numpy(), "xb": xb.numpy(), "noise": noise.numpy()}
    feed = {i.name: feed[i.name] for i in model.graph.input}  # unused noise is dropped
    got = run_onnx(model, feed)["out"]
    with torch.no_grad():
        want = block(xs, xb, noise)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_slim_block_key_layout() -> None:
    block = SLIMBlock(128, 32, 16, 512, dilation=4, mask_noise=True)
    keys = set(block.state_dict())
    for g in range(4):
        for i in (2, 3, 5):
            assert (
                f"channel_attn.{g}.{i}.weight_orig" in keys
                or f"channel_attn.{g}.{i}.weight" in keys
            )
        for i in (0, 1, 3, 4, 6, 7, 9):
            assert f"spatial_attn.{g}.{i}.bias" in keys
    assert "noise_injection.weight" in keys
    assert block.spatial_attn[0][3].dilation == (4, 4)
    assert "noise_injection.weight" not in SLIMBlock(128, 8, 64, 128).state_dict()


def test_sle_block_gates_big_map_per_channel() -> None:
    torch.manual_seed(0)
    block = settle_spectral_norm(SLEBlock(32, 16)).eval()  # raw u/v saturate the sigmoid
    small, big = torch.randn(2, 32, 8, 8), torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        gated = block(small, big)
    gate = gated / big
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate), atol=1e-5)
    assert bool(((gate > 0) & (gate < 1)).all())


@pytest.mark.parametrize("name", NAMES)
def test_spec_counts_the_blocks_in_the_network(name: str) -> None:
    spec = get_model_spec(name)
    model = _model(name, settled=False)
    counts = {
        "sle": sum(isinstance(m, SLEBlock) for m in model.modules()),
        "sase": sum(isinstance(m, SLIMBlock) for m in model.modules()),
    }
    assert {k: v for k, v in counts.items() if v} == dict(spec.se_blocks)
    assert spec.task == "generation" and len(spec.output_names) == 2
    layout_path = LAYOUTS / f"{name}.json"
    if layout_path.is_file():
        assert spec.source == json.loads(layout_path.read_text())["source"]


# ---------------------------------------------------------------- export


@pytest.mark.slow
def test_onnx_export_with_noise_inputs_and_dynamic_batch(tmp_path: Path) -> None:
    """Dynamo export of a noise-as-input SLIM-1024 generator (small channels): no random ops,
    dynamic batch, ORT parity."""
    import onnx

    spec = get_model_spec("fastgan_slim_1024")
    model = _tiny(1024, "slim", noise="input")
    bake_spectral_norm(model)
    for injection in model.noise_injections().values():
        injection.weight.data.fill_(0.3)
    input_specs = spec.input_specs(noise="input")
    args = tuple(torch.from_numpy(v) for v in sample_inputs(input_specs, seed=0, batch=2).values())
    batch = torch.export.Dim("batch", min=1, max=16)
    shapes = torch.export.ShapesCollection()
    for arg in args:
        shapes[arg] = {0: batch}
    path = tmp_path / "g.onnx"
    torch.onnx.export(
        model,
        args,
        str(path),
        dynamo=True,
        input_names=[s.name for s in input_specs],
        output_names=list(spec.output_names),
        dynamic_shapes=shapes.dynamic_shapes(model, args),
    )
    graph = onnx.load(str(path)).graph
    assert not any(n.op_type.startswith("Random") for n in graph.node)
    feed = sample_inputs(input_specs, seed=1, batch=3)  # another batch size than exported
    got = run_onnx(str(path), feed)
    want = _run(model, *(torch.from_numpy(v) for v in feed.values()))
    # A random-init 1024 px generator amplifies rounding (features grow to ~1e2-1e3), so the
    # tolerance is a few times torch's own float32 error, measured against float64.
    want64 = _run(
        copy.deepcopy(model).double(), *(torch.from_numpy(v).double() for v in feed.values())
    )
    for out_name, w, w64 in zip(spec.output_names, want, want64, strict=True):
        rounding = float((w.double() - w64).abs().max())
        np.testing.assert_allclose(got[out_name], w.numpy(), rtol=0, atol=max(1e-4, 4 * rounding))
