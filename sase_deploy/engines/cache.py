"""The build cache: what an artifact's `cache_key` hashes, the lock around one artifact's build,
and the checks that an earlier artifact is still the one its manifest describes.

`cache_key` is the sha256 of every fact that decides an artifact's bytes (input file hashes,
target, precision, backend, TensorRT flavour, profile, …); an identical request finds the
manifest with that key beside an intact artifact and returns it without building.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sase_deploy._io import (
    output_error,
    output_folder,
    sha256_file,
    sha256_model,
    sweep_stale_temps,
)
from sase_deploy.engines.precision import model_stem
from sase_deploy.errors import UserError

if TYPE_CHECKING:  # build.py imports this module
    from sase_deploy.engines.build import BuildRequest


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


def cache_key(facts: dict[str, Any]) -> str:
    """The hex sha256 of `facts` (JSON with sorted keys; paths and other objects as str).

    Args:
        facts: everything that decides the artifact's bytes.
    """
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock so two builds of the same artifact do not interleave.

    The folders and the lock file made here are removed again when the block fails (bad input
    leaves the output folder as it was); an output place that cannot be written is a UserError.

    Args:
        path: the lock file (created if missing), in the artifact's folder.
    """
    with output_folder(path.parent, path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            fd, created = os.open(path, os.O_WRONLY), False
        except OSError as exc:
            raise output_error(path.parent, exc) from exc
        with open(fd, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                sweep_stale_temps(path.parent)  # a cache hit writes nothing that would
                yield
            except BaseException:
                if created:  # made for this build, which failed: leave the folder as it was
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def cached_manifest(manifest_path: Path, key: str) -> dict[str, Any] | None:
    """The manifest of an identical earlier build whose artifact is intact, else None.

    Args:
        manifest_path: where that build wrote its manifest.
        key: the `cache_key` of the build asked for now.
    """
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    artifact = Path(manifest.get("artifact", ""))
    if manifest.get("cache_key") != key or not artifact.exists():
        return None
    if artifact.is_file() and manifest.get("artifact_sha256") != sha256_file(artifact):
        return None  # replaced or truncated since: rebuild
    return manifest


def check_engine_intact(engine: Path, manifest: dict[str, Any], manifest_path: Path) -> None:
    """UserError when the engine file is not the one its build manifest describes (truncated,
    overwritten or damaged since the build); manifests without the facts pass.

    Args:
        engine: the engine file.
        manifest: its build manifest, as read (`engine_bytes`, `artifact_sha256`).
        manifest_path: where the manifest was read from (named in the error).
    """
    size, digest = manifest.get("engine_bytes"), manifest.get("artifact_sha256")
    actual = engine.stat().st_size
    if (isinstance(size, int) and actual != size) or (
        isinstance(digest, str) and sha256_file(engine) != digest
    ):
        raise UserError(
            f"{engine} ({actual} bytes) is not the engine {manifest_path.name} describes "
            "(truncated or replaced since it was built); rebuild it with 'sase-deploy build'"
        )
