"""Atomic writes: every artifact goes to a temp file in its destination folder, then is renamed.

A crash or a rejected input never leaves a half-written ONNX, engine or report behind. An output
place that cannot be written (a folder that cannot be created, no permission, a read-only or full
disk, a destination that is a folder) is a `UserError` naming the path and the OS reason; folders
created for a write that then failed are removed again.

Temp names carry the writer's process id (`.NAME.<pid>.<random>.tmp`, staging folders
`.sase-export.<pid>.<random>`). A writer killed outright (SIGKILL, OOM killer) cannot remove its
temp file; the next write into that folder does (`sweep_stale_temps`), once that process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sase_deploy.errors import UserError

# Raised while writing a temp file, these are about the output place, whichever file they name.
_STORAGE_ERRNOS = frozenset(
    code
    for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG, errno.EROFS)
    if code is not None
)


# `.NAME.<pid>.<8 random chars>.tmp|.probe` (atomic_path, check_writable) and
# `.sase-export.<pid>.<8 random chars>` (staging folders); mkstemp's random part is [a-z0-9_]{8}.
_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.(?:tmp|probe)$")
_STAGING_RE = re.compile(r"^\.sase-[a-z]+\.(\d+)\.[a-z0-9_]{8}$")


def temp_prefix(name: str) -> str:
    """The prefix of this process's temp files for `name` (see the module docstring)."""
    return f".{name}.{os.getpid()}."


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


def sweep_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files and staging folders in `folder` left by sase-deploy writers that
    were killed (their process no longer exists on this machine); returns what was removed.

    Never raises: an unreadable folder or a file that vanished meanwhile is skipped.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        is_dir = entry.is_dir(follow_symlinks=False)
        match = (_STAGING_RE if is_dir else _TEMP_RE).match(entry.name)
        if match is None or not _process_gone(int(match.group(1))):
            continue
        try:
            if is_dir:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def output_error(
    dest: str | os.PathLike[str], exc: OSError, folder: Path | None = None
) -> UserError:
    """A one-line `UserError` for an OSError met while writing `dest` (or creating its `folder`):
    the path, the OS reason and what to do."""
    dest = Path(dest)
    reason = exc.strerror or str(exc)
    culprit = exc.filename2 if exc.filename2 is not None else exc.filename
    ours = {dest, dest.parent}  # dest, or a temp file beside it / inside it (a staging folder)
    if folder is not None and folder == dest:
        return UserError(
            f"cannot create folder {folder}: {reason}; choose an output path you can write to"
        )
    if folder is not None:
        what = f"cannot create folder {folder} ({reason})"
    elif culprit is not None and not ours & {Path(culprit), Path(culprit).parent}:
        what = f"{reason} ({culprit})"
    else:
        what = reason
    if isinstance(exc, IsADirectoryError):
        hint = "it is a folder; give a file path"
    elif exc.errno in _STORAGE_ERRNOS:
        hint = "free some space or choose an output path on another disk"
    else:
        hint = "choose an output path in a folder you can write to"
    return UserError(f"cannot write {dest}: {what}; {hint}")


def _make_dirs(folder: Path, dest: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns the folders created, outermost first."""
    missing: list[Path] = []
    created: list[Path] = []
    path = folder
    try:
        while not path.is_dir():
            if path.exists() or path.is_symlink():
                raise UserError(
                    f"cannot write {dest}: {path} exists and is not a folder; "
                    "choose another output path"
                )
            missing.append(path)
            path = path.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue  # made by someone else meanwhile: not ours to remove
            created.append(path)
    except OSError as exc:
        _remove_dirs(created)
        raise output_error(dest, exc, folder=path) from exc
    return created


def _remove_dirs(created: list[Path]) -> None:
    """Remove folders `_make_dirs` created, innermost first, where they are still empty."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def is_output_failure(
    exc: OSError, *paths: str | os.PathLike[str], inside: Path | None = None
) -> bool:
    """Whether `exc`, raised while writing `paths` (temp files) or files `inside` a staging
    folder, is about the output place (and not, say, an input file)."""
    if exc.errno in _STORAGE_ERRNOS:
        return True
    named = {Path(p) for p in paths}
    for culprit in (exc.filename, exc.filename2):
        if isinstance(culprit, str | os.PathLike):
            path = Path(culprit)
            if path in named or (inside is not None and inside in path.parents):
                return True
    return False


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Create `folder` (for writing `dest`) and its missing parents; if the block raises, remove
    the folders created here again (when empty). An OSError on creating is a `UserError`."""
    created = _make_dirs(Path(folder), Path(dest))
    try:
        yield Path(folder)
    except BaseException:
        _remove_dirs(created)
        raise


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success rename it onto `dest`, on error delete it.

    OSErrors about the output place (creating the folder or temp file, writing it when the disk
    is full or read-only, renaming it onto `dest`) become a `UserError` naming `dest`.
    """
    dest = Path(dest)
    with output_folder(dest.parent, dest):
        sweep_stale_temps(dest.parent)
        tmp_path = _temp_beside(dest, ".tmp")
        try:
            yield tmp_path
            give_default_permissions(tmp_path)
            os.replace(tmp_path, dest)
        except OSError as exc:
            if is_output_failure(exc, tmp_path, dest):
                raise output_error(dest, exc) from exc
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()


def check_writable(*dests: str | os.PathLike[str]) -> None:
    """Fail early, before long work, when a destination cannot be written (`UserError`).

    Creates the missing folders and a probe file beside each destination, then removes both.
    """
    for dest in map(Path, dests):
        with contextlib.ExitStack() as stack:
            created = _make_dirs(dest.parent, dest)
            stack.callback(_remove_dirs, created)
            if dest.is_dir():
                raise output_error(dest, IsADirectoryError(errno.EISDIR, "Is a directory"))
            _temp_beside(dest, ".probe").unlink()


def _temp_beside(dest: Path, suffix: str) -> Path:
    """An empty file beside `dest` named after it (`temp_prefix`); `UserError` naming `dest`
    where none can be made."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest.name), suffix=suffix, dir=dest.parent)
    except OSError as exc:
        raise output_error(dest, exc) from exc
    os.close(fd)
    return Path(tmp)


def give_default_permissions(path: str | os.PathLike[str]) -> None:
    """The permissions a plain open() would give (0666 less the umask): mkstemp and onnx's
    external-data writer create files 0600, which other users of a shared artifact folder
    (a Triton server, a CI job) could not read."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_model(path: str | os.PathLike[str]) -> str:
    """sha256 over a file and any external-data files beside it (`NAME.data*`, as ONNX writes
    them): what identifies a model on disk. For other files it is a hash of their sha256."""
    path = Path(path)
    digest = hashlib.sha256(sha256_file(path).encode())
    for extra in sorted(path.parent.glob(path.name + ".data*")):
        digest.update(sha256_file(extra).encode())
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
