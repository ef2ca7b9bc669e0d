"""Spectral norm: bake it into plain weights, and name the keys it is saved under.

Spectral-normed layers are stored as `weight_orig`/`weight_u`/`weight_v` (hook API) or
`parametrizations.weight.*` (parametrization API). Baking for a plain target layer is written by
hand (torch has no function that bakes a *state dict*); it computes exactly what torch's spectral
norm computes in eval mode (`sigma = u . (W_mat v)`, no power iteration). `bake_spectral_norm` on
a *model* uses torch's own removal functions.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm


def _spectral_norm_dim(module: nn.Module) -> int:
    """torch's default: dim 1 for transposed convs (weight is (in, out, ...)), else dim 0."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def spectral_normalized_weight(
    weight_orig: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int = 0
) -> torch.Tensor:
    """`weight_orig / sigma`, sigma = u . (W_mat v): torch's spectral norm in eval mode."""
    weight_mat = weight_orig
    if dim != 0:
        weight_mat = weight_mat.permute(dim, *[d for d in range(weight_mat.dim()) if d != dim])
    weight_mat = weight_mat.reshape(weight_mat.size(0), -1)
    sigma = torch.dot(u, torch.mv(weight_mat, v))
    return weight_orig / sigma


def bake_spectral_norm(model: nn.Module) -> list[str]:
    """Replace every spectral norm (hook API and parametrization API) by a plain weight.

    In place; eval outputs are unchanged (torch's own removal functions compute the weight
    without a power iteration). Returns the baked tensors' names (`layer.weight`).
    """
    baked: list[str] = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for hook in _hook_spectral_norms(module):
            nn.utils.remove_spectral_norm(module, hook.name)
            baked.append(prefix + hook.name)
        for tensor_name in _parametrized_spectral_norms(module):
            # eval first: a training-mode removal would run one more power iteration
            cast(nn.ModuleDict, module.parametrizations)[tensor_name].eval()
            parametrize.remove_parametrizations(module, tensor_name)
            baked.append(prefix + tensor_name)
    return baked


def has_spectral_norm(model: nn.Module) -> bool:
    """Whether any layer still carries a spectral norm (hook or parametrization)."""
    return any(_hook_spectral_norms(m) or _parametrized_spectral_norms(m) for m in model.modules())


def _hook_spectral_norms(module: nn.Module) -> list[SpectralNorm]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, SpectralNorm)]


def _parametrized_spectral_norms(module: nn.Module) -> list[str]:
    if not parametrize.is_parametrized(module):
        return []
    chains = cast(nn.ModuleDict, module.parametrizations)
    return [
        name
        for name, chain in chains.items()
        if any(isinstance(p, _SpectralNorm) for p in cast(nn.ModuleList, chain))
    ]


SN_FORMS = ("hook", "parametrization")


def _sn_forms(owner: str, name: str) -> dict[str, tuple[str, str, str]]:
    """The (weight, u, v) key triples a spectral-normed `owner.name` is saved under, per API."""
    p = f"{owner}." if owner else ""
    return {
        "hook": (f"{p}{name}_orig", f"{p}{name}_u", f"{p}{name}_v"),
        "parametrization": (
            f"{p}parametrizations.{name}.original",
            f"{p}parametrizations.{name}.0._u",
            f"{p}parametrizations.{name}.0._v",
        ),
    }


def _sn_slot(key: str) -> tuple[str, str, str, int] | None:
    """If `key` is spelled like part of a spectral-norm triple: (owner, name, form, index).

    index 0 is the raw weight (a parameter), 1 and 2 are the `u`/`v` buffers.
    """
    owner, leaf = _split(key)
    parts = owner.split(".") if owner else []
    if leaf == "original" and len(parts) >= 2 and parts[-2] == "parametrizations":
        return ".".join(parts[:-2]), parts[-1], "parametrization", 0
    if leaf in ("_u", "_v") and len(parts) >= 3 and parts[-3] == "parametrizations":
        return ".".join(parts[:-3]), parts[-2], "parametrization", 1 if leaf == "_u" else 2
    for index, suffix in enumerate(("_orig", "_u", "_v")):
        if leaf.endswith(suffix) and len(leaf) > len(suffix):
            return owner, leaf[: -len(suffix)], "hook", index
    return None


def _split(key: str) -> tuple[str, str]:
    owner, _, leaf = key.rpartition(".")
    return owner, leaf
