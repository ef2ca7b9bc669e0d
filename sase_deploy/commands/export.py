"""`sase-deploy export`: MODEL -> checked, simplified, parity-tested ONNX plus a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sase_deploy.commands._model_options import model_options
from sase_deploy.console import emit_json, note, progress
from sase_deploy.errors import ParityError

if TYPE_CHECKING:  # the export package imports torch: only when the command runs
    from sase_deploy.export.api import ExportResult
    from sase_deploy.export.exporters import Exporter
    from sase_deploy.models.spec import ModelOptions

_STAGES = ("load", "export", "simplify", "fuse", "check", "parity")


@click.command("export")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output .onnx path (default: ./MODEL.onnx).",
)
@model_options
@click.option(
    "--dynamic-batch",
    is_flag=True,
    help="Make dim 0 of every input/output symbolic ('batch'); parity at batch 1 and 4.",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (default 18).")
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "torchscript"]),
    default="auto",
    show_default=True,
    help="auto: dynamo, falling back to TorchScript on failure.",
)
@click.option("--no-fuse", is_flag=True, help="Skip the SE-subgraph fusion pass.")
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="Parity tolerance on max|onnx-torch| / max|torch| (default 1e-4, or twice PyTorch's "
    "own float32-vs-float64 error where larger).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the parity inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def export_command(
    model: str,
    output: Path | None,
    model_options: ModelOptions,
    dynamic_batch: bool,
    opset: int | None,
    exporter: Exporter,
    no_fuse: bool,
    tolerance: float | None,
    seed: int,
    as_json: bool,
) -> None:
    """Export MODEL to ONNX, check and simplify it, fuse SE blocks, and test parity on ORT CPU.

    MODEL is a registered name (see 'sase-deploy models'), package.module:factory, or a
    TorchScript file. Writes OUT.onnx and OUT.manifest.json; on a parity failure the model is
    kept as OUT.parity-failed.onnx and the command exits 1.
    """
    from sase_deploy.export.api import (
        DEFAULT_OPSET,
        export_model,
        export_options,
    )

    options = export_options(
        model_options,
        dynamic_batch=dynamic_batch,
        opset=opset if opset is not None else DEFAULT_OPSET,
        exporter=exporter,
        fuse=not no_fuse,
        tolerance=tolerance,
        seed=seed,
    )
    with progress() as bar:
        task = bar.add_task("export", total=len(_STAGES))

        def on_stage(name: str) -> None:
            bar.update(task, description=name, completed=_STAGES.index(name))

        try:
            result = export_model(model, output, options, on_stage=on_stage)
        except ParityError as exc:
            if as_json:
                emit_json(exc.details)
            raise
    if as_json:
        emit_json(result.to_dict())
    else:
        _echo_summary(result)


def _echo_summary(result: ExportResult) -> None:
    summary = result.to_dict()
    parity = summary["parity"]
    counts = summary["node_counts"]
    click.echo(f"wrote {result.onnx_path} and {result.manifest_path}")
    click.echo(
        f"exporter {summary['exporter']}, opset {summary['opset']}, nodes "
        f"{counts['exported']} exported -> {counts['final']} final "
        f"({summary['fusion']['status']})"
    )
    floor = parity.get("noise_floor")
    bound = f"{parity['effective_tolerance']:.2g}" if floor is not None else ""
    bound += f" (PyTorch's own float32 noise {floor:.1e} x 2)" if floor is not None else ""
    click.echo(
        f"parity vs PyTorch (ORT CPU): worst max|diff|/scale {parity['worst_rel_max_abs']:.2e} "
        f"<= {bound or format(parity['tolerance'], 'g')} at batch "
        f"{[r['batch'] for r in parity['runs']]}"
    )
    for note_text in result.manifest.notes:
        note(f"note: {note_text}")
