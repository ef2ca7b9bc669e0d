"""`sase-deploy targets` and `sase-deploy doctor`: the devices, and what this machine can do."""

from __future__ import annotations

import click
from rich.table import Table

from sase_deploy.console import emit_json, stdout


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def targets_command(as_json: bool) -> None:
    """List target devices: compute capability, memory, DLA cores, precisions, the TensorRT
    they ship, and how this machine produces their engine."""
    from sase_deploy.engines.doctor import how_built
    from sase_deploy.engines.targets import load_targets, local_target

    gpu = local_target()
    targets = load_targets()
    rows = [{**t.to_dict(), "built_here_by": how_built(t, gpu)} for t in targets.values()]
    if as_json:
        emit_json({"command": "targets", "targets": rows, "local": gpu.to_dict() if gpu else None})
        return
    table = Table("target", "SM", "memory", "DLA", "precisions", "TensorRT", "built here by")
    for row in rows:
        table.add_row(
            row["name"], row["sm"], f"{row['memory_gb']:g} GB", str(row["dla_cores"]),
            ",".join(row["precisions"]), row["tensorrt"] or "any", row["built_here_by"],
        )  # fmt: skip
    stdout.print(table)
    stdout.print(f"local: {gpu.title} ({gpu.sm})" if gpu else "local: no NVIDIA GPU here")


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
