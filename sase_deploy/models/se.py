"""The squeeze-excitation gate of SE-Net (Hu et al., CVPR 2018).

GAP -> FC(C -> C/r) -> ReLU -> FC(C/r -> C) -> Sigmoid -> channel scale. The two FCs are 1x1
convolutions with bias on the (B, C, 1, 1) pooled map and the pool is `x.mean((2, 3))`, so the
export is the timm-style chain ReduceMean -> Conv -> Relu -> Conv -> Sigmoid -> Mul with no
Reshape/Flatten (a 1x1 conv on a 1x1 map is the same affine map as a Linear).
"""

from __future__ import annotations

import torch
from torch import nn


def reduced_channels(channels: int, reduction: int) -> int:
    """Bottleneck width of an SE MLP: `channels // reduction`, at least 1."""
    if channels < 1 or reduction < 1:
        raise ValueError(f"channels and reduction must be >= 1, got {channels}, {reduction}")
    return max(1, channels // reduction)


class SqueezeExcitation(nn.Module):
    """SE gate: returns `x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`. Keys: `fc1.*`, `fc2.*`."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) channel weights in (0, 1)."""
        squeezed = x.mean((2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
