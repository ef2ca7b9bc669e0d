"""What the registry knows about a model: how to build it, what it takes, what it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sase_deploy.vocabulary import Task

InputKind = Literal["image", "latent", "noise"]


@dataclass(frozen=True)
class InputSpec:
    """One model input. `shape[0]` is the batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: InputKind = "image"


@dataclass(frozen=True)
class ModelOptions:
    """How to build MODEL and load its weights, besides its name (`export`, `compare` and
    `deploy` take the same options).

    Attributes:
        checkpoint: weights to load (torch.save file); None keeps the model's own (a registered
            model's shipped weights, else random init or what the factory loads).
        checkpoint_key: container key holding the state dict (e.g. `g_ema`).
        use_ema: load the EMA copy of the weights when the checkpoint has one.
        unsafe_load: allow pickled code in the checkpoint (trusted files only).
        model_args: factory keyword arguments.
        input_shapes: one shape per input, batch first (default: the registry's).
        input_names, output_names: one name per input / output (default: registry, input_N /
            output_N).
    """

    checkpoint: Path | None = None
    checkpoint_key: str | None = None
    use_ema: bool = True
    unsafe_load: bool = False
    model_args: Mapping[str, Any] = field(default_factory=dict)
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


def sample_inputs(
    specs: tuple[InputSpec, ...], seed: int = 0, batch: int | None = None
) -> dict[str, np.ndarray]:
    """Seeded inputs for `specs`: standard normal (images are normalised), from one generator.

    Args:
        specs: the inputs, in the order their values are drawn.
        seed: the generator's seed.
        batch: the batch size (None: each spec's own `shape[0]`).
    """
    # lazy: graph_io loads onnx, which the CLI does not import for commands that never need it
    from sase_deploy.graph_io.inputs import random_feed

    shapes = [
        (s.name, (batch if batch is not None else s.shape[0], *s.shape[1:]), s.dtype) for s in specs
    ]
    return random_feed(shapes, np.random.default_rng(seed))


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model input (used by calibration's image-folder source)."""

    size: tuple[int, int]  # (H, W) fed to the model
    resize: int | None = None  # shorter side resized to this before a centre crop to `size`
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: Literal["RGB", "BGR", "L"] = "RGB"
    scale: float = 1.0 / 255.0


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    `se_blocks` counts the squeeze-excitation-family blocks the network contains, by kind
    (`se`, `sle`, `sase`, `spse`, `rgse`, ...): the fusion pass must find exactly these.
    `inputs_fn`, when set, derives the inputs from the factory keyword arguments (e.g. a
    generator whose noise is an explicit input).
    """

    name: str
    family: str
    task: Task
    factory: Callable[..., Any]
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    description: str
    se_blocks: Mapping[str, int] = field(default_factory=dict)
    dynamic_batch: bool = True
    preprocess: Preprocess | None = None
    source: str = ""  # official code the layout follows, or "reconstruction"
    inputs_fn: Callable[..., tuple[InputSpec, ...]] | None = None
    # Trained weights the package ships (the digits classifiers): used when no -c is given.
    checkpoint: Callable[[], Path] | None = None
    # Data the package ships for it: write_data(path, "eval" | "calibration") writes that split
    # as an .npz `--data` reads (eval with labels `y`); `deploy` and `compare` default to it.
    write_data: Callable[..., Path] | None = None

    def shipped_checkpoint(self) -> Path | None:
        """The trained weights the package ships for this model, if any."""
        return self.checkpoint() if self.checkpoint is not None else None

    def input_specs(self, **model_kwargs: Any) -> tuple[InputSpec, ...]:
        if self.inputs_fn is not None:
            return self.inputs_fn(**model_kwargs)
        return self.inputs
