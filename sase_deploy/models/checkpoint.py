"""Load checkpoints written by real training scripts into sase-deploy's models.

Users arrive with files saved by official code, not by us: a bare state dict, an ImageNet-style
container (`{'epoch', 'arch', 'state_dict', 'optimizer', ...}`), FastGAN's
`{'g', 'd', 'g_ema': [tensors in parameters() order], 'opt_g', 'opt_d'}`, keys prefixed by
DataParallel (`module.`) or torch.compile (`_orig_mod.`), and spectral-normed layers stored as
`weight_orig`/`weight_u`/`weight_v` (hook API) or `parametrizations.weight.*` (parametrization
API). `load_checkpoint` maps all of these onto a model and says in a `LoadReport` what it did.

Safety: files are read with `torch.load(weights_only=True)`; anything that would run pickled code
is refused unless the caller passes `unsafe_load=True`.

Spectral-norm baking for a plain target layer is written by hand (torch has no function that bakes
a *state dict*); it computes exactly what torch's spectral norm computes in eval mode
(`sigma = u . (W_mat v)`, no power iteration). `bake_spectral_norm` on a *model* uses torch's own
removal functions.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm

from sase_deploy._io import sha256_file
from sase_deploy.errors import UserError

StateDict = dict[str, torch.Tensor]

# Keys under which training scripts store the model's state dict, in order of preference.
# EMA copies come first: when `use_ema` is set, a container holding both yields the EMA weights.
EMA_STATE_KEYS = ("state_dict_ema", "model_ema", "ema")
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "params")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
FASTGAN_KEYS = ("g", "g_ema")


# Plain-data classes that checkpoints often carry besides tensors (argparse args, numpy metrics).
# They are safe to rebuild: allowing them does not let the file run code.
def _numpy_scalar_constructor() -> Any:
    """numpy >= 2 moved the function that pickled numpy scalars reference."""
    try:
        return importlib.import_module("numpy._core.multiarray").scalar
    except ImportError:  # numpy 1.x
        return importlib.import_module("numpy.core.multiarray").scalar


_numpy_scalar = _numpy_scalar_constructor()
_SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.dtype,
    _numpy_scalar,
    (_numpy_scalar, "numpy.core.multiarray.scalar"),  # name in files pickled by numpy 1.x
    *(
        getattr(np.dtypes, name)
        for name in ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType")
    ),
]
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "_u", "_v")


@dataclass
class LoadReport:
    """What `load_checkpoint` did; export writes it into its manifest (`to_dict`)."""

    source: str
    sha256: str
    container: str  # state_dict | wrapped | fastgan | module
    key: str | None  # container key the weights came from (None for a bare state dict)
    ema_applied: bool
    prefixes_stripped: list[str] = field(default_factory=list)
    spectral_norm_baked: list[str] = field(default_factory=list)  # layers baked while loading
    missing_keys: list[str] = field(default_factory=list)  # only non-empty with strict=False
    unexpected_keys: list[str] = field(default_factory=list)  # only non-empty with strict=False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckpointWeights:
    """A state dict taken out of a checkpoint container, with how it was found."""

    state_dict: StateDict
    container: str
    key: str | None
    ema_applied: bool
    prefixes_stripped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading files


def read_checkpoint(path: str | Path, *, unsafe_load: bool = False) -> Any:
    """`torch.load` a file on CPU, weights-only unless `unsafe_load`; errors become `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist or is not a file; check the path")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint '{path}' is empty; re-save it with torch.save")
    try:
        if unsafe_load:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not unsafe_load and "Unsupported global" in str(exc):
            raise UserError(
                f"'{path}' is not a weights-only checkpoint: it pickles "
                f"{_describe_unsafe_globals(path, str(exc))}; loading it with --unsafe-load "
                "(unsafe_load=True) would execute arbitrary code from the file, so use it only "
                "for files you trust, or re-save the weights with torch.save(model.state_dict())"
            ) from None
        raise _not_a_checkpoint(path, exc) from None
    except (EOFError, KeyError, ValueError, RuntimeError, OSError) as exc:
        raise _not_a_checkpoint(path, exc) from None


def _describe_unsafe_globals(path: Path, message: str) -> str:
    """Name the classes/functions the file would import (all of them for zip checkpoints)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError):  # legacy (non-zip) format: first one only
        names = re.findall(r"GLOBAL (\S+) was not", message)
    names = [n for n in names if not n.startswith("numpy.")] or names
    if not names:
        return "Python objects other than tensors"
    return "Python objects (" + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") + ")"


def _weights_only_detail(message: str) -> str:
    """torch's weights-only errors are pages long; keep the part that says what failed."""
    _, marker, rest = message.partition("WeightsUnpickler error:")
    if marker:
        rest_lines = [line.strip() for line in rest.splitlines() if line.strip()]
        if rest_lines:
            return rest_lines[0]
    return " ".join(message.split())


def _not_a_checkpoint(path: Path, exc: BaseException) -> UserError:
    reason = _weights_only_detail(str(exc))[:120] or type(exc).__name__
    fix = "pass a file written by torch.save"
    if path.suffix == ".safetensors":
        fix = "convert it: torch.save(safetensors.torch.load_file(path), 'weights.pth')"
    elif path.suffix == ".onnx":
        fix = "an ONNX file is already exported; pass a PyTorch checkpoint here"
    return UserError(
        f"'{path}' is not a readable PyTorch checkpoint ({type(exc).__name__}: {reason}); {fix}"
    )


# --------------------------------------------------------------------------- containers


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


# --------------------------------------------------------------------------- spectral norm


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


# --------------------------------------------------------------------------- fitting


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


# --------------------------------------------------------------------------- entry point


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    key: str | None = None,
    use_ema: bool = True,
    unsafe_load: bool = False,
    strict: bool = True,
    model_name: str | None = None,
) -> LoadReport:
    """Load `path` into `model` in place, leave it in eval mode and report what was done.

    `key` picks a container entry (`state_dict`, `g`, `g_ema`, ...); `use_ema` prefers EMA
    weights when the container has them; `unsafe_load` allows pickled code (trusted files only);
    `strict=False` loads what fits and lists the rest in the report instead of raising.
    """
    path = Path(path)
    label = model_name or type(model).__name__
    obj = read_checkpoint(path, unsafe_load=unsafe_load)
    model_keys = list(model.state_dict().keys())
    weights = extract_state_dict(
        obj,
        key=key,
        use_ema=use_ema,
        is_parameter=_checkpoint_parameter_test(model),
        model_keys=model_keys,
    )
    fit = fit_state_dict(model, weights.state_dict)
    if fit.missing:
        fit = _try_stripping_wrapper_attribute(model, weights, fit)
    if strict and (fit.missing or fit.unexpected or fit.mismatched):
        raise UserError(_mismatch_message(label, fit, weights))
    model.load_state_dict(fit.state_dict, strict=False)
    model.eval()
    report = LoadReport(
        source=str(path.resolve()),
        sha256=sha256_file(path),
        container=weights.container,
        key=weights.key,
        ema_applied=weights.ema_applied,
        prefixes_stripped=weights.prefixes_stripped,
        spectral_norm_baked=fit.baked,
        missing_keys=fit.missing,
        unexpected_keys=fit.unexpected,
        notes=list(weights.notes),
    )
    if fit.baked:
        report.notes.append(f"baked spectral norm of {len(fit.baked)} layers into plain weights")
    if fit.mismatched:
        report.notes.append("shape mismatches skipped: " + "; ".join(fit.mismatched[:5]))
    return report


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
