"""Turn a MODEL string into an eval-mode nn.Module plus its input and output descriptions.

MODEL is one of:
- a registered name (`se_resnet50`): built by the registry, inputs from its `ModelSpec`;
- `package.module:factory`: a callable returning an `nn.Module`, called with `--model-arg`s;
- a TorchScript file (`*.pt`, `*.ts`, `*.pth` saved by `torch.jit.save`): needs `--input-shape`.

`load_weights` then puts a checkpoint into it. `export`, `compare`'s PyTorch reference and
`deploy` build MODEL through these two, so all three see the same network.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sase_deploy.errors import UserError, first_line
from sase_deploy.models.spec import InputSpec, ModelSpec

TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".jit", ".torchscript")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
REGISTRY_INIT_SEED = 0
_SHAPE_RE = re.compile(r"^\d+(x\d+)*$")


@dataclass
class ModelSource:
    """A model ready to export: module (eval), inputs, output names and where it came from."""

    module: nn.Module
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...] | None  # None: named output_0.. after a first forward
    kind: str  # registry | factory | torchscript
    reference: str  # the MODEL string as given
    model_args: dict[str, Any] = field(default_factory=dict)
    dynamic_batch_allowed: bool = True
    spec: ModelSpec | None = None


def parse_shape(text: str) -> tuple[int, ...]:
    """`1x3x224x224` -> (1, 3, 224, 224); anything else is a UserError."""
    cleaned = text.strip().lower().replace(",", "x")
    if not _SHAPE_RE.match(cleaned) or any(int(d) < 1 for d in cleaned.split("x")):
        raise UserError(
            f"bad --input-shape {text!r}: write positive sizes joined by 'x', e.g. 1x3x224x224"
        )
    return tuple(int(d) for d in cleaned.split("x"))


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> kwargs; values are Python literals when they parse, else strings."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"bad --model-arg {pair!r}: write key=value, e.g. noise=input")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        kwargs[key.strip()] = value
    return kwargs


def resolve_model(
    model: str | nn.Module,
    *,
    model_args: Mapping[str, Any] | None = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    input_names: Sequence[str] | None = None,
) -> ModelSource:
    """Build the module MODEL names and describe its inputs (shapes from the registry or given)."""
    kwargs = dict(model_args or {})
    if isinstance(model, nn.Module):
        source = ModelSource(model, (), None, "module", type(model).__name__, kwargs)
    elif _FACTORY_RE.match(model):
        source = _from_factory(model, kwargs)
    elif model.lower().endswith(TORCHSCRIPT_SUFFIXES) or Path(model).is_file():
        source = _from_torchscript(model, kwargs)
    else:
        source = _from_registry(model, kwargs)
    source.inputs = _resolve_inputs(source, input_shapes, input_names)
    source.module.eval()
    return source


def _from_registry(name: str, kwargs: dict[str, Any]) -> ModelSource:
    from sase_deploy.models.registry import get_model_spec

    spec = get_model_spec(name)  # UserError with a "did you mean" for unknown names
    try:
        # Seeded: a registered model at random init is the same network in every call, so a
        # reference built by `compare` matches the one `export` traced, and exports repeat.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(REGISTRY_INIT_SEED)
            module = spec.factory(**kwargs)
        inputs = spec.input_specs(**kwargs)
    except TypeError as exc:
        raise UserError(
            f"model '{name}' rejected --model-arg {kwargs}: {first_line(exc)}; "
            "run 'sase-deploy models' to see its options"
        ) from None
    except ValueError as exc:
        raise UserError(f"model '{name}': {first_line(exc)}; fix the --model-arg value") from None
    return ModelSource(
        module=module,
        inputs=tuple(inputs),
        output_names=tuple(spec.output_names) or None,
        kind="registry",
        reference=name,
        model_args=kwargs,
        dynamic_batch_allowed=spec.dynamic_batch,
        spec=spec,
    )


def _from_factory(reference: str, kwargs: dict[str, Any]) -> ModelSource:
    module_name, _, attr_path = reference.partition(":")
    try:
        with _cwd_importable():
            target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import '{module_name}' from MODEL '{reference}' ({first_line(exc)}); "
            "make the module importable (install it or add its folder to PYTHONPATH)"
        ) from None
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise UserError(
                f"module '{module_name}' has no attribute '{attr_path}'; "
                "write MODEL as package.module:factory naming a callable that returns an nn.Module"
            )
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"'{reference}' is not callable; name a function or class")
    try:
        # Seeded as registered models are: a factory's random init is the same network in
        # `export` and in `compare`'s reference (a factory that loads weights is unaffected).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(REGISTRY_INIT_SEED)
            module = target(**kwargs)
    except TypeError as exc:
        raise UserError(
            f"calling '{reference}' with {kwargs} failed: {first_line(exc)}; "
            "check the --model-arg names"
        ) from None
    if not isinstance(module, nn.Module):
        raise UserError(
            f"'{reference}' returned a {type(module).__name__}, not a torch.nn.Module; "
            "point MODEL at a factory that builds the network"
        )
    return ModelSource(module, (), None, "factory", reference, kwargs)


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Let `pkg.mod:factory` name modules under the current folder, as `python -m` would
    (the installed `sase-deploy` script does not put it on sys.path); removed afterwards."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _from_torchscript(path_text: str, kwargs: dict[str, Any]) -> ModelSource:
    path = Path(path_text)
    if not path.is_file():
        raise UserError(
            f"MODEL '{path_text}' is neither a registered name, package.module:factory nor an "
            "existing TorchScript file; run 'sase-deploy models' for the names"
        )
    if kwargs:
        raise UserError("--model-arg applies to registered models and factories, not TorchScript")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"'{path_text}' is not a TorchScript archive ({first_line(exc)}); save the model "
            "with torch.jit.save, or pass package.module:factory and a --checkpoint instead"
        ) from None
    return ModelSource(module, (), None, "torchscript", path_text, {})


def _resolve_inputs(
    source: ModelSource,
    shapes: Sequence[Sequence[int]] | None,
    names: Sequence[str] | None,
) -> tuple[InputSpec, ...]:
    defaults = source.inputs
    if not shapes and not defaults:
        raise UserError(
            f"MODEL '{source.reference}' has no registered input shapes; pass --input-shape "
            "once per input, e.g. --input-shape 1x3x224x224"
        )
    if shapes and defaults and len(shapes) != len(defaults):
        listed = ", ".join(f"{i.name} {'x'.join(map(str, i.shape))}" for i in defaults)
        raise UserError(
            f"'{source.reference}' takes {len(defaults)} inputs ({listed}) but "
            f"{len(shapes)} --input-shape were given; pass one per input"
        )
    count = len(shapes) if shapes else len(defaults)
    if names and len(names) != count:
        raise UserError(f"{len(names)} --input-name for {count} inputs; pass one per input")
    specs = []
    for index in range(count):
        base = defaults[index] if defaults else None
        shape = tuple(int(d) for d in shapes[index]) if shapes else base.shape  # type: ignore[union-attr]
        name = names[index] if names else (base.name if base else f"input_{index}")
        if base is not None:
            specs.append(InputSpec(name, shape, base.dtype, base.kind))
        else:
            specs.append(InputSpec(name, shape))
    if len({s.name for s in specs}) != len(specs):
        raise UserError(f"input names must differ, got {[s.name for s in specs]}")
    return tuple(specs)


def load_weights(
    source: ModelSource,
    checkpoint: str | Path | None,
    key: str | None,
    use_ema: bool,
    unsafe_load: bool,
) -> dict[str, Any] | None:
    """Load `checkpoint` (if given) into `source.module`, bake spectral norm, switch to eval.

    Returns the checkpoint report (None without a checkpoint). Shared by export and compare.

    Args:
        source: the resolved MODEL (`resolve_model`).
        checkpoint: a torch.save file, or None to keep the module's own weights.
        key: the container key holding the state dict (e.g. `g_ema`).
        use_ema: load the EMA copy when the checkpoint has one.
        unsafe_load: allow pickled code (trusted files only).
    """
    from sase_deploy.models.checkpoint import bake_spectral_norm, load_checkpoint

    report = None
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserError(f"checkpoint '{checkpoint}' does not exist; check the -c path")
        if source.kind == "torchscript":
            raise UserError("a TorchScript file carries its weights; drop -c/--checkpoint")
        report = load_checkpoint(
            source.module, checkpoint, key=key, use_ema=use_ema, unsafe_load=unsafe_load
        ).to_dict()
    if source.kind != "torchscript":
        baked = bake_spectral_norm(source.module)
        if baked and report is not None:
            report["spectral_norm_baked"] = [*report["spectral_norm_baked"], *baked]
    source.module.eval()
    return report
