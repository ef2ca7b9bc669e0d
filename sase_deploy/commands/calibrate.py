"""`sase-deploy calibrate`: INT8 Q/DQ ONNX + TensorRT 10 calibration cache + ranges json."""

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


@click.command("calibrate")
@click.argument("model_path", metavar="IN.onnx", type=click.Path(dir_okay=False, path_type=Path))
@data_option(
    "Image folder, .npy/.npz (arrays named after inputs or x; labels y), or "
    "latent[:SEED] for generators.",
    required=True,
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
@samples_option(512)
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
    "--high-precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
    help="What layers left unquantised compute in (fp16: FP16 Q/DQ scales, opset 19; fp32: "
    "the float graph as it was).",
)  # fmt: skip
@click.option(
    "--min-channels", type=int, default=0, show_default=True, metavar="N",
    help="Leave Conv/Gemm/MatMul with fewer than N channels unquantised (INT8 is slower than "
    "FP16 there; ModelOpt uses 16).",
)  # fmt: skip
@auto_keep_option(
    "Keep the fewest layers in float to meet TOL: max top-1 drop in points "
    "(classification) or min PSNR in dB (generators)."
)
@eval_samples_option("Samples used by --auto-keep.")
@click.option(
    "--auto-keep-rank", type=click.Choice(["sensitivity", "per-layer"]), default="sensitivity",
    show_default=True,
    help="How --auto-keep finds the most harmful layers: each one quantised alone "
    "(sensitivity), or the error each adds in one run of the quantised model (per-layer).",
)  # fmt: skip
@click.option(
    "--trt-version",
    default="10.3.0",
    show_default=True,
    help="TensorRT version named in the cache header.",
)
@preprocess_options
@json_option
def calibrate_command(
    model_path: Path,
    data: str,
    method: str,
    percentile: float,
    samples: int,
    batch: int | None,
    output_dir: Path,
    quantize_gates: bool,
    high_precision: str,
    min_channels: int,
    auto_keep: float | None,
    eval_samples: int,
    auto_keep_rank: str,
    trt_version: str,
    model_name: str | None,
    preprocess: dict[str, Any],
    seed: int,
    as_json: bool,
) -> None:
    """Calibrate IN.onnx on --data and write, atomically, into -o DIR:

    NAME.int8.onnx (symmetric INT8 Q/DQ for TensorRT 11 / ORT, FP16 where not quantised
    unless --high-precision fp32), NAME.calib.cache (TensorRT 10
    implicit-INT8 cache) and NAME.calib.json (per-tensor ranges, method, data, sha256).
    """
    from sase_deploy.calibration.api import calibrate_onnx
    from sase_deploy.calibration.options import CalibrateOptions

    options = CalibrateOptions(
        samples=samples,
        model_name=model_name,
        preprocess=preprocess,
        seed=seed,
        auto_keep_tolerance=auto_keep,
        eval_samples=eval_samples,
        method=method,
        batch=batch,
        percentile=percentile,
        quantize_gates=quantize_gates,
        trt_version=trt_version,
        high_precision=high_precision,
        min_channels=min_channels,
        auto_keep_rank=auto_keep_rank,
    )
    with stage_progress() as progress:
        result = calibrate_onnx(model_path, data, output_dir, options, progress=progress)
    lines = [
        f"wrote {result.int8_onnx}, {result.cache} and {result.json}",
        f"{result.method} over {result.samples} samples: {len(result.quantized_nodes)} nodes "
        f"quantised, {len(result.kept_float)} kept float, {result.cache_tensors} cache "
        f"tensors in {result.timings['total_s']:.1f} s",
    ]
    report_result("calibrate", result.to_dict(), result.notes, lines, as_json)
