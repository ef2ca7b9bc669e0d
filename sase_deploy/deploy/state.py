"""Stage skipping for `deploy`: a stage re-runs only when its inputs or its outputs changed.

`OUT/deploy.state.json` (`artifacts.DeployStateRecord`) records, per stage, a key (`fact_key` of
the facts the stage depends on: options, versions, sha256 of input files) and the sha256 of each
file it wrote (`outputs_sha256`). A stage whose key
matches and whose outputs are intact is skipped. The state file is rewritten atomically after each
stage, so a killed deploy resumes where it stopped.

The outputs are recorded relative to OUT, so the same deploy run from another directory (or with
OUT spelled another way) finds them; state files from before, with absolute paths, still work,
as do those of format /1 (sase-deploy 0.2.0, `outputs` for `outputs_sha256`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sase_deploy import __version__
from sase_deploy._io import sha256_model
from sase_deploy.artifacts import (
    DeployStateRecord,
    StageRecord,
    fact_key,
    try_read,
    write_record,
)

STATE_FILE = "deploy.state.json"
SKIPPED = "inputs unchanged"  # why a fresh stage is skipped, as progress and --json say


def stage_key(facts: dict[str, Any]) -> str:
    """`fact_key` of the stage's facts and this sase-deploy version."""
    return fact_key({**facts, "sase_deploy": __version__})


def file_digest(path: Path | None) -> str | None:
    """`sha256_model` of a file (ONNX external data included); None for None."""
    return None if path is None else sha256_model(path)


class DeployState:
    """The record of finished stages in one deploy output folder."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / STATE_FILE
        # an unreadable or unknown state file is no record: every stage runs again
        found = try_read(self.path, DeployStateRecord)
        self.stages: dict[str, StageRecord] = dict(found.stages) if found else {}

    def fresh(self, name: str, key: str) -> list[Path] | None:
        """The outputs of stage `name` if it ran with `key` and they are intact, else None."""
        entry = self.stages.get(name)
        if entry is None or entry.key != key:
            return None
        outputs = []
        for recorded, digest in entry.outputs_sha256.items():
            path = self.out / recorded  # an absolute path (older state files) stays as it is
            if not path.is_file() or file_digest(path) != digest:
                return None
            outputs.append(path)
        return outputs

    def relative(self, path: Path) -> str:
        """`path` relative to OUT (as the state file and deploy's stage list name outputs)."""
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.out))).as_posix()

    def record(self, name: str, key: str, outputs: Sequence[Path]) -> None:
        digests = {self.relative(p): file_digest(p) for p in outputs}
        self.stages[name] = StageRecord(key=key, outputs_sha256=digests)
        write_record(self.path, DeployStateRecord(stages=self.stages))

    def run(
        self, name: str, facts: dict[str, Any], produce: Callable[[], Sequence[Path]]
    ) -> tuple[list[Path], bool]:
        """Run `produce` unless stage `name` is fresh; returns (outputs, skipped)."""
        key = stage_key(facts)
        outputs = self.fresh(name, key)
        if outputs is not None:
            return outputs, True
        outputs = list(produce())
        self.record(name, key, outputs)
        return outputs, False
