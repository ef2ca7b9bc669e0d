"""Progress people can read: one line per stage in a log, skipped stages with their reason,
determinate counts for the long stages on a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from sase_deploy.console import LogStages, stage_progress

FAST = ("--precisions", "fp32", "--runs", "2", "--warmup", "1")
STAGE_LINE = re.compile(r"^(?P<name>\S.*?)  (?:(?P<seconds>\d+\.\d) s|skipped \((?P<why>.+)\))$")


class Recorder:
    """A `StageProgress` that keeps (name, total, steps counted, skipped, depth) per stage."""

    def __init__(self) -> None:
        self.open: list[list] = []
        self.closed: list[tuple] = []

    def stage(self, name: str, total: int | None = None) -> None:
        self.open.append([name, total, 0])

    def advance(self, n: int = 1) -> None:
        self.open[-1][2] += n

    def done(self, skipped: str | None = None) -> None:
        name, total, count = self.open.pop()
        self.closed.append((name, total, count, skipped, len(self.open)))


def _stage_lines(stderr: str) -> dict[str, re.Match[str]]:
    found = {}
    for line in stderr.splitlines():
        match = STAGE_LINE.match(line)
        if match and not line.startswith("note:"):
            found[match["name"]] = match
    return found


@pytest.fixture(scope="module")
def piped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, str]:
    """A deploy run twice with stderr captured (not a terminal): (OUT, stderr of each run, the
    second run's --json stdout)."""
    import contextlib

    from sase_deploy.cli import main

    out = tmp_path_factory.mktemp("progress") / "out"
    runs = []
    for extra in ((), ("--json",)):
        err, std = io.StringIO(), io.StringIO()
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(std),
            pytest.raises(SystemExit) as exc,
        ):
            main(["deploy", "se_resnet_digits", *FAST, "-o", str(out), *extra])
        assert exc.value.code == 0, err.getvalue()
        runs.append((err.getvalue(), std.getvalue()))
    return out, runs[0][0], runs[1][0], runs[1][1]


@pytest.mark.slow
def test_a_piped_deploy_prints_one_line_per_stage_with_its_time(piped) -> None:
    _, first, _, _ = piped
    assert "\x1b" not in first  # no bar escape codes in a log
    lines = _stage_lines(first)
    expected = {"export", "load reference", "reference (pytorch-cpu)",
                "se_resnet_digits.onnx (onnxruntime-cpu)"}  # fmt: skip
    assert expected <= set(lines), first
    for name in expected:
        assert lines[name]["seconds"] is not None, lines[name].string  # it ran: a time
    names = [m["name"] for line in first.splitlines() if (m := STAGE_LINE.match(line))]
    assert names.count("export") == 1 and names.count("build rtx fp16") == 0
    # nothing on stderr but the stage lines and notes (which rich may wrap)
    other = [line for line in first.splitlines() if not STAGE_LINE.match(line)]
    assert all(not line.startswith(("error", "Traceback")) for line in other), other


@pytest.mark.slow
def test_a_rerun_says_which_stages_it_skipped_and_why(piped) -> None:
    import json

    _, _, second, stdout = piped
    lines = _stage_lines(second)
    assert lines["export"]["why"] == "inputs unchanged"
    assert lines["reference (pytorch-cpu)"]["seconds"] is not None  # compare always runs
    stages = json.loads(stdout)["models"][0]["stages"]
    assert stages and all(s["skipped"] and s["reason"] == "inputs unchanged" for s in stages)
    assert [s["stage"] for s in stages][:1] == ["export"]


@pytest.mark.slow
@pytest.mark.rtx
def test_the_engine_stages_are_timed_then_skipped(piped) -> None:
    """With TensorRT-RTX installed, deploy builds the rtx engine (a timed line) and runs it
    where a GPU is; the rerun skips the build, and runs the engine again or says why not."""
    _, first, second, _ = piped
    engine = "rtx/se_resnet_digits.fp32.engine (tensorrt-rtx)"
    lines = _stage_lines(first)
    assert engine in lines and lines["build rtx fp32"]["seconds"] is not None, first
    lines = _stage_lines(second)
    assert lines["build rtx fp32"]["why"] == "inputs unchanged"
    assert lines[engine]["why"] == "built, not run: no GPU" or lines[engine]["seconds"] is not None


@pytest.mark.slow
def test_compare_counts_every_batch_and_latency_run_of_each_runner(piped) -> None:
    from sase_deploy.report.api import CompareOptions, compare
    from sase_deploy.report.candidates import resolve_candidates
    from sase_deploy.report.reference import load_reference

    out, _, _, _ = piped
    recorder = Recorder()
    onnx = out / "export" / "se_resnet_digits.onnx"
    options = CompareOptions(samples=20, batches=(1, 8), runs=3, warmup=2)
    compare(load_reference("se_resnet_digits"), resolve_candidates([onnx]), options, recorder)
    accuracy_batches = 3  # 20 samples in batches of 8
    expected = accuracy_batches + 2 * (3 + 2)  # + per latency batch: warm-up and timed runs
    assert [c[0] for c in recorder.closed] == [
        "reference (pytorch-cpu)",
        "se_resnet_digits.onnx (onnxruntime-cpu)",
    ]
    for name, total, count, skipped, depth in recorder.closed:
        assert (total, count, skipped, depth) == (expected, expected, None, 0), name


@pytest.mark.slow
def test_calibration_counts_its_samples(piped, tmp_path: Path) -> None:
    from sase_deploy.calibration.api import calibrate_onnx
    from sase_deploy.models.digits_data import write_digits_npz

    out, _, _, _ = piped
    data = write_digits_npz(tmp_path / "calib.npz", "calibration", n=40)
    recorder = Recorder()
    onnx = out / "export" / "se_resnet_digits.onnx"
    calibrate_onnx(onnx, str(data), tmp_path / "c", samples=40, batch=16, progress=recorder)
    assert recorder.closed == [("calibrating (percentile)", 40, 40, None, 0)]


def test_a_terminal_shows_counts_and_a_line_per_finished_stage() -> None:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=True, width=100)
    with stage_progress(console=console) as progress:
        progress.stage("reference (pytorch-cpu)", total=541)
        progress.advance(123)
        progress.stage("inner", total=None)
        console_bar = progress._bar  # type: ignore[attr-defined]
        console_bar.refresh()
        shown = sink.getvalue()
        progress.done()
        progress.done()
        progress.stage("fp16")
        progress.done("inputs unchanged")
    assert "123/541" in shown and "0/?" not in shown
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", sink.getvalue())
    # (the live bars' cursor moves are stripped, so a printed line need not start a line here)
    assert re.search(r"reference \(pytorch-cpu\)  \d+\.\d s\n", text), text
    assert "fp16  skipped (inputs unchanged)" in text
    assert not re.search(r"inner  (\d|skipped)", text)  # a nested stage has no line of its own


def test_a_log_gets_one_plain_line_per_outer_stage_and_nothing_else() -> None:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False)
    with stage_progress(log=True, console=console) as progress:
        assert isinstance(progress, LogStages)
        progress.stage("calibrate")
        progress.stage("calibrating (percentile)", total=64)
        progress.advance(64)
        progress.done()
        progress.done()
        progress.stage("fp16")
        progress.done("inputs unchanged")
        progress.stage("build rtx int8")  # fails: an open stage is never reported
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in sink.getvalue()
    assert re.fullmatch(r"calibrate  \d+\.\d s", lines[0]) and lines[1] == (
        "fp16  skipped (inputs unchanged)"
    )


def test_a_short_command_prints_no_stage_lines_on_a_log() -> None:
    sink = io.StringIO()
    with stage_progress(console=Console(file=sink, force_terminal=False)) as progress:
        progress.stage("reference (pytorch-cpu)", total=3)
        progress.advance(3)
        progress.done()
    assert sink.getvalue() == ""  # a failing compare's stderr stays its one error line
