"""Small torch modules with SE-family gates written in the styles seen in the wild (test inputs).

Each net is conv -> gate -> conv so the gate sits inside a graph, like in a real network.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from sase_deploy.graph_io import model_from_graph
from sase_deploy.rewrite.graph_utils import import_graph
from sase_deploy.rewrite.rule import Decline, Match, RewriteRule, match_and_check


class TimmSE(nn.Module):
    """timm SEModule: mean(keepdim) -> Conv -> ReLU -> Conv -> Sigmoid -> Mul."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class TorchvisionSE(nn.Module):
    """torchvision SqueezeExcitation with a configurable gate activation."""

    def __init__(
        self, c: int, r: int = 4, act: nn.Module | None = None, gate: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.act = act or nn.ReLU()
        self.gate = gate or nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class LinearSE(nn.Module):
    """SE-Net as in many repos: view + Linear (+ BatchNorm1d) + view + expand_as."""

    def __init__(self, c: int, r: int = 4, bn: bool = False) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c, c // r)
        self.bn = nn.BatchNorm1d(c // r) if bn else nn.Identity()
        self.fc2 = nn.Linear(c // r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.pool(x).view(b, c)
        y = torch.sigmoid(self.fc2(torch.relu(self.bn(self.fc1(y)))))
        return x * y.view(b, c, 1, 1).expand_as(x)


class ECA(nn.Module):
    """ECA-Net: GAP -> Conv1d over channels -> Sigmoid -> expand_as."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y).expand_as(x)


class CBAMChannel(nn.Module):
    """CBAM channel attention: shared MLP over avg- and max-pooled vectors, summed."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(c, c // r, 1, bias=False), nn.ReLU(), nn.Conv2d(c // r, c, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(nn.functional.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(nn.functional.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + mx)


class SLE(nn.Module):
    """FastGAN skip-layer excitation: pool(small, 4) -> Conv4x4 -> Swish -> Conv1x1 -> Sigmoid."""

    def __init__(self, c_small: int, c_big: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv1 = nn.Conv2d(c_small, c_big, 4, bias=False)
        self.conv2 = nn.Conv2d(c_big, c_big, 1, bias=False)

    def forward(self, small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.pool(small))
        y = y * torch.sigmoid(y)
        return big * torch.sigmoid(self.conv2(y))


class Host(nn.Module):
    """conv -> gate -> conv around one gate module."""

    def __init__(self, gate: nn.Module, c: int = 16) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, c, 3, padding=1)
        self.gate = gate
        self.out = nn.Conv2d(c, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gate(torch.relu(self.inp(x))))


class SleHost(nn.Module):
    """Two feature maps of different size joined by an SLE gate."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Conv2d(3, 32, 3, padding=1)
        self.big = nn.Conv2d(3, 16, 3, padding=1)
        self.sle = SLE(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = torch.relu(self.small(nn.functional.avg_pool2d(x, 4)))
        return self.sle(small, torch.relu(self.big(x)))


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so folding is really exercised."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return module.eval()


def export(
    module: nn.Module,
    shape: tuple[int, ...] = (1, 3, 16, 16),
    dynamo: bool = False,
    opset: int = 18,
) -> onnx.ModelProto:
    module = randomise(module)
    x = torch.randn(*shape)
    buf = io.BytesIO()
    if dynamo:
        program = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False)
        assert program is not None
        return program.model_proto
    torch.onnx.export(
        module, (x,), buf, dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"]
    )
    return onnx.load_from_string(buf.getvalue())


def compute_nodes(model: onnx.ModelProto) -> int:
    """Nodes that compute (Constant/Identity excluded)."""
    return sum(n.op_type not in ("Constant", "Identity") for n in model.graph.node)


def apply_rule(rule: RewriteRule, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    """A minimal driver for testing one rule alone: match, check, rewrite every candidate once;
    cleanup; export. (No self-check: the tests compare outputs themselves.)"""
    graph = import_graph(model)
    results: list[Match | Decline] = []
    for anchor in list(rule.candidates(graph)):
        if anchor not in graph.nodes:
            continue
        found = match_and_check(rule, graph, anchor)
        if found is None:
            continue
        if isinstance(found, Match):
            rule.rewrite(graph, found)
            graph.cleanup().toposort()
        results.append(found)
    return model_from_graph(graph, model), results


# ---- SLIM/SASE group blocks (test_rewrite_sase_group, test_numerics)


class SlimBlock(nn.Module):
    """SLIM InceptionBlock as officially written (per-mask resize), knobs for near misses.

    `normalise`: "masks + eps" (official: sum m*s / (sum m + eps)), "eps outside"
    (sum m*s / sum m + eps), "groups" (sum m*s / G) or "none" (sum m*s). `masks`: "sigmoid"
    per group, or "softmax" across the groups' concatenated logits. `style_act`: the
    activation between the style MLP's linears."""

    def __init__(
        self,
        cin: int = 64,
        cout: int = 16,
        groups: int = 4,
        reduction: int = 16,
        dilation: int = 2,
        mode: str = "nearest",
        normalise: str = "masks + eps",
        odd_group: bool = False,
        concat_noise: bool = False,
        masks: str = "sigmoid",
        style_act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        cg, cr = cin // groups, max(1, (cin // groups) // reduction)
        self.cg, self.mode, self.normalise = cg, mode, normalise
        self.concat_noise, self.softmax_masks = concat_noise, masks == "softmax"

        def style() -> nn.Sequential:
            return nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cg, cr), nn.BatchNorm1d(cr),
                style_act(), nn.Linear(cr, cout),
            )  # fmt: skip

        def mask(d: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cg, cr, 1), nn.BatchNorm2d(cr), nn.ReLU()]
            for _ in range(2):
                layers += [
                    nn.Conv2d(cr, cr, 3, padding=d, dilation=d),
                    nn.BatchNorm2d(cr),
                    nn.ReLU(),
                ]
            layers.append(nn.Conv2d(cr, 1, 1))
            return nn.Sequential(*layers)

        dils = [dilation] * groups
        if odd_group:
            dils[-1] = dilation + 1
        self.channel_attn = nn.ModuleList(style() for _ in range(groups))
        self.spatial_attn = nn.ModuleList(mask(d) for d in dils)
        self.noise_weight = nn.Parameter(torch.tensor([0.3]))
        with torch.no_grad():  # non-trivial BN statistics so folding is exercised
            for m in self.modules():
                if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)

    def _resize(self, m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "nearest":
            return F.interpolate(m, size=size, mode="nearest")
        if self.mode == "nearest-scale":  # Resize with `scales` instead of `sizes`
            return F.interpolate(m, scale_factor=float(size[0] // int(m.shape[2])), mode="nearest")
        return F.interpolate(m, size=size, mode=self.mode, align_corners=False)

    def forward(self, xs: torch.Tensor, xb: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        size = (int(xb.shape[2]), int(xb.shape[3]))
        chunks = torch.split(xs, self.cg, dim=1)
        styles = [ca(c)[:, :, None, None] for c, ca in zip(chunks, self.channel_attn, strict=False)]
        if self.concat_noise or self.softmax_masks:  # concat logits, one resize, slices
            logits = torch.cat(
                [sa(c) for c, sa in zip(chunks, self.spatial_attn, strict=False)], dim=1
            )
            if self.softmax_masks:
                all_masks = self._resize(torch.softmax(logits, dim=1), size)
            else:  # 1024 variant: noise added to the logits before the sigmoid
                all_masks = self._resize(torch.sigmoid(logits + self.noise_weight * noise), size)
            masks = [all_masks[:, g : g + 1] for g in range(len(chunks))]
        else:
            masks = [
                self._resize(torch.sigmoid(sa(c)), size)
                for c, sa in zip(chunks, self.spatial_attn, strict=False)
            ]
        num = masks[0] * styles[0]
        den = masks[0]
        for m, s in zip(masks[1:], styles[1:], strict=False):
            num = num + m * s
            den = den + m
        return xb * (self._normalised(num, den, len(masks)) + 1)

    def _normalised(self, num: torch.Tensor, den: torch.Tensor, groups: int) -> torch.Tensor:
        if self.normalise == "masks + eps":
            return num / (den + 1e-06)
        if self.normalise == "eps outside":
            return num / den + 1e-06
        return num / groups if self.normalise == "groups" else num


def export_slim(module: nn.Module, args: tuple[torch.Tensor, ...], dynamo: bool) -> onnx.ModelProto:
    """`module` (a SLIM-style block) as ONNX opset 18, fed `args` (xs, xb[, noise], their
    input names): by the dynamo exporter if `dynamo`, else by TorchScript with a dynamic batch."""
    module.eval()
    buffer = io.BytesIO()
    names = ["xs", "xb", "noise"][: len(args)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=True,
                opset_version=18,
                input_names=names,
                verbose=False,
            )
        else:
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=False,
                opset_version=18,
                input_names=names,
                output_names=["out"],
                dynamic_axes={n: {0: "batch"} for n in [*names, "out"]},
            )
    return onnx.load_from_string(buffer.getvalue())


def random_feed(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs for `model`, `batch` rows each (also where its first
    dim is fixed; other unknown dims get `batch` too), drawn from `seed`."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
        dims[0] = batch
        feed[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def slim_args(cin: int = 64, cout: int = 16, h: int = 8, big: int = 32) -> tuple[torch.Tensor, ...]:
    """Random (xs, xb, noise) for a SlimBlock, batch 2: xs `cin` x `h`x`h`, xb `cout` x
    `big`x`big`, noise 1 x `h`x`h`."""
    return (torch.randn(2, cin, h, h), torch.randn(2, cout, big, big), torch.randn(2, 1, h, h))
