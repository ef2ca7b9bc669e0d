"""Bad input, command by command: exit 2 (1 for a parity failure), one line on stderr that says
what is wrong, no traceback, and nothing new or half-written in the output folder (issue 11).

Every case (the table in bad_input_cases.py) builds its own broken inputs in a fresh folder;
the test snapshots that folder and the shared inputs, runs the CLI in-process and checks that
neither changed. Each case names a fragment of its message and whether the message is click's
usage error (a bad flag value, an unknown option) or the command's own: a renamed flag turns a
case into "No such option" and fails it. The shared inputs (copies of the session's digits
exports, calibration data, an engine) are made once per module.
"""

from __future__ import annotations

import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bad_input_cases import CASES, IN_A_PROCESS, Case, Says
from bad_inputs import Assets, Ctx
from helpers import DigitsExports, copy_export

from sase_deploy.cli import main
from sase_deploy.models.digits import digits_checkpoint_file

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def assets(
    tmp_path_factory: pytest.TempPathFactory, digits_exports: DigitsExports, rtx: Any
) -> Assets:
    """Private copies of the session's exports (the cases snapshot this folder)."""
    from sase_deploy.engines.build import build
    from sase_deploy.engines.request import BuildRequest
    from sase_deploy.models.digits_data import write_digits_npz

    folder = tmp_path_factory.mktemp("assets")
    dyn = copy_export(digits_exports.get(), folder / "dynamic")
    static = copy_export(digits_exports.get(batch=4), folder / "batch4")
    calib = Path(write_digits_npz(folder / "calib.npz", "calibration"))
    engine = build(BuildRequest(dyn, "l4", folder / "engines")).artifact if rtx.installed else None
    ckpt = digits_checkpoint_file("se_resnet_digits")
    return Assets(
        folder, dyn, static, calib, engine, ckpt, digits_checkpoint_file("sase_resnet_digits")
    )


# click's usage errors end so (sase_deploy.cli); a misspelled flag gives one ("No such option").
USAGE_FORM = re.compile(r" \(run '[^']+ --help' for usage\)$")


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below `folders` (hidden ones too): a file's size and mtime.

    (A folder's mtime changes when a probe file is made and removed in it: not compared.)
    """
    found = {}
    for folder in folders:
        for path in folder.rglob("*"):
            st = path.lstat()
            found[str(path)] = (st.st_size, st.st_mtime_ns) if path.is_file() else (-1, 0)
    return found


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_in_process(capsys: pytest.CaptureFixture[str], args: list[str]) -> Outcome:
    """Run the CLI; an escaping exception (a bug) comes back as code -1 with its traceback."""
    try:
        main(args)
    except SystemExit as exc:
        out, err = capsys.readouterr()
        return Outcome(exc.code if isinstance(exc.code, int) else 0, out, err)
    except BaseException:
        out, err = capsys.readouterr()
        return Outcome(-1, out, err + traceback.format_exc())
    out, err = capsys.readouterr()
    return Outcome(0, out, err)


def check_outcome(result: Outcome, expected_code: int, says: Says, tmp: Path) -> None:
    """Exit `expected_code`, no traceback, one line holding `says` in the form it names."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code == expected_code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    prefix = "parity failure:" if expected_code == 1 else "error:"
    assert lines[0].startswith(prefix), lines[0]
    assert says.fragment.replace("{tmp}", str(tmp)) in lines[0], lines[0]
    form = "click's usage error" if says.usage else "the command's own message"
    assert bool(USAGE_FORM.search(lines[0])) == says.usage, f"expected {form}: {lines[0]}"


@pytest.mark.parametrize(("make", "says"), CASES)
def test_bad_input(
    make: Case,
    says: Says,
    request: pytest.FixtureRequest,
    assets: Assets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs (calibrate -o .) land in the watched folder
    args = make(Ctx(assets, tmp_path))
    expected = 1 if request.node.callspec.id.endswith("parity-failure") else 2
    before = snapshot(tmp_path, assets.folder)
    result = run_in_process(capsys, args)
    after = snapshot(tmp_path, assets.folder)
    check_outcome(result, expected, says, tmp_path)
    assert after == before, {
        "new": sorted(set(after) - set(before)),
        "gone": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k]),
    }


# Every command that reads ONNX refuses data outside the model's folder with the same words.
OUTSIDE_CASES = [case for case in CASES if "external-data-dotdot" in str(case.id)]
OUTSIDE_MESSAGE = re.compile(
    r"error: \S+/model/m\.onnx: external data '\.\./weights\.bin' lies outside the model's "
    r"folder; move the data next to the model"
)


def test_external_data_cases_cover_every_onnx_command() -> None:
    commands = {str(case.id).split("-external")[0] for case in OUTSIDE_CASES}
    assert commands == {"fuse", "calibrate", "convert", "build", "compare", "triton"}


@pytest.mark.parametrize(("make", "says"), OUTSIDE_CASES)
def test_external_data_outside_is_one_message(
    make: Case, says: Says, assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_in_process(capsys, make(Ctx(assets, tmp_path)))
    assert result.code == 2
    assert OUTSIDE_MESSAGE.fullmatch(result.stderr.strip()), result.stderr


@pytest.mark.parametrize(("make", "says"), IN_A_PROCESS)
def test_bad_input_in_a_process(make: Case, says: Says, assets: Assets, tmp_path: Path) -> None:
    args = make(Ctx(assets, tmp_path))
    before = snapshot(tmp_path, assets.folder)
    proc = subprocess.run(
        [sys.executable, "-m", "sase_deploy.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert snapshot(tmp_path, assets.folder) == before
    check_outcome(Outcome(proc.returncode, proc.stdout, proc.stderr), 2, says, tmp_path)
