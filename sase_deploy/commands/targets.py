"""`sase-deploy targets` and `sase-deploy doctor`: the devices, and what this machine can do."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Column, Table

from sase_deploy.console import emit_json, stdout


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def targets_command(as_json: bool) -> None:
    """List target devices: compute capability, memory, DLA cores, the precisions 'build' makes
    for them, the TensorRT they ship, and how this machine produces their engine."""
    from sase_deploy.engines.doctor import how_built
    from sase_deploy.engines.plan import build_precisions
    from sase_deploy.engines.targets import load_targets, local_target

    gpu = local_target()
    rows = []
    for t in load_targets().values():
        made, not_yet = build_precisions(t)
        rows.append({**t.to_dict(), "precisions": list(made), "hardware_precisions":
                     list(t.precisions), "not_built_yet": list(not_yet),
                     "built_here_by": how_built(t, gpu)})  # fmt: skip
    if as_json:
        emit_json({"command": "targets", "targets": rows, "local": gpu.to_dict() if gpu else None})
        return
    table = Table("target", "SM", "memory", "DLA", Column("precisions", no_wrap=True),
                  "TensorRT", "built here by")  # fmt: skip
    for row in rows:
        table.add_row(
            row["name"], row["sm"], f"{row['memory_gb']:g} GB", str(row["dla_cores"]),
            ",".join(row["precisions"]), row["tensorrt"] or "any", row["built_here_by"],
        )  # fmt: skip
    stdout.print(table)
    stdout.print(_not_built_yet(rows))
    stdout.print(f"local: {gpu.title} ({gpu.sm})" if gpu else "local: no NVIDIA GPU here")


def _not_built_yet(rows: list[dict[str, Any]]) -> str:
    """The footnote naming what the hardware runs but `build` does not make, per precision."""
    found: dict[str, list[str]] = {}
    for row in rows:
        for precision in row["not_built_yet"]:
            found.setdefault(precision, []).append(row["name"])
    parts = [f"{p} ({', '.join(names)})" for p, names in found.items()]
    return "not built by sase-deploy yet, though the hardware runs it: " + (
        "; ".join(parts) or "none"
    )


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def doctor_command(as_json: bool) -> None:
    """What this machine can build and run (TensorRT flavours, GPU, ONNX Runtime providers,
    DLA), and for each missing piece why and how to get it."""
    from sase_deploy.engines.doctor import diagnose

    facts = diagnose()
    if as_json:
        emit_json({"command": "doctor", **facts})
        return
    for name, flavour in facts["flavours"].items():
        state = f"{flavour['version']}" if flavour["installed"] else "missing"
        click.echo(f"{name:14} {state}")
    gpu = facts["gpu"]
    click.echo(f"{'GPU':14} {gpu['title'] + ' (' + gpu['sm'] + ')' if gpu else 'none'}")
    click.echo(f"{'ORT providers':14} {', '.join(facts['onnxruntime_providers'])}")
    click.echo(f"{'Jetson / DLA':14} {facts['jetson'] or 'no'} / {'yes' if facts['dla'] else 'no'}")
    click.echo("targets (how this machine produces their engine):")
    for target, how in facts["targets"].items():
        click.echo(f"  {target:10} {how}")
    for item in facts["missing"]:
        click.echo(f"missing {item['what']}: {item['why']}; {item['how']}")
