"""`sase-deploy compare`: accuracy and latency of candidates against a reference; a verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sase_deploy.console import emit_json, progress, stdout
from sase_deploy.errors import ParityError, UserError
from sase_deploy.report.latency import DEFAULT_RUNS, DEFAULT_WARMUP


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8' -> (1, 8)."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise UserError(
            f"--batch {text!r}: give positive batch sizes separated by commas, e.g. 1,8"
        )
    return tuple(sorted(set(values)))


def report_options(func: Any) -> Any:
    """The options `compare` and `deploy` share (samples, latency, tolerances). Their defaults
    are applied by `compare_options`, so a deploy config's values are not hidden by them."""
    options = [
        click.option("--samples", type=int, help="Inputs to compare on [default: per task]."),
        click.option("--batch", "batches", help="Latency batch sizes [default: 1,8]."),
        click.option("--runs", type=int, help=f"Timed runs per row [default: {DEFAULT_RUNS}]."),
        click.option("--warmup", type=int, help=f"Untimed runs first [default: {DEFAULT_WARMUP}]."),
        click.option("--tolerance", "tolerances", multiple=True, metavar="[PREC.]METRIC=V",
                     help="Override a default tolerance, e.g. fp16.rel=0.05 (repeatable)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def compare_options(
    data: str | None = None,
    samples: int | None = None,
    batches: str | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    tolerances: tuple[str, ...] = (),
) -> Any:
    """CompareOptions from command-line values (None: the default)."""
    from sase_deploy.report.api import CompareOptions
    from sase_deploy.report.tolerances import parse_tolerances

    runs = DEFAULT_RUNS if runs is None else runs
    warmup = DEFAULT_WARMUP if warmup is None else warmup
    if (samples is not None and samples < 1) or runs < 1 or warmup < 0:
        raise UserError("--samples and --runs must be >= 1 and --warmup >= 0")
    return CompareOptions(
        data=data,
        samples=samples,
        batches=parse_batches(batches or "1,8"),
        runs=runs,
        warmup=warmup,
        tolerances=parse_tolerances(tolerances),
    )


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(doc: dict[str, Any]) -> None:
    """The candidates as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{doc['model']['name']} vs {doc['reference']['backend']}")
    for column in ("candidate", "precision", "backend", "status", "rel err", "task", "p50 ms"):
        table.add_column(column)
    for c in doc["candidates"]:
        errors = [o["rel_max_abs"] for o in c["outputs"]]  # None: not finite
        rel = max((float("inf") if e is None else e for e in errors), default=None)
        met = c["metrics"]
        task = ""
        if "top1_agreement" in met:
            task = f"top-1 {met['top1_agreement']:.3f}"
            if met.get("accuracy") is not None:
                task += f", acc {met['accuracy']:.3f}"
        elif "psnr_db" in met:
            task = f"PSNR {_fmt(met['psnr_db'], '.1f')} dB, SSIM {_fmt(met.get('ssim'), '.4f')}"
        p50 = ", ".join(f"{r['p50_ms']:.3g}@{r['batch']}" for r in c["latency"])
        status = {"pass": "[green]pass", "fail": "[red]FAIL", "not_run": "[yellow]not run"}
        table.add_row(
            c["name"], c["precision"], c["backend"], status[c["status"]],
            _fmt(rel, ".2e"), task or (c["reason"] or ""), p50,
        )  # fmt: skip
    # Not a terminal (CI logs, pipes): rich would squeeze the table into 80 columns.
    console = stdout if stdout.is_terminal else Console(width=160)
    console.print(table)


def finish(doc: dict[str, Any], reports: list[Path], as_json: bool, command: str) -> None:
    """Print the result (table or one JSON object), then exit 1 through ParityError on failure."""
    from sase_deploy.report.output import summary

    if as_json:
        emit_json({"command": command, "reports": [str(p) for p in reports], **summary(doc)})
    else:
        print_table(doc)
        for path in reports:
            click.echo(f"wrote {path}")
    if doc["verdict"] == "fail":
        more = f" (and {len(doc['failures']) - 1} more)" if len(doc["failures"]) > 1 else ""
        raise ParityError(doc["failures"][0] + more, details={"failures": doc["failures"]})


@click.command("compare")
@click.argument("reference", metavar="REFERENCE")
@click.argument(
    "candidates", metavar="CANDIDATE...", nargs=-1, required=True,
    type=click.Path(path_type=Path),
)  # fmt: skip
@click.option("-c", "--checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--unsafe-load", is_flag=True, help="Allow pickled checkpoints (runs their code).")
@click.option("--data", help="Inputs: image folder, .npy/.npz (labels 'y'), latent[:SEED].")
@report_options
@click.option(
    "--report", "reports", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report: .json, .md or .html (repeatable).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def compare_command(
    reference: str,
    candidates: tuple[Path, ...],
    checkpoint: Path | None,
    unsafe_load: bool,
    data: str | None,
    samples: int | None,
    batches: str | None,
    runs: int | None,
    warmup: int | None,
    tolerances: tuple[str, ...],
    reports: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Compare ONNX models and engines with a reference (a model or an ONNX file): accuracy per
    output, top-k/accuracy or PSNR/SSIM, latency per batch, and a verdict per precision
    (exit 1 naming the output when one fails). Engines that cannot run here are listed as built,
    not run."""
    from sase_deploy.report.api import compare
    from sase_deploy.report.candidates import resolve_candidates
    from sase_deploy.report.output import check_report_paths, write_reports
    from sase_deploy.report.reference import load_reference

    opts = compare_options(data, samples, batches, runs, warmup, tolerances)
    check_report_paths(reports)
    found = resolve_candidates(candidates)
    with progress() as bar:
        task = bar.add_task("load reference", total=None)
        ref = load_reference(reference, checkpoint, unsafe_load=unsafe_load)
        doc = compare(ref, found, opts, on_stage=lambda s: bar.update(task, description=s))
    written = write_reports(doc, reports)
    finish(doc, written, as_json, "compare")
