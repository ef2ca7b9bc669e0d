"""What `compare` is given to judge: ONNX models, engines and bundles, and how each runs here.

An ONNX candidate runs on ONNX Runtime (CUDA when onnxruntime-gpu and a GPU are here, else CPU).
An engine runs with the TensorRT runner only on a GPU of the compute capability it was built for,
with its TensorRT flavour installed; otherwise it is reported as built, not run, with the reason
and its build facts (read from the manifest `sase-deploy build` wrote beside it). A bundle builds
on the device and never runs here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sase_deploy.engines.base import Runner
from sase_deploy.errors import UserError

ENGINE_SUFFIXES = (".engine", ".plan")
BUILD_FACTS = ("backend", "engine_bytes", "layers", "build_seconds", "layer_types")


@dataclass
class Candidate:
    """One artifact to compare. `blocker` says why it cannot run here (None: it can)."""

    name: str
    path: Path
    kind: str  # onnx | engine | bundle
    precision: str
    backend: str
    target: str
    build: dict[str, Any] | None = None
    blocker: str | None = None
    make_runner: Callable[[], Runner] | None = field(default=None, repr=False)
    fixed_batch: int | None = None  # an ONNX exported with a fixed batch runs only at it


def manifest_beside(artifact: Path) -> Path:
    """`X.fp16.engine`|`.bundle` -> `X.fp16.manifest.json`; `X.onnx` -> `X.manifest.json`."""
    return artifact.with_name(artifact.name.rpartition(".")[0] + ".manifest.json")


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@functools.cache
def _local_gpu() -> Any:
    from sase_deploy.engines.targets import local_target

    return local_target()


@functools.cache
def ort_backend() -> str:
    """'onnxruntime-cuda' where ORT's CUDA provider and a GPU are here, else 'onnxruntime-cpu'."""
    from sase_deploy.engines.doctor import cuda_runs_here

    return "onnxruntime-cuda" if cuda_runs_here(_local_gpu())[0] else "onnxruntime-cpu"


def _onnx_candidate(path: Path, name: str) -> Candidate:
    from sase_deploy.calibration.sources import graph_inputs, model_batch
    from sase_deploy.engines.build import graph_precision
    from sase_deploy.graph_io import load_onnx

    model = load_onnx(path)
    precision = graph_precision(model)
    backend = ort_backend()

    def make_runner() -> Runner:
        from sase_deploy.engines.ort import OrtCudaRunner, OrtRunner

        return OrtCudaRunner(path) if backend == "onnxruntime-cuda" else OrtRunner(path)

    target = "cuda" if backend == "onnxruntime-cuda" else "cpu"
    return Candidate(
        name, path, "onnx", precision, backend, target, make_runner=make_runner,
        fixed_batch=model_batch(graph_inputs(model)),
    )  # fmt: skip


def _build_facts(manifest: dict[str, Any], manifest_path: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {"manifest": str(manifest_path)}
    facts.update({k: manifest[k] for k in BUILD_FACTS if manifest.get(k) is not None})
    if manifest.get("built_onnx", {}).get("path"):
        facts["built_onnx"] = manifest["built_onnx"]["path"]
    return facts


def engine_blocker(manifest: dict[str, Any]) -> str | None:
    """Why the engine of `manifest` cannot run on this machine (None: it can)."""
    from sase_deploy.engines.flavours import find_flavour

    gpu = _local_gpu()
    if gpu is None:
        return "built, not run: no GPU"
    flavour = find_flavour(str((manifest.get("flavour") or {}).get("name", "tensorrt")))
    if not flavour.installed:
        return f"built, not run: {flavour.name} is not installed ({flavour.reason})"
    target = manifest["target"]
    if gpu.compute_capability not in target.get("compute_capabilities", []):
        return f"built, not run: engine for {target['sm']}; this GPU is {gpu.sm}"
    return None


def _artifact_candidate(path: Path, name: str, kind: str) -> Candidate:
    manifest_path = manifest_beside(path)
    manifest = _read_manifest(manifest_path)
    if manifest is None or "target" not in manifest:
        raise UserError(
            f"{path}: no build manifest beside it ({manifest_path.name}); compare engines "
            "written by 'sase-deploy build', or rebuild it there"
        )
    target = manifest["target"]["name"]
    backend = manifest.get("backend", "tensorrt")
    facts = _build_facts(manifest, manifest_path)
    if kind == "bundle":
        why = "built, not run: a bundle builds its engine on the device (bash build.sh)"
        return Candidate(name, path, kind, manifest["precision"], backend, target, facts, why)
    from sase_deploy.engines.build import check_engine_intact

    check_engine_intact(path, manifest, manifest_path)
    blocker = engine_blocker(manifest)

    def make_runner() -> Runner:
        from sase_deploy.engines.flavours import find_flavour
        from sase_deploy.engines.tensorrt import TrtRunner

        return TrtRunner(path, find_flavour(manifest["flavour"]["name"]))

    return Candidate(
        name, path, kind, manifest["precision"], backend, target, facts, blocker, make_runner
    )


def resolve_candidates(paths: Sequence[Path]) -> list[Candidate]:
    """A Candidate per path (ONNX file, engine file, or bundle folder); UserError otherwise."""
    found = []
    for path in paths:
        if not path.exists():
            raise UserError(f"candidate {path} does not exist; give ONNX files or built engines")
        name = f"{path.parent.name}/{path.name}" if path.suffix != ".onnx" else path.name
        if path.is_dir() and path.suffix == ".bundle":
            found.append(_artifact_candidate(path, name, "bundle"))
        elif path.is_file() and path.suffix == ".onnx":
            found.append(_onnx_candidate(path, name))
        elif path.is_file() and path.suffix in ENGINE_SUFFIXES:
            found.append(_artifact_candidate(path, name, "engine"))
        else:
            raise UserError(
                f"candidate {path}: expected an .onnx file, an .engine/.plan built by "
                "'sase-deploy build', or a .bundle folder"
            )
    names = [c.name for c in found]
    for candidate in found:
        if names.count(candidate.name) > 1:
            candidate.name = str(candidate.path)
    return found
