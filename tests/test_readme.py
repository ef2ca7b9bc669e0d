"""The README's commands are run as written (install steps aside), so the docs cannot rot.

Every ```bash block is split into `&&`-joined steps; `pip install …` steps are skipped (the test
runs inside the installed environment) and so is the test-suite command itself. A block preceded
by `<!-- readme-test: skip (reason) -->` is not run; the reason must be given.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(<!-- readme-test: skip \((?P<why>[^)]+)\) -->\s*)?```bash\n(?P<body>.*?)```", re.S
)


def readme_steps() -> list[tuple[str, str | None]]:
    steps: list[tuple[str, str | None]] = []
    for match in BLOCK.finditer(README.read_text()):
        body = match.group("body").replace("\\\n", " ")
        for line in body.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for step in line.split("&&"):
                step = step.strip()
                if step.startswith("pip install") or "pytest" in step:
                    continue
                steps.append((step, match.group("why")))
    return steps


def test_readme_has_commands() -> None:
    assert any(step.startswith("sase-deploy") for step, _ in readme_steps())


@pytest.mark.slow
@pytest.mark.parametrize("step,skip_reason", readme_steps())
def test_readme_command_runs(step: str, skip_reason: str | None) -> None:
    if skip_reason:
        pytest.skip(skip_reason)
    argv = shlex.split(step)
    if argv[0] == "sase-deploy":
        argv = [sys.executable, "-m", "sase_deploy.cli", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"`{step}` exited {result.returncode}:\n{result.stderr[-3000:]}"
