"""The build cache: the input hashes an artifact's cache key covers, the lock around one
artifact's build, the checks that an earlier artifact is still the one its manifest describes,
and the sharing of identical files build writes (hard links: one copy on disk).

The cache key (`artifacts.fact_key`) is the sha256 of every fact that decides an artifact's
bytes (input file hashes, target, precision, backend, TensorRT flavour, profile, …); an
identical request finds the manifest with that key beside an intact artifact and returns it
without building.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from sase_deploy._io import (
    atomic_path,
    output_error,
    output_folder,
    sha256_file,
    sha256_model,
    sweep_stale_temps,
    temp_prefix,
)
from sase_deploy.artifacts import EngineManifest, model_stem, try_read
from sase_deploy.engines.request import BuildRequest
from sase_deploy.errors import UserError


def hash_inputs(request: BuildRequest) -> dict[str, str | None]:
    """sha256 of every file that decides the artifact's bytes.

    Args:
        request: the build request: its ONNX, and for INT8 its calibration files or data file.
    """
    found: dict[str, str | None] = {"onnx": sha256_model(request.onnx)}
    if request.precision == "int8" and request.calibration is not None:
        for path in sorted(request.calibration.glob(f"{model_stem(request.onnx)}.*")):
            found[f"calibration/{path.name}"] = sha256_file(path)
    elif request.precision == "int8" and request.data and Path(request.data).is_file():
        found["data"] = sha256_file(request.data)
    return found


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock so two builds of the same artifact do not interleave; the lock file is
    removed again when the block ends (no `.NAME.lock` is left beside the artifacts).

    The folders made here are removed again when the block fails (bad input leaves the output
    folder as it was); an output place that cannot be written is a UserError.

    Args:
        path: the lock file (created if missing), in the artifact's folder.
    """
    with output_folder(path.parent, path):
        fd = _acquire(path)
        try:
            sweep_stale_temps(path.parent)  # a cache hit writes nothing that would
            yield
        finally:
            # Unlinked while still held: a builder waiting on this inode then sees that the
            # path no longer names it and starts over on a fresh file (`_acquire`).
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)  # releases the flock


def _acquire(path: Path) -> int:
    """Open and flock `path`, retrying until the inode locked is still the one the path names
    (the previous holder unlinks the file as it releases it); returns the open descriptor."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        except OSError as exc:
            raise output_error(path.parent, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                return fd
        except FileNotFoundError:
            pass  # unlinked by the holder we waited for: lock a new file
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def cached_manifest(manifest_path: Path, key: str) -> EngineManifest | None:
    """The manifest of an identical earlier build whose artifact is intact, else None.

    Args:
        manifest_path: where that build wrote its manifest.
        key: the cache key of the build asked for now.
    """
    manifest = try_read(manifest_path, EngineManifest)
    if manifest is None or manifest.cache_key != key:
        return None  # an older format's key differs too (the format is hashed): rebuilt
    recorded = manifest.artifact
    if not isinstance(recorded, str) or not recorded:
        return None
    # The artifact lies beside its manifest: looked for there, not at the path recorded (which
    # is relative to where that build ran), so a deploy run from another directory finds it.
    artifact = manifest_path.parent / Path(recorded).name
    if not artifact.exists():
        return None
    if artifact.is_file() and manifest.sha256 != sha256_file(artifact):
        return None  # replaced or truncated since: rebuild
    return dataclasses.replace(manifest, artifact=str(artifact))


def check_engine_intact(engine: Path, manifest: EngineManifest, manifest_path: Path) -> None:
    """UserError when the engine file is not the one its build manifest describes (truncated,
    overwritten or damaged since the build); manifests without the facts pass.

    Args:
        engine: the engine file.
        manifest: its build manifest, as read (`engine_bytes`, `sha256`).
        manifest_path: where the manifest was read from (named in the error).
    """
    size, digest = manifest.engine_bytes, manifest.sha256
    actual = engine.stat().st_size
    if (isinstance(size, int) and actual != size) or (
        isinstance(digest, str) and sha256_file(engine) != digest
    ):
        raise UserError(
            f"{engine} ({actual} bytes) is not the engine {manifest_path.name} describes "
            "(truncated or replaced since it was built); rebuild it with 'sase-deploy build'"
        )


def _replace_by_link(src: Path, dest: Path, digest: str | None = None) -> bool:
    """Atomically make `dest` a hard link to `src` (temp link + rename); False where no hard
    link can be made (another file system, or one without them), or where `digest` is given
    and the linked file's sha256 differs (checked on the link itself: what it pins cannot be
    swapped between the check and the rename)."""
    tmp = dest.with_name(f"{temp_prefix(dest.name)}{secrets.token_hex(4)}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        return False
    try:
        if digest is not None and sha256_file(tmp) != digest:
            return False
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def link_or_copy(src: Path, dest: Path) -> bool:
    """Put `src`'s bytes at `dest` atomically: a hard link where both are on one file system
    (no second copy on disk), else a copy. Returns True when linked.

    Only for files sase-deploy made itself: its writers replace a file by renaming a new one
    onto it, never by writing into it, so two linked names never change each other.

    Args:
        src: the file to share.
        dest: where it is wanted (replaced if present).
    """
    if dest.exists() and os.path.samefile(src, dest):
        return True
    with output_folder(dest.parent, dest):
        try:
            if _replace_by_link(src, dest):
                return True
        except OSError as exc:
            raise output_error(dest, exc) from exc
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    return False


def share_identical(made: Path, others: Iterable[Path]) -> Path | None:
    """Replace `made` by a hard link to the first of `others` with the same bytes (an FP16
    graph `convert` already wrote beside the source, or the one built for another target), so
    the engine folder does not hold a second copy; returns that file, or None (nothing
    identical, external data beside it, or no hard link possible: `made` stays as it is).

    Args:
        made: a graph build just wrote (ours to replace).
        others: files that may hold the same bytes.
    """
    if list(made.parent.glob(made.name + ".data*")):
        return None  # external data: the .onnx alone is not the model
    size, digest = made.stat().st_size, ""
    for other in others:
        try:
            if other.stat().st_size != size or os.path.samefile(other, made):
                continue
            if list(other.parent.glob(other.name + ".data*")):
                continue
            digest = digest or sha256_file(made)
            if _replace_by_link(other, made, digest):
                return other
        except OSError:
            continue
    return None
