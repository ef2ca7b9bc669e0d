"""The reference every candidate is judged against, and the data they all run on.

The reference is a model (registry name, `module:factory` or TorchScript file, with an optional
checkpoint) run by PyTorch, or an ONNX file run by ONNX Runtime CPU. The data come from
`--data` (as for `calibrate`: a folder of images, `.npy`/`.npz` with optional labels `y`, or
`latent[:SEED]`), else from the model's own default: the digits classifiers use their shipped
evaluation split (with labels, so accuracy is real); everything else seeded normal inputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sase_deploy.calibration.sources import (
    CalibrationSource,
    LatentSource,
    array_file_source,
    manifest_model_name,
    model_batch,
    open_data,
)
from sase_deploy.errors import UserError
from sase_deploy.graph_io.inputs import GraphInput, graph_inputs
from sase_deploy.models.spec import ModelOptions
from sase_deploy.runtime.base import Runner

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
    # checkpoint (-c) | shipped (the registry's trained weights) | random-init (a registered
    # model without either) | as-built (a factory or TorchScript file: its own weights, unknown
    # to us) | onnx (the file's weights)
    weights: str = "as-built"


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
    from sase_deploy.graph_io import load_onnx
    from sase_deploy.runtime.ort import OrtRunner

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
        weights="onnx",
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

    return get_model_spec(model_name).shipped_checkpoint()


def load_reference(
    model: str, options: ModelOptions | None = None, *, like: Path | None = None
) -> Reference:
    """The reference for `model` (see the module docstring); an `.onnx` path runs on ORT CPU.

    A registered model that ships trained weights uses them when no `checkpoint` is given.

    Args:
        model: registry name, `package.module:factory`, TorchScript file or `.onnx` file.
        options: weights, factory arguments, input shapes and names, as `export` takes them.
        like: an ONNX model exported from `model`: a user model given without input shapes
            takes its input names and shapes (and output names) from it.
    """
    given = options or ModelOptions()
    checkpoint = given.checkpoint
    input_shapes, input_names = given.input_shapes, given.input_names
    output_names = given.output_names
    if model.endswith(".onnx"):
        if checkpoint is not None:
            raise UserError("an ONNX reference carries its weights; drop -c/--checkpoint")
        if input_shapes or input_names or output_names:
            raise UserError(
                "an ONNX reference carries its input shapes and names; drop --input-shape, "
                "--input-name and --output-name"
            )
        if not Path(model).is_file():
            raise UserError(f"reference {model} does not exist; give an ONNX file or a model")
        return _onnx_reference(Path(model))
    from sase_deploy.models.source import load_weights, resolve_model
    from sase_deploy.runtime.torch_runner import TorchRunner

    if not input_shapes and like is not None and not _is_registered(model):
        input_shapes, input_names, output_names = _io_like(like, input_names, output_names)
    source = resolve_model(
        model,
        model_args=given.model_args,
        input_shapes=input_shapes or None,
        input_names=input_names or None,
    )
    name = source.spec.name if source.spec is not None else None
    checkpoint = checkpoint or default_checkpoint(name)
    report = load_weights(
        source, checkpoint, given.checkpoint_key, given.use_ema, given.unsafe_load
    )
    module = source.module
    inputs = tuple(
        GraphInput(i.name, (None, *i.shape[1:]), np.dtype(i.dtype)) for i in source.inputs
    )
    task: str
    if source.spec is not None and source.output_names and not output_names:
        # the registry knows the outputs and the task: no forward needed (a 1024 px generator)
        names, task = tuple(source.output_names), source.spec.task
    else:
        names, ranks = _outputs(module, source.inputs, output_names or source.output_names)
        task = source.spec.task if source.spec is not None else _task_from_outputs(None, ranks)
    weights = _weights_kind(given.checkpoint, checkpoint, name is not None)
    return Reference(
        "pytorch",
        "pytorch-cpu",
        f"{model} ({_weights_text(weights, checkpoint)})",
        inputs,
        tuple(names),
        task,
        name,
        lambda: TorchRunner(module, [i.name for i in inputs], names),
        report,
        weights=weights,
    )


def _weights_kind(given: Path | None, used: Path | None, registered: bool) -> str:
    """`Reference.weights`: checkpoint (-c), shipped, random-init (registered model without
    weights) or as-built (a factory or TorchScript file's own weights: unknown to us)."""
    if given is not None:
        return "checkpoint"
    if used is not None:
        return "shipped"
    return "random-init" if registered else "as-built"


def _weights_text(kind: str, checkpoint: Path | None) -> str:
    """How the report's `source` names the weights."""
    if checkpoint is not None:
        return f"checkpoint: {checkpoint}"
    return {"random-init": "random init", "as-built": "weights as the factory built them"}[kind]


def _is_registered(model: str) -> bool:
    from sase_deploy.models.registry import list_model_specs

    return model in {spec.name for spec in list_model_specs()}


def _io_like(
    onnx_path: Path, input_names: Sequence[str] | None, output_names: Sequence[str] | None
) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...], tuple[str, ...]]:
    """Input shapes (batch 1) and names, and output names, of an ONNX model exported from the
    reference; dims that are not fixed cannot be read, so the user is asked for them."""
    from sase_deploy.graph_io import load_onnx

    model = load_onnx(onnx_path)
    inputs = graph_inputs(model)
    if any(d is None for i in inputs for d in i.shape[1:]):
        raise UserError(
            f"{onnx_path} has dynamic non-batch input dims, so the reference's input shapes "
            "cannot be read from it; pass --input-shape once per input, e.g. 1x3x224x224"
        )
    shapes = tuple((1, *(int(d) for d in i.shape[1:] if d is not None)) for i in inputs)
    names = tuple(input_names) if input_names else tuple(i.name for i in inputs)
    outputs = tuple(output_names) if output_names else tuple(o.name for o in model.graph.output)
    return shapes, names, outputs


def _outputs(
    module: Any, inputs: Any, names: Sequence[str] | None
) -> tuple[tuple[str, ...], list[int]]:
    """Output names (unnamed ones are `output_0..`, as export names them) and output ranks,
    read from one forward at batch 1."""
    import torch

    args = [torch.zeros((1, *i.shape[1:]), dtype=getattr(torch, i.dtype)) for i in inputs]
    with torch.inference_mode():
        result = module(*args)
    results = list(result) if isinstance(result, list | tuple) else [result]
    ranks = [int(getattr(r, "ndim", 0)) for r in results]
    if names and len(names) != len(results):
        raise UserError(
            f"{len(names)} output names for a model with {len(results)} outputs; pass "
            "--output-name once per output"
        )
    return tuple(names) if names else tuple(f"output_{k}" for k in range(len(results))), ranks


def open_reference_data(
    reference: Reference,
    data: str | None,
    samples: int | None,
    seed: int = 0,
    preprocess: Mapping[str, Any] | None = None,
) -> CalibrationSource:
    """The inputs every runner gets: `data` if given, else the model's default (see above).

    `preprocess` overrides the registry's image preprocessing (as `calibrate --size/--mean/..`).
    """
    from sase_deploy.calibration.api import resolve_preprocess

    count = samples if samples is not None else DEFAULT_SAMPLES[reference.task]
    if data is not None:
        prep = resolve_preprocess(reference.model_name, preprocess)
        return open_data(data, reference.inputs, count, prep, seed)
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
