"""`sase-deploy models`: list the registered architectures."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from sase_deploy.console import emit_json, stdout, track
from sase_deploy.models.spec import ModelSpec

# A registered architecture's size never changes within a process: count each name once.
_PARAMETER_COUNTS: dict[str, int] = {}


def count_spec_parameters(spec: ModelSpec) -> int:
    """Parameters of a registered model, counted on the meta device (shapes, no storage).

    Building the 28M-parameter networks for real costs seconds each (random init, and the
    FastGAN generators settle spectral norm and BatchNorm); on meta it costs milliseconds.
    `python benchmarks/models_listing.py` compares both.
    """
    import torch

    from sase_deploy.models.registry import count_parameters

    if spec.name not in _PARAMETER_COUNTS:
        with torch.device("meta"):
            model = spec.factory()
        _PARAMETER_COUNTS[spec.name] = count_parameters(model)
    return _PARAMETER_COUNTS[spec.name]


def describe_model(spec: ModelSpec) -> dict[str, Any]:
    """One registry entry as plain data (what `models --json` prints per model)."""
    return {
        "name": spec.name,
        "family": spec.family,
        "task": spec.task,
        "inputs": [
            {"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "kind": i.kind}
            for i in spec.input_specs()
        ],
        "outputs": list(spec.output_names),
        "parameters": count_spec_parameters(spec),
        "se_blocks": dict(spec.se_blocks),
        "dynamic_batch": spec.dynamic_batch,
        "source": spec.source,
        "description": spec.description,
    }


def describe_models() -> list[dict[str, Any]]:
    from sase_deploy.models.registry import list_model_specs

    specs = list_model_specs()
    return [describe_model(spec) for spec in track(specs, "counting parameters", len(specs))]


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def models_command(as_json: bool) -> None:
    """List the registered model architectures (name, family, inputs, parameters, SE blocks)."""
    rows = describe_models()
    if as_json:
        emit_json({"command": "models", "count": len(rows), "models": rows})
        return
    table = Table(title="sase-deploy models")
    table.add_column("name", no_wrap=True)
    for column in ("family", "inputs", "params", "SE blocks"):
        table.add_column(column)
    for row in rows:  # task, outputs and sources are in --json
        inputs = ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))}" for i in row["inputs"])
        blocks = ", ".join(f"{k}:{v}" for k, v in row["se_blocks"].items())
        params = f"{row['parameters'] / 1e6:.2f}M"
        table.add_row(row["name"], row["family"], inputs, params, blocks)
    stdout.print(table)
