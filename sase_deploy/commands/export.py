"""`sase-deploy export`: MODEL -> checked, simplified, parity-tested ONNX plus a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sase_deploy.console import emit_json, note, progress
from sase_deploy.errors import ParityError

if TYPE_CHECKING:  # the export package imports torch: only when the command runs
    from sase_deploy.export.api import ExportResult
    from sase_deploy.export.exporters import Exporter

_STAGES = ("load", "export", "simplify", "fuse", "check", "parity")


@click.command("export")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output .onnx path (default: ./MODEL.onnx).",
)
@click.option(
    "-c",
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Weights to load (torch.save file; weights-only unless --unsafe-load).",
)
@click.option("--checkpoint-key", help="Container key holding the state dict (e.g. g_ema).")
@click.option("--no-ema", is_flag=True, help="Load raw weights, not the EMA copy.")
@click.option(
    "--unsafe-load", is_flag=True, help="Allow pickled code in the checkpoint (trusted files only)."
)
@click.option(
    "--model-arg",
    "model_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Factory keyword argument, repeatable (e.g. noise=input).",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="1x3x224x224",
    help="Shape of one input, repeated once per input (default: registry).",
)
@click.option(
    "--input-name",
    "input_names",
    multiple=True,
    help="Name of one input, repeated once per input (default: registry / input_N).",
)
@click.option(
    "--output-name",
    "output_names",
    multiple=True,
    help="Name of one output, repeated once per output (default: registry / output_N).",
)
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
    help="Parity tolerance on max|onnx-torch| / max|torch| (default 1e-4).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the parity inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def export_command(
    model: str,
    output: Path | None,
    checkpoint: Path | None,
    checkpoint_key: str | None,
    no_ema: bool,
    unsafe_load: bool,
    model_args: tuple[str, ...],
    input_shapes: tuple[str, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
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
    from sase_deploy.export.api import DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportOptions, export_model
    from sase_deploy.export.source import parse_model_args, parse_shape

    shapes = [parse_shape(text) for text in input_shapes]
    options = ExportOptions(
        checkpoint=checkpoint,
        checkpoint_key=checkpoint_key,
        use_ema=not no_ema,
        unsafe_load=unsafe_load,
        model_args=parse_model_args(model_args),
        input_shapes=shapes or None,
        input_names=input_names or None,
        output_names=output_names or None,
        dynamic_batch=dynamic_batch,
        opset=opset if opset is not None else DEFAULT_OPSET,
        exporter=exporter,
        fuse=not no_fuse,
        tolerance=tolerance if tolerance is not None else DEFAULT_TOLERANCE,
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
    click.echo(
        f"parity vs PyTorch (ORT CPU): worst max|diff|/scale {parity['worst_rel_max_abs']:.2e} "
        f"<= {parity['tolerance']:g} at batch {[r['batch'] for r in parity['runs']]}"
    )
    for note_text in result.manifest["notes"]:
        note(f"note: {note_text}")
