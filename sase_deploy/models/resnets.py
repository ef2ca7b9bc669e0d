"""Recognition networks of the model zoo: SE-, SASE-, SPSE- and RGSE-ResNets.

`ResNet` is a torchvision-style trunk (`conv1`, `bn1`, `layerN.i.{conv1, bn1, ...}`,
`downsample.{0,1}`, `fc`; stride on the 3x3 conv) whose residual blocks carry an attention
module:
- `SEBasicBlock` / `SEBottleneck`: the SE gate (`se.fc1`, `se.fc2`) after the last BN, before
  the add (Hu et al.).
- `SASEBottleneck`: the 3x3 conv replaced by `SASEConv2d` (a reconstruction, see
  `sase_deploy.models.sase`).
SPSE/RGSE follow the official megvii layout instead and live in `sase_deploy.models.spse`.
The trunk also builds the tiny digits networks (`stem="small"`, two stages).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sase_deploy.models.pooling import GlobalAvgPool2d
from sase_deploy.models.sase import SASEConv2d
from sase_deploy.models.se import SqueezeExcitation
from sase_deploy.models.spec import InputSpec, ModelSpec, Preprocess
from sase_deploy.models.spse import OFFICIAL_SOURCE, rgse_resnet50, spse_resnet50

Stem = Literal["imagenet", "small"]


class ResidualBlock(nn.Module):
    """Interface of the blocks `ResNet` stacks: `expansion` and this constructor signature."""

    expansion: ClassVar[int] = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        **options: Any,
    ) -> None:
        super().__init__()


class SEBasicBlock(ResidualBlock):
    """Two 3x3 convs with an SE gate on the residual branch (ResNet-18/34 style)."""

    expansion: ClassVar[int] = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        reduction: int = 16,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcitation(planes, reduction)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class _Bottleneck(ResidualBlock):
    """1x1 -> 3x3 (`conv2`, stride here) -> 1x1 x4 body; subclasses choose conv2 and the gate."""

    expansion: ClassVar[int] = 4

    def _init_body(
        self, inplanes: int, planes: int, conv2: nn.Module, downsample: nn.Module | None
    ) -> None:
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv2
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.residual(x) + identity)


class SEBottleneck(_Bottleneck):
    """Bottleneck with an SE gate after bn3, before the add (SE-ResNet-50 style)."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        reduction: int = 16,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample)
        conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self._init_body(inplanes, planes, conv2, downsample)
        self.se = SqueezeExcitation(planes * self.expansion, reduction)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(super().residual(x))


class SASEBottleneck(_Bottleneck):
    """Bottleneck whose 3x3 conv is a `SASEConv2d` (reconstruction; G groups, reduction r)."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 4,
        reduction: int = 16,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample)
        conv2 = SASEConv2d(planes, planes, stride=stride, groups=groups, reduction=reduction)
        self._init_body(inplanes, planes, conv2, downsample)


class ResNet(nn.Module):
    """torchvision-style ResNet trunk over any `ResidualBlock`.

    `stem="imagenet"`: 7x7/2 conv + 3x3/2 max pool (224x224 inputs); `stem="small"`: one 3x3/1
    conv and no pool (tiny inputs such as 8x8 digits). Stages `layer1..layerN` follow `layers`
    and `widths`; every stage after the first halves the resolution. `block_options` go to
    each block (e.g. `reduction`, `groups`).
    """

    def __init__(
        self,
        block: type[ResidualBlock],
        layers: tuple[int, ...],
        widths: tuple[int, ...] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: Stem = "imagenet",
        stem_width: int = 64,
        **block_options: Any,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self._inplanes = stem_width
        self.stages = len(layers)
        for index, (blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stage = self._make_stage(block, width, blocks, 1 if index == 0 else 2, block_options)
            self.add_module(f"layer{index + 1}", stage)
        self.avgpool = GlobalAvgPool2d(flatten=True)
        self.fc = nn.Linear(self._inplanes, num_classes)
        self._init_weights()

    def _make_stage(
        self,
        block: type[ResidualBlock],
        planes: int,
        blocks: int,
        stride: int,
        options: dict[str, Any],
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        stage = [block(self._inplanes, planes, stride, downsample, **options)]
        self._inplanes = out_channels
        stage += [block(self._inplanes, planes, **options) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():  # after the generic conv init above
            if isinstance(module, SASEConv2d):
                module.init_near_identity()

    def stage_modules(self) -> list[nn.Module]:
        return [self.get_submodule(f"layer{i + 1}") for i in range(self.stages)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for stage in self.stage_modules():
            x = stage(x)
        return self.fc(self.avgpool(x))


def se_resnet18(num_classes: int = 1000, reduction: int = 16) -> ResNet:
    """SE-ResNet-18: BasicBlocks [2, 2, 2, 2] with SE gates (8 gates)."""
    return ResNet(SEBasicBlock, (2, 2, 2, 2), num_classes=num_classes, reduction=reduction)


def se_resnet50(num_classes: int = 1000, reduction: int = 16) -> ResNet:
    """SE-ResNet-50: Bottlenecks [3, 4, 6, 3] with SE gates (16 gates)."""
    return ResNet(SEBottleneck, (3, 4, 6, 3), num_classes=num_classes, reduction=reduction)


def sase_resnet26(num_classes: int = 1000, groups: int = 4, reduction: int = 16) -> ResNet:
    """SASE-ResNet-26 (reconstruction): Bottlenecks [2, 2, 2, 2] with SASE 3x3 convs."""
    return ResNet(
        SASEBottleneck, (2, 2, 2, 2), num_classes=num_classes, groups=groups, reduction=reduction
    )


def sase_resnet50(num_classes: int = 1000, groups: int = 4, reduction: int = 16) -> ResNet:
    """SASE-ResNet-50 (reconstruction): Bottlenecks [3, 4, 6, 3] with SASE 3x3 convs."""
    return ResNet(
        SASEBottleneck, (3, 4, 6, 3), num_classes=num_classes, groups=groups, reduction=reduction
    )


IMAGENET_INPUTS = (InputSpec("x", (1, 3, 224, 224)),)
IMAGENET_PREPROCESS = Preprocess(size=(224, 224), resize=256)
HU_SOURCE = "Hu et al., CVPR 2018 (torchvision-style layout)"


def _imagenet_spec(
    name: str, family: str, factory: Any, blocks: dict[str, int], source: str, description: str
) -> ModelSpec:
    return ModelSpec(
        name=name,
        family=family,
        task="classification",
        factory=factory,
        inputs=IMAGENET_INPUTS,
        output_names=("logits",),
        description=description,
        se_blocks=blocks,
        preprocess=IMAGENET_PREPROCESS,
        source=source,
    )


SPECS: tuple[ModelSpec, ...] = (
    _imagenet_spec(
        "se_resnet18", "se", se_resnet18, {"se": 8}, HU_SOURCE,
        "SE-ResNet-18, 1000 ImageNet classes; SE gate (r=16) in every BasicBlock",
    ),
    _imagenet_spec(
        "se_resnet50", "se", se_resnet50, {"se": 16}, HU_SOURCE,
        "SE-ResNet-50, 1000 ImageNet classes; SE gate (r=16) in every Bottleneck",
    ),
    _imagenet_spec(
        "sase_resnet26", "sase", sase_resnet26, {"sase": 8}, "reconstruction",
        "SASE-ResNet-26 (reconstruction): bottleneck 3x3 conv modulated by G=4 mask-weighted "
        "style vectors",
    ),
    _imagenet_spec(
        "sase_resnet50", "sase", sase_resnet50, {"sase": 16}, "reconstruction",
        "SASE-ResNet-50 (reconstruction): bottleneck 3x3 conv modulated by G=4 mask-weighted "
        "style vectors",
    ),
    _imagenet_spec(
        "spse_resnet50", "spse", spse_resnet50, {"spse": 16}, OFFICIAL_SOURCE,
        "SPSE-ResNet-50 (Jin et al.), official layout; pyramid pools 1/2/4 per SE gate",
    ),
    _imagenet_spec(
        "rgse_resnet50", "rgse", rgse_resnet50, {"rgse": 16}, OFFICIAL_SOURCE,
        "RGSE-ResNet-50 (Jin et al.), official layout; 7x7 region pools, 224x224 input only "
        "(13 gates with a strided depthwise conv, layer4's 3 without)",
    ),
)  # fmt: skip
