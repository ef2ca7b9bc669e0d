"""Writing a report document as JSON, Markdown or HTML (by suffix), atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sase_deploy._io import check_writable, write_text_atomic
from sase_deploy.errors import UserError

REPORT_SUFFIXES = (".json", ".md", ".html")


def check_report_paths(paths: Sequence[Path]) -> None:
    """Fail before any work when a report path has an unknown suffix or cannot be written."""
    for path in paths:
        if path.suffix not in REPORT_SUFFIXES:
            raise UserError(
                f"report {path}: the suffix picks the format; use one of "
                f"{', '.join(REPORT_SUFFIXES)}"
            )
    check_writable(*paths)


def report_json(doc: dict[str, Any]) -> str:
    """The document as JSON text (NaN/Inf are bugs here: the document uses null)."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def write_reports(doc: dict[str, Any], paths: Sequence[Path]) -> list[Path]:
    """Write `doc` to each path in the format its suffix names; returns the paths."""
    check_report_paths(paths)
    for path in paths:
        if path.suffix == ".json":
            text = report_json(doc)
        elif path.suffix == ".md":
            from sase_deploy.report.render import render_markdown

            text = render_markdown(doc)
        else:
            from sase_deploy.report.render import render_html

            text = render_html(doc)
        write_text_atomic(path, text)
    return list(paths)


def _per_layer_summary(candidate: dict[str, Any]) -> dict[str, Any]:
    """The per-layer entry without its full curve (in the report files)."""
    found = candidate.get("per_layer")
    if not found:
        return {}
    return {"per_layer": {k: v for k, v in found.items() if k != "layers"}}


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without its bulky parts (images, histograms): for `--json` on stdout."""
    light = dict(doc)
    light["candidates"] = [
        {
            **{k: v for k, v in c.items() if k not in ("previews", "outputs", "per_layer")},
            "outputs": [
                {k: v for k, v in o.items() if k != "error_histogram"} for o in c["outputs"]
            ],
            **_per_layer_summary(c),
        }
        for c in doc["candidates"]
    ]
    return light
