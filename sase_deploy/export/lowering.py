"""Rewrite the PyTorch modules that ONNX exporters choke on, in a copy of the model.

No torch internals are patched: submodules are swapped in a deep copy, so the caller's model
(the parity reference) is untouched.

- `nn.AdaptiveAvgPool2d` with uneven bins (7x7 -> 4x4 / 2x2, 14x14 -> 4x4 in SPSE): the
  TorchScript exporter refuses it and the dynamo exporter emits Gather chains. It becomes
  `ExportableAdaptiveAvgPool2d` (exact averaging matrices, two MatMuls) from
  `sase_deploy.models.pooling`, chosen per instance from the input size recorded by a forward
  hook at the export shape. Pools with even bins are left to the exporter.
- `nn.GLU` needs no lowering: both exporters emit Split -> Sigmoid -> Mul (tested).
- Noise: generators take `noise=` from the registry; anything else that still draws random
  numbers is caught after export (`sase_deploy.export.graph.random_nodes`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sase_deploy.models.pooling import ExportableAdaptiveAvgPool2d, adaptive_pool_bins


@dataclass(frozen=True)
class Lowering:
    """One submodule swapped for export."""

    module: str  # qualified name in the model
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


def has_uneven_bins(in_hw: tuple[int, int], out_hw: tuple[int | None, int | None]) -> bool:
    return any(o is not None and n % o != 0 for n, o in zip(in_hw, out_hw, strict=True))


PoolInputs = dict[str, set[tuple[int, int]]]


@contextlib.contextmanager
def record_pool_inputs(model: nn.Module) -> Iterator[PoolInputs]:
    """While active, record the spatial input size each AdaptiveAvgPool2d sees.

    Used around the reference forward that export runs anyway, so finding the pools to lower
    costs no extra forward pass.
    """
    seen: PoolInputs = {}
    handles = []
    if not isinstance(model, torch.jit.ScriptModule):
        for name, module in model.named_modules():
            if isinstance(module, nn.AdaptiveAvgPool2d):

                def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
                    shape = args[0].shape
                    seen.setdefault(name, set()).add((int(shape[-2]), int(shape[-1])))

                handles.append(module.register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def lower_for_export(model: nn.Module, seen: PoolInputs) -> tuple[nn.Module, list[Lowering]]:
    """Return (model to export, what was swapped). The input model is never modified.

    `seen` comes from `record_pool_inputs` around a forward at the export shape.

    Returns `model` itself when nothing needs lowering (no copy) and for TorchScript modules,
    whose submodules cannot be swapped.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return model, []
    targets: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    for name, sizes in seen.items():
        pool = model.get_submodule(name)
        out_hw = _pair(pool.output_size)
        # One recorded size only: a pool reused at several sizes keeps its dynamic semantics,
        # and `None` sizes (keep the input side) are not handled by the matrix pool.
        if len(sizes) != 1 or None in out_hw:
            continue
        (in_hw,) = sizes
        if has_uneven_bins(in_hw, out_hw):
            targets[name] = (in_hw, (int(out_hw[0]), int(out_hw[1])))  # type: ignore[arg-type]
    if not targets:
        return model, []
    lowered = copy.deepcopy(model)
    done = []
    for name, (in_hw, out_hw) in sorted(targets.items()):
        parent_name, _, leaf = name.rpartition(".")
        parent = lowered.get_submodule(parent_name) if parent_name else lowered
        setattr(parent, leaf, ExportableAdaptiveAvgPool2d(out_hw))
        bins = adaptive_pool_bins(in_hw[0], out_hw[0])
        done.append(
            Lowering(
                module=name,
                original=f"AdaptiveAvgPool2d({out_hw[0]}x{out_hw[1]})",
                replacement="ExportableAdaptiveAvgPool2d (two MatMuls with averaging matrices)",
                detail=f"input {in_hw[0]}x{in_hw[1]} has uneven bins {bins}",
            )
        )
    return lowered, done
