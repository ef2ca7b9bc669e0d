"""`sase-deploy compare`: accuracy and latency of candidates against a reference; a verdict."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sase_deploy.commands._model_options import model_options
from sase_deploy.commands._precision_options import image_options
from sase_deploy.console import emit_json, stage_progress, stdout
from sase_deploy.errors import ParityError, UserError
from sase_deploy.report.latency import DEFAULT_RUNS, DEFAULT_WARMUP, NOISY_NOTE

if TYPE_CHECKING:  # the export package imports torch: only when a command runs
    from rich.console import Console
    from rich.table import Table

    from sase_deploy.models.spec import ModelOptions


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


_COLUMNS = ("candidate", "precision", "backend", "status", "rel err", "task", "p50 ms")
_DROP_WHEN_NARROW = ("backend", "precision")  # the name usually says both (x.fp16.onnx)
_PIPE_WIDTH = 120  # stdout not a terminal and no $COLUMNS: CI logs, files


def _table_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row of `_COLUMNS` cells (rich markup) per candidate."""
    from rich.markup import escape

    rows = []
    status = {"pass": "[green]pass", "fail": "[red]FAIL", "not_run": "[yellow]not run"}
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
        rows.append([
            escape(c["name"]), c["precision"], c["backend"], status[c["status"]],
            _fmt(rel, ".2e"), escape(task or (c["reason"] or "")), _p50(c["latency"]),
        ])  # fmt: skip
    return rows


def _p50(latency: list[dict[str, Any]]) -> str:
    """'1.4@1, 5.2@8' (p50 ms at each batch), a noisy row flagged in yellow."""
    from sase_deploy.report._format import num

    return ", ".join(
        f"{num(r['p50_ms'])}@{r['batch']}" + (" [yellow](noisy)[/]" if r.get("noisy") else "")
        for r in latency
    )


def _console() -> Console:
    """stdout's console at its real width: the terminal's, else $COLUMNS, else `_PIPE_WIDTH`."""
    from rich.console import Console

    if stdout.is_terminal:
        return stdout
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) > 0 else _PIPE_WIDTH)


def _frame(doc: dict[str, Any], compact: bool) -> Table:
    """An empty table with the title (reference p50) and the warnings as its caption."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    ref = doc["reference"]
    title = f"{doc['model']['name']} vs {ref['backend']}"
    if ref.get("latency"):
        title += f" (p50 ms {_p50(ref['latency'])})"
    caption = "\n".join(f"warning: {escape(w)}" for w in doc.get("warnings") or [])
    return Table(
        title=title,
        caption=caption or None,
        caption_style="bold yellow",
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        show_edge=not compact,
    )


def _table(doc: dict[str, Any], columns: list[str], compact: bool) -> Table:
    """The table of `columns`; `compact`: no outer border, no rules between columns."""
    table = _frame(doc, compact)
    for name in columns:
        # A name is kept on one line (never cut to 'sase_res…'), as is a number; other cells
        # wrap, and a word longer than its column folds rather than being cut.
        table.add_column(name, no_wrap=name in ("candidate", "rel err"), overflow="fold")
    keep = [_COLUMNS.index(name) for name in columns]
    for row in _table_rows(doc):
        table.add_row(*[row[i] for i in keep])
    return table


def _stacked(doc: dict[str, Any]) -> Table:
    """One cell per candidate, its name on a line of its own: for names too long to sit beside
    the other columns. A name wider than the console folds over lines (never cut)."""
    table = _frame(doc, compact=True)
    table.expand = True  # the caption's warnings get the whole width
    table.add_column("candidate: precision · status · rel err · task · p50 ms", overflow="fold")
    for name, precision, _backend, *rest in _table_rows(doc):
        cells = [precision, *rest]
        table.add_row(f"[bold]{name}[/]\n  " + " · ".join(cell for cell in cells if cell))
    return table


def print_table(doc: dict[str, Any], console: Console | None = None) -> None:
    """The candidates as a rich table on stdout, within the console's width.

    While the table would not fit, the columns a name implies (backend, precision) go, then the
    borders; when it still does not fit on one line per candidate, each candidate gets its name
    on a line of its own and its values on the next. Names are never shortened (one wider than the
    console folds over lines). The document's warnings are the caption.

    Args:
        doc: the report document.
        console: where to print (None: stdout, see `_console`).
    """
    from rich.measure import Measurement

    console = console or _console()
    unbounded = console.options.update_width(10_000)  # the widths the table would like
    narrower = [list(_COLUMNS)]
    for drop in _DROP_WHEN_NARROW:
        narrower.append([c for c in narrower[-1] if c != drop])
    layouts = [(columns, False) for columns in narrower] + [(narrower[-1], True)]
    tables = [_table(doc, columns, compact) for columns, compact in layouts]
    sizes = [Measurement.get(console, unbounded, t) for t in tables]
    fits = [t for t, m in zip(tables, sizes, strict=True) if m.maximum <= console.width]
    # Cells wrapped over three lines read worse than a name on a line of its own.
    console.print(fits[0] if fits else _stacked(doc))


def per_layer_lines(doc: dict[str, Any]) -> list[str]:
    """One line per candidate with per-layer errors: the first layer that adds error, and the
    layers that add the most."""
    lines = []
    for c in doc["candidates"]:
        found = c.get("per_layer")
        if not found:
            continue
        first = found["first_divergence"]
        rows = {row["tensor"]: row for row in found["layers"]}
        head = "no layer adds error"
        if first is not None:
            row = rows[first]
            head = (
                f"first divergence at {first} ({row['op']}, rel err {_fmt(row['rel_err'], '.2e')})"
            )
        worst = ", ".join(
            f"{row['tensor']} +{_fmt(row['jump'], '.2e')}" for row in found["worst"][:3]
        )
        lines.append(f"per layer {c['name']}: {head}; adds most: {worst}")
    return lines


def finish(doc: dict[str, Any], reports: list[Path], as_json: bool, command: str) -> None:
    """Print the result (table or one JSON object) and each warning on stderr, then exit 1
    through ParityError on failure."""
    from sase_deploy.report.output import summary

    for warning in doc.get("warnings") or []:
        # What changes the meaning of the verdict goes to stderr, one unwrapped line each; a
        # noisy latency row does not (no verdict reads latency), so the table and the reports
        # flag it and a failing run's stderr stays the one line scripts read.
        if not warning.startswith(NOISY_NOTE):
            click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json({"command": command, "reports": [str(p) for p in reports], **summary(doc)})
    else:
        print_table(doc)
        for line in per_layer_lines(doc):
            click.echo(line)
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
@model_options
@click.option("--data", help="Inputs: image folder, .npy/.npz (labels 'y'), latent[:SEED].")
@image_options
@report_options
@click.option(
    "--report", "reports", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report: .json, .md or .html (repeatable).",
)  # fmt: skip
@click.option(
    "--per-layer", is_flag=True,
    help="Also find where each ONNX candidate's error comes from: every tensor it shares with "
    "the FP32 ONNX (REFERENCE or a candidate) compared, the first layer that adds error named.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def compare_command(
    reference: str,
    candidates: tuple[Path, ...],
    model_options: ModelOptions,
    data: str | None,
    preprocess: dict[str, Any],
    samples: int | None,
    batches: str | None,
    runs: int | None,
    warmup: int | None,
    tolerances: tuple[str, ...],
    reports: tuple[Path, ...],
    per_layer: bool,
    as_json: bool,
) -> None:
    """Compare ONNX models and engines with a reference (a model or an ONNX file): accuracy per
    output, top-k/accuracy or PSNR/SSIM, latency per batch, and a verdict per precision
    (exit 1 naming the output when one fails). Engines that cannot run here are listed as built,
    not run.

    A model the registry does not describe (package.module:factory, TorchScript) takes its
    input shapes from --input-shape, else from the first ONNX candidate."""
    from sase_deploy.report.api import compare
    from sase_deploy.report.candidates import resolve_candidates
    from sase_deploy.report.output import check_report_paths, write_reports
    from sase_deploy.report.reference import load_reference

    opts = replace(
        compare_options(data, samples, batches, runs, warmup, tolerances),
        preprocess=preprocess,
        per_layer="always" if per_layer else "never",
    )
    check_report_paths(reports)
    found = resolve_candidates(candidates)
    with stage_progress() as progress:
        progress.stage("load reference")
        like = next((c.path for c in found if c.kind == "onnx"), None)
        ref = load_reference(reference, model_options, like=like)
        progress.done()
        doc = compare(ref, found, opts, progress=progress)
    written = write_reports(doc, reports)
    finish(doc, written, as_json, "compare")
