"""The reference every candidate is judged against, and the data they all run on.

The reference is a model (registry name, `module:factory` or TorchScript file, with an optional
checkpoint) run by PyTorch, or an ONNX file run by ONNX Runtime CPU. The data come from
`--data` (as for `calibrate`: a folder of images, `.npy`/`.npz` with optional labels `y`, or
`latent[:SEED]`), else from the model's own default: the digits classifiers use their shipped
evaluation split (with labels, so accuracy is real); everything else seeded normal inputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sase_deploy.calibration.sources import (
    CalibrationSource,
    GraphInput,
    LatentSource,
    array_file_source,
    graph_inputs,
    manifest_model_name,
    model_batch,
    open_data,
    registry_preprocess,
)
from sase_deploy.engines.base import Runner
from sase_deploy.errors import UserError

DEFAULT_SAMPLES = {"classification": 512, "generation": 8, "other": 64}


@dataclass
class Reference:
    """How to run the reference, and what it takes and returns."""

    name: str  # "pytorch" | "onnxruntime"
    backend: str  # "pytorch-cpu" | "onnxruntime-cpu"
    source: str  # what was loaded, for the report
    inputs: tuple[GraphInput, ...]  # batch dim None
    output_names: tuple[str, ...]
    task: str  # classification | generation | other
    model_name: str | None  # registry name, when known
    make_runner: Callable[[], Runner]
    checkpoint: dict[str, Any] | None = None
    fixed_batch: int | None = None  # an ONNX reference exported without --dynamic-batch


def _task_from_outputs(model_name: str | None, output_ranks: list[int]) -> str:
    if model_name is not None:
        from sase_deploy.models.registry import get_model_spec

        return get_model_spec(model_name).task
    if output_ranks and output_ranks[0] == 2:
        return "classification"
    if output_ranks and output_ranks[0] == 4:
        return "generation"
    return "other"


def _onnx_reference(path: Path) -> Reference:
    from sase_deploy.engines.ort import OrtRunner
    from sase_deploy.graph_io import load_onnx

    model = load_onnx(path)
    inputs = tuple(GraphInput(i.name, (None, *i.shape[1:]), i.dtype) for i in graph_inputs(model))
    outputs = tuple(o.name for o in model.graph.output)
    ranks = [len(o.type.tensor_type.shape.dim) for o in model.graph.output]
    name = manifest_model_name(path)
    return Reference(
        "onnxruntime",
        "onnxruntime-cpu",
        str(path),
        inputs,
        outputs,
        _task_from_outputs(name, ranks),
        name,
        lambda: OrtRunner(path),
        fixed_batch=model_batch(graph_inputs(model)),
    )


def shipped_data(model_name: str | None) -> Callable[..., Path] | None:
    """The writer of the data a registered model ships (`ModelSpec.write_data`), if any."""
    if model_name is None:
        return None
    from sase_deploy.models.registry import get_model_spec

    return get_model_spec(model_name).write_data


def default_checkpoint(model_name: str | None) -> Path | None:
    """The trained checkpoint a registered model ships with (the digits classifiers), if any."""
    if model_name is None:
        return None
    from sase_deploy.models.registry import get_model_spec

    spec = get_model_spec(model_name)
    return spec.checkpoint() if spec.checkpoint is not None else None


def load_reference(
    model: str,
    checkpoint: Path | None = None,
    *,
    unsafe_load: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> Reference:
    """The reference for `model` (see the module docstring); an `.onnx` path runs on ORT CPU.

    A registered model that ships trained weights uses them when no `checkpoint` is given.
    """
    if model.endswith(".onnx"):
        if checkpoint is not None:
            raise UserError("an ONNX reference carries its weights; drop -c/--checkpoint")
        if not Path(model).is_file():
            raise UserError(f"reference {model} does not exist; give an ONNX file or a model")
        return _onnx_reference(Path(model))
    from sase_deploy.engines.torch_runner import TorchRunner
    from sase_deploy.export.api import load_weights
    from sase_deploy.export.source import resolve_model

    source = resolve_model(model, model_args=model_args)
    name = source.spec.name if source.spec is not None else None
    checkpoint = checkpoint or default_checkpoint(name)
    report = load_weights(source, checkpoint, None, True, unsafe_load)
    module = source.module
    inputs = tuple(
        GraphInput(i.name, (None, *i.shape[1:]), np.dtype(i.dtype)) for i in source.inputs
    )
    names = source.output_names or _count_outputs(module, source.inputs)
    task = source.spec.task if source.spec is not None else "other"
    return Reference(
        "pytorch",
        "pytorch-cpu",
        f"{model}" + (f" (checkpoint: {checkpoint})" if checkpoint else " (random init)"),
        inputs,
        tuple(names),
        task,
        name,
        lambda: TorchRunner(module, [i.name for i in inputs], names),
        report,
    )


def _count_outputs(module: Any, inputs: Any) -> tuple[str, ...]:
    """Unnamed outputs are `output_0..` (as export names them): count them with one forward."""
    import torch

    args = [torch.zeros((1, *i.shape[1:]), dtype=getattr(torch, i.dtype)) for i in inputs]
    with torch.inference_mode():
        result = module(*args)
    count = len(result) if isinstance(result, list | tuple) else 1
    return tuple(f"output_{k}" for k in range(count))


def open_reference_data(
    reference: Reference, data: str | None, samples: int | None, seed: int = 0
) -> CalibrationSource:
    """The inputs every runner gets: `data` if given, else the model's default (see above)."""
    count = samples if samples is not None else DEFAULT_SAMPLES[reference.task]
    if data is not None:
        return open_data(
            data, reference.inputs, count, registry_preprocess(reference.model_name), seed
        )
    writer = shipped_data(reference.model_name)
    if writer is not None:  # the model's own held-out split, whole unless --samples says
        with tempfile.TemporaryDirectory(prefix="sase-deploy-eval-") as tmp:
            path = writer(Path(tmp) / "eval.npz", "eval")
            source = array_file_source(path, reference.inputs, samples)
        source.origin = f"{reference.model_name} evaluation split (package data)"
        return source
    if any(d is None for i in reference.inputs for d in i.shape[1:]):
        raise UserError(
            "the reference has dynamic non-batch input dims; pass --data with arrays of the "
            "shape to compare at"
        )
    return LatentSource(reference.inputs, count, seed)
