"""The README's and the docs pages' commands are run as written (install steps aside).

Every ```bash block of README.md, then of each docs page in flow order (DOCS), is split into
`&&`-joined steps, run in that order (later blocks use files earlier ones wrote); `pip install …`
steps are skipped (the test runs inside the installed environment) and so is the test-suite
command itself. A block preceded by `<!-- readme-test: skip (reason) -->` is not run; the reason
must be given. A `#` outside quotes starts a comment, as in the shell. Every relative Markdown
link in README.md and docs/*.md must point to an existing file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Flow order: blocks of a later page may use files written by an earlier one. Missing pages skip.
DOCS = ("models", "export", "fuse", "precision", "engines", "reports", "serving")
BLOCK = re.compile(
    r"(<!-- readme-test: skip \((?P<why>[^)]+)\) -->\s*)?```bash\n(?P<body>.*?)```", re.S
)


class Step(NamedTuple):
    command: str
    skip_reason: str | None
    where: str  # "README.md:12": the file and line the step comes from


def doc_files() -> list[Path]:
    pages = [ROOT / "docs" / f"{name}.md" for name in DOCS]
    return [README, *(page for page in pages if page.is_file())]


def file_steps(path: Path) -> list[Step]:
    text = path.read_text()
    name = path.relative_to(ROOT).as_posix()
    steps: list[Step] = []
    for match in BLOCK.finditer(text):
        first_line = text.count("\n", 0, match.start("body")) + 1
        lines = match.group("body").split("\n")
        index = 0
        while index < len(lines):
            lineno = first_line + index
            line = lines[index]
            while line.endswith("\\") and index + 1 < len(lines):  # continuation lines
                index += 1
                line = line[:-1] + " " + lines[index]
            index += 1
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for step in line.split("&&"):
                step = step.strip()
                if step.startswith("pip install") or "pytest" in step:
                    continue
                steps.append(Step(step, match.group("why"), f"{name}:{lineno}"))
    return steps


def all_steps() -> list[Step]:
    return [step for path in doc_files() for step in file_steps(path)]


def readme_steps() -> list[tuple[str, str | None]]:
    """README.md's own steps, as (command, skip reason)."""
    return [(step.command, step.skip_reason) for step in file_steps(README)]


def test_readme_has_commands() -> None:
    assert any(step.startswith("sase-deploy") for step, why in readme_steps() if not why)


def step_params() -> list[object]:
    params = []
    for step in all_steps():
        try:
            words = shlex.split(step.command, comments=True)
        except ValueError:  # unbalanced quotes: the test itself reports it
            words = step.command.split()
        label = " ".join(words[:3])
        label = label[:60] + (" ..." if len(words) > 3 or len(label) > 60 else "")
        params.append(pytest.param(step.command, step.skip_reason, id=f"{step.where} {label}"))
    return params


@pytest.mark.slow
@pytest.mark.parametrize("step,skip_reason", step_params())
def test_readme_command_runs(step: str, skip_reason: str | None) -> None:
    if skip_reason:
        pytest.skip(skip_reason)
    argv = shlex.split(step, comments=True)
    if argv[0] == "sase-deploy":
        argv = [sys.executable, "-m", "sase_deploy.cli", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"`{step}` exited {result.returncode}:\n{result.stderr[-3000:]}"


FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s)://, mailto:, … and anchors within the page
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize(
    "page",
    [README, *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda page: page.relative_to(ROOT).as_posix(),
)
def test_relative_links_resolve(page: Path) -> None:
    broken = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"
