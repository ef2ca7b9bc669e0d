"""What `compare` is given to judge: ONNX models, engines and bundles, and how each runs here.

An ONNX candidate runs on ONNX Runtime (CUDA when onnxruntime-gpu and a GPU are here, else CPU).
An engine runs with the TensorRT runner only on a GPU of the compute capability it was built for,
with its TensorRT flavour installed; otherwise it is reported as built, not run, with the reason
and its build facts (read from the manifest `sase-deploy build` wrote beside it). A bundle builds
on the device and never runs here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sase_deploy.artifacts import EngineManifest, manifest_path, read_record
from sase_deploy.errors import UserError
from sase_deploy.runtime.base import (
    FEED_FIX,
    InputMetadata,
    Outputs,
    Runner,
    describe_inputs,
    feed_mismatch,
)

if TYPE_CHECKING:  # reference.py imports the runners; this module is read before them
    import onnx

    from sase_deploy.report.reference import Reference

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
    inputs: InputMetadata | None = None  # from its graph (an engine's built_onnx); None: unknown
    outputs: tuple[str, ...] | None = None


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
    from sase_deploy.calibration.sources import model_batch
    from sase_deploy.engines.build import graph_precision
    from sase_deploy.graph_io import graph_inputs, load_onnx

    model = load_onnx(path)
    precision = graph_precision(model)
    backend = ort_backend()

    def make_runner() -> Runner:
        from sase_deploy.runtime.ort import OrtCudaRunner, OrtRunner

        return OrtCudaRunner(path) if backend == "onnxruntime-cuda" else OrtRunner(path)

    target = "cuda" if backend == "onnxruntime-cuda" else "cpu"
    inputs, outputs = model_io(model)
    return Candidate(
        name, path, "onnx", precision, backend, target, make_runner=make_runner,
        fixed_batch=model_batch(graph_inputs(model)), inputs=inputs, outputs=outputs,
    )  # fmt: skip


def model_io(model: onnx.ModelProto) -> tuple[InputMetadata, tuple[str, ...]]:
    """(inputs as `Runner.input_metadata` spells them, output names) of an ONNX graph."""
    from sase_deploy.graph_io import graph_inputs

    inputs: InputMetadata = {i.name: (i.dtype, i.shape) for i in graph_inputs(model)}
    return inputs, tuple(o.name for o in model.graph.output)


def _built_onnx_io(
    manifest: EngineManifest, folder: Path
) -> tuple[InputMetadata | None, tuple[str, ...] | None]:
    """The I/O of the graph an engine was built from, when that file is still readable: at its
    recorded path, else by name in the engine's `folder` (the path was recorded relative to
    where the build ran)."""
    import onnx
    from google.protobuf.message import DecodeError

    recorded = manifest.built_onnx.path
    found = [p for p in (recorded, folder / recorded.name) if p.is_file()]
    if not found:
        return None, None
    try:
        return model_io(onnx.load(str(found[0]), load_external_data=False))
    except (OSError, ValueError, DecodeError):
        return None, None


def _build_facts(manifest: EngineManifest, path: Path) -> dict[str, Any]:
    """What the report says of a build: its manifest, BUILD_FACTS that are set, the graph."""
    facts: dict[str, Any] = {"manifest": str(path)}
    facts.update({k: getattr(manifest, k) for k in BUILD_FACTS if getattr(manifest, k) is not None})
    facts["built_onnx"] = str(manifest.built_onnx.path)
    return facts


def engine_blocker(manifest: EngineManifest) -> str | None:
    """Why the engine of `manifest` cannot run on this machine (None: it can)."""
    from sase_deploy.engines.flavours import find_flavour

    gpu = _local_gpu()
    if gpu is None:
        return "built, not run: no GPU"
    flavour = find_flavour(manifest.flavour_name)
    if not flavour.installed:
        return f"built, not run: {flavour.name} is not installed ({flavour.reason})"
    target = manifest.target
    if gpu.compute_capability not in target.get("compute_capabilities", []):
        return f"built, not run: engine for {target['sm']}; this GPU is {gpu.sm}"
    return None


def _artifact_candidate(path: Path, name: str, kind: str) -> Candidate:
    beside = manifest_path(path)
    if not beside.is_file():
        raise UserError(
            f"{path}: no build manifest beside it ({beside.name}); compare engines "
            "written by 'sase-deploy build', or rebuild it there"
        )
    manifest = read_record(beside, EngineManifest)
    target, backend = manifest.target_name, manifest.backend
    facts = _build_facts(manifest, beside)
    if kind == "bundle":
        why = "built, not run: a bundle builds its engine on the device (bash build.sh)"
        return Candidate(name, path, kind, manifest.precision, backend, target, facts, why)
    from sase_deploy.engines.build import check_engine_intact

    check_engine_intact(path, manifest, beside)
    blocker = engine_blocker(manifest)

    def make_runner() -> Runner:
        from sase_deploy.engines.flavours import find_flavour
        from sase_deploy.engines.tensorrt import TrtRunner

        return TrtRunner(path, find_flavour(manifest.flavour_name))

    inputs, outputs = _built_onnx_io(manifest, beside.parent)
    return Candidate(
        name, path, kind, manifest.precision, backend, target, facts, blocker, make_runner,
        inputs=inputs, outputs=outputs,
    )  # fmt: skip


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


def check_candidates_match(reference: Reference, candidates: Sequence[Candidate]) -> None:
    """Before anything runs: UserError when a runnable candidate takes other inputs than the
    reference (names, count, dtypes, non-batch dims; the batch is `_accuracy_batch`'s) or its
    outputs lack one of the reference's. Candidates whose I/O is unknown pass (their runner
    checks each feed).

    Args:
        reference: from `load_reference`.
        candidates: from `resolve_candidates`.
    """
    expected: InputMetadata = {
        i.name: (np.dtype(i.dtype), (None, *i.shape[1:])) for i in reference.inputs
    }
    for c in candidates:
        if c.blocker is not None:
            continue
        if c.inputs is not None:
            unbatched = {n: (d, (None, *s[1:]) if s else s) for n, (d, s) in c.inputs.items()}
            problem = feed_mismatch(unbatched, expected)
            if problem is not None:
                raise UserError(
                    f"candidate {c.name} takes {describe_inputs(unbatched)} but the reference "
                    f"takes {describe_inputs(expected)} ({problem}); {FEED_FIX}"
                )
        missing = [
            n for n in reference.output_names if c.outputs is not None and n not in c.outputs
        ]
        if missing:
            raise UserError(
                f"candidate {c.name} returns {', '.join(c.outputs or ())} but the reference "
                f"returns {', '.join(reference.output_names)} ({', '.join(missing)} missing); "
                "compare models exported from the same network with the same output names "
                "(sase-deploy export --output-name)"
            )


def check_output_shapes(label: str, reference: Outputs, got: Outputs) -> None:
    """After a run: UserError when a candidate output's shape or kind (float / int / bool)
    differs from the reference's, instead of a broadcasting error in the metrics.

    Args:
        label: the candidate's name.
        reference: the reference's outputs (all batches).
        got: the candidate's outputs for the same feeds.
    """
    for name, ref in reference.items():
        value = got.get(name)
        if value is None:
            continue
        if value.shape != ref.shape or value.dtype.kind != ref.dtype.kind:
            raise UserError(
                f"candidate {label} returns {name} {value.dtype}{list(value.shape)} but the "
                f"reference returns {name} {ref.dtype}{list(ref.shape)}; compare models exported "
                "from the same network with the same input shapes"
            )
