"""Rewrite what ONNX exporters choke on, in a copy of the model.

No torch internals are patched: submodules are swapped in a deep copy, and functional calls are
redirected by a `TorchFunctionMode` entered only inside that copy's forward, so the caller's
model (the parity reference) is untouched.

- `nn.AdaptiveAvgPool2d` with uneven bins (7x7 -> 4x4 / 2x2, 14x14 -> 4x4 in SPSE): the
  TorchScript exporter refuses it and the dynamo exporter emits Gather chains. It becomes
  `ExportableAdaptiveAvgPool2d` (exact averaging matrices, two MatMuls) from
  `sase_deploy.models.pooling`, chosen per instance from the input size recorded by a forward
  hook at the export shape. Pools with even bins are left to the exporter.
- `F.adaptive_avg_pool2d` called in a forward with uneven bins: same problem, no module to
  swap. The copy's forward runs under `LowerUnevenAdaptivePools`, a function mode that computes
  each such call with the same matrices (`adaptive_avg_pool2d_exportable`) at the size it is
  traced with; both exporters trace through Python, so they record the MatMuls. Exact, since
  export keeps spatial sizes static (only the batch may be dynamic). The mode also takes the
  pool modules the swap leaves (one reused at several sizes, `None` in `output_size`): every
  uneven adaptive pool that reaches torch in the trace is lowered. Even bins pass through.
- `nn.GLU` needs no lowering: both exporters emit Split -> Sigmoid -> Mul (tested).
- Noise: generators take `noise=` from the registry; anything else that still draws random
  numbers is caught after export (`sase_deploy.export.graph.random_nodes`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from sase_deploy.models.pooling import (
    ExportableAdaptiveAvgPool2d,
    adaptive_avg_pool2d_exportable,
    adaptive_pool_bins,
)

_MATMUL_POOL = "two MatMuls with averaging matrices"


@dataclass(frozen=True)
class Lowering:
    """One submodule swapped (or one functional call redirected) for export."""

    module: str  # qualified name in the model ("" = the root); for calls, the caller's
    original: str
    replacement: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {
            "module": self.module,
            "original": self.original,
            "replacement": self.replacement,
            "detail": self.detail,
        }


def _pair(size: Any) -> tuple[int | None, int | None]:
    """`output_size` of an adaptive pool (int, None or a pair) as a pair."""
    if isinstance(size, Sequence):
        return (size[0], size[1])
    return (size, size)


def _resolve(size: Any, in_hw: tuple[int, int]) -> tuple[int, int]:
    """`output_size` as torch reads it: `None` keeps that input side."""
    out = _pair(size)
    return (
        in_hw[0] if out[0] is None else int(out[0]),
        in_hw[1] if out[1] is None else int(out[1]),
    )


def has_uneven_bins(in_hw: tuple[int, int], out_hw: tuple[int | None, int | None]) -> bool:
    return any(o is not None and n % o != 0 for n, o in zip(in_hw, out_hw, strict=True))


def _pool_call(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, Any] | None:
    """(input, output_size) when `func` is `F.adaptive_avg_pool2d`, else None.

    `F.adaptive_avg_pool2d` hands its arguments to a mode positionally; keywords are read too.
    """
    if func is not F.adaptive_avg_pool2d:
        return None
    values = [*args, *(kwargs[k] for k in ("input", "output_size") if k in kwargs)]
    return values[0], values[1]


def _spatial(x: torch.Tensor) -> tuple[int, int]:
    return int(x.shape[-2]), int(x.shape[-1])


@dataclass(frozen=True)
class PoolCall:
    """An `F.adaptive_avg_pool2d` call made outside any `nn.AdaptiveAvgPool2d` module."""

    module: str  # qualified name of the innermost module whose forward made it ("" = root)
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]  # `None` sides resolved


@dataclass
class PoolInputs:
    """What `record_pool_inputs` saw during one forward at the export shape."""

    # nn.AdaptiveAvgPool2d qualified name -> the spatial input sizes it saw
    modules: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    # functional calls, in call order
    calls: list[PoolCall] = field(default_factory=list)


class _RecordPoolCalls(TorchFunctionMode):
    """Record the functional adaptive pool calls of an eager forward; changes no result."""

    def __init__(self, seen: PoolInputs, stack: list[nn.Module], names: dict[int, str]) -> None:
        super().__init__()
        self.seen, self.stack, self.names = seen, stack, names

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        call = _pool_call(func, args, kwargs)
        caller = self.stack[-1] if self.stack else None
        if call is not None and not isinstance(caller, nn.AdaptiveAvgPool2d):
            x, size = call
            in_hw = _spatial(x)
            module = self.names.get(id(caller), "") if caller is not None else ""
            self.seen.calls.append(PoolCall(module, in_hw, _resolve(size, in_hw)))
        return func(*args, **kwargs)


class LowerUnevenAdaptivePools(TorchFunctionMode):
    """While active, `F.adaptive_avg_pool2d` calls with uneven bins run as
    `adaptive_avg_pool2d_exportable` (ReduceMean / AveragePool / two MatMuls when exported).

    Exact at the size of each call (the matrices are built from it); calls with even bins are
    left alone. `lower_for_export` enters it inside the exported copy's forward only.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        call = _pool_call(func, args, kwargs)
        if call is not None:
            x, size = call
            in_hw = _spatial(x)
            out_hw = _resolve(size, in_hw)
            if has_uneven_bins(in_hw, out_hw):
                return adaptive_avg_pool2d_exportable(x, out_hw)
        return func(*args, **kwargs)


@contextlib.contextmanager
def record_pool_inputs(model: nn.Module) -> Iterator[PoolInputs]:
    """While active, record the spatial input size of every adaptive average pool.

    Each `nn.AdaptiveAvgPool2d` (by a forward pre-hook) and each `F.adaptive_avg_pool2d` call
    made elsewhere (by a recording function mode, with the module whose forward made it,
    tracked by hooks). Used around the reference forward that export runs anyway, so finding
    the pools to lower costs no extra forward pass. The hooks are removed on exit.
    """
    seen = PoolInputs()
    if isinstance(model, torch.jit.ScriptModule):  # runs in C++: nothing to see or lower
        yield seen
        return
    stack: list[nn.Module] = []
    names: dict[int, str] = {}
    handles = []

    def enter(module: nn.Module, _args: Any) -> None:
        stack.append(module)

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()

    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            continue
        names[id(module)] = name
        if isinstance(module, nn.AdaptiveAvgPool2d):

            def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
                seen.modules.setdefault(name, set()).add(_spatial(args[0]))

            handles.append(module.register_forward_pre_hook(hook))
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with _RecordPoolCalls(seen, stack, names):
            yield seen
    finally:
        for handle in handles:
            handle.remove()


def lower_for_export(model: nn.Module, seen: PoolInputs) -> tuple[nn.Module, list[Lowering]]:
    """Return (model to export, what was lowered). The input model is never modified.

    `seen` comes from `record_pool_inputs` around a forward at the export shape.

    Returns `model` itself when nothing needs lowering (no copy) and for TorchScript modules,
    whose submodules cannot be swapped. The returned copy is for export only: when some calls
    are left to the function mode, its `forward` is an instance attribute entering
    `LowerUnevenAdaptivePools`.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return model, []
    targets: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    by_mode: list[Lowering] = []
    for name, sizes in sorted(seen.modules.items()):
        pool = model.get_submodule(name)
        out_hw = _pair(pool.output_size)
        uneven = sorted(hw for hw in sizes if has_uneven_bins(hw, _resolve(out_hw, hw)))
        if not uneven:
            continue
        # One recorded size and no `None`: swapped for a matrix pool. Otherwise (a pool reused
        # at several sizes, or keeping an input side) the function mode lowers each call.
        if len(sizes) == 1 and None not in out_hw:
            (in_hw,) = sizes
            targets[name] = (in_hw, (int(out_hw[0]), int(out_hw[1])))  # type: ignore[arg-type]
            continue
        shown = "x".join("?" if s is None else str(s) for s in out_hw)
        by_mode.append(
            Lowering(
                module=name,
                original=f"AdaptiveAvgPool2d({shown})",
                replacement=f"each call with uneven bins as {_MATMUL_POOL} (function mode)",
                detail=f"inputs {', '.join(f'{h}x{w}' for h, w in uneven)} have uneven bins",
            )
        )
    by_mode.extend(_functional_lowerings(seen.calls))
    if not targets and not by_mode:
        return model, []
    lowered = copy.deepcopy(model)
    swapped = []
    for name, (in_hw, out_hw) in sorted(targets.items()):
        parent_name, _, leaf = name.rpartition(".")
        parent = lowered.get_submodule(parent_name) if parent_name else lowered
        setattr(parent, leaf, ExportableAdaptiveAvgPool2d(out_hw))
        bins = adaptive_pool_bins(in_hw[0], out_hw[0])
        swapped.append(
            Lowering(
                module=name,
                original=f"AdaptiveAvgPool2d({out_hw[0]}x{out_hw[1]})",
                replacement=f"ExportableAdaptiveAvgPool2d ({_MATMUL_POOL})",
                detail=f"input {in_hw[0]}x{in_hw[1]} has uneven bins {bins}",
            )
        )
    if by_mode:
        _forward_lowering_pools(lowered)
    return lowered, swapped + by_mode


def _functional_lowerings(calls: list[PoolCall]) -> list[Lowering]:
    """One entry per (calling module, input size, output size) with uneven bins."""
    counts: dict[PoolCall, int] = {}
    for call in calls:
        if has_uneven_bins(call.in_hw, call.out_hw):
            counts[call] = counts.get(call, 0) + 1
    lowerings = []
    for call, count in counts.items():
        (h, w), (oh, ow) = call.in_hw, call.out_hw
        times = f" ({count} calls)" if count > 1 else ""
        bins = [adaptive_pool_bins(h, oh), adaptive_pool_bins(w, ow)]
        lowerings.append(
            Lowering(
                module=call.module,
                original=f"F.adaptive_avg_pool2d({oh}x{ow}) in forward{times}",
                replacement=f"adaptive_avg_pool2d_exportable ({_MATMUL_POOL}, function mode)",
                detail=f"input {h}x{w} has uneven bins {bins[0] if bins[0] == bins[1] else bins}",
            )
        )
    return lowerings


def _forward_lowering_pools(model: nn.Module) -> None:
    """Make `model`'s forward run under `LowerUnevenAdaptivePools` (an instance attribute;
    `functools.wraps` keeps the signature, which `torch.export` binds inputs by)."""
    forward = model.forward

    @functools.wraps(forward)
    def lowered_forward(*args: Any, **kwargs: Any) -> Any:
        with LowerUnevenAdaptivePools():
            return forward(*args, **kwargs)

    model.forward = lowered_forward
