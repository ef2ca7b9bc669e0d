"""`sase-deploy triton`: a Triton Inference Server model repository for engines or ONNX models."""

from __future__ import annotations

from pathlib import Path

import click

from sase_deploy.console import emit_json
from sase_deploy.errors import UserError


@click.command("triton")
@click.argument(
    "artifacts",
    metavar="ARTIFACT...",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path),
)
@click.option(
    "-o",
    "--output",
    "repo",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Model repository folder (created; models of the same name are replaced).",
)
@click.option("--name", help="Triton model name (only with one ARTIFACT) [default: from the file].")
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    help="Cap max_batch_size of dynamic-batch models [default: engine profile max; 8 for ONNX].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def triton_command(
    artifacts: tuple[Path, ...], repo: Path, name: str | None, max_batch: int | None, as_json: bool
) -> None:
    """Write a Triton Inference Server model repository for built engines or ONNX models.

    Each ARTIFACT is an engine as 'sase-deploy build' wrote it (.engine/.plan, with its manifest;
    served by tensorrt_plan) or an .onnx model (served by onnxruntime_onnx). Inputs, outputs
    and types are read from the ONNX graph the artifact runs; a dynamic batch dim turns on
    Triton's dynamic batching. Default names: an engine's file name plus its target
    (l4/m.fp16.engine -> m_fp16_l4), an ONNX model's whole file name (m.onnx -> m_onnx).
    """
    from sase_deploy.serving.triton import triton_model_from, write_triton_repository

    if name is not None and len(artifacts) > 1:
        raise UserError(
            f"--name names one model, but {len(artifacts)} artifacts were given; "
            "run once per artifact to name each, or drop --name"
        )
    models = [triton_model_from(path, name=name, max_batch=max_batch) for path in artifacts]
    write_triton_repository(models, repo)
    if as_json:
        rows = []
        for model in models:
            config, model_file = model.paths_in(repo)
            rows.append({**model.to_dict(), "config": str(config), "model_file": str(model_file)})
        emit_json({"command": "triton", "repository": str(repo), "models": rows})
        return
    for model in models:
        click.echo(
            f"wrote {model.name} ({model.platform}, max batch {model.max_batch_size}): "
            f"{repo / model.name}"
        )
        for text in model.notes:
            click.echo(f"  note: {text}", err=True)  # one line each: rich would wrap at 80
    click.echo(f"serve with: tritonserver --model-repository={repo.resolve()}", err=True)
