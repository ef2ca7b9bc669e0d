"""SASE recognition conv: a RECONSTRUCTION (the paper body and code for it are not public).

SASE (arXiv 2112.14804 v3, formerly SLIM) reports a "ResNeXt-like" same-layer drop-in for the
3x3 conv of ResNet bottlenecks. This module rebuilds it by the published SLIM synthesis recipe
(see the official InceptionBlock of Torment123/SLIM_code), with source = target = the block
feature:

1. `y = conv3x3(x)` (stride 1 or 2, no bias) -> (B, Cout, H', W')
2. split the conv INPUT `x` (B, Cin, H, W) into G channel groups of Cg = Cin / G
3. per group, a style vector `s_g` (B, Cout): GAP -> Linear(Cg -> Cr) -> BatchNorm1d -> ReLU ->
   Linear(Cr -> Cout)   (no sigmoid), with Cr = max(1, Cg // r)
4. per group, a spatial mask `m_g` (B, 1, H, W): Conv1x1(Cg -> Cr) -> BN -> ReLU ->
   2 x [Conv3x3(Cr -> Cr, dilation d, padding d) -> BN -> ReLU] -> Conv1x1(Cr -> 1) -> Sigmoid,
   then nearest-resized to (H', W') when the conv strides (as SLIM resizes to the target)
5. `style = sum_g m_g * s_g / (sum_g m_g + 1e-6) + 1`, and the output is `y * style`

The bottleneck then applies its usual BN and ReLU. Submodule indices mirror SLIM's
`channel_attn.i.{2,3,5}` / `spatial_attn.i.{0,1,3,4,6,7,9}` so the two layouts read alike;
unlike the GAN code there is no spectral norm. Defaults G = 4, r = 16, d = 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sase_deploy.models.pooling import GlobalAvgPool2d
from sase_deploy.models.se import reduced_channels

STYLE_EPS = 1e-6
# Init std of the style MLP's last Linear and of the mask's last 1x1 conv. In eval mode the
# BatchNorms of a random-init net do not normalise, so styles and mask logits grow with the
# input's scale: a deep net would overflow (style) and saturate its masks far into the sigmoid
# tail, where ONNX Runtime's Sigmoid flushes to 0 below about -17 while torch does not, and
# with eps = 1e-6 that tail decides the style. Small weights keep styles near 1 and mask logits
# within a few units, while keeping both paths non-trivial for parity checks.
STYLE_INIT_STD = 0.01
MASK_INIT_STD = 0.001


def _style_branch(group_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        GlobalAvgPool2d(flatten=True),  # (B, Cg)
        nn.Flatten(),  # no-op after the pool; keeps SLIM's indices (Linear at 2)
        nn.Linear(group_channels, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_channels),
    )


def _mask_branch(group_channels: int, hidden: int, dilation: int) -> nn.Sequential:
    def dilated() -> list[nn.Module]:
        conv = nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation)
        return [conv, nn.BatchNorm2d(hidden), nn.ReLU()]

    return nn.Sequential(
        nn.Conv2d(group_channels, hidden, kernel_size=1),
        nn.BatchNorm2d(hidden),
        nn.ReLU(),
        *dilated(),
        *dilated(),
        nn.Conv2d(hidden, 1, kernel_size=1),
        nn.Sigmoid(),
    )


class SASEConv2d(nn.Module):
    """3x3 conv modulated by G mask-weighted style vectors (reconstruction; see module doc).

    Keys: `conv.weight`, `channel_attn.{g}.{2,3,5}.*`, `spatial_attn.{g}.{0,1,3,4,6,7,9}.*`.
    BatchNorm1d in the style branch needs a batch > 1 in training mode (eval mode is fine).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 4,
        reduction: int = 16,
        dilation: int = 2,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups != 0:
            raise ValueError(f"in_channels={in_channels} must be divisible by groups={groups}")
        self.groups = groups
        self.group_channels = in_channels // groups
        self.hidden = reduced_channels(self.group_channels, reduction)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.channel_attn = nn.ModuleList(
            _style_branch(self.group_channels, self.hidden, out_channels) for _ in range(groups)
        )
        self.spatial_attn = nn.ModuleList(
            _mask_branch(self.group_channels, self.hidden, dilation) for _ in range(groups)
        )
        self.init_near_identity()

    def init_near_identity(self) -> None:
        """Small last-layer weights in both branches (see `STYLE_INIT_STD`); networks that
        re-initialise their convs call this again afterwards."""
        for style_mlp, mask_net in zip(self.channel_attn, self.spatial_attn, strict=True):
            for layer, std in (
                (style_mlp.get_submodule("5"), STYLE_INIT_STD),
                (mask_net.get_submodule("9"), MASK_INIT_STD),
            ):
                assert isinstance(layer, nn.Linear | nn.Conv2d) and layer.bias is not None
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)

    def styles_and_masks(
        self, x: torch.Tensor, out_size: tuple[int, int]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group `(s_g (B, Cout, 1, 1), m_g (B, 1, *out_size))`; exposed for tests/analysis."""
        pairs = []
        chunks = torch.split(x, self.group_channels, dim=1)
        for chunk, style_mlp, mask_net in zip(
            chunks, self.channel_attn, self.spatial_attn, strict=True
        ):
            style = style_mlp(chunk)[:, :, None, None]
            mask = mask_net(chunk)
            if tuple(mask.shape[-2:]) != out_size:
                mask = F.interpolate(mask, size=out_size, mode="nearest")
            pairs.append((style, mask))
        return pairs

    def style(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """`sum_g m_g s_g / (sum_g m_g + eps) + 1`, shape (B, Cout, *out_size)."""
        pairs = self.styles_and_masks(x, out_size)
        weighted = pairs[0][1] * pairs[0][0]
        mask_sum = pairs[0][1]
        for style, mask in pairs[1:]:
            weighted = weighted + mask * style
            mask_sum = mask_sum + mask
        return weighted / (mask_sum + STYLE_EPS) + 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        out_size = (int(y.shape[-2]), int(y.shape[-1]))
        return y * self.style(x, out_size)
