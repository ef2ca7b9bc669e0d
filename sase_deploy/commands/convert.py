"""`sase-deploy convert --precision fp16`: casts-in-graph FP16 with float32 IO and a keep-list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sase_deploy.commands._precision_options import (
    auto_keep_option,
    data_option,
    eval_samples_option,
    json_option,
    preprocess_options,
    report_result,
    samples_option,
)
from sase_deploy.console import stage_progress


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
@data_option("Calibration data (as for calibrate) for ranges and --auto-keep.")
@samples_option(256)
@auto_keep_option(
    "Keep the fewest extra nodes in FP32 to meet TOL (needs --data): max top-1 "
    "drop in points, or min PSNR in dB for generators."
)
@eval_samples_option()
@preprocess_options
@json_option
def convert_command(
    model_path: Path,
    precision: str,
    output: Path | None,
    reduce_limit: int,
    calib_json: Path | None,
    data: str | None,
    samples: int,
    auto_keep: float | None,
    eval_samples: int,
    model_name: str | None,
    preprocess: dict[str, Any],
    seed: int,
    as_json: bool,
) -> None:
    """Convert IN.onnx to FP16 with casts in the graph (TensorRT 11 strongly typed, ORT).

    Inputs and outputs stay float32. Reductions over large maps, SASE's mask normalisation and
    anything whose calibrated range exceeds FP16 stay FP32.
    """
    from sase_deploy.calibration.api import convert_onnx
    from sase_deploy.calibration.options import ConvertOptions

    options = ConvertOptions(
        samples=samples,
        model_name=model_name,
        preprocess=preprocess,
        seed=seed,
        auto_keep_tolerance=auto_keep,
        eval_samples=eval_samples,
        precision=precision,
        reduce_limit=reduce_limit,
        calib_json=calib_json,
        data=data,
    )
    with stage_progress() as progress:
        result = convert_onnx(model_path, output, options, progress=progress)
    lines = [
        f"wrote {result.output} ({result.precision}, float32 IO)",
        f"kept in FP32: {len(result.kept_fp32)} nodes",
        *(f"  {name}: {why}" for name, why in result.kept_fp32.items()),
    ]
    report_result("convert", result.to_dict(), result.notes, lines, as_json)
