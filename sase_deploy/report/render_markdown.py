"""A parity report as Markdown short enough for a pull-request comment."""

from __future__ import annotations

import re
from typing import Any

from sase_deploy.report import _format as fmt

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_MAX_FAILURES = 10  # a comment lists the first ones; the JSON and HTML hold them all
_STATUS_MARK = {"pass": "✅ ", "fail": "❌ ", "not_run": "⏭ ", "reference": ""}


def render_markdown(doc: dict[str, Any]) -> str:
    """Render a report document as GitHub-flavoured Markdown.

    Warnings first (a random-init reference, noisy latency), then the headline with the verdict,
    the failures, one table of candidates, one latency table and the candidates that were not
    run with their reason and build facts. Nulls print as "—".
    """
    model = doc.get("model", {})
    lines = [f"### sase-deploy parity: `{_code(model.get('name', '?'))}`", ""]
    for i, warning in enumerate(fmt.warnings(doc)):
        # A bare '>' between them: consecutive quoted lines would join into one paragraph.
        lines += [">"] if i else []
        lines.append(f"> ⚠️ **{_line(warning)}**")
    lines += ["", _headline(doc)] if fmt.warnings(doc) else [_headline(doc)]
    lines += _failures(doc.get("failures", []))
    lines += ["", *_candidates(doc)]
    lines += _latency(doc)
    lines += _per_layer(doc.get("candidates", []))
    lines += _not_run(doc.get("candidates", []))
    return "\n".join(lines) + "\n"


def _line(text: str) -> str:
    # A newline would end the list item or table; '<' before a letter, '/', '!' or '?' could
    # open an HTML tag ("38.5 < 40" cannot, and stays readable in the raw text).
    return _TAG_START.sub("&lt;", str(text).replace("\n", " "))


def _cell(text: str) -> str:
    # In a table a pipe ends the cell, inside code spans too unless escaped (GFM).
    return _line(text).replace("|", "\\|")


def _code(text: str) -> str:
    # Inside backticks nothing is interpreted, but a backtick would close the span.
    return str(text).replace("`", "'").replace("\n", " ")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    out.append("|" + "|".join("---" for _ in headers) + "|")
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _headline(doc: dict[str, Any]) -> str:
    verdict = str(doc.get("verdict", "unknown")).upper()
    model, ref = doc.get("model", {}), doc.get("reference", {})
    data = doc.get("data", {})
    context = (
        f"{model.get('task', '?')}, reference {ref.get('name', '?')} ({ref.get('backend', '?')})"
    )
    if data.get("samples") is not None:
        context += f", {data['samples']} samples"
    return f"**{verdict}** — {fmt.summary(doc)} · {_line(context)}"


def _failures(failures: list[str]) -> list[str]:
    if not failures:
        return []
    shown = [f"- {_line(f)}" for f in failures[:_MAX_FAILURES]]
    if len(failures) > _MAX_FAILURES:
        shown.append(f"- … and {len(failures) - _MAX_FAILURES} more")
    return ["", "Failures:", *shown]


def _candidates(doc: dict[str, Any]) -> list[str]:
    headers, rows = fmt.candidate_table(doc)
    status_col = headers.index("status")
    cells = []
    for status, row in rows:
        row = list(row)
        row[status_col] = _STATUS_MARK.get(status, "") + row[status_col]
        if status != "reference":
            row[0] = f"`{_code(row[0])}`"
        cells.append(row)
    return _table(headers, cells)


def _latency(doc: dict[str, Any]) -> list[str]:
    headers, rows = fmt.latency_table(doc)
    if not rows:
        return []
    legend = (
        "spread: how far the medians of 5 rounds of timed runs differ, relative to p50; "
        f"`{fmt.NOISY}` when it is large or other processes held the cores."
    )
    return ["", "Latency:", "", *_table(headers, rows), "", legend]


def _per_layer(candidates: list[dict[str, Any]]) -> list[str]:
    """Per candidate with per-layer errors: its first divergence and the layers adding most."""
    lines = []
    for c in candidates:
        entry = c.get("per_layer")
        if not entry:
            continue
        worst = ", ".join(
            f"`{_code(r['tensor'])}` ({_code(r['op'])}) +{fmt.num(r['jump'])}"
            for r in entry.get("worst", [])[:3]
        )
        first = entry.get("first_divergence")
        where = f"`{_code(first)}`" if first else "none"
        lines.append(
            f"- `{_code(c.get('name', '?'))}`: first divergence at {where}; adds most: {worst}"
        )
    return ["", "Where the error comes from (per layer):", "", *lines] if lines else []


def _not_run(candidates: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in candidates:
        if c.get("status") != "not_run":
            continue
        where = f"{c.get('precision', '?')}, {c.get('backend', '?')} → {c.get('target', '?')}"
        facts = fmt.build_facts(c.get("build"))
        text = f" ({where}): {c.get('reason') or 'no reason given'}" + (
            f" — {facts}" if facts else ""
        )
        lines.append(f"- `{_code(c.get('name', '?'))}`" + _line(text))
    return ["", "Not run:", *lines] if lines else []
