"""`compare`: run a reference and candidates on the same inputs; the parity report document.

The document (a plain dict, schema in `sase_deploy/assets/report.schema.json`, described in
docs/report-schema.md) holds, per candidate, accuracy per output and per task, latency per batch,
the checks against the tolerances of its precision and a verdict. Candidates this machine cannot
run are rows that say why, with their build facts, and never numbers that were not measured.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sase_deploy._timing import QUIET, StageProgress
from sase_deploy.calibration.sources import CalibrationSource
from sase_deploy.errors import UserError
from sase_deploy.report import metrics as m
from sase_deploy.report.candidates import (
    Candidate,
    check_candidates_match,
    check_output_shapes,
)
from sase_deploy.report.environment import environment
from sase_deploy.report.latency import (
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    NOISY_NOTE,
    measure_latency,
)
from sase_deploy.report.previews import previews
from sase_deploy.report.reference import Reference, open_reference_data
from sase_deploy.report.schema import SCHEMA_MINOR, SCHEMA_VERSION
from sase_deploy.report.tolerances import (
    DEFAULT_TOLERANCES,
    Tolerances,
    describe_failure,
    run_checks,
)
from sase_deploy.runtime.base import Runner

SCHEMA_ID = "sase-deploy/report"
RANDOM_INIT_WARNING = "random init: agreement numbers say nothing about accuracy"
DEFAULT_BATCHES = (1, 8)

Outputs = dict[str, np.ndarray]


@dataclass
class CompareOptions:
    """How `compare` runs.

    data: `--data` source (None: the model's default). samples: how many inputs (None: the
    task's default). batches: latency batch sizes. runs / warmup: timed and untimed runs per
    latency row. tolerances: per precision (`parse_tolerances`). seed: for seeded inputs.
    preprocess: image-folder preprocessing overrides (as `calibrate --size/--mean/...`).
    per_layer: where the error comes from, layer by layer (`runtime.per_layer`), for each ONNX
    candidate against the reference ONNX: `never`, `failing` (candidates that fail: `deploy`)
    or `always` (`compare --per-layer`).
    """

    data: str | None = None
    samples: int | None = None
    batches: tuple[int, ...] = DEFAULT_BATCHES
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    tolerances: Tolerances = field(default_factory=lambda: DEFAULT_TOLERANCES)
    seed: int = 0
    preprocess: Mapping[str, Any] | None = None
    per_layer: Literal["never", "failing", "always"] = "never"


def _accuracy_batch(
    candidates: Sequence[Candidate], batches: Sequence[int], reference_batch: int | None = None
) -> int | None:
    """The batch the reference and every runnable ONNX candidate accept: their fixed batch,
    else the largest asked."""
    fixed = {reference_batch} if reference_batch is not None else set()
    fixed |= {c.fixed_batch for c in candidates if c.fixed_batch is not None and c.blocker is None}
    if len(fixed) > 1:
        raise UserError(
            f"the ONNX reference and candidates fix different batch sizes {sorted(fixed)}; "
            "compare models exported with one batch size (or --dynamic-batch)"
        )
    return fixed.pop() if fixed else None


@contextlib.contextmanager
def _counted(runner: Runner, progress: StageProgress) -> Iterator[Runner]:
    """`runner` with each `infer` counted as a step of the open stage: accuracy batches and
    latency runs (warm-up included) alike, through the runner template's `on_infer` hook."""
    runner.on_infer = progress.advance
    try:
        yield runner
    finally:
        runner.on_infer = None


def _run_all(runner: Runner, batches: list[dict[str, np.ndarray]], names: Sequence[str]) -> Outputs:
    """All batches through an active runner, outputs concatenated on axis 0."""
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in batches:
        got = runner.infer(feed)
        missing = [n for n in names if n not in got]
        if missing:
            raise UserError(
                f"{runner.label}: outputs {sorted(got)} do not include the reference's {missing}; "
                "compare models exported from the same network"
            )
        for n in names:
            collected[n].append(np.asarray(got[n]))
    return {n: np.concatenate(v, axis=0) for n, v in collected.items()}


def _latency_rows(
    runner: Runner, data: list[dict[str, np.ndarray]], fixed: int | None, opts: CompareOptions
) -> list[dict[str, Any]]:
    """One latency row per batch (the fixed batch, else each of `opts.batches`), each with the
    runner's CPU threads and whether its spread or the machine's load makes it noisy."""
    rows = []
    pool = {k: np.concatenate([b[k] for b in data], axis=0) for k in data[0]}
    threads = runner.compute_threads
    for batch in (fixed,) if fixed else opts.batches:
        reps = -(-batch // len(next(iter(pool.values()))))
        feed = {k: np.concatenate([v] * reps, axis=0)[:batch] for k, v in pool.items()}
        rows.append(
            measure_latency(runner, feed, runs=opts.runs, warmup=opts.warmup, threads=threads)
        )
    return rows


def _task_metrics(
    task: str, ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None
) -> dict[str, Any]:
    if task == "classification":
        return m.classification_metrics(ref, got, labels)
    if task == "generation":
        return m.generation_metrics(ref, got)
    return {}


def _judge(
    c: Candidate,
    ref_out: Outputs,
    got: Outputs,
    reference: Reference,
    labels: np.ndarray | None,
    opts: CompareOptions,
) -> dict[str, Any]:
    primary = reference.output_names[0]
    outputs = [m.output_metrics(n, ref_out[n], got[n]) for n in reference.output_names]
    task = _task_metrics(reference.task, ref_out[primary], got[primary], labels)
    checks = run_checks(opts.tolerances[c.precision], outputs, task, primary)
    failed = [describe_failure(ch) for ch in checks if not ch["passed"]]
    preview = None
    if reference.task == "generation":
        preview = previews(primary, ref_out[primary], got[primary])
    return {
        "status": "fail" if failed else "pass",
        "reason": "; ".join(failed) or None,
        "outputs": outputs,
        "metrics": task,
        "checks": checks,
        "previews": preview,
    }


def _candidate_row(c: Candidate) -> dict[str, Any]:
    return {
        "name": c.name,
        "path": str(c.path),
        "kind": c.kind,
        "precision": c.precision,
        "backend": c.backend,
        "target": c.target,
        "status": "not_run",
        "reason": c.blocker,
        "build": c.build,
        "outputs": [],
        "metrics": {},
        "latency": [],
        "checks": [],
        "previews": None,
    }


def per_layer_reference(
    reference: Reference, candidates: Sequence[Candidate], when: str
) -> Path | None:
    """The ONNX that per-layer errors are measured against: the reference when it is an ONNX
    file, else the FP32 ONNX candidate; None when `when` is `never` or no such file is given.

    Raises:
        UserError: `when` is `always` (`--per-layer`) and there is no such file.
    """
    if when == "never":
        return None
    if reference.name == "onnxruntime":
        return Path(reference.source)
    found = next((c.path for c in candidates if c.kind == "onnx" and c.precision == "fp32"), None)
    if found is None and when == "always":
        raise UserError(
            "--per-layer compares layers of two ONNX files: give REFERENCE as the FP32 .onnx "
            "file, or add the FP32 ONNX as a candidate"
        )
    return found


def _add_per_layer(
    row: dict[str, Any],
    c: Candidate,
    base: Path | None,
    feed: Mapping[str, np.ndarray],
    when: str,
    progress: StageProgress,
) -> None:
    """`row["per_layer"]` for an ONNX candidate (not the base itself) when `when` asks for it."""
    wanted = when == "always" or (when == "failing" and row["status"] == "fail")
    if not wanted or base is None or c.kind != "onnx" or c.path.resolve() == base.resolve():
        return
    from sase_deploy.runtime.per_layer import per_layer_errors

    progress.stage(f"{c.name} per layer")
    row["per_layer"] = per_layer_errors(base, c.path, feed).to_dict()
    progress.done()


def compare(
    reference: Reference,
    candidates: Sequence[Candidate],
    options: CompareOptions | None = None,
    progress: StageProgress | None = None,
) -> dict[str, Any]:
    """Run `reference` and every runnable candidate on the same inputs; the report document.

    Args:
        reference: from `load_reference`.
        candidates: from `resolve_candidates` (or built by `deploy`).
        options: data, samples, latency batches/runs, tolerances (see `CompareOptions`).
        progress: a stage per runner (the reference, then each candidate), counting its
            accuracy batches and latency runs; a candidate that cannot run here is a skipped
            stage saying why. Default: quiet.
    """
    opts = options or CompareOptions()
    progress = progress or QUIET
    if not candidates:
        raise UserError("nothing to compare: give at least one candidate (ONNX file or engine)")
    fixed = _accuracy_batch(candidates, opts.batches, reference.fixed_batch)
    layer_reference = per_layer_reference(reference, candidates, opts.per_layer)
    check_candidates_match(reference, candidates)  # before minutes of PyTorch, not after
    source: CalibrationSource = open_reference_data(
        reference, opts.data, opts.samples, opts.seed, opts.preprocess
    )
    if fixed is not None:
        from sase_deploy.calibration.sources import FixedBatchSource

        source = FixedBatchSource(source, fixed)
    data = list(source.batches(fixed or max(opts.batches)))
    labels = source.labels()
    # every infer of a runner: the accuracy batches, then warm-up and timed runs per batch
    steps = len(data) + len((fixed,) if fixed else opts.batches) * (opts.warmup + opts.runs)
    progress.stage(f"reference ({reference.backend})", total=steps)
    with reference.make_runner() as runner, _counted(runner, progress):
        ref_out = _run_all(runner, data, reference.output_names)
        ref_latency = _latency_rows(runner, data, fixed, opts)
    progress.done()
    rows = []
    for c in candidates:
        row = _candidate_row(c)
        if c.blocker is None and c.make_runner is not None:
            progress.stage(f"{c.name} ({c.backend})", total=steps)
            with c.make_runner() as runner, _counted(runner, progress):
                got = _run_all(runner, data, reference.output_names)
                check_output_shapes(c.name, ref_out, got)
                row["latency"] = _latency_rows(runner, data, fixed, opts)
            row.update(_judge(c, ref_out, got, reference, labels, opts))
            _add_per_layer(row, c, layer_reference, data[0], opts.per_layer, progress)
        else:
            progress.stage(f"{c.name} ({c.backend})")
        progress.done(row["reason"] if row["status"] == "not_run" else None)
        rows.append(row)
    return _document(
        reference, rows, source, fixed or max(opts.batches), labels, ref_out, ref_latency, opts
    )


def _document(
    reference: Reference,
    rows: list[dict[str, Any]],
    source: CalibrationSource,
    batch: int,
    labels: np.ndarray | None,
    ref_out: Outputs,
    ref_latency: list[dict[str, Any]],
    opts: CompareOptions,
) -> dict[str, Any]:
    failures = [f"{r['name']}: {r['reason']}" for r in rows if r["status"] == "fail"]
    warnings = _warnings(reference, ref_latency, rows)
    primary = ref_out[reference.output_names[0]]
    ref_metrics = m.reference_metrics(primary, labels) if reference.task == "classification" else {}
    described = source.describe()
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "schema_minor": SCHEMA_MINOR,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "verdict": "fail" if failures else "pass",
        "failures": failures,
        "warnings": warnings,
        "environment": environment(),
        "model": {
            "name": reference.model_name or Path(reference.source.split(" ")[0]).stem,
            "task": reference.task,
            "reference": reference.name,
            "source": reference.source,
            "weights": reference.weights,
            "inputs": [
                {"name": i.name, "shape": ["batch", *i.shape[1:]], "dtype": str(i.dtype)}
                for i in reference.inputs
            ],
            "outputs": list(reference.output_names),
        },
        "data": {
            "source": str(described.get("origin", described.get("kind"))),
            "samples": len(primary),
            "labels": labels is not None,
            "batch": batch,
            "seed": opts.seed,
        },
        "settings": {
            "batches": list(opts.batches),
            "warmup": opts.warmup,
            "runs": opts.runs,
            "tolerances": opts.tolerances,
        },
        "reference": {
            "name": reference.name,
            "backend": reference.backend,
            "metrics": ref_metrics,
            "latency": ref_latency,
        },
        "candidates": rows,
    }


def _warnings(
    reference: Reference, ref_latency: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> list[str]:
    """What makes the numbers less than they seem: a reference at random init (agreement with
    an untrained network says nothing of accuracy) and latency rows measured on a busy machine."""
    warnings = [RANDOM_INIT_WARNING] if reference.weights == "random-init" else []
    engines = [(reference.name, ref_latency)] + [(r["name"], r["latency"]) for r in rows]
    noisy = [f"{name} b{r['batch']}" for name, rs in engines for r in rs if r.get("noisy")]
    if noisy:
        warnings.append(
            f"{NOISY_NOTE} unsteady latency for {', '.join(noisy)}; time again on an idle machine"
        )
    return warnings
