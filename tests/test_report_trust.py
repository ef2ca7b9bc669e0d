"""Reports that say when their numbers cannot be trusted: a random-init reference, noisy
latency (scripted runner times, no real timing), and a terminal table that fits 80 columns."""

from __future__ import annotations

import copy
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sase_deploy.report import latency
from sase_deploy.report.api import RANDOM_INIT_WARNING
from sase_deploy.report.latency import NOISY_NOTE, measure_latency
from sase_deploy.report.output import summary
from sase_deploy.report.render import render_html, render_markdown
from sase_deploy.report.schema import validate_report
from sase_deploy.runtime.base import Feed, Outputs, Runner

EXAMPLE = Path(__file__).parent / "data" / "report_example.json"
FEED = {"x": np.zeros((1, 1, 8, 8), np.float32)}


class ScriptedRunner(Runner):
    """A runner whose inference times (seconds) are given, not measured."""

    name = "scripted"

    def __init__(self, times: list[float]) -> None:
        super().__init__()
        self._times = iter(times)

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feed: Feed) -> Outputs:
        return {}

    def infer(self, feed: Feed) -> Outputs:
        self.last_inference_time = next(self._times)
        return {}


def _row(times_ms: list[float], threads: int | None = None) -> dict[str, Any]:
    with ScriptedRunner([t / 1e3 for t in times_ms]) as runner:
        return measure_latency(runner, FEED, runs=len(times_ms), warmup=0, threads=threads)


# A steady row: ±2 % jitter and one stray slow run (a page fault, a timer interrupt).
STEADY = [1.0 + 0.02 * math.sin(i) for i in range(50)]
STEADY[17] = 6.0
# A spiky row: another job takes the cores for a fifth of the timed runs.
SPIKY = [1.0 + 0.02 * math.sin(i) for i in range(50)]
SPIKY[20:30] = [3.0 + 0.5 * math.cos(i) for i in range(10)]


def test_a_steady_row_is_not_flagged_and_a_spiky_one_is() -> None:
    steady, spiky = _row(STEADY, threads=2), _row(SPIKY, threads=2)
    assert steady["noisy"] is False and steady["spread"] < 0.1
    assert steady["p99_over_p50"] > 2  # the stray run shows in the tail, not in the spread
    assert spiky["noisy"] is True and spiky["spread"] > 1.5
    assert steady["threads"] == spiky["threads"] == 2
    assert steady["other_cpus"] is None  # a scripted row takes microseconds: too short to tell
    assert steady["p50_ms"] == pytest.approx(float(np.median(STEADY)))


def test_too_few_runs_have_no_spread() -> None:
    row = _row([1.0, 9.0, 1.0])
    assert row["spread"] is None and row["noisy"] is False and row["runs"] == 3


def test_other_processes_holding_the_cores_flag_a_steady_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PyTorch with a thread per core, one core taken: steady, and hundreds of times slower.
    monkeypatch.setattr(latency.os, "cpu_count", lambda: 2)
    ms = np.full(20, 568.0)
    assert latency.latency_row(ms, 1, threads=2, other_cpus=1.0)["noisy"] is True
    assert latency.latency_row(ms, 1, threads=2, other_cpus=0.2)["noisy"] is False
    assert latency.latency_row(ms, 1, threads=1, other_cpus=1.0)["noisy"] is False


def test_other_cpus_from_two_clock_readings() -> None:
    # 3 CPU-seconds busy in 2 s, 1 of them ours: others kept one CPU busy.
    assert latency._other_cpus((10.0, 4.0), (13.0, 5.0), 2.0) == 1.0
    assert latency._other_cpus((10.0, 4.0), (13.0, 5.0), 0.01) is None  # window too short
    assert latency._other_cpus(None, (13.0, 5.0), 2.0) is None


@pytest.fixture
def flagged() -> dict[str, Any]:
    """The example report with a random-init reference and one spiky candidate row."""
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text("utf-8"))
    doc["model"]["weights"] = "random-init"
    doc["candidates"][1]["latency"] = [_row(SPIKY, threads=2) | {"batch": 1}]
    doc["candidates"][0]["latency"] = [_row(STEADY, threads=2) | {"batch": 1}]
    doc["warnings"] = [
        RANDOM_INIT_WARNING,
        f"{NOISY_NOTE} unsteady latency for {doc['candidates'][1]['name']} b1",
    ]
    doc["schema_minor"] = 1
    return doc


def test_flagged_document_validates(flagged: dict[str, Any]) -> None:
    validate_report(flagged)
    bad = copy.deepcopy(flagged)
    bad["model"]["weights"] = "random"
    with pytest.raises(Exception, match=r"\$\.model\.weights"):
        validate_report(bad)


def test_markdown_says_random_init_at_the_top_and_flags_the_row(flagged: dict[str, Any]) -> None:
    text = render_markdown(flagged)
    head = text.splitlines()[:4]
    assert any(RANDOM_INIT_WARNING in line and line.startswith("> ") for line in head)
    spiky = flagged["candidates"][1]["name"]
    row = next(ln for ln in text.splitlines() if ln.startswith(f"| {spiky} | wall"))
    assert NOISY_NOTE in row
    steady = flagged["candidates"][0]["name"]
    row = next(ln for ln in text.splitlines() if ln.startswith(f"| {steady} | wall"))
    assert NOISY_NOTE not in row and "| 2 |" in row  # threads


def test_html_banner_comes_first_and_the_row_is_flagged(flagged: dict[str, Any]) -> None:
    page = render_html(flagged)
    body = page[page.index("<body>") :]
    assert body.index(RANDOM_INIT_WARNING) < body.index('class="banner')
    assert f'<span class="noisy">{NOISY_NOTE}</span>' in page
    assert ">random-init<" in page  # model facts: where the weights came from


def test_json_summary_carries_warnings_and_flags(flagged: dict[str, Any]) -> None:
    light = summary(flagged)
    assert RANDOM_INIT_WARNING in light["warnings"]
    assert light["model"]["weights"] == "random-init"
    assert [r["noisy"] for c in light["candidates"][:2] for r in c["latency"]] == [False, True]


def _table(doc: dict[str, Any], width: int) -> str:
    from rich.console import Console

    from sase_deploy.commands.compare import print_table

    buf = io.StringIO()
    print_table(doc, Console(file=buf, width=width))
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100, 160])
def test_terminal_table_fits_and_keeps_names_whole(flagged: dict[str, Any], width: int) -> None:
    for i, cand in enumerate(flagged["candidates"]):
        cand["name"] = f"rtx/sase_resnet_digits.calibrated.{i}.int8.engine"
    text = _table(flagged, width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    for cand in flagged["candidates"]:
        assert any(cand["name"] in line for line in lines), cand["name"]
    assert "(noisy)" in text
    assert f"warning: {RANDOM_INIT_WARNING}" in re.sub(r"\s+", " ", text)


def test_terminal_table_folds_a_name_wider_than_the_terminal(flagged: dict[str, Any]) -> None:
    flagged["candidates"][0]["name"] = "Q" * 120
    text = _table(flagged, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and text.count("Q") == 120  # every letter still shown


def test_reference_weights_say_where_they_came_from(tmp_path: Path) -> None:
    from sase_deploy.report.reference import load_reference

    assert load_reference("sase_resnet_digits").weights == "shipped"
    assert load_reference("se_resnet18").weights == "random-init"


def test_torch_runner_takes_and_restores_threads() -> None:
    import torch

    from sase_deploy.runtime.base import cpu_threads
    from sase_deploy.runtime.torch_runner import TorchRunner

    before = torch.get_num_threads()
    runner = TorchRunner(torch.nn.Identity(), ["x"], ["y"], threads=before + 1)
    with runner:
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    assert 1 <= cpu_threads() <= (__import__("os").cpu_count() or 1)
    assert TorchRunner(torch.nn.Identity(), ["x"], ["y"]).threads == cpu_threads()


# ---- the command line --------------------------------------------------------------------

LONG_NAMES = (
    "sase_resnet_digits.fp32.candidate-one.onnx",
    "sase_resnet_digits.fp32.candidate-two.onnx",
)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The digits model exported at its seeded init, under two long names."""
    import shutil

    from sase_deploy.export import export_model

    folder = tmp_path_factory.mktemp("trust")
    onnx = export_model("sase_resnet_digits", folder / "d.onnx", dynamic_batch=True).onnx_path
    return [Path(shutil.copy(onnx, folder / name)) for name in LONG_NAMES]


def test_compare_at_80_columns_says_random_init_everywhere(
    candidates: list[Path], monkeypatch: pytest.MonkeyPatch, run_cli: Any
) -> None:
    # The digits model without its shipped weights is a registered model at random init.
    monkeypatch.setattr("sase_deploy.report.reference.default_checkpoint", lambda name: None)
    monkeypatch.setenv("COLUMNS", "80")
    args = ["compare", "sase_resnet_digits", *map(str, candidates), "--runs", "5"]
    result = run_cli(*args, "--samples", "16", "--batch", "1")
    assert result.code in (0, 1), result.stderr
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout
    for name in LONG_NAMES:
        assert any(name in line for line in lines), name
    assert f"warning: {RANDOM_INIT_WARNING}" in result.stderr.splitlines()
    assert f"warning: {RANDOM_INIT_WARNING}" in " ".join(result.stdout.split())  # the caption
    listed = run_cli(*args, "--samples", "16", "--batch", "1", "--json").json()
    assert listed["model"]["weights"] == "random-init"
    assert listed["warnings"][0] == RANDOM_INIT_WARNING
    assert all("noisy" in r and "spread" in r for c in listed["candidates"] for r in c["latency"])


def test_shipped_weights_give_no_random_init_warning(candidates: list[Path], run_cli: Any) -> None:
    args = ["compare", "sase_resnet_digits", str(candidates[0]), "--runs", "5", "--batch", "1"]
    listed = run_cli(*args, "--samples", "16", "--json").json()
    assert listed["model"]["weights"] == "shipped"
    assert RANDOM_INIT_WARNING not in listed.get("warnings", [])


def test_finish_warns_of_random_init_on_stderr_but_not_of_noise(
    flagged: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from sase_deploy.commands.compare import finish
    from sase_deploy.errors import ParityError

    with pytest.raises(ParityError):
        finish(flagged, [], False, "compare")
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"warning: {RANDOM_INIT_WARNING}"]
    assert NOISY_NOTE in " ".join(out.split())  # the table's caption names the noisy row
