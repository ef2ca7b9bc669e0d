"""Run torch's ONNX exporters: dynamo (`torch.export`-based, the default) and TorchScript.

`auto` tries dynamo and falls back to TorchScript when dynamo fails, recording why. TorchScript
modules (`torch.jit.load`) go straight to the TorchScript exporter: `torch.export` cannot
trace them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import onnx
import torch
from torch import nn

Exporter = Literal["auto", "dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "torchscript")
BATCH_DIM = "batch"


class ExportFailed(Exception):
    """Every exporter that was tried failed; `attempts` says how."""

    def __init__(self, attempts: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{a['exporter']}: {a['error']}" for a in attempts))
        self.attempts = attempts


@dataclass
class ExportOutcome:
    model: onnx.ModelProto
    exporter: str  # the one that produced `model`
    attempts: list[dict[str, str]] = field(default_factory=list)  # failed tries, in order
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep exporter chatter off stdout (it is reserved for --json) and drop known noise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _error_text(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # dynamo's first line is a generic banner; the cause is in the chained exception.
    cause = exc.__cause__
    detail = ""
    if cause is not None:
        cause_lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        detail = f" ({type(cause).__name__}: {cause_lines[0][:200] if cause_lines else ''})"
    head = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {head}{detail}"


def _dynamo(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    dynamic_batch: bool,
) -> onnx.ModelProto:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH_DIM)
        dynamic_shapes = tuple({0: batch} for _ in args)
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_shapes=dynamic_shapes,
        verbose=False,
        report=False,
        optimize=True,
    )
    assert program is not None
    return program.model_proto


def _torchscript(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    dynamic_batch: bool,
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: BATCH_DIM} for name in (*input_names, *output_names)}
    torch.onnx.export(
        module,
        args,
        buffer,  # type: ignore[arg-type]  # a file object works, the stub says path only
        dynamo=False,
        opset_version=opset,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
    )
    return onnx.load_from_string(buffer.getvalue())


_RUNNERS = {"dynamo": _dynamo, "torchscript": _torchscript}


def export_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    dynamic_batch: bool,
    exporter: Exporter = "auto",
) -> ExportOutcome:
    """Export `module` at the example `args`; raises `ExportFailed` when no exporter succeeds."""
    notes: list[str] = []
    if exporter == "auto":
        if isinstance(module, torch.jit.ScriptModule):
            order: tuple[str, ...] = ("torchscript",)
            notes.append("TorchScript module: exported with the TorchScript exporter")
        else:
            order = ("dynamo", "torchscript")
    else:
        order = (exporter,)
    attempts: list[dict[str, str]] = []
    for name in order:
        try:
            with _quiet_exporter(), torch.no_grad():
                model = _RUNNERS[name](
                    module, args, input_names, output_names, opset, dynamic_batch
                )
        # Exporters raise many unrelated types (torch.export errors, SymbolicValueError,
        # onnxscript conversion errors, RuntimeError...): any failure means "try the next one".
        except Exception as exc:
            attempts.append({"exporter": name, "error": _error_text(exc)})
            continue
        if attempts:
            notes.append(
                f"{attempts[-1]['exporter']} exporter failed ({attempts[-1]['error']}); "
                f"fell back to the {name} exporter"
            )
        return ExportOutcome(model, name, attempts, notes)
    raise ExportFailed(attempts)
