"""A parity report as one self-contained HTML file: inline CSS, inline SVG plots, no scripts.

Every string from the document goes through `html.escape`; images are embedded only when they
are PNG data URIs, so the page never loads anything from the network.
"""

from __future__ import annotations

import html
import re
from typing import Any

from sase_deploy.report import _format as fmt

_PNG_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]+={0,2}")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;
 margin:0 auto;max-width:1160px;padding:16px 20px}
h1{font-size:22px;margin:0}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:14px 0 6px}
.banner{border-left:8px solid;border-radius:6px;padding:12px 16px}
.banner.pass{background:#e6f4ea;border-color:#1e8e3e}.banner.fail{background:#fce8e6;border-color:#c5221f}
.banner p{margin:4px 0 0}
.warn{background:#fff4ce;border:2px solid #b06000;border-radius:6px;padding:8px 14px;
 margin:0 0 10px;font-weight:600;color:#5c3300}
.noisy{color:#b06000;font-weight:600}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#fdf1f0}tr.not_run td{color:#666;background:#f8f8f8}
tr.reference td{background:#eef5f6}
.st{font-weight:600;border-radius:3px;padding:0 6px;white-space:nowrap}
.st.pass{background:#1e8e3e;color:#fff}.st.fail{background:#c5221f;color:#fff}
.st.not_run{background:#9e9e9e;color:#fff}.st.reference{background:#00555a;color:#fff}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
dl.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:2px 16px;margin:0}
dl.kv div{display:flex;gap:8px}dl.kv dt{color:#666;min-width:90px}
dl.kv dd{margin:0;overflow-wrap:anywhere}
td:first-child{white-space:nowrap}
svg{max-width:100%;height:auto}
.previews{display:flex;gap:12px;flex-wrap:wrap}.previews figure{margin:0}
.previews img{width:256px;max-width:30vw;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:12px;color:#555;text-align:center}
details{margin:4px 0}summary{cursor:pointer}
"""


def render_html(doc: dict[str, Any]) -> str:
    """Render a report document as one self-contained HTML page (no network, no JavaScript).

    Verdict banner, failures, model/data/environment, the candidate table, latency plot and table,
    error histograms per output, generator previews, not-run candidates, checks and tolerances.
    """
    from sase_deploy.report import plots  # matplotlib loads only when HTML is rendered

    title = f"sase-deploy parity: {doc.get('model', {}).get('name', '?')} — "
    title += str(doc.get("verdict", "unknown")).upper()
    body = [
        _warnings(doc),
        _banner(doc),
        _facts(doc),
        _section("Candidates", _candidates(doc, plots)),
        _latency(doc, plots),
        _histograms(doc, plots),
        _per_layer(doc, plots),
        _previews(doc),
        _not_run(doc),
        _checks(doc),
        _tolerances(doc),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, content: str) -> str:
    return f"<section>\n<h2>{_e(title)}</h2>\n{content}\n</section>" if content else ""


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Rows of already-escaped cells; a cell starting with a digit is right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    out = [f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes else ""
        cells = "".join(
            f'<td class="n">{c}</td>' if c[:1].isdigit() or c == fmt.DASH else f"<td>{c}</td>"
            for c in row
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    return "\n".join([*out, "</tbody>\n</table>"])


def _kv(pairs: list[tuple[str, Any]]) -> str:
    items = "".join(
        f"<div><dt>{_e(k)}</dt><dd>{_e(fmt.DASH if v is None else v)}</dd></div>" for k, v in pairs
    )
    return f'<dl class="kv">{items}</dl>'


def _banner(doc: dict[str, Any]) -> str:
    verdict = str(doc.get("verdict", "unknown"))
    cls = "pass" if verdict == "pass" else "fail"
    model, ref = doc.get("model", {}), doc.get("reference", {})
    failures = doc.get("failures", [])
    items = "".join(f"<li>{_e(f)}</li>" for f in failures)
    heading = f"{verdict.upper()} — {model.get('name', '?')}"
    return (
        f'<header class="banner {cls}"><h1>{_e(heading)}</h1>'
        f"<p>{_e(fmt.summary(doc))} · {_e(model.get('task', '?'))} · reference "
        f"{_e(ref.get('name', '?'))} ({_e(ref.get('backend', '?'))}) · "
        f"{_e(doc.get('created_utc', ''))}</p>"
        + (f"<ul>{items}</ul>" if items else "")
        + "</header>"
    )


def _warnings(doc: dict[str, Any]) -> str:
    # Above the verdict: a pass against a random-init reference, or on a busy machine, is not
    # what it seems, and a reader must not have to scroll to learn that.
    items = "".join(f'<p class="warn" role="alert">⚠ {_e(w)}</p>' for w in fmt.warnings(doc))
    return f"<div>{items}</div>" if items else ""


def _facts(doc: dict[str, Any]) -> str:
    model, data, settings = doc.get("model", {}), doc.get("data", {}), doc.get("settings", {})
    inputs = ", ".join(
        f"{i.get('name')} [{', '.join(map(str, i.get('shape', [])))}] {i.get('dtype')}"
        for i in model.get("inputs", [])
    )
    run = [
        ("model", model.get("name")),
        ("source", model.get("source")),
        ("weights", model.get("weights")),
        ("inputs", inputs or None),
        ("outputs", ", ".join(map(str, model.get("outputs", []))) or None),
        ("data", data.get("source")),
        ("samples", data.get("samples")),
        ("labels", None if data.get("labels") is None else ("yes" if data["labels"] else "no")),
        ("data batch", data.get("batch")),
        ("seed", data.get("seed")),
        ("timed batches", ", ".join(map(str, settings.get("batches", []))) or None),
        ("warmup / runs", f"{settings.get('warmup', fmt.DASH)} / {settings.get('runs', fmt.DASH)}"),
    ]
    env = list((doc.get("environment") or {}).items())
    return _section("Model and data", _kv(run)) + "\n" + _section("Environment", _kv(env))


def _candidates(doc: dict[str, Any], plots: Any) -> str:
    headers, rows = fmt.candidate_table(doc)
    status_col = headers.index("status")
    cells, classes = [], []
    for i, (status, row) in enumerate(rows):
        esc = [_e(c) for c in row]
        # The swatch ties a row to its bars and lines; colours are fixed constants, not input.
        col = plots.REFERENCE_COLOUR if i == 0 else plots.colour(i - 1)
        esc[0] = f'<span class="sw" style="background:{col}"></span>' + esc[0]
        esc[status_col] = f'<span class="st {_e(status)}">{esc[status_col]}</span>'
        cells.append(esc)
        classes.append(_e(status))
    return _table(headers, cells, classes)


def _latency(doc: dict[str, Any], plots: Any) -> str:
    ref = doc.get("reference", {})
    engines = [
        (
            (f"{ref.get('name', 'reference')} (reference)", plots.REFERENCE_COLOUR),
            ref.get("latency", []),
        )
    ]
    for i, c in enumerate(doc.get("candidates", [])):
        if c.get("latency"):
            engines.append(((_label(c), plots.colour(i)), c["latency"]))
    svg = plots.latency_svg(engines, fmt.batches(doc))
    headers, rows = fmt.latency_table(doc)
    if not rows:
        return ""
    table = _table(headers, [[_flagged(c) for c in r] for r in rows])
    return _section("Latency", (f'<figure class="plot">{svg}</figure>\n' if svg else "") + table)


def _flagged(cell: str) -> str:
    """An escaped latency cell; the noisy flag stands out (spreads are right-aligned numbers)."""
    text = _e(cell)
    flag = _e(fmt.NOISY)
    return text.replace(flag, f'<span class="noisy">{flag}</span>') if flag in text else text


def _label(cand: dict[str, Any]) -> str:
    # Legend label: the name, plus backend where the same file runs on several backends.
    return f"{cand.get('name', '?')} [{cand.get('backend', '?')}]"


def _histograms(doc: dict[str, Any], plots: Any) -> str:
    names: list[str] = []
    for c in doc.get("candidates", []):
        names += [o.get("name") for o in c.get("outputs", []) if o.get("name") not in names]
    figures = []
    for k, name in enumerate(names):
        series = [
            ((_label(c), plots.colour(i)), o.get("error_histogram"))
            for i, c in enumerate(doc.get("candidates", []))
            for o in c.get("outputs", [])
            if o.get("name") == name
        ]
        svg = plots.histogram_svg(str(name), series, prefix=f"hist{k}-")
        if svg:
            figures.append(f'<h3>output {_e(name)}</h3>\n<figure class="plot">{svg}</figure>')
    return _section("Error histograms", "\n".join(figures))


def _per_layer(doc: dict[str, Any], plots: Any) -> str:
    """Where each candidate's error comes from: the error-vs-depth plot, the layers adding most."""
    found = [(i, c) for i, c in enumerate(doc.get("candidates", [])) if c.get("per_layer")]
    if not found:
        return ""
    svg = plots.per_layer_svg([((_label(c), plots.colour(i)), c["per_layer"]) for i, c in found])
    parts = [f'<figure class="plot">{svg}</figure>'] if svg else []
    for _, c in found:
        entry = c["per_layer"]
        rows = [
            [
                _e(r["tensor"]),
                _e(r["op"]),
                str(r["depth"]),
                fmt.num(r["rel_err"]),
                fmt.num(r["jump"]),
            ]
            for r in entry.get("worst", [])
        ]
        first = entry.get("first_divergence")
        parts.append(
            f"<h3>{_e(c.get('name'))}: first divergence at {_e(first or 'none')}</h3>\n"
            + _table(["tensor", "op", "depth", "rel err", "adds"], rows)
        )
    return _section("Where the error comes from", "\n".join(parts))


def _previews(doc: dict[str, Any]) -> str:
    blocks = []
    for c in doc.get("candidates", []):
        previews = c.get("previews")
        if not isinstance(previews, dict):
            continue
        figures = []
        for role in ("reference", "candidate", "difference"):
            uri = str(previews.get(role, ""))
            if _PNG_URI.fullmatch(uri):  # anything else could point at the network
                img = f'<img src="{_e(uri)}" alt="{_e(role)}">'
            else:
                img = "<p>(not embedded: not a PNG data URI)</p>"
            figures.append(f"<figure>{img}<figcaption>{_e(role)}</figcaption></figure>")
        title = f"{c.get('name', '?')} — output {previews.get('output', '?')}"
        blocks.append(f'<h3>{_e(title)}</h3>\n<div class="previews">{"".join(figures)}</div>')
    return _section("Previews", "\n".join(blocks))


def _not_run(doc: dict[str, Any]) -> str:
    headers = ["candidate", "precision", "backend", "target", "reason", "build", "manifest"]
    rows = []
    for c in doc.get("candidates", []):
        if c.get("status") == "not_run":
            build = c.get("build") or {}
            cells = [c.get("name"), c.get("precision"), c.get("backend"), c.get("target")]
            cells += [c.get("reason"), fmt.build_facts(build) or None, build.get("manifest")]
            rows.append([_e(fmt.DASH if v is None else v) for v in cells])
    return _section("Not run", _table(headers, rows) if rows else "")


def _checks(doc: dict[str, Any]) -> str:
    blocks = []
    for c in doc.get("candidates", []):
        checks = c.get("checks", [])
        if not checks:
            continue
        failed = sum(not k.get("passed") for k in checks)
        rows = [
            [
                _e(k.get("metric")),
                _e(k.get("output") or fmt.DASH),
                _e(fmt.metric(str(k.get("metric")), k.get("value"))),
                _e(f"{k.get('op', '?')} {fmt.metric(str(k.get('metric')), k.get('limit'))}"),
                "pass" if k.get("passed") else "<b>fail</b>",
            ]
            for k in checks
        ]
        table = _table(["metric", "output", "value", "limit", "result"], rows)
        noun = "check" if len(checks) == 1 else "checks"
        summary = f"{c.get('name', '?')}: {len(checks)} {noun}, {failed} failed"
        opened = " open" if failed else ""  # failed checks are what a reader comes for
        blocks.append(f"<details{opened}><summary>{_e(summary)}</summary>\n{table}\n</details>")
    return _section("Checks", "\n".join(blocks))


def _tolerances(doc: dict[str, Any]) -> str:
    tolerances = doc.get("settings", {}).get("tolerances") or {}
    metrics: list[str] = []
    for limits in tolerances.values():
        metrics += [m for m in limits if m not in metrics]
    rows = [
        [_e(p)] + [_e(fmt.metric(m, limits.get(m))) for m in metrics]
        for p, limits in tolerances.items()
    ]
    return _section("Tolerances", _table(["precision", *metrics], rows) if rows else "")
