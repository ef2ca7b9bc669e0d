"""`sase-deploy fuse`: recognise and fuse SE-family blocks in an ONNX model."""

from __future__ import annotations

from pathlib import Path

import click

from sase_deploy.console import emit_json, progress


@click.command("fuse")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Fused .onnx to write.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the fusion report (JSON) here.",
)
@click.option(
    "--as-functions",
    is_flag=True,
    help="Wrap each fused block into one node of domain sase_deploy backed by an ONNX "
    "local function (SqueezeExcite, SLE, ...).",
)
@click.option(
    "--no-self-check",
    is_flag=True,
    help="Skip the ORT CPU comparison after every rule (not recommended).",
)
@click.option(
    "--tolerance",
    type=float,
    default=1e-5,
    show_default=True,
    help="Self-check tolerance on max|fused-original| / max|original|.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the check inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def fuse_command(
    model: Path,
    output: Path,
    report_path: Path | None,
    as_functions: bool,
    no_self_check: bool,
    tolerance: float,
    seed: int,
    as_json: bool,
) -> None:
    """Find SE-family blocks in MODEL (.onnx), bring them to one canonical fused form, and
    check every rewrite on ONNX Runtime CPU against the original (changes that differ are
    reverted and reported). MODEL may come from any exporter: static shapes and constants are
    folded first, so TorchScript and dynamo exports of a module fuse alike."""
    from sase_deploy.rewrite.api import fuse_file
    from sase_deploy.rewrite.rules import DEFAULT_RULES

    names = [rule.name for rule in DEFAULT_RULES]
    with progress() as bar:
        task = bar.add_task("fuse", total=len(names))

        def on_rule(name: str) -> None:
            bar.update(task, description=name, completed=names.index(name))

        summary = fuse_file(
            model,
            output,
            report_path=report_path,
            self_check=not no_self_check,
            as_functions=as_functions,
            tolerance=tolerance,
            seed=seed,
            on_rule=on_rule,
        )
    if as_json:
        emit_json(summary)
        return
    blocks = ", ".join(f"{k}: {v}" for k, v in summary["blocks_found"].items()) or "none"
    before, after = summary["nodes_in_file"], summary["nodes_after"]
    canonical = summary["nodes_before"]
    folded = f" ({canonical} after folding shapes and constants)" if canonical != before else ""
    click.echo(f"wrote {output}" + (f" and {report_path}" if report_path else ""))
    click.echo(f"blocks found: {blocks}")
    click.echo(f"nodes {before}{folded} -> {after} ({(after - before) / max(before, 1):+.1%})")
    for entry in summary["rules"]:
        unchanged = sum(1 for m in entry["matches"] if m["status"] == "unchanged")
        expected = sum(1 for d in entry["declines"] if d.get("expected"))
        click.echo(
            f"  {entry['rule']}: {entry['applied']} applied, {unchanged} already canonical, "
            f"{entry['reverted']} reverted, {len(entry['declines'])} declined"
            + (f" ({expected} expected)" if expected else "")
        )
        _echo_declines(entry["declines"])
    check = summary["self_check"]
    if check.get("enabled"):
        click.echo(
            f"self-check (ORT CPU, {check['runs']} runs): max|diff| {check['max_abs_diff']:.2e}, "
            f"relative {check['max_rel_diff']:.2e} <= "
            f"{check.get('network_tolerance', check['tolerance']):.2g} (noise floor "
            f"{check.get('noise_floor', 0.0):.1e}); block outputs "
            f"{check.get('max_block_rel_diff', 0.0):.2e} <= {check['tolerance']:g}"
        )


SHOWN_DECLINES = 3  # per rule in the text output; --json / --report carry all of them


def _echo_declines(declines: list[dict[str, str]]) -> None:
    """Why a rule left candidates alone: the first few reasons, then how many more."""
    for decline in declines[:SHOWN_DECLINES]:
        why = f" (expected: {decline['expected']})" if decline.get("expected") else ""
        click.echo(f"    declined at {decline['anchor']}{why}: {decline['reason']}")
    if len(declines) > SHOWN_DECLINES:
        click.echo(f"    ... {len(declines) - SHOWN_DECLINES} more (all in --json / --report)")
