"""SPSE and RGSE ResNets (Jin et al., Pattern Recognition 121, 2022) in the official layout.

Module names, registration order and shapes follow megvii-research/RG-SENet_SP-SENet
(`spse_resnet.py`, `rgse_resnet.py` at commit 49b6ed20), so official state dicts load as they
are once the DataParallel `module.` prefix is stripped:
`layerN.layerN_block_i.{conv_conv1, bn_bn1, conv_conv2, bn_bn2, conv_conv3, bn_bn3, <gate>,
fc_reduction, fc_extention, shortcut.shortcut_conv, shortcut.shortcut_bn}` (sic "extention").

Both gates sit on the residual branch after bn3, before the add:
- SPSE: adaptive avg pools to 1x1, 2x2, 4x4 -> depthwise conv with kernel = pooled size (bias)
  per scale -> sum -> `fc_bn` -> ReLU -> Linear(C -> C/16) -> ReLU -> Linear -> Sigmoid.
- RGSE: AvgPool2d(7, 7) -> depthwise conv kernel = stride = 8/4/2 in layers 1-3 (no bias) ->
  BN (`fc_spatial.{fc_spatial, bn_spatial}`, absent in layer4) -> ReLU -> the same MLP.
  The fixed 7x7 windows make RGSE assume a 224x224 input (56/28/14/7 maps).

Export-friendly deviations with identical numbers: the uneven adaptive pools use
`ExportableAdaptiveAvgPool2d`, and the head's `AvgPool2d(7, stride=1)` is a global mean (the
same on the 7x7 map of a 224 input, and it keeps SPSE usable at other sizes).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sase_deploy.models.pooling import ExportableAdaptiveAvgPool2d, GlobalAvgPool2d

OFFICIAL_SOURCE = "megvii-research/RG-SENet_SP-SENet@49b6ed20dfb9c6d3c772b6b108ed9d38a53f7bde"
JinKind = Literal["spse", "rgse"]
EXPANSION = 4
SE_REDUCTION = 16
# RGSE depthwise kernel (= stride) after AvgPool2d(7, 7), by stage; layer4 has no spatial conv.
RGSE_KERNELS: dict[int, int | None] = {1: 8, 2: 4, 3: 2, 4: None}


class _JinBottleneck(nn.Module):
    """Bottleneck body and SE MLP shared by SPSE and RGSE; subclasses add the spatial squeeze.

    Subclasses must register their squeeze modules between `_init_body` and `_init_mlp` so
    parameter order matches the official code.
    """

    def _init_body(self, in_channels: int, planes: int, stride: int) -> int:
        out = planes * EXPANSION
        self.conv_conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn_bn1 = nn.BatchNorm2d(planes)
        self.conv_conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn_bn2 = nn.BatchNorm2d(planes)
        self.conv_conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn_bn3 = nn.BatchNorm2d(out)
        return out

    def _init_mlp(self, in_channels: int, out: int, stride: int) -> None:
        self.fc_reduction = nn.Linear(out, out // SE_REDUCTION)
        self.fc_extention = nn.Linear(out // SE_REDUCTION, out)
        self.shortcut = nn.Sequential()
        if in_channels != out or stride != 1:
            self.shortcut.add_module(
                "shortcut_conv", nn.Conv2d(in_channels, out, 1, stride=stride, bias=False)
            )
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out))

    def squeeze(self, res: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) descriptor after its ReLU."""
        raise NotImplementedError

    def gate(self, res: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) channel weights in (0, 1)."""
        hidden = F.relu(self.fc_reduction(torch.flatten(self.squeeze(res), 1)))
        weights = torch.sigmoid(self.fc_extention(hidden))
        return weights[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.relu(self.bn_bn1(self.conv_conv1(x)))
        res = F.relu(self.bn_bn2(self.conv_conv2(res)))
        res = self.bn_bn3(self.conv_conv3(res))
        return F.relu(res * self.gate(res) + self.shortcut(x))


class SPSEBottleneck(_JinBottleneck):
    """Bottleneck with the spatial-pyramid SE gate (pools 1/2/4, depthwise convs, `fc_bn`)."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = self._init_body(in_channels, planes, stride)
        self.pool1 = GlobalAvgPool2d()
        self.pool2 = ExportableAdaptiveAvgPool2d(2)
        self.pool4 = ExportableAdaptiveAvgPool2d(4)
        self.fc_spatial1 = nn.Conv2d(out, out, kernel_size=1, groups=out)
        self.fc_spatial2 = nn.Conv2d(out, out, kernel_size=2, groups=out)
        self.fc_spatial4 = nn.Conv2d(out, out, kernel_size=4, groups=out)
        self.fc_bn = nn.BatchNorm2d(out)
        self._init_mlp(in_channels, out, stride)

    def squeeze(self, res: torch.Tensor) -> torch.Tensor:
        summed = (
            self.fc_spatial1(self.pool1(res))
            + self.fc_spatial2(self.pool2(res))
            + self.fc_spatial4(self.pool4(res))
        )
        return F.relu(self.fc_bn(summed))


class RGSEBottleneck(_JinBottleneck):
    """Bottleneck with the region-guided SE gate (AvgPool 7x7 windows, strided depthwise conv)."""

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, spatial_kernel: int | None = None
    ) -> None:
        super().__init__()
        out = self._init_body(in_channels, planes, stride)
        self.Pool = nn.AvgPool2d(7, 7)  # official attribute name
        self.fc_spatial = nn.Sequential()
        if spatial_kernel is not None:
            self.fc_spatial.add_module(
                "fc_spatial",
                nn.Conv2d(out, out, spatial_kernel, stride=spatial_kernel, groups=out, bias=False),
            )
            self.fc_spatial.add_module("bn_spatial", nn.BatchNorm2d(out))
        self._init_mlp(in_channels, out, stride)

    def squeeze(self, res: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc_spatial(self.Pool(res)))


class JinResNet(nn.Module):
    """ResNet trunk with the official naming: `conv1`, `bn1`, `layerN.layerN_block_i`, `fc`."""

    def __init__(
        self,
        kind: JinKind,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if kind not in ("spse", "rgse"):
            raise ValueError(f"kind must be 'spse' or 'rgse', got {kind!r}")
        self.kind = kind
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._in_channels = 64
        self.layer1 = self._make_stage(1, 64, layers[0])
        self.layer2 = self._make_stage(2, 128, layers[1])
        self.layer3 = self._make_stage(3, 256, layers[2])
        self.layer4 = self._make_stage(4, 512, layers[3])
        self.avgpool = GlobalAvgPool2d(flatten=True)
        self.fc = nn.Linear(512 * EXPANSION, num_classes)
        self._init_weights()

    def _make_stage(self, stage: int, planes: int, blocks: int) -> nn.Sequential:
        stage_layer = nn.Sequential()
        for index in range(blocks):
            stride = 2 if (index == 0 and stage > 1) else 1
            block: _JinBottleneck
            if self.kind == "spse":
                block = SPSEBottleneck(self._in_channels, planes, stride)
            else:
                block = RGSEBottleneck(self._in_channels, planes, stride, RGSE_KERNELS[stage])
            stage_layer.add_module(f"layer{stage}_block_{index}", block)
            self._in_channels = planes * EXPANSION
        return stage_layer

    def _init_weights(self) -> None:
        # Same intent as the official init: conv weights He-normal (fan_out), BN 1/0, biases 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x))


def spse_resnet50(num_classes: int = 1000) -> JinResNet:
    """SPSE-ResNet-50 (official `resnet50_spse`, 28.48 M parameters)."""
    return JinResNet("spse", (3, 4, 6, 3), num_classes)


def rgse_resnet50(num_classes: int = 1000) -> JinResNet:
    """RGSE-ResNet-50 (official `resnet50_rgse`, 28.21 M parameters; 224x224 input only)."""
    return JinResNet("rgse", (3, 4, 6, 3), num_classes)
