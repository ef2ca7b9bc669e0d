"""Read checkpoint files safely.

Files are read with `torch.load(weights_only=True)`; anything that would run pickled code is
refused, naming the classes/functions the pickle would import, unless the caller passes
`unsafe_load=True` (`--unsafe-load`).
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sase_deploy.errors import UserError


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
