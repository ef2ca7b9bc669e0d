"""Small torch modules with SE-family gates written in the styles seen in the wild (test inputs).

Each net is conv -> gate -> conv so the gate sits inside a graph, like in a real network.
"""

from __future__ import annotations

import io

import onnx
import torch
from torch import nn

from sase_deploy.graph_io import model_from_graph
from sase_deploy.rewrite.graph_utils import import_graph
from sase_deploy.rewrite.rule import Decline, Match, RewriteRule


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
        found = rule.match(graph, anchor)
        if found is None:
            continue
        if isinstance(found, Match):
            reason = rule.check(graph, found)
            if reason is not None:
                found = Decline(rule.name, found.anchor, reason)
            else:
                rule.rewrite(graph, found)
                graph.cleanup().toposort()
        results.append(found)
    return model_from_graph(graph, model), results
