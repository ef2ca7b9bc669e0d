"""The report document: schema validation, Markdown and self-contained HTML renderers.

Documents come from tests/data/report_example.json (a classification run with a passing, a
failing and a built-but-not-run candidate) and a generation variant with small PNG previews.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sase_deploy.errors import UserError
from sase_deploy.report import _format as fmt
from sase_deploy.report.render import render_html, render_markdown
from sase_deploy.report.schema import SCHEMA_MINOR, SCHEMA_VERSION, load_schema, validate_report

EXAMPLE = Path(__file__).parent / "data" / "report_example.json"
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def _png_uri(colour: tuple[int, int, int]) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture
def example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text("utf-8"))
    return doc


@pytest.fixture
def generation(example: dict[str, Any]) -> dict[str, Any]:
    """The example as a generator run: image output, PSNR/SSIM, previews, a zero-edge histogram."""
    doc = copy.deepcopy(example)
    doc["model"].update(
        name="fastgan_tiny",
        task="generation",
        source="fastgan_tiny (random init, seed 0)",
        inputs=[{"name": "z", "shape": ["batch", 64], "dtype": "float32"}],
        outputs=["image"],
    )
    doc["data"].update(source="random latents", samples=64, labels=False)
    doc["reference"]["metrics"] = {}
    doc["failures"] = ["fastgan_tiny.fp16.onnx: output image: psnr_db 38.5 < 40 (under by 1.5)"]
    psnr = {"pass": 61.2, "fail": 38.5}
    for cand in doc["candidates"]:
        cand["name"] = cand["name"].replace("sase_resnet_digits", "fastgan_tiny")
        if cand["status"] == "not_run":
            continue
        for out in cand["outputs"]:
            out.update(name="image", shape=[64, 3, 16, 16])
        cand["metrics"] = {"psnr_db": psnr[cand["status"]], "ssim": 0.9991}
        cand["reason"] = None if cand["status"] == "pass" else doc["failures"][0]
        limit = 60.0 if cand["precision"] == "fp32" else 40.0
        cand["checks"] = [
            {
                "metric": "psnr_db",
                "output": "image",
                "value": psnr[cand["status"]],
                "limit": limit,
                "op": ">=",
                "passed": cand["status"] == "pass",
            }
        ]
        cand["previews"] = {
            "output": "image",
            "reference": _png_uri((200, 40, 40)),
            "candidate": _png_uri((190, 50, 40)),
            "difference": _png_uri((10, 10, 10)),
        }
    # Exact zeros land in a first bin that starts at 0 (the producer's convention).
    doc["candidates"][0]["outputs"][0]["error_histogram"] = {
        "edges": [0.0, 1e-7, 1e-6],
        "counts": [40000, 9152],
    }
    return doc


def test_example_documents_validate(example: dict[str, Any], generation: dict[str, Any]) -> None:
    validate_report(example)
    validate_report(generation)


def test_schema_is_draft_2020_12_and_versioned() -> None:
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION}
    assert SCHEMA_MINOR >= 1 and "schema_minor" in schema["properties"]


def test_documents_from_before_the_minor_bump_still_validate(example: dict[str, Any]) -> None:
    # schema_minor, warnings, model.weights and the latency trust fields are all optional.
    assert "schema_minor" not in example and "warnings" not in example
    assert "noisy" not in example["reference"]["latency"][0]
    validate_report(example)
    example["schema_minor"] = SCHEMA_MINOR
    example["warnings"] = ["random init: agreement numbers say nothing about accuracy"]
    example["reference"]["latency"][0].update(
        threads=2, p99_over_p50=1.6, spread=0.04, other_cpus=0.0, noisy=False
    )
    validate_report(example)


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _not_run_with_latency(doc: dict[str, Any]) -> None:
    doc["candidates"][2]["latency"] = copy.deepcopy(doc["reference"]["latency"])


@pytest.mark.parametrize(
    ("mutate", "where", "what"),
    [
        (lambda d: d.pop("verdict"), "$.verdict", "required"),
        (_set(["candidates", 1, "status"], "failed"), "$.candidates[1].status", "'failed'"),
        (_set(["reference", "latency", 0, "p50"], 0.5), "$.reference.latency[0]", "'p50'"),
        (_set(["candidates", 0, "precision"], "bf16"), "$.candidates[0].precision", "'bf16'"),
        (_set(["candidates", 0, "outputs", 0, "max_abs"], float("nan")), "max_abs", "null"),
        (_set(["candidates", 0, "checks", 0, "op"], "<"), "$.candidates[0].checks[0].op", "'<'"),
        (_set(["candidates", 2, "reason"], None), "$.candidates[2].reason", "string"),
        (_not_run_with_latency, "$.candidates[2].latency", "empty"),
        (
            _set(["candidates", 0, "outputs", 0, "error_histogram", "counts"], [1, 2]),
            "$.candidates[0].outputs[0].error_histogram",
            "edges",
        ),
        (_set(["verdict"], "pass"), "$.failures", "empty"),
    ],
)
def test_invalid_documents_name_the_path(
    example: dict[str, Any], mutate: Callable[[dict[str, Any]], None], where: str, what: str
) -> None:
    mutate(example)
    with pytest.raises(UserError) as exc:
        validate_report(example)
    message = str(exc.value)
    assert where in message and what in message
    assert "\n" not in message and len(message) < 300


def test_validate_without_jsonschema_says_how_to_install(
    example: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # the import now raises ImportError
    with pytest.raises(UserError, match="pip install jsonschema"):
        validate_report(example)


@pytest.mark.parametrize(
    ("formatter", "value", "text"),
    [
        (fmt.num, None, "—"),
        (fmt.num, float("nan"), "—"),
        (fmt.num, 0.52, "0.52"),
        (fmt.num, 25800.0, "25,800"),
        (fmt.num, 12.3456, "12.3"),
        (fmt.err, 8.4e-8, "8.4e-8"),
        (fmt.err, 0.031, "0.031"),
        (fmt.cosine, 0.99995, "0.99995"),
        (fmt.cosine, 0.99999998, "1 − 2e-8"),
        (fmt.pct, 0.998, "99.80%"),
        (fmt.size, 812345, "793 KiB"),
    ],
)
def test_number_formats(formatter: Callable[[Any], str], value: Any, text: str) -> None:
    assert formatter(value) == text


def _ten_candidates(doc: dict[str, Any]) -> dict[str, Any]:
    base = doc["candidates"]
    doc["candidates"] = []
    for i in range(10):
        cand = copy.deepcopy(base[i % 3])
        cand["name"] = f"{i}-{cand['name']}"
        doc["candidates"].append(cand)
    doc["failures"] = [c["reason"] for c in doc["candidates"] if c["status"] == "fail"]
    return doc


def test_markdown(example: dict[str, Any]) -> None:
    text = render_markdown(example)
    assert "**FAIL** — 3 candidates: 1 passed, 1 failed, 1 not run" in text
    assert "rel_max_abs 0.031 > 0.01" in text  # the failures list
    for cand in example["candidates"]:
        assert len([ln for ln in text.splitlines() if ln.startswith(f"| `{cand['name']}`")]) == 1
    assert "built, not run: no GPU — engine 793 KiB, 41 layers" in text
    # An older document's rows carry no threads or spread: dashes, not invented numbers.
    assert "| sase_resnet_digits.onnx | wall | — | 0.12 / 0.15 / 0.2 | — | 7,700 |" in text
    assert "None" not in text and not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_markdown_generation_columns(generation: dict[str, Any]) -> None:
    text = render_markdown(generation)
    header = next(ln for ln in text.splitlines() if ln.startswith("| candidate"))
    assert "PSNR dB" in header and "SSIM" in header and "top-1" not in header
    assert "| 61.2 | 0.9991 |" in text


def test_markdown_is_compact_and_escapes_table_cells(example: dict[str, Any]) -> None:
    doc = _ten_candidates(example)
    doc["candidates"][0]["name"] = "a|b"
    text = render_markdown(doc)
    assert len(text.splitlines()) < 60
    table = [ln for ln in text.splitlines() if ln.startswith("| ")][:12]
    widths = {len(re.split(r"(?<!\\)\|", ln)) for ln in table}
    assert len(widths) == 1, "an unescaped '|' in a name split a row"


def test_html_is_self_contained(example: dict[str, Any]) -> None:
    page = render_html(example)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert page.count("<svg") == 2  # the latency plot and one histogram (one output)
    assert page.count('id="lat-figure_1"') == 1 and page.count('id="hist0-figure_1"') == 1
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= NAMESPACES
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, re.IGNORECASE)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "inline SVGs share element ids"
    assert 'class="st fail"' in page and "built, not run: no GPU" in page
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page


def test_html_escapes_document_strings(example: dict[str, Any]) -> None:
    example["candidates"][0]["name"] = "<script>alert(1)</script>"
    example["failures"] = ['<img src="https://example.com/x.png">']
    page = render_html(example)
    assert "<script>" not in page and 'src="https://example.com' not in page
    assert "&lt;script&gt;" in page


def test_html_generation_previews(generation: dict[str, Any]) -> None:
    page = render_html(generation)
    uris = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', page)
    assert len(uris) == 6  # reference / candidate / difference for the two candidates run
    assert generation["candidates"][0]["previews"]["reference"] in uris
    assert page.count("<svg") == 2


def test_html_skips_previews_that_are_not_png_data(generation: dict[str, Any]) -> None:
    generation["candidates"][0]["previews"]["candidate"] = "https://example.com/x.png"
    page = render_html(generation)
    assert "example.com" not in page and "not a PNG data URI" in page


def test_rendering_is_byte_identical(generation: dict[str, Any]) -> None:
    assert render_html(generation) == render_html(copy.deepcopy(generation))
    assert render_markdown(generation) == render_markdown(copy.deepcopy(generation))


def test_html_renders_the_same_from_threads(example: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = render_html(example)
    with ThreadPoolExecutor(max_workers=4) as pool:
        pages = list(pool.map(render_html, [copy.deepcopy(example) for _ in range(4)]))
    assert all(page == expected for page in pages)


def test_plot_labels_are_not_markup(example: dict[str, Any]) -> None:
    example["candidates"][0]["name"] = r"m$\frac$.onnx"  # as mathtext: a syntax error
    example["candidates"][1]["name"] = "_leading_underscore"  # as a label: hidden from legends
    page = render_html(example)
    assert page.count("<svg") == 2


def test_render_modules_import_without_matplotlib() -> None:
    code = (
        "import sys, sase_deploy.report, sase_deploy.report.render, sase_deploy.report.schema; "
        "sys.exit('matplotlib' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")


@pytest.mark.slow
def test_html_draws_in_headless_chromium(example: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    from sase_deploy.report.plots import REFERENCE_COLOUR

    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(render_html(example), "utf-8")
    command = [
        _chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert shot.is_file(), f"no screenshot from: {' '.join(command)}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 200, "the page looks blank"
    target = np.array([int(REFERENCE_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    bar_pixels = int((np.abs(pixels - target) <= 12).all(axis=1).sum())
    assert bar_pixels > 2000, f"latency bars ({REFERENCE_COLOUR}) not drawn: {bar_pixels} px"
