"""FastGAN generators: the SLE baseline and the SLIM/SASE variants, in the official layout.

- `fastgan_sle_256`: odegeasslbc/FastGAN-pytorch `Generator(ngf=64, nz=256, im_size=256)`.
- `fastgan_slim_256`: SLIM_code FastGAN-SLIM-256 (se_128/se_256 SLIM, se_64 SLE).
- `fastgan_slim_1024`: SLIM_code FastGAN-SLIM-1024 (se_128/se_256/se_512 SLIM with mask
  noise, se_64 SLE, tanh on both outputs).

State-dict keys, shapes and `parameters()` order equal the official ones (spectral norm as
`weight_orig`/`weight_u`/`weight_v`), so `load_state_dict(official)` and FastGAN's EMA list
(a bare list of tensors in `parameters()` order) work unchanged.

Noise (`noise=` on the factories, `set_noise` on the model) is explicit so an exported graph
never holds a surprise RandomNormal:

- "off" (default): no noise, as if every noise weight were 0; the deployment default.
- "seed:N": one fixed (1, 1, H, W) map per noise site, drawn from `torch.Generator` seeded N
  and kept as non-persistent buffers; every sample of a batch gets the same map, so the graph
  holds constants and keeps a dynamic batch. Per-sample noise: use "input".
- "input": noise maps are forward inputs `forward(z, *noise)`, named by `noise_sites`
  (`noise_feat_8_0`, ..., `noise_se_512`), each (B, 1, H, W), in execution order.
- "random": fresh `randn` per call, the training behaviour (exports a RandomNormal op).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from sase_deploy.errors import UserError
from sase_deploy.models.blocks_fastgan import (
    InitLayer,
    NoiseInjection,
    NoiseMode,
    SLEBlock,
    UpBlock,
    UpBlockComp,
    calibrate_batchnorm,
    settle_spectral_norm,
    sn_conv2d,
)
from sase_deploy.models.slim import SLIMBlock
from sase_deploy.models.spec import InputSpec, ModelSpec

Attention = Literal["sle", "slim"]
NZ = 256
NGF = 64
SUPPORTED_SIZES = (256, 1024)
# Latents in the BatchNorm calibration forward of `settle`. One is not enough: each SLIM
# channel branch's BatchNorm1d then sees a single value per channel and divides every other
# latent by it (gains up to 2e3 at random init), so features grew to RMS ~30 by 1024 px and
# float32 img_1024 was 2e-2 x scale away from float64. With 4, every BatchNorm gain stays
# below ~30 and features at unit RMS through the whole stack (float32 vs float64 ~3e-5).
CALIBRATION_LATENTS = 4
_NFC_MULTIPLIER = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}


def channels_per_size(ngf: int = NGF) -> dict[int, int]:
    """FastGAN's `nfc`: feature channels at each resolution."""
    return {size: int(mult * ngf) for size, mult in _NFC_MULTIPLIER.items()}


@dataclass(frozen=True)
class NoiseSite:
    """One NoiseInjection: its forward-input name, module path and map side (H = W)."""

    name: str
    path: str
    size: int


def noise_sites(im_size: int, attention: Attention) -> tuple[NoiseSite, ...]:
    """The noise injections of a generator, in forward execution order."""
    _check_config(im_size, attention)

    def comp(size: int) -> tuple[NoiseSite, ...]:  # UpBlockComp: noise at indices 2 and 6
        return (
            NoiseSite(f"noise_feat_{size}_0", f"feat_{size}.2", size),
            NoiseSite(f"noise_feat_{size}_1", f"feat_{size}.6", size),
        )

    def mask(size: int, source: int) -> tuple[NoiseSite, ...]:  # SLIM-1024 mask-logit noise
        if attention == "slim" and im_size > 256:
            return (NoiseSite(f"noise_se_{size}", f"se_{size}.noise_injection", source),)
        return ()

    sites = (*comp(8), *comp(32), *comp(128), *mask(128, 8), *mask(256, 16))
    if im_size > 256:
        sites = (*sites, *comp(512), *mask(512, 32))
    return sites


def parse_noise(noise: str) -> tuple[NoiseMode, int | None]:
    """'off' | 'random' | 'input' | 'seed:N' -> (NoiseInjection mode, seed or None)."""
    modes: dict[str, NoiseMode] = {"off": "off", "random": "random", "input": "input"}
    if noise in modes:
        return modes[noise], None
    if noise.startswith("seed:") and noise[5:].isdigit():
        return "fixed", int(noise[5:])
    raise UserError(f"unknown noise mode '{noise}': use off, random, input or seed:N (N >= 0)")


def _check_config(im_size: int, attention: str) -> None:
    if im_size not in SUPPORTED_SIZES:
        raise UserError(f"FastGAN im_size {im_size} is not supported: use one of {SUPPORTED_SIZES}")
    if attention not in ("sle", "slim"):
        raise UserError(f"unknown FastGAN attention '{attention}': use sle or slim")


class FastGANGenerator(nn.Module):
    """FastGAN generator. `forward(z, *noise) -> (img_big, img_128)`.

    Args:
        im_size: 256 or 1024.
        attention: "sle" (all skip-layer gates SLE) or "slim" (se_128/se_256, and se_512 at
            1024, are SLIM blocks; se_64 stays SLE). SLIM at 1024 follows the FastGAN-SLIM-1024
            code: mask-logit noise injection and dilation 4 in se_512.
        with_tanh: tanh on both outputs; None = official default (only at 1024).
        noise: see the module docstring.
        settle: make a randomly initialised model usable in eval mode: spectral-norm power
            iterations (else eval weights blow up) and BatchNorm running stats from one forward
            of `CALIBRATION_LATENTS` seeded latents (else outputs are ~1e-5). A loaded
            checkpoint overwrites both.
    """

    def __init__(
        self,
        im_size: int = 256,
        attention: Attention = "sle",
        ngf: int = NGF,
        nz: int = NZ,
        nc: int = 3,
        groups: int = 4,
        reduction: int = 16,
        with_tanh: bool | None = None,
        noise: str = "off",
        settle: bool = True,
    ) -> None:
        super().__init__()
        _check_config(im_size, attention)
        nfc = channels_per_size(ngf)
        self.im_size = im_size
        self.attention = attention
        self.with_tanh = im_size == 1024 if with_tanh is None else with_tanh
        self.sites = noise_sites(im_size, attention)
        mask_noise = attention == "slim" and im_size > 256

        def skip_gate(size: int, source: int, dilation: int = 2) -> nn.Module:
            if attention == "sle":
                return SLEBlock(nfc[source], nfc[size])
            return SLIMBlock(
                nfc[source], source, nfc[size], size, groups, reduction, dilation, mask_noise
            )

        # Registration order is the official one: it fixes parameters() order.
        self.init = InitLayer(nz, channel=nfc[4])
        self.feat_8 = UpBlockComp(nfc[4], nfc[8])
        self.feat_16 = UpBlock(nfc[8], nfc[16])
        self.feat_32 = UpBlockComp(nfc[16], nfc[32])
        self.feat_64 = UpBlock(nfc[32], nfc[64])
        self.feat_128 = UpBlockComp(nfc[64], nfc[128])
        self.feat_256 = UpBlock(nfc[128], nfc[256])
        self.se_64 = SLEBlock(nfc[4], nfc[64])
        self.se_128 = skip_gate(128, 8)
        self.se_256 = skip_gate(256, 16)
        self.to_128 = sn_conv2d(nfc[128], nc, 1, 1, 0, bias=False)
        self.to_big = sn_conv2d(nfc[im_size], nc, 3, 1, 1, bias=False)
        if im_size > 256:
            self.feat_512 = UpBlockComp(nfc[256], nfc[512])
            self.se_512 = skip_gate(512, 32, dilation=4)
            self.feat_1024 = UpBlock(nfc[512], nfc[1024])

        self.noise_mode = "off"
        # Before set_noise: calibrates without noise, needs no noise inputs. Nothing to settle
        # on the meta device (shapes only), where `sase-deploy models` counts parameters.
        if settle and self.to_big.weight_orig.device.type != "meta":
            settle_spectral_norm(self)
            z = torch.randn((CALIBRATION_LATENTS, nz), generator=torch.Generator().manual_seed(0))
            calibrate_batchnorm(self, z)
        self.set_noise(noise)

    # ------------------------------------------------------------------ noise control

    def noise_injections(self) -> dict[str, NoiseInjection]:
        """Input name -> NoiseInjection module, in execution order."""
        found: dict[str, NoiseInjection] = {}
        for site in self.sites:
            module = self.get_submodule(site.path)
            assert isinstance(module, NoiseInjection)
            found[site.name] = module
        return found

    def noise_maps(self, seed: int) -> dict[str, torch.Tensor]:
        """The (1, 1, H, W) maps that mode "seed:<seed>" uses, drawn in execution order."""
        generator = torch.Generator().manual_seed(seed)
        return {
            site.name: torch.randn((1, 1, site.size, site.size), generator=generator)
            for site in self.sites
        }

    def set_noise(self, noise: str) -> FastGANGenerator:
        """Switch the noise mode (see the module docstring). Returns self."""
        mode, seed = parse_noise(noise)
        maps = self.noise_maps(seed) if seed is not None else {}
        for name, injection in self.noise_injections().items():
            if seed is None:
                injection.fixed_noise = None
                injection.mode = mode
            else:
                injection.set_fixed(maps[name])
        self.noise_mode = noise
        return self

    def _given_noise(self, noise: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.noise_mode != "input":
            if noise:
                raise UserError(
                    f"noise tensors were passed but the noise mode is '{self.noise_mode}': "
                    "build the model with noise='input' to feed noise"
                )
            return {}
        if len(noise) != len(self.sites):
            names = ", ".join(site.name for site in self.sites)
            raise UserError(f"noise mode 'input' needs {len(self.sites)} noise tensors ({names})")
        return {site.name: tensor for site, tensor in zip(self.sites, noise, strict=True)}

    # ------------------------------------------------------------------ forward

    def forward(self, z: torch.Tensor, *noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        given = self._given_noise(noise).get
        feat_4 = self.init(z)
        feat_8 = self.feat_8(feat_4, given("noise_feat_8_0"), given("noise_feat_8_1"))
        feat_16 = self.feat_16(feat_8)
        feat_32 = self.feat_32(feat_16, given("noise_feat_32_0"), given("noise_feat_32_1"))
        feat_64 = self.se_64(feat_4, self.feat_64(feat_32))
        big = self.feat_128(feat_64, given("noise_feat_128_0"), given("noise_feat_128_1"))
        feat_128 = _gate(self.se_128, feat_8, big, given("noise_se_128"))
        feat_256 = _gate(self.se_256, feat_16, self.feat_256(feat_128), given("noise_se_256"))
        feat_top = feat_256
        if self.im_size > 256:
            big = self.feat_512(feat_256, given("noise_feat_512_0"), given("noise_feat_512_1"))
            feat_512 = _gate(self.se_512, feat_32, big, given("noise_se_512"))
            feat_top = self.feat_1024(feat_512)
        img_big, img_128 = self.to_big(feat_top), self.to_128(feat_128)
        if self.with_tanh:
            return torch.tanh(img_big), torch.tanh(img_128)
        return img_big, img_128


def _gate(
    block: nn.Module, small: torch.Tensor, big: torch.Tensor, noise: torch.Tensor | None
) -> torch.Tensor:
    if isinstance(block, SLIMBlock):
        return block(small, big, noise)
    return block(small, big)


# ---------------------------------------------------------------------- registry entries


def fastgan_sle_256(
    noise: str = "off", with_tanh: bool = False, settle: bool = True
) -> FastGANGenerator:
    """Official FastGAN generator at 256 px (three SLE gates, raw conv outputs)."""
    return FastGANGenerator(256, "sle", with_tanh=with_tanh, noise=noise, settle=settle)


def fastgan_slim_256(
    noise: str = "off", with_tanh: bool = False, settle: bool = True
) -> FastGANGenerator:
    """FastGAN-SLIM-256: se_128/se_256 SLIM, se_64 SLE; `with_tanh` as the official flag."""
    return FastGANGenerator(256, "slim", with_tanh=with_tanh, noise=noise, settle=settle)


def fastgan_slim_1024(noise: str = "off", settle: bool = True) -> FastGANGenerator:
    """FastGAN-SLIM-1024: se_128/se_256/se_512 SLIM (mask noise), se_64 SLE, tanh outputs."""
    return FastGANGenerator(1024, "slim", noise=noise, settle=settle)


_Z = InputSpec("z", (1, NZ), kind="latent")


def _noise_spec(site: NoiseSite, batch: int = 1) -> InputSpec:
    return InputSpec(site.name, (batch, 1, site.size, site.size), kind="noise")


def _inputs(im_size: int, attention: Attention, **model_kwargs: Any) -> tuple[InputSpec, ...]:
    mode, _ = parse_noise(model_kwargs.get("noise", "off"))
    if mode != "input":
        return (_Z,)
    return (_Z, *(_noise_spec(site) for site in noise_sites(im_size, attention)))


_FASTGAN_SOURCE = "KuanChaoCHU/FastGAN-pytorch/models.py@04524ef245751225a1db13645d782ef9681a7024"
_SLIM_SOURCE = "Torment123/SLIM_code/{}/models.py@757dc62c04999af5655b77a85e168525e7a7b47a"

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="fastgan_sle_256",
        family="fastgan-sle",
        task="generation",
        factory=fastgan_sle_256,
        inputs=(_Z,),
        output_names=("img_big", "img_128"),
        description="FastGAN generator, 256 px, three SLE skip-layer gates (official layout)",
        se_blocks={"sle": 3},
        source=_FASTGAN_SOURCE,
        inputs_fn=partial(_inputs, 256, "sle"),
    ),
    ModelSpec(
        name="fastgan_slim_256",
        family="fastgan-slim",
        task="generation",
        factory=fastgan_slim_256,
        inputs=(_Z,),
        output_names=("img_big", "img_128"),
        description="FastGAN-SLIM generator, 256 px: SLIM/SASE at 128 and 256, SLE at 64",
        se_blocks={"sle": 1, "sase": 2},
        source=_SLIM_SOURCE.format("FastGAN-SLIM-256"),
        inputs_fn=partial(_inputs, 256, "slim"),
    ),
    ModelSpec(
        name="fastgan_slim_1024",
        family="fastgan-slim",
        task="generation",
        factory=fastgan_slim_1024,
        inputs=(_Z,),
        output_names=("img_1024", "img_128"),
        description="FastGAN-SLIM generator, 1024 px: SLIM/SASE at 128, 256, 512, SLE at 64",
        se_blocks={"sle": 1, "sase": 3},
        source=_SLIM_SOURCE.format("FastGAN-SLIM-1024"),
        inputs_fn=partial(_inputs, 1024, "slim"),
    ),
)
