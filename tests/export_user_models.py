"""Small user-written models for the export tests, imported as `export_user_models:FACTORY`.

They are written the way users write SE blocks, not the way sase-deploy's zoo does, so export
must cope with styles it has not seen: Linear + view + expand_as, `mean` instead of
AdaptiveAvgPool2d, uneven adaptive pools, data-dependent Python control flow, random noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearSE(nn.Module):
    """SE with Linear layers, view and expand_as (the classic SENet-PyTorch style)."""

    def __init__(self, channels: int, reduction: int = 4, use_mean: bool = False) -> None:
        super().__init__()
        self.use_mean = use_mean
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = x.mean(dim=(2, 3)) if self.use_mean else self.pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class UserSENet(nn.Module):
    """conv -> BN -> ReLU -> SE -> conv -> SE -> global pool -> Linear."""

    def __init__(self, use_mean: bool = False, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.se1 = LinearSE(width, use_mean=use_mean)
        self.conv = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.se2 = LinearSE(width, use_mean=use_mean)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se2(self.conv(self.se1(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def user_se_linear(width: int = 16) -> nn.Module:
    return UserSENet(use_mean=False, width=width)


def user_se_mean(width: int = 16) -> nn.Module:
    return UserSENet(use_mean=True, width=width)


class SpatialPoolSE(nn.Module):
    """SPSE-style gate: AdaptiveAvgPool2d to 1, 2 and 4 (uneven bins on 7x7 maps)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in (1, 2, 4))
        self.dw = nn.ModuleList(
            nn.Conv2d(channels, channels, s, groups=channels) for s in (1, 2, 4)
        )
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = sum(dw(pool(x)) for pool, dw in zip(self.pools, self.dw, strict=True))
        return x * torch.sigmoid(self.fc(torch.relu(s)))


def spse_toy(channels: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), SpatialPoolSE(channels))


class NoisyBlock(nn.Module):
    """FastGAN-style noise injection drawn in forward: must never be exported silently."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, _, h, w = y.shape
        return y + self.weight * torch.randn(b, 1, h, w)


def noisy() -> nn.Module:
    return NoisyBlock()


class DataDependentBranch(nn.Module):
    """Python `if` on a tensor value: torch.export refuses it, TorchScript tracing takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if bool((y.abs() >= 0).all()):  # always true, but only known at run time
            return y * 2
        return y


def data_dependent() -> nn.Module:
    return DataDependentBranch()


class FixedSizeHead(nn.Module):
    """Flattens to a Linear sized for 3x8x8 inputs: any other shape is rejected."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def fixed_size() -> nn.Module:
    return FixedSizeHead()


class TwoInputs(nn.Module):
    """Two inputs, two outputs (a generator-like z + noise signature)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)

    def forward(self, z: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.tanh(self.fc(z)).view(-1, 1, 4, 4) + 0.1 * noise
        return img, F.glu(img, dim=-1)


def two_inputs() -> nn.Module:
    return TwoInputs()


class SpectralNet(nn.Module):
    """Spectral-normed conv (hook API, as in FastGAN): export must bake it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.spectral_norm(nn.Conv2d(3, 8, 3, padding=1))
        self.glu = nn.GLU(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.glu(self.conv(x))


def spectral() -> nn.Module:
    torch.manual_seed(0)
    model = SpectralNet()
    model.train()
    with torch.no_grad():  # a few power iterations, as training would have done
        for _ in range(3):
            model(torch.randn(1, 3, 8, 8))
    return model


def not_a_module() -> str:
    return "not a model"


class StepCounter(nn.Module):
    """Forward depends on Python state that changes per call (a step-annealed scale).

    Export freezes the scale of the traced call, so ONNX legitimately disagrees with the
    PyTorch reference run: an honest parity failure.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.step += 1
        return self.conv(x) * float(self.step)


def step_counter() -> nn.Module:
    return StepCounter()


class UserStyleSlim(nn.Module):
    """A SLIM/SASE synthesis block as training code writes it: `chunk`, per-group Linear +
    BatchNorm1d style vectors reshaped with `view(b, -1, 1, 1)`, per-group mask convs, masks
    resized to the big map with `F.interpolate(size=(h, w))` read from its runtime shape, and
    `num / (den + eps)`. TorchScript exports all of that shape arithmetic as graph nodes."""

    def __init__(
        self, cin: int = 64, cout: int = 16, groups: int = 4, style_act: str = "relu"
    ) -> None:
        super().__init__()
        self.groups = groups
        self.style_act = getattr(torch, style_act)  # "tanh": a SASE look-alike no rule fuses
        cg = cin // groups
        cr = max(1, cg // 16)
        self.fc1 = nn.ModuleList(nn.Linear(cg, cr) for _ in range(groups))
        self.bn = nn.ModuleList(nn.BatchNorm1d(cr) for _ in range(groups))
        self.fc2 = nn.ModuleList(nn.Linear(cr, cout) for _ in range(groups))
        self.mask = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cg, cr, 1),
                nn.ReLU(),
                nn.Conv2d(cr, cr, 3, padding=2, dilation=2),
                nn.ReLU(),
                nn.Conv2d(cr, 1, 1),
            )
            for _ in range(groups)
        )
        with torch.no_grad():  # trained-looking BN statistics, so folding them is exercised
            for bn in self.bn:
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, xs: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        b, _, h, w = xb.size()
        num: torch.Tensor | float = 0.0
        den: torch.Tensor | float = 0.0
        for g, x in enumerate(xs.chunk(self.groups, dim=1)):
            style = self.fc2[g](self.style_act(self.bn[g](self.fc1[g](x.mean(dim=(2, 3))))))
            mask = F.interpolate(torch.sigmoid(self.mask[g](x)), size=(h, w), mode="nearest")
            num = num + mask * style.view(b, -1, 1, 1)
            den = den + mask
        return xb * (num / (den + 1e-6) + 1)


def user_style_slim() -> nn.Module:
    torch.manual_seed(0)
    return UserStyleSlim().eval()
