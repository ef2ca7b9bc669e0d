"""FastGAN building blocks (Liu et al., ICLR 2021), laid out like the official code.

Module indices and parameter names follow odegeasslbc/FastGAN-pytorch `models.py`, so an
official state dict loads with `load_state_dict` as it is. Written from the paper and the
official layout (see /work/shared/official_layouts), not copied.

Spectral norm is applied the official way (`torch.nn.utils.spectral_norm`), so a layer holds
`weight_orig` (parameter) and `weight_u`/`weight_v` (buffers) and no `weight` key. For export,
`sase_deploy.models.checkpoint.bake_spectral_norm` bakes it into a plain `weight`; eval
outputs do not change.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

NoiseMode = Literal["off", "random", "fixed", "input"]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


# --------------------------------------------------------------------------- spectral norm


def sn(layer: ModuleT) -> ModuleT:
    """Spectral-normalise a conv/linear layer with the hook-based torch API (official keys)."""
    return nn.utils.spectral_norm(layer)


def sn_conv2d(*args: Any, **kwargs: Any) -> nn.Conv2d:
    return sn(nn.Conv2d(*args, **kwargs))


def sn_linear(*args: Any, **kwargs: Any) -> nn.Linear:
    return sn(nn.Linear(*args, **kwargs))


def _spectral_norm_hooks(model: nn.Module) -> list[tuple[nn.Module, SpectralNorm]]:
    """(module, hook) for every module carrying a hook-based spectral norm."""
    return [
        (module, hook)
        for module in model.modules()
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, SpectralNorm)
    ]


@torch.no_grad()
def settle_spectral_norm(model: nn.Module, iterations: int = 15) -> nn.Module:
    """Run power iterations on every spectral-normed layer's `u`/`v` vectors, in place.

    A fresh spectral-normed layer has random `u`/`v`; eval mode does no power iteration, so
    `sigma = u^T W v` is far too small and weights blow up. Training converges them one step
    per forward; this does the same steps without data (the sigma estimate `|W v|` is within a
    few percent after ~10 steps). Loaded checkpoints carry converged `u`/`v` and need none.
    """
    for module, hook in _spectral_norm_hooks(model):
        matrix = hook.reshape_weight_to_matrix(getattr(module, hook.name + "_orig"))
        u, v = getattr(module, hook.name + "_u"), getattr(module, hook.name + "_v")
        for _ in range(iterations):
            v.copy_(F.normalize(torch.mv(matrix.t(), u), dim=0, eps=hook.eps))
            u.copy_(F.normalize(torch.mv(matrix, v), dim=0, eps=hook.eps))
        setattr(module, hook.name, hook.compute_weight(module, do_power_iteration=False))
    return model


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running stats from one eval forward of `inputs`, in place.

    For randomly initialised models only: spectral-normed layers and GLUs shrink activations,
    and with fresh stats (mean 0, var 1) eval outputs end up ~1e-5, useless for FP16/INT8
    parity checks. A forward pre-hook gives each BN, before it runs, running mean 0 and running
    var = the per-channel mean square of the input it actually receives (over the batch and
    the map), so every later layer sees features of unit RMS. Not the centred variance: at
    high resolution a map is smooth, its spatial std is small next to its mean, and dividing
    by it amplifies rounding error ~1000x by 1024 px. Pass a batch of several inputs: a
    BatchNorm1d (or a BN over a tiny map) calibrated on one sample divides every other input by
    that sample's own, possibly tiny, per-channel values, which makes the network chaotic. The
    model's mode is restored; checkpoints overwrite these buffers.
    """

    def set_stats(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        assert bn.running_mean is not None and bn.running_var is not None
        per_channel = args[0].detach().float().transpose(0, 1).flatten(1)  # (C, values)
        bn.running_mean.zero_()
        bn.running_var.copy_(per_channel.pow(2).mean(dim=1).clamp_min(1e-8))

    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [bn.register_forward_pre_hook(set_stats) for bn in batchnorms]
    was_training = model.training
    try:
        model.eval()
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return model


# --------------------------------------------------------------------------- blocks


class NoiseInjection(nn.Module):
    """`feat + weight * noise`, noise of shape (B, 1, H, W) broadcast over channels.

    `weight` is one learned scalar (initialised to 0). Where the noise comes from is the
    `mode`, set by the generator:

    - "off": no noise (the graph has no noise op at all; same as weight 0),
    - "random": fresh `randn` each call (training behaviour; exports a RandomNormal op),
    - "fixed": the `fixed_noise` buffer (1, 1, H, W), the same map for every sample,
    - "input": the caller passes `noise` explicitly.

    An explicitly passed `noise` is used whatever the mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.mode: NoiseMode = "off"
        # Non-persistent: official state dicts hold no noise, and ours must not either.
        self.fixed_noise: torch.Tensor | None
        self.register_buffer("fixed_noise", None, persistent=False)

    def set_fixed(self, noise: torch.Tensor) -> None:
        self.fixed_noise = noise.to(self.weight)
        self.mode = "fixed"

    def forward(self, feat: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            if self.mode == "off":
                return feat
            if self.mode == "random":
                batch, _, height, width = feat.shape
                noise = torch.randn(batch, 1, height, width, device=feat.device, dtype=feat.dtype)
            elif self.mode == "fixed":
                if self.fixed_noise is None:
                    raise RuntimeError("noise mode 'fixed' without a fixed noise map")
                noise = self.fixed_noise
            else:
                raise RuntimeError("noise mode 'input' needs the noise tensor as an argument")
        return feat + self.weight * noise

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class SLEBlock(nn.Module):
    """Skip-layer excitation (official name `SEBlock`): gate a big map by a small one.

    gate = Sigmoid(Conv1x1(Swish(Conv4x4(AdaptiveAvgPool4(small))))) of shape (B, C_big, 1, 1);
    output = big * gate. Convs are spectral-normed, without bias, no padding.
    Keys: `main.1.*`, `main.3.*`.
    """

    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            sn_conv2d(ch_in, ch_out, 4, 1, 0, bias=False),
            nn.SiLU(),  # Swish: x * sigmoid(x)
            sn_conv2d(ch_out, ch_out, 1, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, feat_small: torch.Tensor, feat_big: torch.Tensor) -> torch.Tensor:
        return feat_big * self.main(feat_small)


class InitLayer(nn.Module):
    """z (B, nz) -> (B, channel, 4, 4): ConvTranspose4x4 (SN, no bias) -> BN -> GLU.

    Keys: `init.0.*` (ConvTranspose, spectral norm over dim 1), `init.1.*` (BatchNorm2d).
    """

    def __init__(self, nz: int, channel: int) -> None:
        super().__init__()
        self.init = nn.Sequential(
            sn(nn.ConvTranspose2d(nz, channel * 2, 4, 1, 0, bias=False)),
            nn.BatchNorm2d(channel * 2),
            nn.GLU(dim=1),  # first half * sigmoid(second half) over channels
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # unsqueeze rather than view(B, -1, 1, 1): no shape arithmetic in the exported graph.
        return self.init(z[:, :, None, None])


class UpBlock(nn.Sequential):
    """Nearest x2 -> Conv3x3 (SN, no bias, in -> 2*out) -> BN -> GLU. Keys `1.*`, `2.*`."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            sn_conv2d(in_planes, out_planes * 2, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_planes * 2),
            nn.GLU(dim=1),
        )


class UpBlockComp(nn.Sequential):
    """UpBlock with a second conv and a NoiseInjection before each BN.

    Nearest x2 -> Conv3x3 -> Noise -> BN -> GLU -> Conv3x3 -> Noise -> BN -> GLU.
    Keys: `1.*` conv, `2.weight` noise, `3.*` BN, `5.*` conv, `6.weight` noise, `7.*` BN.
    """

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            sn_conv2d(in_planes, out_planes * 2, 3, 1, 1, bias=False),
            NoiseInjection(),
            nn.BatchNorm2d(out_planes * 2),
            nn.GLU(dim=1),
            sn_conv2d(out_planes, out_planes * 2, 3, 1, 1, bias=False),
            NoiseInjection(),
            nn.BatchNorm2d(out_planes * 2),
            nn.GLU(dim=1),
        )

    def forward(
        self,
        input: torch.Tensor,
        noise_a: torch.Tensor | None = None,
        noise_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self[1](self[0](input))
        x = self[4](self[3](self[2](x, noise_a)))
        x = self[5](x)
        return self[8](self[7](self[6](x, noise_b)))
