"""`sase-deploy build`: an engine (or ONNX Runtime model, or device bundle) per target."""

from __future__ import annotations

from pathlib import Path

import click

from sase_deploy.console import emit_json, progress
from sase_deploy.errors import UserError
from sase_deploy.vocabulary import BACKENDS, PRECISIONS, Backend, Precision


def parse_batch(text: str | None) -> tuple[int, int, int] | None:
    """'1:4:8' -> (1, 4, 8); a single 'N' means N:N:N."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UserError(
            f"--batch {text!r}: give MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:8:8"
        )
    return values[0], values[1], values[2]


@click.command("build")
@click.argument("model_path", metavar="IN.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", "-t", required=True, help="Target device (see 'sase-deploy targets').")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder written by 'sase-deploy calibrate' (INT8 ranges, Q/DQ model, TRT-10 cache).",
)
@click.option("--data", help="Calibration data to calibrate now for INT8 (as for calibrate).")
@click.option("--samples", type=int, default=512, show_default=True, help="With --data.")
@click.option("--batch", metavar="MIN:OPT:MAX", help="Dynamic batch profile [default: 1:8:8].")
@click.option("--workspace", "workspace_mb", type=int, metavar="MB", help="Builder workspace.")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TensorRT timing cache file (read and updated).",
)
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson), GPU fallback on.")
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder; artifacts go to OUTPUT/<target>/.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def build_command(
    model_path: Path,
    target: str,
    precision: Precision,
    calibration: Path | None,
    data: str | None,
    samples: int,
    batch: str | None,
    workspace_mb: int | None,
    timing_cache: Path | None,
    backend: Backend,
    dla_core: int | None,
    output_dir: Path,
    as_json: bool,
) -> None:
    """Build IN.onnx for a target device: a TensorRT-RTX engine (ahead of time, no GPU needed),
    a TensorRT engine (on a matching GPU), an ONNX Runtime model, or a bundle that builds the
    engine on the device (Jetson). FP16/INT8 graphs are made first where the builder is
    strongly typed; an identical request reuses the cached artifact."""
    from sase_deploy.engines.build import build
    from sase_deploy.engines.request import BuildRequest

    request = BuildRequest(
        onnx=model_path,
        target=target,
        output_dir=output_dir,
        precision=precision,
        calibration=calibration,
        data=data,
        batch=parse_batch(batch),
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        backend=backend,
        dla_core=dla_core,
        samples=samples,
    )
    with progress() as bar:
        task = bar.add_task("build", total=None)
        result = build(request, on_stage=lambda name: bar.update(task, description=name))
    summary = {"command": "build", **result.to_dict()}
    if as_json:
        emit_json(summary)
        return
    verb = "reused (cache hit)" if result.cached else "wrote"
    click.echo(f"{verb} {result.artifact} ({result.backend}, {result.precision}, {result.target})")
    if result.manifest.layers is not None:
        types = ", ".join(f"{k} {v}" for k, v in list(summary["layer_types"].items())[:6])
        click.echo(
            f"  {summary['layers']} layers ({types}); "
            f"{summary['engine_bytes'] / 1e6:.1f} MB; built in {summary['build_seconds']:.2f} s"
        )
        if summary["compute_dtypes"]:
            computed = ", ".join(f"{k} {v}" for k, v in summary["compute_dtypes"].items())
            click.echo(f"  layers computing in: {computed}")
    if result.backend == "tensorrt-rtx":
        click.echo("  runs with the TensorRT-RTX runtime on a GPU of that compute capability")
    if result.backend == "bundle":
        click.echo(f"  on the device: bash {result.artifact}/build.sh")
    click.echo(f"  manifest: {result.manifest_path}")
