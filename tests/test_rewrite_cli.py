"""`sase-deploy fuse` end to end: artifacts, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from helpers import DigitsExports
from rewrite_blocks import Host, LinearSE, export


def _write_model(tmp_path: Path) -> Path:
    path = tmp_path / "se.onnx"
    onnx.save(export(Host(LinearSE(16))), path)
    return path


def test_fuse_json_and_report(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = _write_model(tmp_path)
    out, rep = tmp_path / "se.fused.onnx", tmp_path / "fusion.json"
    result = run_cli("fuse", str(src), "-o", str(out), "--report", str(rep), "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["command"] == "fuse" and summary["output"] == str(out)
    assert summary["blocks_found"] == {"se": 1}
    # the TorchScript export's Shape/Gather/Concat arithmetic folds before the rules run
    assert summary["nodes_in_file"] == 15 and summary["nodes_before"] == 12
    assert summary["nodes_after"] == 9
    assert json.loads(rep.read_text())["blocks_found"] == {"se": 1}
    onnx.checker.check_model(onnx.load(out))


def test_fuse_text_output(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = _write_model(tmp_path)
    result = run_cli("fuse", str(src), "-o", str(tmp_path / "f.onnx"))
    assert result.code == 0
    assert "blocks found: se: 1" in result.stdout and "nodes 15 (12 after folding" in result.stdout


def test_fuse_as_functions(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = _write_model(tmp_path)
    out = tmp_path / "f.onnx"
    result = run_cli("fuse", str(src), "-o", str(out), "--as-functions", "--json")
    assert result.code == 0
    assert result.json()["as_functions"]["functions"] == {"SqueezeExcite": 1}
    assert [f.name for f in onnx.load(out).functions] == ["SqueezeExcite"]


def test_missing_input_is_a_user_error(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "f.onnx"
    result = run_cli("fuse", str(tmp_path / "nope.onnx"), "-o", str(out))
    assert result.code == 2 and "no such ONNX file" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_garbage_input_leaves_no_artifact(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "bad.onnx"
    src.write_bytes(b"not a model")
    out = tmp_path / "f.onnx"
    result = run_cli("fuse", str(src), "-o", str(out), "--json")
    assert result.code == 2 and result.stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_bad_output_suffix(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = _write_model(tmp_path)
    result = run_cli("fuse", str(src), "-o", str(tmp_path / "f.txt"))
    assert result.code == 2 and ".onnx" in result.stderr
    assert not (tmp_path / "f.txt").exists()


def test_help(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("fuse", "--help")
    assert result.code == 0 and "--as-functions" in result.stdout


def test_expected_declines_are_marked(  # type: ignore[no-untyped-def]
    run_cli, digits_exports: DigitsExports, tmp_path: Path
) -> None:
    """The SE-gate rule looking at the Mul that applies a SASE block fused just before is an
    expected decline, marked as such in the text and the JSON; the look-alike test in
    test_fuse_exporters shows an unexpected one stays unmarked."""
    src = digits_exports.get("sase_resnet_digits", batch=1, fuse=False)  # the outputs: tmp_path
    text = run_cli("fuse", str(src), "-o", str(tmp_path / "f.onnx"))
    assert "se_gate: 0 applied, 0 already canonical, 0 reverted, 1 declined (1 expected)" in (
        text.stdout
    )
    assert "(expected: it looks at a sase_group block fused earlier): " in text.stdout
    summary = run_cli("fuse", str(src), "-o", str(tmp_path / "f.onnx"), "--json").json()
    (se_gate,) = [r for r in summary["rules"] if r["rule"] == "se_gate"]
    assert [d["expected"] for d in se_gate["declines"]] == [
        "it looks at a sase_group block fused earlier"
    ]
