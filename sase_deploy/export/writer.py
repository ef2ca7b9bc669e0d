"""Write an ONNX model atomically, with external data (kept beside it) when it is large."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

# protobuf cannot serialise a message over 2 GiB; stay clear of the limit.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def external_data_name(dest: Path) -> str:
    return f"{dest.name}.data"


def save_model(model: onnx.ModelProto, dest: Path, *, threshold: int) -> Path | None:
    """Save `model` to `dest`; weights go to `dest.name + '.data'` beside it when the model's
    size exceeds `threshold` bytes. Returns the data file's path or None. Not atomic by itself:
    call it on a path inside `staged_files`."""
    if model.ByteSize() <= threshold:
        onnx.save_model(model, dest)
        return None
    location = external_data_name(dest)
    onnx.save_model(
        model,
        dest,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,  # relative: the data stays inside the model's folder
        size_threshold=1024,
    )
    return dest.parent / location


@contextlib.contextmanager
def staging_dir(final_dir: Path) -> Iterator[Path]:
    """A hidden temp folder inside `final_dir` (same filesystem: renames are atomic)."""
    final_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".sase-export.", dir=final_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(staged: Path, dest: Path) -> list[Path]:
    """Move a staged model (and its data file, first) onto `dest`; returns the final paths."""
    moved = []
    data = staged.parent / external_data_name(staged)
    if data.exists():
        os.replace(data, dest.parent / external_data_name(dest))
        moved.append(dest.parent / external_data_name(dest))
    os.replace(staged, dest)
    moved.insert(0, dest)
    return moved
