"""The SLIM / SASE synthesis block (official name `InceptionBlock`).

SASE (arXiv 2112.14804 v3) is SLIM (v1/v2) renamed. Layout follows Torment123/SLIM_code
(FastGAN-SLIM-256 and FastGAN-SLIM-1024 `models.py`) so official state dicts load as they are;
the code is written from the paper's description and that layout, not copied.

A low-res source `xs` (B, Cin, h, h) modulates a high-res target `xb` (B, Cout, H, H). `xs`
is split into G channel groups; each group g yields a style vector s_g (B, Cout) and a spatial
mask m_g (B, 1, H, H) (sigmoid, then nearest-resized from h to H), and

    style = sum_g m_g * s_g / (sum_g m_g + 1e-6) + 1,    out = xb * style.

The block computes in the official order, at the TARGET resolution (per-group sigmoid +
nearest resize in the 256 variant; in the 1024 variant the G logits are concatenated, the noise
added, then one sigmoid and one resize, the per-group masks being channel slices of that), so
the exported graph has the official form's cost. One spelling differs: the official code sums
a stacked 5-D broadcast product with `torch.sum(dim=1)`; here the same sum is a chain of
per-group products and adds (same values, no 5-D tensors). This is not the cheap way to run the
block: `sase-deploy fuse` (rule `SaseGroupFusion`) rewrites the exported graph to grouped convs
that mix the styles at the SOURCE resolution and resize the mixed style once (exact: nearest
resizing commutes with the per-pixel aggregation).
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
        styles = [branch(x) for x, branch in zip(chunks, self.channel_attn, strict=True)]
        logits = [branch(x) for x, branch in zip(chunks, self.spatial_attn, strict=True)]
        if self.noise_injection is None:  # 256 variant: each mask sigmoided and resized alone
            masks = [self._to_target(torch.sigmoid(logit)) for logit in logits]
        else:  # 1024 variant: concat the logits, add noise, one sigmoid, one resize
            noisy = self.noise_injection(torch.cat(logits, dim=1), noise)
            all_masks = self._to_target(torch.sigmoid(noisy))
            masks = [all_masks[:, g : g + 1] for g in range(self.groups)]
        weighted = masks[0] * styles[0][:, :, None, None]
        mask_sum = masks[0]
        for mask, style in zip(masks[1:], styles[1:], strict=True):
            weighted = weighted + mask * style[:, :, None, None]
            mask_sum = mask_sum + mask
        return x_big * (weighted / (mask_sum + MASK_EPS) + 1)

    def _to_target(self, masks: torch.Tensor) -> torch.Tensor:
        """Nearest resize h -> H. A constant integer scale keeps shape arithmetic (and the
        batch dimension) out of the exported graph; values equal the official `size=` form."""
        return F.interpolate(masks, scale_factor=self.size_out // self.size_in, mode="nearest")
