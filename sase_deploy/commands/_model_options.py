"""What `export`, `compare` and `deploy` share to build a PyTorch model: weights, factory
arguments and the inputs and outputs of a model the registry does not describe."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from sase_deploy.models.spec import ModelOptions

_Command = TypeVar("_Command", bound=Callable[..., Any])


def model_options(func: _Command) -> _Command:
    """-c, --checkpoint-key, --no-ema, --unsafe-load, --model-arg, --input-shape, --input-name,
    --output-name: the command receives them as one `model_options` (`ModelOptions`)."""

    # Parsed when the command runs (not by click callbacks), after click's own usage errors.
    @functools.wraps(func)
    def command(
        *,
        checkpoint: Path | None,
        checkpoint_key: str | None,
        no_ema: bool,
        unsafe_load: bool,
        model_args: tuple[str, ...],
        input_shapes: tuple[str, ...],
        input_names: tuple[str, ...],
        output_names: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        from sase_deploy.models.source import parse_model_args, parse_shape

        options = ModelOptions(
            checkpoint=checkpoint,
            checkpoint_key=checkpoint_key,
            use_ema=not no_ema,
            unsafe_load=unsafe_load,
            model_args=parse_model_args(model_args),
            input_shapes=tuple(parse_shape(text) for text in input_shapes),
            input_names=input_names,
            output_names=output_names,
        )
        return func(model_options=options, **kwargs)

    options = [
        click.option("-c", "--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
                     help="Weights to load (torch.save file; weights-only unless --unsafe-load)."),
        click.option("--checkpoint-key", help="Container key holding the state dict (e.g. g_ema)."),
        click.option("--no-ema", is_flag=True, help="Load raw weights, not the EMA copy."),
        click.option("--unsafe-load", is_flag=True,
                     help="Allow pickled code in the checkpoint: loading it runs that code, "
                     "so only for files you trust."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Factory keyword argument, repeatable (e.g. noise=input)."),
        click.option("--input-shape", "input_shapes", multiple=True, metavar="1x3x224x224",
                     help="Shape of one input, repeated once per input (default: registry)."),
        click.option("--input-name", "input_names", multiple=True,
                     help="Name of one input, repeated once per input (default: registry / "
                     "input_N)."),
        click.option("--output-name", "output_names", multiple=True,
                     help="Name of one output, repeated once per output (default: registry / "
                     "output_N)."),
    ]  # fmt: skip
    decorated: Callable[..., Any] = command
    for option in reversed(options):
        decorated = option(decorated)
    return cast(_Command, decorated)
