"""What `calibrate` and `convert` share: their data, sampling, preprocessing, `--auto-keep` and
`--json` options, and how they print a result."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import click

from sase_deploy.console import emit_json
from sase_deploy.errors import ParityError, UserError

_Command = TypeVar("_Command", bound=Callable[..., Any])

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
)


def data_option(help_text: str, *, required: bool = False) -> Callable[[_Command], _Command]:
    """`--data SRC` (-> `data`)."""
    return click.option("--data", required=required, help=help_text)


def samples_option(default: int) -> Callable[[_Command], _Command]:
    """`--samples N` (-> `samples`): how many samples to read from the data."""
    return click.option("--samples", type=int, default=default, show_default=True)


def auto_keep_option(help_text: str) -> Callable[[_Command], _Command]:
    """`--auto-keep TOL` (-> `auto_keep`)."""
    return click.option("--auto-keep", "auto_keep", type=float, metavar="TOL", help=help_text)


def eval_samples_option(help_text: str | None = None) -> Callable[[_Command], _Command]:
    """`--eval-samples N` (-> `eval_samples`): the samples `--auto-keep` scores on."""
    return click.option("--eval-samples", type=int, default=256, show_default=True, help=help_text)


def preprocess_options(func: _Command) -> _Command:
    """Image-folder preprocessing options, plus --model (registry defaults) and --seed.

    The command receives `model_name` (--model), `seed` and one `preprocess` dict (see
    `image_options`).
    """
    options = [
        click.option("--model", "model_name", help="Registry model for defaults (else manifest)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for latents."),
    ]
    decorated: Callable[..., Any] = image_options(func)
    for option in reversed(options):
        decorated = option(decorated)
    return cast(_Command, decorated)


def image_options(func: _Command) -> _Command:
    """Image-folder preprocessing; explicit values override the registry defaults.

    The command receives, parsed from --size, --resize, --mean, --std, --channel-order and
    --scale, one `preprocess` dict (the API's `PrecisionOptions.preprocess`, None for each
    option not given).
    """

    # Wrapped rather than parsed by click callbacks: a bad value is then reported when the
    # command runs, after click's own usage errors, as it always was.
    @functools.wraps(func)
    def command(
        *,
        size: str | None,
        resize: int | None,
        mean: str | None,
        std: str | None,
        channel_order: str | None,
        scale: float | None,
        **kwargs: Any,
    ) -> Any:
        preprocess = {
            "size": parse_size(size),
            "resize": resize,
            "mean": parse_floats(mean, "--mean"),
            "std": parse_floats(std, "--std"),
            "channel_order": channel_order,
            "scale": scale,
        }
        return func(preprocess=preprocess, **kwargs)

    options = [
        click.option("--size", help="Model input HxW for images (e.g. 224x224)."),
        click.option("--resize", type=int, help="Shorter side before the centre crop."),
        click.option("--mean", help="Per-channel mean, comma-separated (after --scale)."),
        click.option("--std", help="Per-channel std, comma-separated."),
        click.option("--channel-order", type=click.Choice(["RGB", "BGR", "L"])),
        click.option("--scale", type=float, help="Pixel scale before mean/std (default 1/255)."),
    ]
    decorated: Callable[..., Any] = command
    for option in reversed(options):
        decorated = option(decorated)
    return cast(_Command, decorated)


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers") from exc


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError as exc:
        raise UserError(f"--size {text!r}: expected HxW such as 224x224") from exc
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UserError(f"--size {text!r}: expected HxW such as 224x224")
    return values[0], values[1]


def report_result(
    command: str, result: dict[str, Any], notes: Sequence[str], lines: Sequence[str], as_json: bool
) -> None:
    """Print a precision command's `result` (`to_dict()`): its notes, then the JSON summary or
    `lines`; exit 1 (`ParityError`) when `--auto-keep` could not meet its tolerance."""
    summary = {"command": command, **result}
    for text in notes:  # on stderr in both modes: stdout may carry the JSON
        click.echo(f"note: {text}", err=True)
    if as_json:
        emit_json(summary)
    else:
        for line in lines:
            click.echo(line)
    _report_auto_keep(summary, as_json)


def _report_auto_keep(summary: dict[str, Any], as_json: bool) -> None:
    auto = summary.get("auto_keep")
    if auto is None:
        return
    if not as_json:
        click.echo(
            f"auto-keep ({auto['metric']}, tolerance {auto['tolerance']:g}): baseline "
            f"{auto['baseline']}, all lowered {auto['all_lowered']}, final {auto['final']}; "
            f"kept {len(auto['kept'])}: {', '.join(auto['kept']) or '-'}"
        )
    if not auto["met"]:
        raise ParityError(
            f"--auto-keep {auto['tolerance']:g} not met even with every candidate kept "
            f"({auto['metric']} {auto['final']})"
        )
