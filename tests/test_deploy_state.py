"""Deploy state that does not depend on the working directory: outputs recorded relative to OUT,
so the same deploy from elsewhere (OUT spelled another way) skips every unchanged stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sase_deploy.deploy.state import STATE_FILE, DeployState, file_digest

FAST = ("--precisions", "fp32,fp16", "--runs", "2", "--warmup", "1", "--json")


def _stages(result) -> list[dict]:  # type: ignore[no-untyped-def]
    assert result.code == 0, result.stderr
    return result.json()["models"][0]["stages"]


@pytest.mark.slow
def test_a_deploy_from_another_directory_skips_every_unchanged_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    first = _stages(run_cli("deploy", "se_resnet_digits", "-o", "out", *FAST))
    assert first and not any(s["skipped"] for s in first)

    monkeypatch.chdir(b)
    again = _stages(run_cli("deploy", "se_resnet_digits", "-o", "../A/out", *FAST))
    assert [s["stage"] for s in again] == [s["stage"] for s in first]
    assert all(s["skipped"] and s["reason"] == "inputs unchanged" for s in again), again
    absolute = _stages(run_cli("deploy", "se_resnet_digits", "-o", str(a / "out"), *FAST))
    assert all(s["skipped"] for s in absolute), absolute

    listed = [Path(p) for stage in again for p in stage["outputs"]]  # relative to OUT too
    assert listed and all(not p.is_absolute() and (a / "out" / p).is_file() for p in listed)
    text = (a / "out" / STATE_FILE).read_text()
    assert str(tmp_path) not in text
    state = json.loads(text)
    recorded = [p for entry in state["stages"].values() for p in entry["outputs_sha256"]]
    assert "export/se_resnet_digits.onnx" in recorded
    assert all(not Path(p).is_absolute() and ".." not in Path(p).parts for p in recorded)


def _old_state(out: Path, paths: dict[str, Path]) -> None:
    """A state file as written before outputs were relative (format /1, as 0.2.0 wrote it too):
    paths as given to the deploy."""
    stages = {name: {"key": "k", "outputs": {str(p): file_digest(p)}} for name, p in paths.items()}
    old = {"format": "sase-deploy.deploy-state/1", "stages": stages}
    (out / STATE_FILE).write_text(json.dumps(old))


def test_an_old_state_file_with_absolute_paths_still_skips(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "export").mkdir(parents=True)
    model = out / "export" / "m.onnx"
    model.write_bytes(b"onnx")
    _old_state(out, {"export": model.resolve()})
    assert DeployState(out).fresh("export", "k") == [model.resolve()]
    assert DeployState(out).fresh("export", "other key") is None


def test_an_old_state_file_with_cwd_relative_paths_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "export").mkdir(parents=True)
    model = Path("out/export/m.onnx")
    model.write_bytes(b"onnx")
    _old_state(Path("out"), {"export": model})
    # "out/export/m.onnx" read relative to OUT names no file: the stage simply runs again
    assert DeployState(Path("out")).fresh("export", "k") is None


def test_outputs_are_recorded_relative_to_out_however_out_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "A" / "out" / "export").mkdir(parents=True)
    (tmp_path / "B").mkdir()
    model = tmp_path / "A" / "out" / "export" / "m.onnx"
    model.write_bytes(b"onnx")
    monkeypatch.chdir(tmp_path / "B")
    state = DeployState(Path("../A/out"))
    state.record("export", "k", [Path("../A/out/export/m.onnx")])
    saved = json.loads((tmp_path / "A" / "out" / STATE_FILE).read_text())
    assert list(saved["stages"]["export"]["outputs_sha256"]) == ["export/m.onnx"]
    monkeypatch.chdir(tmp_path / "A")
    assert DeployState(Path("out")).fresh("export", "k") == [Path("out/export/m.onnx")]
