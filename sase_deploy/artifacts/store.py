"""Reading and writing the records of `records.py`: one reader, one (atomic) writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from sase_deploy._io import write_json_atomic
from sase_deploy.artifacts.records import Record
from sase_deploy.errors import UserError

R = TypeVar("R", bound=Record)


def read_record(path: Path, kind: type[R]) -> R:
    """The record of type `kind` at `path`; one of an older format `kind` still reads is
    upgraded to today's field names.

    Args:
        path: the manifest file.
        kind: the record class (`ExportManifest`, `EngineManifest`, …).

    Raises:
        UserError: (one line) the file is missing, not JSON, of another format or incomplete;
            it says what to do (`kind.REMEDY`).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read {kind.LABEL} {path} ({type(exc).__name__}); {kind.REMEDY}"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a {kind.LABEL}; {kind.REMEDY}")
    found = data.get("format")
    if found in kind.LEGACY:
        data = kind.upgrade(data)
    elif found != kind.FORMAT:
        raise UserError(
            f"{path} is a {found!r} file, not a {kind.LABEL} ({kind.FORMAT}) this version "
            f"reads; {kind.REMEDY}"
        )
    return kind.from_dict(data, path)


def try_read(path: Path, kind: type[R]) -> R | None:
    """`read_record`, or None where `path` is missing or not a readable `kind` (a cache or a
    stage record that is not there is simply made again).

    Args:
        path: the manifest file.
        kind: the record class.
    """
    try:
        return read_record(path, kind)
    except UserError:
        return None


def write_record(path: Path, record: Record) -> Path:
    """Write `record` as JSON (2-space indent, fields in order) atomically; returns `path`.

    Args:
        path: the manifest file (replaced if present).
        record: what to write.
    """
    return write_json_atomic(path, record.to_dict())
