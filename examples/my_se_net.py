"""A network of your own, as sase-deploy sees one: a factory returning an `nn.Module`.

It holds a squeeze-excitation block written the way torchvision writes it
(`torchvision.ops.SqueezeExcitation`), which `sase-deploy` recognises by what the graph
computes. Deploy it from the repository root:

    sase-deploy deploy examples.my_se_net:small_se_net --input-shape 1x3x32x32 -o build/mine
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """Channel attention: global average pool, bottleneck MLP (1x1 convs), sigmoid, rescale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class SmallSENet(nn.Module):
    """Two conv stages with an SE block each, then a linear classifier."""

    def __init__(self, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            SqueezeExcitation(width, width // 4),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            SqueezeExcitation(2 * width, width // 2),
        )
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def small_se_net(classes: int = 10) -> SmallSENet:
    """The factory `sase-deploy` calls (`--model-arg classes=100` passes keyword arguments)."""
    return SmallSENet(classes)
