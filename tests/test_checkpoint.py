"""Checkpoint loading: containers, prefixes, EMA, spectral norm, weights-only safety, errors.

Small local models stand in for the zoo; each checkpoint is written the way official training
scripts write it, and loading must reproduce the producing model's outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sase_deploy.errors import UserError
from sase_deploy.models.checkpoint import (
    bake_spectral_norm,
    has_spectral_norm,
    load_checkpoint,
    load_state_dict_file,
    read_checkpoint,
    spectral_normalized_weight,
)


class TrainingConfig:
    """A custom class pickled into a checkpoint: weights-only loading must refuse it."""

    def __init__(self) -> None:
        self.lr = 0.1


class Tiny(nn.Module):
    """conv+BN, a conv with bias, a ConvTranspose (spectral norm over dim 1) and a Linear."""

    def __init__(self, sn: str | None = None, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        # square (8 -> 8): only the layer type tells which dim spectral norm used
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(8, classes)
        wrap = {
            None: lambda m: m,
            "hook": nn.utils.spectral_norm,
            "param": nn.utils.parametrizations.spectral_norm,
        }[sn]
        self.conv2, self.up, self.fc = wrap(self.conv2), wrap(self.up), wrap(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.up(x).mean(dim=(2, 3)))


def trained(sn: str | None, seed: int = 0) -> Tiny:
    """A model whose BN statistics and spectral-norm u/v have moved away from their init."""
    torch.manual_seed(seed)
    model = Tiny(sn)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 8, 8))
    return model.eval()


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)))


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------- state dicts


def test_bare_state_dict_into_same_model_is_exact(tmp_path: Path) -> None:
    source = trained("hook")
    path = save(source.state_dict(), tmp_path / "g.pth")
    target = Tiny("hook").train()
    report = load_checkpoint(target, path)
    assert not target.training
    assert torch.equal(outputs(target), outputs(source))
    assert report.container == "state_dict" and report.key is None
    assert report.spectral_norm_baked == [] and not report.ema_applied
    assert len(report.sha256) == 64
    json.dumps(report.to_dict())  # goes into the export manifest


def test_dataparallel_spectral_norm_checkpoint_bakes_into_plain_model(tmp_path: Path) -> None:
    source = trained("hook")
    sd = {f"module.{k}": v for k, v in source.state_dict().items()}
    assert not any(k.endswith("conv2.weight") for k in sd)  # official layout: weight_orig/u/v
    target = Tiny(None)
    report = load_checkpoint(target, save(sd, tmp_path / "dp.pth"))
    assert report.prefixes_stripped == ["module."]
    assert sorted(report.spectral_norm_baked) == ["conv2.weight", "fc.weight", "up.weight"]
    assert not has_spectral_norm(target)
    torch.testing.assert_close(outputs(target), outputs(source), atol=1e-6, rtol=1e-6)


def test_compiled_and_dataparallel_prefixes_are_stripped(tmp_path: Path) -> None:
    source = trained(None)
    sd = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    target = Tiny(None)
    report = load_checkpoint(target, save(sd, tmp_path / "c.pth"))
    assert report.prefixes_stripped == ["module.", "_orig_mod."]
    assert torch.equal(outputs(target), outputs(source))


def test_single_wrapper_attribute_is_stripped_when_it_fits(tmp_path: Path) -> None:
    """PyTorch Lightning saves `{'state_dict': {'model.' + k: ...}}` for `self.model`."""
    source = trained("hook")
    sd = {f"model.{k}": v for k, v in source.state_dict().items()}
    target = Tiny(None)
    report = load_checkpoint(target, save({"state_dict": sd, "epoch": 3}, tmp_path / "l.ckpt"))
    assert report.prefixes_stripped == ["model."]
    torch.testing.assert_close(outputs(target), outputs(source), atol=1e-6, rtol=1e-6)


def test_transposed_conv_is_baked_over_dim_1() -> None:
    """torch's spectral norm takes ConvTranspose's norm over the output-channel dim (1)."""
    layer: nn.ConvTranspose2d = nn.utils.spectral_norm(nn.ConvTranspose2d(8, 4, 4, bias=False))
    layer.train()
    with torch.no_grad():
        layer(torch.randn(1, 8, 3, 3))
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(1, 8, 3, 3))  # eval hook sets layer.weight from weight_orig/u/v
    orig, u, v = (layer.get_parameter("weight_orig"), layer.get_buffer("weight_u"),
                  layer.get_buffer("weight_v"))  # fmt: skip
    assert u.numel() == 4
    assert torch.equal(spectral_normalized_weight(orig, u, v, dim=1), layer.weight)


@pytest.mark.parametrize(
    ("saved", "loaded"), [("param", "hook"), ("hook", "param"), ("param", None)]
)
def test_spectral_norm_api_spellings_translate(
    tmp_path: Path, saved: str, loaded: str | None
) -> None:
    source = trained(saved)
    target = Tiny(loaded)
    report = load_checkpoint(target, save(source.state_dict(), tmp_path / "sn.pth"))
    assert (report.spectral_norm_baked != []) == (loaded is None)
    torch.testing.assert_close(outputs(target), outputs(source), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("sn", ["hook", "param"])
def test_bake_spectral_norm_keeps_eval_outputs(sn: str) -> None:
    model = trained(sn)
    before = outputs(model)
    baked = bake_spectral_norm(model)
    assert sorted(baked) == ["conv2.weight", "fc.weight", "up.weight"]
    assert not has_spectral_norm(model)
    keys = model.state_dict().keys()
    assert "up.weight" in keys and not any("_orig" in k or "original" in k for k in keys)
    torch.testing.assert_close(outputs(model), before, atol=1e-6, rtol=1e-6)
    assert bake_spectral_norm(model) == []  # idempotent


# --------------------------------------------------------------------------- containers


def fastgan_checkpoint(g: Tiny, ema: Tiny) -> dict:
    """As FastGAN's train.py writes all_<iter>.pth: EMA as a bare list in parameters() order."""
    return {
        "g": g.state_dict(),
        "d": {"disc.weight": torch.randn(3, 3)},
        "g_ema": [p.detach().clone() for p in ema.parameters()],
        "opt_g": torch.optim.Adam(g.parameters()).state_dict(),
        "opt_d": {},
    }


def ema_of(g: Tiny) -> Tiny:
    ema = copy.deepcopy(g)  # buffers (BN stats, u/v) stay g's, as in FastGAN
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9).add_(0.01)
    return ema


@pytest.mark.parametrize("target_sn", ["hook", None])
def test_fastgan_container_applies_ema_list_by_default(
    tmp_path: Path, target_sn: str | None
) -> None:
    g = trained("hook")
    ema = ema_of(g)
    path = save(fastgan_checkpoint(g, ema), tmp_path / "all_1000.pth")

    target = Tiny(target_sn)
    report = load_checkpoint(target, path)
    assert report.container == "fastgan" and report.key == "g_ema" and report.ema_applied
    torch.testing.assert_close(outputs(target), outputs(ema), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(outputs(ema), outputs(g), atol=1e-3)

    raw = Tiny(target_sn)
    report = load_checkpoint(raw, path, use_ema=False)
    assert report.key == "g" and not report.ema_applied
    torch.testing.assert_close(outputs(raw), outputs(g), atol=1e-6, rtol=1e-6)

    explicit = Tiny(target_sn)
    assert load_checkpoint(explicit, path, key="g").key == "g"
    torch.testing.assert_close(outputs(explicit), outputs(g), atol=1e-6, rtol=1e-6)


def test_fastgan_dataparallel_checkpoint_strips_before_ema(tmp_path: Path) -> None:
    """The baseline FastGAN train.py wraps G in DataParallel: 'g' keys carry 'module.'."""
    g = trained("hook")
    ema = ema_of(g)
    ckpt = fastgan_checkpoint(g, ema)
    ckpt["g"] = {f"module.{k}": v for k, v in ckpt["g"].items()}
    target = Tiny(None)
    report = load_checkpoint(target, save(ckpt, tmp_path / "all.pth"))
    assert report.ema_applied and report.prefixes_stripped == ["module."]
    torch.testing.assert_close(outputs(target), outputs(ema), atol=1e-6, rtol=1e-6)


def test_fastgan_ema_without_model_uses_buffer_names(tmp_path: Path) -> None:
    g = trained("hook")
    ema = ema_of(g)
    weights = load_state_dict_file(save(fastgan_checkpoint(g, ema), tmp_path / "all.pth"))
    assert weights.ema_applied
    for name, expected in (
        ("conv2.weight_orig", ema.get_parameter("conv2.weight_orig")),
        ("conv2.bias", ema.get_parameter("conv2.bias")),
        ("bn.running_var", g.get_buffer("bn.running_var")),  # buffers come from 'g'
    ):
        assert torch.equal(weights.state_dict[name], expected), name


def test_fastgan_ema_list_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    g = trained("hook")
    ckpt = fastgan_checkpoint(g, ema_of(g))
    short = dict(ckpt, g_ema=ckpt["g_ema"][:-1])
    with pytest.raises(UserError, match="'g_ema' holds 7 tensors but 'g' has 8 parameters"):
        load_checkpoint(Tiny("hook"), save(short, tmp_path / "short.pth"))
    reshaped = dict(ckpt, g_ema=[t.reshape(-1) for t in ckpt["g_ema"]])
    with pytest.raises(UserError, match=r"'g_ema'\[0\] has shape"):
        load_checkpoint(Tiny("hook"), save(reshaped, tmp_path / "shape.pth"))


def test_imagenet_container_with_metadata(tmp_path: Path) -> None:
    source = trained(None)
    ckpt = {
        "epoch": 90,
        "arch": "tiny",
        "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()},
        "best_prec1": np.float64(77.5),  # numpy scalars and argparse args are plain data
        "args": argparse.Namespace(lr=0.1, arch="tiny"),
        "optimizer": torch.optim.SGD(source.parameters(), lr=0.1).state_dict(),
    }
    target = Tiny(None)
    report = load_checkpoint(target, save(ckpt, tmp_path / "model_best.pth.tar"))
    assert report.container == "wrapped" and report.key == "state_dict"
    assert report.prefixes_stripped == ["module."]
    assert torch.equal(outputs(target), outputs(source))


def test_wrapped_ema_state_dict_preferred_unless_disabled(tmp_path: Path) -> None:
    source, ema = trained(None, seed=0), trained(None, seed=1)
    path = save(
        {"state_dict": source.state_dict(), "state_dict_ema": ema.state_dict()}, tmp_path / "t.pth"
    )
    target = Tiny(None)
    assert load_checkpoint(target, path).key == "state_dict_ema"
    assert torch.equal(outputs(target), outputs(ema))
    assert load_checkpoint(target, path, use_ema=False).key == "state_dict"
    assert torch.equal(outputs(target), outputs(source))


def test_unknown_key_lists_container_keys(tmp_path: Path) -> None:
    path = save({"state_dict": trained(None).state_dict(), "epoch": 3}, tmp_path / "c.pth")
    with pytest.raises(UserError, match=r"no key 'generator'.*'state_dict', 'epoch'"):
        load_checkpoint(Tiny(None), path, key="generator")


def test_container_without_state_dict_asks_for_key(tmp_path: Path) -> None:
    path = save({"weights_for_g": trained(None).state_dict(), "epoch": 3}, tmp_path / "c.pth")
    with pytest.raises(UserError, match="pass --checkpoint-key"):
        load_checkpoint(Tiny(None), path)
    target = Tiny(None)
    assert load_checkpoint(target, path, key="weights_for_g").key == "weights_for_g"


# --------------------------------------------------------------------------- safety


def test_pickled_custom_object_is_refused_unless_unsafe(tmp_path: Path) -> None:
    source = trained(None)
    path = save({"state_dict": source.state_dict(), "config": TrainingConfig()}, tmp_path / "p.pth")
    with pytest.raises(UserError) as err:
        load_checkpoint(Tiny(None), path)
    message = str(err.value)
    assert "not a weights-only checkpoint" in message and "TrainingConfig" in message
    assert "--unsafe-load" in message and "arbitrary code" in message
    target = Tiny(None)
    load_checkpoint(target, path, unsafe_load=True)
    assert torch.equal(outputs(target), outputs(source))


def test_whole_pickled_module_needs_unsafe_load(tmp_path: Path) -> None:
    source = trained("hook")
    path = save(source, tmp_path / "whole.pth")
    with pytest.raises(UserError, match="not a weights-only checkpoint"):
        read_checkpoint(path)
    target = Tiny("hook")
    report = load_checkpoint(target, path, unsafe_load=True)
    assert report.container == "module"
    assert torch.equal(outputs(target), outputs(source))


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("x.pth", None, "does not exist"),
        ("x.pth", b"", "is empty"),
        ("x.pth", b"hello, not a checkpoint", "not a readable PyTorch checkpoint"),
        ("x.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", "safetensors.torch"),
    ],
)
def test_unreadable_files_are_user_errors(
    tmp_path: Path, name: str, content: bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        load_checkpoint(Tiny(None), path)


# --------------------------------------------------------------------------- mismatches


def test_mismatch_names_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    sd = trained(None).state_dict()
    sd["head.extra"] = torch.zeros(2)
    del sd["conv2.bias"]
    sd["fc.bias"] = torch.zeros(7)
    path = save(sd, tmp_path / "m.pth")
    with pytest.raises(UserError) as err:
        load_checkpoint(Tiny(None), path, model_name="tiny")
    message = str(err.value)
    assert "does not fit model 'tiny'" in message
    assert "1 missing keys (conv2.bias)" in message and "1 unexpected (head.extra)" in message
    assert "fc.bias: checkpoint (7,) vs model (5,)" in message and "--checkpoint-key" in message

    target = Tiny(None)
    report = load_checkpoint(target, path, strict=False)
    assert report.missing_keys == ["conv2.bias"] and report.unexpected_keys == ["head.extra"]
    assert torch.equal(target.conv.weight, sd["conv.weight"])


def test_old_checkpoint_without_bn_counter_loads(tmp_path: Path) -> None:
    source = trained(None)
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = Tiny(None)
    load_checkpoint(target, save(sd, tmp_path / "old.pth"))
    assert torch.equal(outputs(target), outputs(source))


# --------------------------------------------------------------------------- the zoo

# Key names and `parameters_in_order` read from the official code (see MODELS.md). Where the
# folder is absent the tests fall back to the zoo model's own order and skip only the layout checks.
LAYOUTS = Path("/work/shared/official_layouts")


def official_layout(name: str) -> dict | None:
    path = LAYOUTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def perturbed(state: dict[str, torch.Tensor], scale: float = 0.01) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in state.items()
    }


def assert_same_state(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("name", ["fastgan_sle_256", "fastgan_slim_256", "fastgan_slim_1024"])
def test_ema_list_order_matches_official_parameters_order(name: str) -> None:
    """Without a model, the EMA list is matched in the official `parameters()` order."""
    from sase_deploy.models.checkpoint import extract_state_dict

    layout = official_layout(name)
    if layout is None:
        pytest.skip(f"{LAYOUTS} (layouts read from the official code) is not in this checkout")
    g = {k: torch.empty(shape) for k, shape in layout["keys"].items()}
    ema = [torch.empty(layout["keys"][k]) for k in layout["parameters_in_order"]]
    weights = extract_state_dict({"g": g, "g_ema": ema})
    for param, tensor in zip(layout["parameters_in_order"], ema, strict=True):
        assert weights.state_dict[param] is tensor, param


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "prefix"),
    [("fastgan_slim_256", ""), ("fastgan_sle_256", "module.")],  # baseline used DataParallel
)
def test_fastgan_official_all_checkpoint(tmp_path: Path, name: str, prefix: str) -> None:
    """FastGAN(-SLIM) train.py's all_<iter>.pth: 'g' + 'g_ema' list in the official order."""
    from sase_deploy.models.registry import create_model

    layout = official_layout(name)
    torch.manual_seed(0)
    source = create_model(name)
    g = {k: v.clone() for k, v in source.state_dict().items()}
    order = [name for name, _ in source.named_parameters()]
    if layout is not None:  # our model saves the official layout; the EMA list uses its order
        assert list(g) == list(layout["keys"])
        order = layout["parameters_in_order"]
    buffers = {k for k, _ in source.named_buffers()}
    ema_state = {k: (g[k] if k in buffers else v) for k, v in perturbed(g).items()}
    ckpt = {
        "g": {prefix + k: v for k, v in g.items()},
        "d": {},
        "g_ema": [ema_state[param] for param in order],
        "opt_g": {},
        "opt_d": {},
    }
    path = save(ckpt, tmp_path / "all_50000.pth")

    target = create_model(name)
    report = load_checkpoint(target, path, model_name=name)
    assert report.ema_applied and report.key == "g_ema"
    assert report.prefixes_stripped == ([prefix] if prefix else [])
    assert_same_state(target, ema_state)

    load_checkpoint(target, path, use_ema=False)
    assert_same_state(target, g)

    # Into a generator whose spectral norm is baked (as export does): same outputs as EMA.
    bake_spectral_norm(target)
    report = load_checkpoint(target, path)
    assert len(report.spectral_norm_baked) == len([k for k in g if k.endswith("weight_orig")])
    source.load_state_dict(ema_state)
    z = torch.randn(1, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for got, want in zip(target(z), source.eval()(z), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_spse_resnet50_imagenet_checkpoint(tmp_path: Path) -> None:
    """megvii imagenet_train.py: {'state_dict': {'module.'+k: ...}, 'epoch', 'arch', ...}."""
    from sase_deploy.models.registry import create_model

    layout = official_layout("spse_resnet50")
    torch.manual_seed(0)
    source = create_model("spse_resnet50")
    state = perturbed(source.state_dict())
    if layout is not None:
        assert set(state) == set(layout["keys"])
    ckpt = {
        "epoch": 100,
        "arch": "SPSE50",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "best_prec1": torch.tensor(77.6),
        "optimizer": {"state": {}, "param_groups": []},
    }
    target = create_model("spse_resnet50")
    report = load_checkpoint(target, save(ckpt, tmp_path / "model_best.pth.tar"))
    assert report.key == "state_dict" and report.prefixes_stripped == ["module."]
    assert_same_state(target, state)
    assert not target.training


def test_readme_loading_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's checkpoint-loading example (models section) runs as written."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    section = readme.split("<!-- section:models -->")[1].split("<!-- /section:models -->")[0]
    blocks = [b.split("```")[0] for b in section.split("```python\n")[1:]]
    example = next(b for b in blocks if "load_checkpoint" in b and "torch.save" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    report = namespace["report"]
    assert (report.container, report.key, report.prefixes_stripped) == (  # type: ignore[attr-defined]
        "wrapped",
        "state_dict",
        ["module."],
    )


def test_plain_checkpoint_into_spectral_norm_model_suggests_baking(tmp_path: Path) -> None:
    path = save(trained(None).state_dict(), tmp_path / "plain.pth")
    with pytest.raises(UserError, match=r"plain weights where the model has spectral norm"):
        load_checkpoint(Tiny("hook"), path)
    target = Tiny("hook")
    bake_spectral_norm(target)
    load_checkpoint(target, path)
