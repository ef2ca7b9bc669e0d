"""Writing ONNX: atomically, with the weights in an external data file beside the model when
it is large (protobuf cannot hold a message over 2 GiB).

`save_onnx` is the one call for a single model. Export stages its model (and the failed-parity
copy) in a hidden folder first, so it uses the parts: `staging_dir`, `save_model`, `publish`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from sase_deploy._io import (
    give_default_permissions,
    is_output_failure,
    output_error,
    output_folder,
    sweep_stale_temps,
)

# protobuf cannot serialise a message over 2 GiB; stay clear of the limit.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def external_data_name(dest: Path) -> str:
    return f"{dest.name}.data"


def save_model(model: onnx.ModelProto, dest: Path, *, threshold: int) -> Path | None:
    """Save `model` to `dest`; weights go to `dest.name + '.data'` beside it when the model's
    size exceeds `threshold` bytes. Returns the data file's path or None. Not atomic by itself:
    call it on a path inside a `staging_dir`, then `publish` it."""
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


def save_onnx(
    model: onnx.ModelProto,
    dest: str | os.PathLike[str],
    *,
    threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> list[Path]:
    """Write `model` to `dest` atomically: staged beside it, then renamed (its data file first).

    Args:
        model: the model to write.
        dest: the `.onnx` path; a data file `dest.name + '.data'` goes beside it when the model
            is over `threshold` bytes (one left by an earlier, larger model is removed).
        threshold: serialized size above which weights go to the external data file.

    Returns the paths written (the model first). An output place that cannot be written is a
    `UserError`, and nothing is left at `dest`.
    """
    dest = Path(dest)
    with staging_dir(dest.parent) as staging:
        staged = staging / dest.name
        save_model(model, staged, threshold=threshold)
        return publish(staged, dest)


@contextlib.contextmanager
def staging_dir(final_dir: Path) -> Iterator[Path]:
    """A hidden temp folder inside `final_dir` (same filesystem: renames are atomic).

    `final_dir` and missing parents are created (and removed again if the block fails); an
    output place that cannot be written is a `UserError`, as with `atomic_path`.
    """
    with output_folder(final_dir, final_dir):
        sweep_stale_temps(final_dir)  # left by an export that was killed
        try:
            path = Path(tempfile.mkdtemp(prefix=f".sase-export.{os.getpid()}.", dir=final_dir))
        except OSError as exc:
            raise output_error(final_dir, exc) from exc
        try:
            yield path
        except OSError as exc:  # writing a staged file: a full or read-only disk
            if is_output_failure(exc, inside=path):
                raise output_error(final_dir, exc) from exc
            raise
        finally:
            shutil.rmtree(path, ignore_errors=True)


def publish(staged: Path, dest: Path) -> list[Path]:
    """Move a staged model (and its data file, first) onto `dest`; returns the final paths.

    If the model cannot be moved (`dest` is a folder, say), the data file is taken back: a
    `UserError`, and nothing new left at `dest`. A model published without a data file removes
    one an earlier, larger model left at `dest` (nobody would read it).
    """
    moved = []
    data = staged.parent / external_data_name(staged)
    dest_data = dest.parent / external_data_name(dest)
    try:
        for path in (staged, data):
            if path.exists():
                give_default_permissions(path)
        if data.exists():
            os.replace(data, dest_data)
            moved.append(dest_data)
        os.replace(staged, dest)
    except OSError as exc:
        for path in moved:
            with contextlib.suppress(OSError):
                os.replace(path, data)
        raise output_error(dest, exc) from exc
    if not moved:
        dest_data.unlink(missing_ok=True)
    moved.insert(0, dest)
    return moved
