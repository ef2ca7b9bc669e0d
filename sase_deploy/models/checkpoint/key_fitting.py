"""Match checkpoint keys to a model's state-dict keys, and say what did not match.

Spectral norm saved by the other API is aliased, spectral norm in the checkpoint over a plain
model weight is baked, and a single wrapper attribute (Lightning's `model.`) is stripped when
that fits better.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from sase_deploy.errors import UserError
from sase_deploy.models.checkpoint.containers import (
    CheckpointWeights,
    StateDict,
    _named_like_parameter,
)
from sase_deploy.models.checkpoint.spectral_norm import (
    SN_FORMS,
    _sn_forms,
    _sn_slot,
    _spectral_norm_dim,
    _split,
    spectral_normalized_weight,
)


@dataclass
class StateDictFit:
    """A checkpoint mapped onto a model's state-dict names, and what did not map."""

    state_dict: StateDict = field(default_factory=dict)
    baked: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _checkpoint_parameter_test(model: nn.Module) -> Callable[[str], bool]:
    """Whether a checkpoint entry was a parameter (not a buffer) of the model that saved it."""
    params = {name for name, _ in model.named_parameters()}
    buffers = {name for name, _ in model.named_buffers()}

    def is_parameter(name: str) -> bool:
        if name in params or name in buffers:
            return name in params
        slot = _sn_slot(name)
        if slot is not None:  # spectral norm: the raw weight is a parameter, u/v are buffers
            return slot[3] == 0
        return _named_like_parameter(name)

    return is_parameter


def fit_state_dict(model: nn.Module, source: Mapping[str, torch.Tensor]) -> StateDictFit:
    """Map checkpoint entries onto the model's state-dict names, baking spectral norm as needed."""
    target = model.state_dict()
    modules = dict(model.named_modules())
    fit = StateDictFit()
    used: set[str] = set()
    for key, expected in target.items():
        tensor = _find_entry(source, key, modules, fit, used)
        if tensor is None:
            if key.endswith("num_batches_tracked"):  # older checkpoints predate this BN counter
                fit.state_dict[key] = expected
                continue
            fit.missing.append(key)
            continue
        if tuple(tensor.shape) != tuple(expected.shape):
            fit.mismatched.append(
                f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected.shape)}"
            )
            continue
        fit.state_dict[key] = tensor
    fit.unexpected = [k for k in source if k not in used]
    return fit


def _find_entry(
    source: Mapping[str, torch.Tensor],
    key: str,
    modules: Mapping[str, nn.Module],
    fit: StateDictFit,
    used: set[str],
) -> torch.Tensor | None:
    if key in source:
        used.add(key)
        return source[key]
    slot = _sn_slot(key)
    if slot is not None:  # spectral norm saved by the other API (hook <-> parametrization)
        owner, name, form, index = slot
        other = "parametrization" if form == "hook" else "hook"
        alias = _sn_forms(owner, name)[other][index]
        if alias in source:
            used.add(alias)
            return source[alias]
    owner, leaf = _split(key)
    module = modules.get(owner)
    for form in SN_FORMS:  # plain weight in the model, spectral norm in the checkpoint: bake
        triple = _sn_forms(owner, leaf)[form]
        if module is not None and all(k in source for k in triple):
            used.update(triple)
            fit.baked.append(key)
            return _bake_entry(*(source[k] for k in triple), module=module, key=key)
    return None


def _bake_entry(
    weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *, module: nn.Module, key: str
) -> torch.Tensor:
    guess = _spectral_norm_dim(module)
    dims = [guess] + [d for d in range(weight.dim()) if d != guess]
    for dim in dims:  # the module type decides; shapes confirm (or pick when the type is odd)
        rows = weight.shape[dim] if weight.dim() else 0
        if u.numel() == rows and v.numel() * rows == weight.numel():
            with torch.no_grad():
                return spectral_normalized_weight(weight.float(), u.float(), v.float(), dim).to(
                    weight.dtype
                )
    raise UserError(
        f"spectral-norm vectors of '{key}' (u {tuple(u.shape)}, v {tuple(v.shape)}) do not fit "
        f"its weight {tuple(weight.shape)}; the checkpoint is not for this architecture"
    )


def _try_stripping_wrapper_attribute(
    model: nn.Module, weights: CheckpointWeights, fit: StateDictFit
) -> StateDictFit:
    """Keys all under one attribute (Lightning's `model.`, a wrapper's `net.`): strip it if the
    stripped keys fit the model better. Only taken when it lowers the number of missing keys."""
    state = weights.state_dict
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) != 1 or not all("." in k for k in state):
        return fit
    prefix = heads.pop() + "."
    if any(k.startswith(prefix) for k in model.state_dict()):
        return fit
    stripped = {k[len(prefix) :]: v for k, v in state.items()}
    candidate = fit_state_dict(model, stripped)
    if len(candidate.missing) >= len(fit.missing):
        return fit
    weights.state_dict = stripped
    weights.prefixes_stripped.append(prefix)
    return candidate


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _mismatch_message(label: str, fit: StateDictFit, weights: CheckpointWeights) -> str:
    parts = []
    if fit.missing:
        parts.append(f"{len(fit.missing)} missing keys ({_first(fit.missing)})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected ({_first(fit.unexpected)})")
    if fit.mismatched:
        parts.append(f"{len(fit.mismatched)} shape mismatches ({_first(fit.mismatched, 2)})")
    where = f" (from '{weights.key}')" if weights.key else ""
    hint = "pass --checkpoint-key to choose a sub-dict or check the architecture"
    plain_for_sn = [
        k
        for k in fit.missing
        if (slot := _sn_slot(k)) and slot[3] == 0 and _plain_key(slot) in fit.unexpected
    ]
    if plain_for_sn:
        hint = "the checkpoint has plain weights where the model has spectral norm: " + (
            "call bake_spectral_norm(model) before loading"
        )
    return f"checkpoint{where} does not fit model '{label}': {', '.join(parts)}; {hint}"


def _plain_key(slot: tuple[str, str, str, int]) -> str:
    owner, name = slot[0], slot[1]
    return f"{owner}.{name}" if owner else name
