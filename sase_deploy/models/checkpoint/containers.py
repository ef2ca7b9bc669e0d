"""Take the model's state dict out of the container a training script saved it in.

Bare state dicts, ImageNet-style `{'state_dict': ...}` and EMA containers, FastGAN's `g`/`g_ema`,
whole pickled modules; DataParallel (`module.`) and torch.compile (`_orig_mod.`) prefixes are
stripped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sase_deploy.errors import UserError
from sase_deploy.models.checkpoint.safe_load import read_checkpoint

StateDict = dict[str, torch.Tensor]

# Keys under which training scripts store the model's state dict, in order of preference.
# EMA copies come first: when `use_ema` is set, a container holding both yields the EMA weights.
EMA_STATE_KEYS = ("state_dict_ema", "model_ema", "ema")
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "params")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
FASTGAN_KEYS = ("g", "g_ema")
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "_u", "_v")


@dataclass
class CheckpointWeights:
    """A state dict taken out of a checkpoint container, with how it was found."""

    state_dict: StateDict
    container: str
    key: str | None
    ema_applied: bool
    prefixes_stripped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_state_dict_file(
    path: str | Path,
    *,
    key: str | None = None,
    use_ema: bool = True,
    unsafe_load: bool = False,
) -> CheckpointWeights:
    """Read a checkpoint file and take the model's state dict out of its container.

    Without a model, a FastGAN EMA list is laid over `g`'s entries that are not buffers by name
    (BatchNorm statistics, spectral-norm `u`/`v`); `load_checkpoint` uses the model instead.
    """
    return extract_state_dict(
        read_checkpoint(path, unsafe_load=unsafe_load), key=key, use_ema=use_ema
    )


def extract_state_dict(
    obj: Any,
    *,
    key: str | None = None,
    use_ema: bool = True,
    is_parameter: Callable[[str], bool] | None = None,
    model_keys: Iterable[str] = (),
) -> CheckpointWeights:
    """Find the state dict in a loaded checkpoint object and strip wrapper prefixes.

    `is_parameter(name)` (on prefix-stripped names) decides which entries of FastGAN's `g` the
    EMA list replaces; `model_keys` keeps a prefix that the model's own keys start with.
    """
    if isinstance(obj, nn.Module):
        weights = CheckpointWeights(
            _as_state_dict(obj.state_dict(), "module"), "module", None, False
        )
        weights.notes.append("file held a whole pickled nn.Module; its state_dict() was used")
    elif _is_state_dict(obj):
        if key is not None:
            raise UserError(
                f"--checkpoint-key '{key}' given but the checkpoint is a bare state dict "
                f"({len(obj)} tensors); drop --checkpoint-key"
            )
        weights = CheckpointWeights(_as_state_dict(obj, "checkpoint"), "state_dict", None, False)
    elif isinstance(obj, Mapping):
        weights = _from_container(obj, key, use_ema, is_parameter, model_keys)
    else:
        raise UserError(
            f"checkpoint holds a {type(obj).__name__}, not a state dict or a dict containing one; "
            "save model.state_dict() with torch.save"
        )
    if weights.container != "fastgan":  # fastgan strips before laying the EMA list over `g`
        weights.state_dict, weights.prefixes_stripped = strip_prefixes(
            weights.state_dict, model_keys
        )
    return weights


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _as_state_dict(obj: Any, where: str) -> StateDict:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not _is_state_dict(obj):
        raise UserError(
            f"'{where}' in the checkpoint is a {type(obj).__name__}, not a state dict "
            "(name -> tensor); pass --checkpoint-key to choose another entry"
        )
    return dict(obj)


def _container_keys(obj: Mapping[Any, Any]) -> str:
    return ", ".join(repr(k) for k in list(obj)[:12]) + (", ..." if len(obj) > 12 else "")


def _from_container(
    obj: Mapping[Any, Any],
    key: str | None,
    use_ema: bool,
    is_parameter: Callable[[str], bool] | None,
    model_keys: Iterable[str],
) -> CheckpointWeights:
    if key is not None and key not in obj:
        raise UserError(
            f"checkpoint has no key '{key}'; its keys are: {_container_keys(obj)}; "
            "pass one of them with --checkpoint-key"
        )
    if "g" in obj and (key is None or key in FASTGAN_KEYS):
        return _from_fastgan(obj, key, use_ema, is_parameter, model_keys)
    if key is not None:
        return CheckpointWeights(_as_state_dict(obj[key], key), "wrapped", key, False)
    candidates = (*EMA_STATE_KEYS, *STATE_KEYS) if use_ema else STATE_KEYS
    for name in candidates:
        if name in obj and (_is_state_dict(obj[name]) or isinstance(obj[name], nn.Module)):
            weights = CheckpointWeights(
                _as_state_dict(obj[name], name), "wrapped", name, name in EMA_STATE_KEYS
            )
            if weights.ema_applied:
                weights.notes.append(
                    f"EMA weights '{name}' used; pass --no-ema (use_ema=False) for the raw ones"
                )
            return weights
    raise UserError(
        f"cannot find the model's state dict in the checkpoint (keys: {_container_keys(obj)}); "
        "pass --checkpoint-key to choose the entry that holds it"
    )


def _from_fastgan(
    obj: Mapping[Any, Any],
    key: str | None,
    use_ema: bool,
    is_parameter: Callable[[str], bool] | None,
    model_keys: Iterable[str],
) -> CheckpointWeights:
    """FastGAN/SLIM `{'g', 'd', 'g_ema': [tensors], ...}`: EMA list over `g` unless told not to."""
    g, stripped = strip_prefixes(_as_state_dict(obj["g"], "g"), model_keys)
    ema = obj.get("g_ema")
    want_ema = key == "g_ema" or (key is None and use_ema)
    if not want_ema or ema is None:
        weights = CheckpointWeights(g, "fastgan", "g", False, stripped)
        if want_ema:
            weights.notes.append(
                "no 'g_ema' list in the checkpoint: used 'g' as saved (FastGAN's numbered "
                "checkpoints already hold the EMA weights in 'g')"
            )
        return weights
    if isinstance(ema, Mapping):  # some forks store the EMA copy as a state dict
        ema_sd, _ = strip_prefixes(_as_state_dict(ema, "g_ema"), model_keys)
        return CheckpointWeights({**g, **ema_sd}, "fastgan", "g_ema", True, stripped)
    if not isinstance(ema, list | tuple) or not all(isinstance(t, torch.Tensor) for t in ema):
        raise UserError(
            f"'g_ema' is a {type(ema).__name__}, not a list of tensors; pass --no-ema to load "
            "the generator 'g' without EMA"
        )
    param_test = is_parameter or _named_like_parameter
    param_names = [name for name in g if param_test(name)]
    if len(param_names) != len(ema):
        raise UserError(
            f"'g_ema' holds {len(ema)} tensors but 'g' has {len(param_names)} parameters; the EMA "
            "list does not belong to this generator (pass --no-ema to skip it)"
        )
    merged = dict(g)
    for index, (name, tensor) in enumerate(zip(param_names, ema, strict=True)):
        if tuple(tensor.shape) != tuple(g[name].shape):
            raise UserError(
                f"'g_ema'[{index}] has shape {tuple(tensor.shape)} but parameter '{name}' of 'g' "
                f"has {tuple(g[name].shape)}; the EMA list does not fit (pass --no-ema to skip it)"
            )
        merged[name] = tensor
    weights = CheckpointWeights(merged, "fastgan", "g_ema", True, stripped)
    weights.notes.append(
        f"EMA generator: {len(ema)} 'g_ema' tensors laid over 'g' in parameter order, buffers "
        "from 'g'; pass --no-ema (use_ema=False) for the raw generator"
    )
    return weights


def _named_like_parameter(name: str) -> bool:
    return not name.endswith(_BUFFER_SUFFIXES)


def strip_prefixes(
    state_dict: StateDict, model_keys: Iterable[str] = ()
) -> tuple[StateDict, list[str]]:
    """Remove `module.` / `_orig_mod.` when every key carries it and the model's keys do not."""
    model_keys = list(model_keys)
    stripped: list[str] = []
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state_dict) and not any(
                k.startswith(prefix) for k in model_keys
            ):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                stripped.append(prefix)
                changed = True
    return state_dict, stripped
