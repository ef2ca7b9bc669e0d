"""The SLIM / SASE synthesis block (official name `InceptionBlock`).

SASE (arXiv 2112.14804 v3) is SLIM (v1/v2) renamed. Layout follows Torment123/SLIM_code
(FastGAN-SLIM-256 and FastGAN-SLIM-1024 `models.py`) so official state dicts load as they are;
the code is written from the paper's description and that layout, not copied.

A low-res source `xs` (B, Cin, h, h) modulates a high-res target `xb` (B, Cout, H, H). `xs`
is split into G channel groups; each group g yields a style vector s_g (B, Cout) and a spatial
mask m_g (B, 1, h, h), and

    style = sum_g m_g * s_g / (sum_g m_g + 1e-6) + 1,    out = xb * resize_nearest(style, H).

Deployment formulation (same numbers as the official one): the official code resizes each mask
to H x H and then mixes styles at full resolution. Nearest resizing only repeats pixels and
every step after it is per pixel, so mixing at h x h and resizing the (B, Cout, h, h) style
once gives identical values at (H/h)^2 times less work. The mix is a batched matmul
(B, Cout, G) @ (B, G, h*h) instead of a 5-D broadcast product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sase_deploy.models.blocks_fastgan import NoiseInjection, sn_conv2d, sn_linear

MASK_EPS = 1e-6


def _channel_branch(c_group: int, c_reduced: int, ch_out: int) -> nn.Sequential:
    """GAP -> flatten -> Linear(Cg->Cr) -> BN1d -> ReLU -> Linear(Cr->Cout). Keys 2, 3, 5."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        sn_linear(c_group, c_reduced),
        nn.BatchNorm1d(c_reduced),
        nn.ReLU(),
        sn_linear(c_reduced, ch_out),
    )


def _spatial_branch(c_group: int, c_reduced: int, dilation: int) -> nn.Sequential:
    """Mask logits: Conv1x1 -> BN -> ReLU -> 2x[dilated Conv3x3 -> BN -> ReLU] -> Conv1x1 to 1.

    Keys 0, 1, 3, 4, 6, 7, 9. The official 256 variant also lists Sigmoid and the resize as
    trailing parameter-free modules; they live in `SLIMBlock.forward` here (same keys).
    """
    layers: list[nn.Module] = [
        sn_conv2d(c_group, c_reduced, kernel_size=1),
        nn.BatchNorm2d(c_reduced),
        nn.ReLU(),
    ]
    for _ in range(2):
        layers += [
            sn_conv2d(c_reduced, c_reduced, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(c_reduced),
            nn.ReLU(),
        ]
    layers.append(sn_conv2d(c_reduced, 1, kernel_size=1))
    return nn.Sequential(*layers)


class SLIMBlock(nn.Module):
    """SLIM/SASE block; `mask_noise=True` is the FastGAN-SLIM-1024 variant.

    Args:
        ch_in, size_in: channels and side of the source map `xs`.
        ch_out, size_out: channels and side of the target map `xb` (a multiple of size_in).
        groups: G; `ch_in` must divide by it. reduction: r, with Cr = (ch_in / G) // r.
        dilation: of the two 3x3 convs in the spatial branch (2; 4 for se_512 at 1024).
        mask_noise: concatenate the G mask logits, add a NoiseInjection (key
            `noise_injection.weight`), then sigmoid + resize. Without it there is no such key.

    Keys: `channel_attn.{g}.{2,3,5}.*`, `spatial_attn.{g}.{0,1,3,4,6,7,9}.*`.
    """

    def __init__(
        self,
        ch_in: int,
        size_in: int,
        ch_out: int,
        size_out: int,
        groups: int = 4,
        reduction: int = 16,
        dilation: int = 2,
        mask_noise: bool = False,
    ) -> None:
        super().__init__()
        if ch_in % groups:
            raise ValueError(f"input channels {ch_in} do not divide into {groups} groups")
        if size_out % size_in:
            raise ValueError(f"target size {size_out} is not a multiple of source {size_in}")
        c_group = ch_in // groups
        c_reduced = c_group // reduction
        if c_reduced < 1:
            raise ValueError(f"{c_group} channels per group cannot be reduced by {reduction}")
        self.groups = groups
        self.group_channels = c_group
        self.ch_out = ch_out
        self.size_in = size_in
        self.size_out = size_out
        self.channel_attn = nn.ModuleList(
            _channel_branch(c_group, c_reduced, ch_out) for _ in range(groups)
        )
        self.spatial_attn = nn.ModuleList(
            _spatial_branch(c_group, c_reduced, dilation) for _ in range(groups)
        )
        # Registered after the branches, as officially: parameters() order matters for EMA lists.
        self.noise_injection = NoiseInjection() if mask_noise else None

    def forward(
        self, x_small: torch.Tensor, x_big: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        chunks = torch.split(x_small, self.group_channels, dim=1)
        styles = torch.stack(
            [branch(x) for x, branch in zip(chunks, self.channel_attn, strict=True)], dim=2
        )  # (B, Cout, G)
        logits = torch.cat(
            [branch(x) for x, branch in zip(chunks, self.spatial_attn, strict=True)], dim=1
        )  # (B, G, h, h)
        if self.noise_injection is not None:
            logits = self.noise_injection(logits, noise)
        masks = torch.sigmoid(logits)
        # Constant target shapes (-1 = batch) keep shape arithmetic out of the exported graph.
        side = self.size_in
        mixed = torch.matmul(styles, masks.reshape(-1, self.groups, side * side))
        mixed = mixed.reshape(-1, self.ch_out, side, side)
        style = mixed / (masks.sum(dim=1, keepdim=True) + MASK_EPS) + 1
        style = F.interpolate(style, scale_factor=self.size_out // self.size_in, mode="nearest")
        return x_big * style
