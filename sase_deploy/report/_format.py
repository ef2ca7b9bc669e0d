"""Number formatting and the candidate table shared by the Markdown and HTML renderers.

Renderers read documents leniently (`.get` with defaults) so a partial or older document still
renders; `schema.validate_report` is where strictness lives.
"""

from __future__ import annotations

import math
from typing import Any

from sase_deploy.report.latency import NOISY_NOTE

DASH = "—"  # shown for null / not measured
NOISY = NOISY_NOTE  # the flag of an untrustworthy latency row

STATUS_LABEL = {"pass": "pass", "fail": "fail", "not_run": "not run"}

# Task metric columns: (metrics key, header). The accuracy cell also shows the
# drop against the reference, so accuracy_drop has no column of its own.
_TASK_METRICS = {
    "classification": [("top1_agreement", "top-1 agr."), ("accuracy", "accuracy")],
    "generation": [("psnr_db", "PSNR dB"), ("ssim", "SSIM")],
}


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x):
        return None
    return float(x)


def sci(x: float) -> str:
    """Two-digit scientific notation without padding: 8.4e-8."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def num(x: Any) -> str:
    """Three significant digits; thousands separators from 1,000; scientific below 0.001."""
    v = _finite(x)
    if v is None:
        return DASH
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    a = abs(v)
    if a == 0:
        return "0"
    if a < 1e-3:
        return sci(v)
    if a >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def err(x: Any) -> str:
    """An error: scientific below 0.01, so tiny errors keep their magnitude readable."""
    v = _finite(x)
    if v is not None and 0 < abs(v) < 1e-2:
        return sci(v)
    return num(x)


def cosine(x: Any) -> str:
    """Cosine similarity: six decimals, or 1 − d where six decimals would round to 1."""
    v = _finite(x)
    if v is None:
        return DASH
    if v == 1:
        return "1"
    if 0 < 1 - v < 5e-7:
        return f"1 − {sci(1 - v)}"
    return f"{v:.6f}".rstrip("0").rstrip(".")


def pct(x: Any) -> str:
    """A fraction as a percentage with two decimals (100% and 0% without them)."""
    v = _finite(x)
    if v is None:
        return DASH
    if v in (0, 1):
        return f"{v * 100:.0f}%"
    return f"{v * 100:.2f}%"


def size(n: Any) -> str:
    """Bytes in KiB / MiB / GiB, three significant digits."""
    v = _finite(n)
    if v is None:
        return DASH
    for unit in ("B", "KiB", "MiB"):
        if v < 1024:
            return f"{num(v)} {unit}"
        v /= 1024
    return f"{num(v)} GiB"


def worst_rel(cand: dict[str, Any]) -> str:
    """Largest rel_max_abs over the outputs, plus non-finite element count if any."""
    values = [
        v for o in cand.get("outputs", []) if (v := _finite(o.get("rel_max_abs"))) is not None
    ]
    text = err(max(values)) if values else DASH
    bad = sum(int(o.get("nonfinite") or 0) for o in cand.get("outputs", []))
    return f"{text} ({bad} non-finite)" if bad else text


def min_cosine(cand: dict[str, Any]) -> str:
    """Smallest cosine over the outputs."""
    values = [v for o in cand.get("outputs", []) if (v := _finite(o.get("cosine"))) is not None]
    return cosine(min(values)) if values else DASH


def metric(key: str, value: Any) -> str:
    """A metric value (or its limit) in the format that suits the metric."""
    v = _finite(value)
    if v is None:
        return DASH
    if key == "cosine":
        return cosine(v)
    if key in ("top1_agreement", "top5_agreement", "accuracy", "accuracy_drop"):
        return pct(v)
    if key == "psnr_db":
        return "∞" if math.isinf(v) else f"{v:.1f}"
    if key == "ssim":
        return f"{v:.4f}"
    return err(v)


def _metric_cell(key: str, metrics: dict[str, Any]) -> str:
    text = metric(key, metrics.get(key))
    drop = _finite(metrics.get("accuracy_drop"))
    if key == "accuracy" and drop and text != DASH:
        # accuracy_drop is reference minus candidate: shown as a change in percentage points.
        text += f" ({-drop * 100:+.2f} pt)"
    return text


def task_metrics(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(metrics key, header) of the task's metric columns that hold at least one value."""
    task = doc.get("model", {}).get("task")
    known = _TASK_METRICS.get(task, _TASK_METRICS["classification"] + _TASK_METRICS["generation"])
    sources = [doc.get("reference", {}), *doc.get("candidates", [])]
    present = {k for s in sources for k, v in (s.get("metrics") or {}).items() if v is not None}
    return [(key, header) for key, header in known if key in present]


def batches(doc: dict[str, Any]) -> list[int]:
    """Batch sizes to tabulate: the settings', else those found in latency rows."""
    listed = doc.get("settings", {}).get("batches")
    if listed:
        return [int(b) for b in listed]
    engines = [doc.get("reference", {}), *doc.get("candidates", [])]
    return sorted({int(r["batch"]) for e in engines for r in e.get("latency", []) if "batch" in r})


def latency_at(engine: dict[str, Any], batch: int) -> dict[str, Any]:
    """The latency row of `engine` at `batch`, or an empty dict."""
    return next((r for r in engine.get("latency", []) if r.get("batch") == batch), {})


def p50_cell(row: dict[str, Any]) -> str:
    """A row's p50, marked "(noisy)" when its spread or the machine's load says not to trust it."""
    text = num(row.get("p50_ms"))
    return f"{text} (noisy)" if row.get("noisy") and text != DASH else text


def spread_cell(row: dict[str, Any]) -> str:
    """Spread of the round medians as a percentage, with the noisy flag when raised."""
    spread = _finite(row.get("spread"))
    text = DASH if spread is None else f"{spread * 100:.0f}%"
    return f"{text} {NOISY}" if row.get("noisy") else text


def threads(engine: dict[str, Any]) -> str:
    """The intra-op CPU thread count(s) of an engine's latency rows (— for GPU runners)."""
    counts = sorted({int(r["threads"]) for r in engine.get("latency", []) if r.get("threads")})
    return ", ".join(map(str, counts)) or DASH


def warnings(doc: dict[str, Any]) -> list[str]:
    """The document's warnings (random-init reference, noisy latency), one line each."""
    return [str(w) for w in doc.get("warnings") or []]


def timing(engine: dict[str, Any]) -> str:
    """The timing kind(s) of an engine's latency rows: wall, device or both."""
    kinds = sorted({str(r.get("timing")) for r in engine.get("latency", []) if r.get("timing")})
    return ", ".join(kinds) or DASH


def candidate_table(doc: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Headers and (status, cells) rows: the reference first, then every candidate.

    Cells are plain text; each renderer escapes them for its own format.
    """
    metrics = task_metrics(doc)
    bs = batches(doc)
    headers = ["candidate", "precision", "backend", "target", "status", "worst rel err", "cosine"]
    headers += [h for _, h in metrics] + [f"p50 b{b} ms" for b in bs]

    def row(engine: dict[str, Any], fixed: list[str], extra: list[str]) -> list[str]:
        m = engine.get("metrics") or {}
        p50 = [p50_cell(latency_at(engine, b)) for b in bs]
        return fixed + extra + [_metric_cell(k, m) for k, _ in metrics] + p50

    ref = doc.get("reference", {})
    name = f"{ref.get('name', 'reference')} (reference)"
    rows = [
        ("reference", row(ref, [name, DASH, ref.get("backend", DASH), DASH], ["ref", DASH, DASH]))
    ]
    for c in doc.get("candidates", []):
        fixed = [str(c.get(k) or DASH) for k in ("name", "precision", "backend", "target")]
        status = str(c.get("status", ""))
        errors = [worst_rel(c), min_cosine(c)]
        rows.append((status, row(c, fixed, [STATUS_LABEL.get(status, status), *errors])))
    return headers, rows


def latency_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: reference and each measured candidate; per batch p50/p95/p99, the
    spread of round medians (with the noisy flag) and the rate."""
    engines = [doc.get("reference", {}), *doc.get("candidates", [])]
    bs = batches(doc)
    headers = ["engine", "timing", "threads"]
    for b in bs:
        headers += [f"b{b} p50 / p95 / p99 ms", f"b{b} spread", f"b{b} /s"]
    rows = []
    for e in (e for e in engines if e.get("latency")):
        row = [str(e.get("name", "?")), timing(e), threads(e)]
        for b in bs:
            r = latency_at(e, b)
            ms = [num(r.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")]
            row += [
                DASH if r.get("p50_ms") is None else " / ".join(ms),
                spread_cell(r),
                num(r.get("throughput_per_s")),
            ]
        rows.append(row)
    return headers, rows


def summary(doc: dict[str, Any]) -> str:
    """'3 candidates: 1 passed, 1 failed, 1 not run' (zero counts left out)."""
    cands = doc.get("candidates", [])
    counts = [(sum(c.get("status") == s for c in cands), word) for s, word in _SUMMARY_WORDS]
    parts = ", ".join(f"{n} {word}" for n, word in counts if n)
    noun = "candidate" if len(cands) == 1 else "candidates"
    return f"{len(cands)} {noun}" + (f": {parts}" if parts else "")


_SUMMARY_WORDS = [("pass", "passed"), ("fail", "failed"), ("not_run", "not run")]


def build_facts(build: dict[str, Any] | None) -> str:
    """Engine size, layers, build time and cache use from a candidate's free-form build object."""
    if not build:
        return ""
    facts = []
    if build.get("engine_bytes") is not None:
        facts.append(f"engine {size(build['engine_bytes'])}")
    layers = build.get("layers")
    if isinstance(layers, list | dict):  # a layer table rather than a count
        layers = len(layers)
    if layers is not None:
        facts.append(f"{num(layers)} layers")
    if _finite(build.get("build_seconds")) is not None:
        facts.append(f"built in {num(build['build_seconds'])} s")
    if build.get("cached"):
        facts.append("from cache")
    return ", ".join(facts)
