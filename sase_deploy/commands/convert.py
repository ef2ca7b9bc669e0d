"""`sase-deploy convert --precision fp16`: casts-in-graph FP16 with float32 IO and a keep-list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sase_deploy.commands.calibrate import collect_preprocess, preprocess_options, report_auto_keep
from sase_deploy.console import emit_json


@click.command("convert")
@click.argument("model_path", metavar="IN.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp16"]), default="fp16", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output .onnx (default: IN.fp16.onnx beside IN).",
)
@click.option(
    "--reduce-limit",
    type=int,
    default=4096,
    show_default=True,
    help="Keep in FP32 reductions over more elements than this.",
)
@click.option(
    "--calib-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="NAME.calib.json: keep in FP32 nodes whose range exceeds FP16.",
)
@click.option("--data", help="Calibration data (as for calibrate) for ranges and --auto-keep.")
@click.option("--samples", type=int, default=256, show_default=True)
@click.option(
    "--auto-keep",
    "auto_keep",
    type=float,
    metavar="TOL",
    help="Keep the fewest extra nodes in FP32 to meet TOL (needs --data): max top-1 "
    "drop in points, or min PSNR in dB for generators.",
)
@click.option("--eval-samples", type=int, default=256, show_default=True)
@preprocess_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def convert_command(**kwargs: Any) -> None:
    """Convert IN.onnx to FP16 with casts in the graph (TensorRT 11 strongly typed, ORT).

    Inputs and outputs stay float32. Reductions over large maps, SASE's mask normalisation and
    anything whose calibrated range exceeds FP16 stay FP32.
    """
    from sase_deploy.calibration import convert_onnx

    as_json = kwargs.pop("as_json")
    prep = collect_preprocess(kwargs)
    result = convert_onnx(
        kwargs["model_path"],
        kwargs["output"],
        precision=kwargs["precision"],
        reduce_limit=kwargs["reduce_limit"],
        calib_json=kwargs["calib_json"],
        data=kwargs["data"],
        samples=kwargs["samples"],
        model_name=kwargs["model_name"],
        preprocess=prep,
        seed=kwargs["seed"],
        auto_keep_tolerance=kwargs["auto_keep"],
        eval_samples=kwargs["eval_samples"],
    )
    summary = {"command": "convert", **result.to_dict()}
    for text in result.notes:  # on stderr in both modes: stdout may carry the JSON
        click.echo(f"note: {text}", err=True)
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {result.output} ({result.precision}, float32 IO)")
        click.echo(f"kept in FP32: {len(result.kept_fp32)} nodes")
        for name, why in result.kept_fp32.items():
            click.echo(f"  {name}: {why}")
    report_auto_keep(summary, as_json)
