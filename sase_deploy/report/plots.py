"""Report plots as inline SVG strings.

Figures are built with `matplotlib.figure.Figure`, never pyplot: no GUI backend, no global
figure registry, so rendering works headless and from worker threads. Output is byte-identical
for the same input: fixed `svg.hashsalt`, no date in the metadata, ids derived from a prefix.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.figure import Figure

REFERENCE_COLOUR = "#00555a"
"""Bars of the reference in the latency plot (distinct from every candidate colour)."""

# Candidates keep one colour in every plot and the HTML table (tab10 without its grey).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)

# Any-keyed: matplotlib types rc_context's keys as a Literal of every rcParam name.
_RC: dict[Any, Any] = {
    "svg.hashsalt": "sase-deploy-report",  # stable clip-path/marker ids across runs
    "svg.fonttype": "path",  # glyphs as paths: no font needed where the HTML is opened
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
_LOG_SPREAD = 30.0  # log y when the largest bar is this many times the smallest

# rc_context swaps process-wide rcParams: renders from several threads take turns, so one
# thread's exit cannot restore the defaults (random SVG ids) under another's savefig.
_RC_LOCK = threading.Lock()

Series = tuple[str, str]  # (label, colour)


def colour(index: int) -> str:
    """The colour of the candidate at `index` in the document's candidate list."""
    return PALETTE[index % len(PALETTE)]


def to_svg(fig: Figure, prefix: str) -> str:
    """Serialise `fig` as an <svg> element for inlining: no XML prolog, DOCTYPE or metadata.

    Matplotlib names elements figure_1, axes_1, ... in every figure; `prefix` makes the ids of
    several figures on one page unique (duplicate ids are invalid HTML and `url(#id)` would
    resolve to the first figure's element).
    """
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    return re.sub(r'(\bid="|href="#|url\(#)', lambda m: m.group(1) + prefix, text).strip()


def _plain(text: str) -> str:
    # Document strings are labels, not markup: '$' would start mathtext, a leading '_' hides
    # the entry from the legend.
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _legend_height(n: int, ncols: int) -> float:
    return 0.22 * math.ceil(n / ncols)


def latency_svg(
    engines: Sequence[tuple[Series, Sequence[Mapping[str, Any]]]], batches: Sequence[int]
) -> str | None:
    """Grouped bars of p50 per engine per batch with a p95 whisker; None when nothing was timed.
    A bar whose row is `noisy` is hatched.

    `engines` is ((label, colour), latency rows) per engine, the reference first.
    """
    timed = [
        (s, {r.get("batch"): r for r in rows if r.get("p50_ms") is not None}) for s, rows in engines
    ]
    timed = [(s, by_batch) for s, by_batch in timed if by_batch]
    if not timed:
        return None
    ncols = min(len(timed), 2)
    with _RC_LOCK, matplotlib.rc_context(_RC):
        fig = Figure(figsize=(8, 3.2 + _legend_height(len(timed), ncols)), layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / len(timed)
        values: list[float] = []
        any_noisy = False
        for i, ((label, col), by_batch) in enumerate(timed):
            xs, p50s, ups, noisy = [], [], [], []
            for j, b in enumerate(batches):
                if b in by_batch:
                    p50, p95 = by_batch[b]["p50_ms"], by_batch[b].get("p95_ms")
                    xs.append(j + (i - (len(timed) - 1) / 2) * width)
                    p50s.append(p50)
                    ups.append(max(p95 - p50, 0.0) if p95 is not None else 0.0)
                    noisy.append(bool(by_batch[b].get("noisy")))
                    values += [p50, p50 + ups[-1]]
            bars = ax.bar(
                xs,
                p50s,
                width * 0.9,
                color=col,
                label=_plain(label),
                yerr=[[0.0] * len(ups), ups],
                error_kw={"ecolor": "#333333", "capsize": 2, "elinewidth": 0.8},
            )
            for patch, flagged in zip(bars.patches, noisy, strict=True):
                if flagged:  # hatch lines take the edge colour
                    patch.set_hatch("///")
                    patch.set_edgecolor("#ffffff")
            any_noisy = any_noisy or any(noisy)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > _LOG_SPREAD:
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(positive) / 2)
        ax.set_ylabel("latency, ms (bar p50, whisker p95)")
        if any_noisy:
            ax.set_title("hatched: noisy: machine busy?", loc="left", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.legend(loc="outside lower center", ncols=ncols, frameon=False, fontsize=8)
        return to_svg(fig, "lat-")


def _drawable(hist: Mapping[str, Any] | None) -> bool:
    # A malformed histogram is skipped rather than failing the whole report.
    if not hist:
        return False
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    return len(edges) == len(counts) + 1 and sum(counts) > 0 and edges[-1] > 0


def _log_edges(edges: Sequence[float]) -> list[float]:
    # The first bin may start at 0 (exact zeros); log x draws it one decade below its top.
    first = edges[0] if edges[0] > 0 else edges[1] / 10
    return [first, *edges[1:]]


@dataclass
class _Overlay:
    fig: Figure
    ax: Any
    svg: str | None = None


@contextmanager
def _overlay(count: int, prefix: str) -> Iterator[_Overlay]:
    """A figure for `count` overlaid series, legend below; its SVG is `svg` after the block
    (rendered inside the rc context: the stable ids depend on it)."""
    ncols = min(count, 2)
    with _RC_LOCK, matplotlib.rc_context(_RC):
        fig = Figure(figsize=(8, 2.8 + _legend_height(count, ncols)), layout="constrained")
        plot = _Overlay(fig, fig.add_subplot())
        yield plot
        plot.ax.grid(alpha=0.3)
        fig.legend(loc="outside lower center", ncols=ncols, frameon=False, fontsize=8)
        plot.svg = to_svg(fig, prefix)


def histogram_svg(
    output: str, series: Sequence[tuple[Series, Mapping[str, Any]]], prefix: str
) -> str | None:
    """Overlaid step lines of |error| histograms (log x) of one output, one line per candidate.

    `series` is ((label, colour), error_histogram) per candidate. Counts are drawn as fractions of
    the compared elements so candidates with different sample counts compare.
    """
    drawn = [(s, h) for s, h in series if _drawable(h)]
    if not drawn:
        return None
    with _overlay(len(drawn), prefix) as plot:
        ax = plot.ax
        for (label, col), hist in drawn:
            total = sum(hist["counts"])
            ax.stairs(
                [c / total for c in hist["counts"]],
                _log_edges(hist["edges"]),
                color=col,
                label=_plain(label),
                linewidth=1.6,
            )
        ax.set_xscale("log")
        ax.set_xlabel(_plain(f"|candidate − reference| of output {output}"))
        ax.set_ylabel("fraction of elements")
    return plot.svg


def per_layer_svg(
    series: Sequence[tuple[Series, Mapping[str, Any]]], prefix: str = "layer-"
) -> str | None:
    """Relative error (log y) of every shared tensor against its depth in the reference, one
    line per candidate, its first divergence marked; None when there is nothing to draw.

    `series` is ((label, colour), per_layer entry) per candidate.
    """
    drawn = [(s, p) for s, p in series if any(r.get("rel_err") for r in p.get("layers") or [])]
    if not drawn:
        return None
    with _overlay(len(drawn), prefix) as plot:
        ax = plot.ax
        for (label, col), entry in drawn:
            rows = [r for r in entry["layers"] if r.get("rel_err")]  # log y: no zeros, nulls
            ax.plot([r["depth"] for r in rows], [r["rel_err"] for r in rows], color=col,
                    label=_plain(label), linewidth=1.2, marker=".", markersize=3)  # fmt: skip
            first = next((r for r in rows if r["tensor"] == entry.get("first_divergence")), None)
            if first is not None:
                ax.plot([first["depth"]], [first["rel_err"]], marker="o", markersize=8,
                        markerfacecolor="none", color=col)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("depth in the reference graph (node index); circle: first divergence")
        ax.set_ylabel("max|error| / max|reference|")
    return plot.svg
