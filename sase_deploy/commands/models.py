"""`sase-deploy models`: list the registered architectures."""

from __future__ import annotations

import click
from rich.table import Table

from sase_deploy.console import emit_json, stdout


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def models_command(as_json: bool) -> None:
    """List the registered model architectures (name, family, inputs, parameters)."""
    from sase_deploy.models.registry import count_parameters, list_model_specs

    rows = []
    for spec in list_model_specs():
        model = spec.factory()
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "task": spec.task,
                "inputs": [
                    {"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "kind": i.kind}
                    for i in spec.input_specs()
                ],
                "outputs": list(spec.output_names),
                "parameters": count_parameters(model),
                "se_blocks": dict(spec.se_blocks),
                "source": spec.source,
                "description": spec.description,
            }
        )
    if as_json:
        emit_json({"command": "models", "models": rows})
        return
    table = Table(title="sase-deploy models")
    for column in ("name", "family", "inputs", "params", "SE blocks"):
        table.add_column(column)
    for row in rows:
        inputs = ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))}" for i in row["inputs"])
        blocks = ", ".join(f"{k}:{v}" for k, v in row["se_blocks"].items())
        table.add_row(row["name"], row["family"], inputs, f"{row['parameters'] / 1e6:.2f}M", blocks)
    stdout.print(table)
