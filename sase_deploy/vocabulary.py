"""The words every stage shares, typed once: precisions, backends, tasks, the stage callback.

Each is a `Literal` so mypy catches a value nothing accepts (`"in8"`), and the tuple beside it
(read from the `Literal`, never typed twice) is what the CLI offers and what checks name in
their messages. This module imports nothing from the package: any stage may use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeGuard, get_args

# What sase-deploy builds: FP32, FP16 with casts in the graph, INT8 Q/DQ.
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# What a GPU's hardware runs (targets list them); a superset of `Precision`.
HardwarePrecision = Literal["fp32", "fp16", "bf16", "int8", "fp8", "fp4"]
HARDWARE_PRECISIONS: tuple[HardwarePrecision, ...] = get_args(HardwarePrecision)

# Who produces an engine: `auto` picks one of the others per target on this machine.
Backend = Literal["auto", "tensorrt", "tensorrt-rtx", "onnxruntime", "bundle"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

# What a model's output means, which decides how accuracy is judged.
Task = Literal["classification", "generation"]
TASKS: tuple[Task, ...] = get_args(Task)

# Called with a stage's (or rule's) name as it starts: progress for the short stages.
StageCallback = Callable[[str], None]


def is_precision(value: str) -> TypeGuard[Precision]:
    """Whether `value` is a precision sase-deploy builds (narrows `str` to `Precision`)."""
    return value in PRECISIONS


def is_backend(value: str) -> TypeGuard[Backend]:
    """Whether `value` is a backend name (narrows `str` to `Backend`)."""
    return value in BACKENDS
