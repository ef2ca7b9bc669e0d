"""`sase-deploy calibrate`: INT8 Q/DQ ONNX + TensorRT 10 calibration cache + ranges json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sase_deploy.console import emit_json
from sase_deploy.errors import ParityError, UserError


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers") from exc


def _size(text: str | None) -> tuple[int, int] | None:
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


def preprocess_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Image-folder preprocessing options; explicit values override the registry defaults."""
    options = [
        click.option("--model", "model_name", help="Registry model for defaults (else manifest)."),
        click.option("--size", help="Model input HxW for images (e.g. 224x224)."),
        click.option("--resize", type=int, help="Shorter side before the centre crop."),
        click.option("--mean", help="Per-channel mean, comma-separated (after --scale)."),
        click.option("--std", help="Per-channel std, comma-separated."),
        click.option("--channel-order", type=click.Choice(["RGB", "BGR", "L"])),
        click.option("--scale", type=float, help="Pixel scale before mean/std (default 1/255)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for latents."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def collect_preprocess(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "size": _size(kwargs.pop("size")),
        "resize": kwargs.pop("resize"),
        "mean": _floats(kwargs.pop("mean"), "--mean"),
        "std": _floats(kwargs.pop("std"), "--std"),
        "channel_order": kwargs.pop("channel_order"),
        "scale": kwargs.pop("scale"),
    }


def report_auto_keep(summary: dict[str, Any], as_json: bool) -> None:
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


@click.command("calibrate")
@click.argument("model_path", metavar="IN.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    help="Image folder, .npy/.npz (arrays named after inputs or x; labels y), or "
    "latent[:SEED] for generators.",
)
@click.option(
    "--method",
    type=click.Choice(["entropy", "minmax", "percentile"]),
    default="percentile",
    show_default=True,
)
@click.option(
    "--percentile", type=float, default=99.99, show_default=True, help="For --method percentile."
)
@click.option("--samples", type=int, default=512, show_default=True)
@click.option(
    "--batch",
    type=int,
    help="Samples per ORT run [default: 16]. A model exported with a fixed batch (without "
    "--dynamic-batch) always runs at its own batch.",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
)
@click.option(
    "--quantize-gates", is_flag=True, help="Also quantise SE gate paths (kept float by default)."
)
@click.option(
    "--auto-keep",
    "auto_keep",
    type=float,
    metavar="TOL",
    help="Keep the fewest layers in float to meet TOL: max top-1 drop in points "
    "(classification) or min PSNR in dB (generators).",
)
@click.option(
    "--eval-samples", type=int, default=256, show_default=True, help="Samples used by --auto-keep."
)
@click.option(
    "--trt-version",
    default="10.3.0",
    show_default=True,
    help="TensorRT version named in the cache header.",
)
@preprocess_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def calibrate_command(**kwargs: Any) -> None:
    """Calibrate IN.onnx on --data and write, atomically, into -o DIR:

    NAME.int8.onnx (symmetric INT8 Q/DQ for TensorRT 11 / ORT), NAME.calib.cache (TensorRT 10
    implicit-INT8 cache) and NAME.calib.json (per-tensor ranges, method, data, sha256).
    """
    from sase_deploy.calibration import calibrate_onnx

    as_json = kwargs.pop("as_json")
    prep = collect_preprocess(kwargs)
    result = calibrate_onnx(
        kwargs["model_path"],
        kwargs["data"],
        kwargs["output_dir"],
        method=kwargs["method"],
        samples=kwargs["samples"],
        batch=kwargs["batch"],
        model_name=kwargs["model_name"],
        preprocess=prep,
        seed=kwargs["seed"],
        percentile=kwargs["percentile"],
        quantize_gates=kwargs["quantize_gates"],
        auto_keep_tolerance=kwargs["auto_keep"],
        eval_samples=kwargs["eval_samples"],
        trt_version=kwargs["trt_version"],
    )
    summary = {"command": "calibrate", **result.to_dict()}
    for text in result.notes:  # on stderr in both modes: stdout may carry the JSON
        click.echo(f"note: {text}", err=True)
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {result.int8_onnx}, {result.cache} and {result.json}")
        click.echo(
            f"{result.method} over {result.samples} samples: {len(result.quantized_nodes)} nodes "
            f"quantised, {len(result.kept_float)} kept float, {result.cache_tensors} cache "
            f"tensors in {result.timings['total_s']:.1f} s"
        )
    report_auto_keep(summary, as_json)
