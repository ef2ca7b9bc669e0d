"""`build`: one ONNX -> one artifact per target and precision, cached by what went into it.

For each request: pick how this machine produces the target's artifact (`plan_backend`), bring
the graph to the precision the builder needs (strongly typed builders read FP16 casts / INT8
Q/DQ from the graph: this project's own `convert` / `calibrate` run first), then build a
TensorRT-RTX or TensorRT engine, write an ONNX Runtime model, or write a bundle that builds on
the device. Every artifact gets a manifest whose `cache_key` hashes everything that decided its
bytes; an identical request finds it and returns at once.

`build` runs the stages in order: `_plan` (checks, backend, profile), the cache look-up under a
lock (`engines/cache.py`), precision preparation (`engines/precision.py`), then `_produce`.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from sase_deploy import __version__
from sase_deploy._io import atomic_path, sha256_file, sha256_model, write_bytes_atomic
from sase_deploy.artifacts import (
    ENGINE_FORMAT,
    MANIFEST_SUFFIX,
    BuiltOnnx,
    EngineManifest,
    artifact_path,
    fact_key,
    model_stem,
    write_record,
)
from sase_deploy.engines.cache import (
    cached_manifest,
    check_engine_intact,
    hash_inputs,
    locked,
)
from sase_deploy.engines.flavours import Flavour
from sase_deploy.engines.plan import plan_backend
from sase_deploy.engines.precision import (
    graph_precision,
    prepare_onnx,
    reads_typed_graph,
)
from sase_deploy.engines.request import BuildRequest
from sase_deploy.engines.targets import Target, check_request, get_target
from sase_deploy.errors import UserError
from sase_deploy.vocabulary import PRECISIONS, StageCallback

DEFAULT_BATCH = (1, 8, 8)


@dataclass
class BuildResult:
    """What was produced: `artifact` is the engine, ONNX model or bundle folder."""

    target: str
    backend: str
    precision: str
    artifact: Path
    manifest_path: Path
    cached: bool
    manifest: EngineManifest

    def to_dict(self) -> dict[str, Any]:
        made = self.manifest
        return {
            "target": self.target,
            "backend": self.backend,
            "precision": self.precision,
            "artifact": str(self.artifact),
            "manifest": str(self.manifest_path),
            "cached": self.cached,
            "built_onnx": str(made.built_onnx.path),
            "build_seconds": made.build_seconds,
            "engine_bytes": made.engine_bytes,
            "layers": made.layers,
            "layer_types": made.layer_types,
            "tensor_dtypes": made.tensor_dtypes,
            "compute_dtypes": compute_dtypes(made.layer_table),
        }


def compute_dtypes(layer_table: list[dict[str, Any]] | None) -> dict[str, int] | None:
    """Layers of the parsed network by the type they compute in (their first output's),
    constants aside: what a strongly typed builder runs in INT8 / FP16 / FP32."""
    if layer_table is None:
        return None
    counts = Counter(
        layer["dtypes"][0]
        for layer in layer_table
        if layer["type"] != "CONSTANT" and layer["dtypes"]
    )
    return dict(counts.most_common())


def _input_profile(
    model: onnx.ModelProto, batch: tuple[int, int, int] | None
) -> dict[str, tuple[tuple[int, ...], ...]] | None:
    """(min, opt, max) shapes for inputs with a dynamic batch dim; None for a static graph."""
    from sase_deploy.graph_io import real_inputs

    profile: dict[str, tuple[tuple[int, ...], ...]] = {}
    for value in real_inputs(model):
        dims = [
            d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
        ]
        if -1 in dims[1:]:
            raise UserError(
                f"input '{value.name}' has a dynamic non-batch dim {dims}; "
                "export with a fixed input size (sase-deploy export --input-shape)"
            )
        if dims and dims[0] == -1:
            low, opt, high = batch or DEFAULT_BATCH
            profile[value.name] = tuple((b, *dims[1:]) for b in (low, opt, high))
        elif batch is not None and dims and batch != (dims[0],) * 3:
            raise UserError(
                f"{value.name} has a fixed batch of {dims[0]}; --batch needs a "
                "dynamic-batch export (sase-deploy export --dynamic-batch)"
            )
    return profile or None


@dataclass(frozen=True)
class _Plan:
    """What `build` settles before it touches the output folder.

    backend / flavour: from `plan_backend`. source_precision: `graph_precision` of the input.
    profile: (min, opt, max) shapes of dynamic-batch inputs, None for a static graph.
    workspace_mb: the request's, else the target's default. out_dir: `output_dir/<target>/`.
    stem: `model_stem` of the input; precision: the request's (artifacts are `path(suffix)`).
    """

    target: Target
    backend: str
    flavour: Flavour | None
    source_precision: str
    profile: dict[str, Any] | None
    workspace_mb: int
    out_dir: Path
    stem: str
    precision: str

    def path(self, suffix: str) -> Path:
        """`out_dir/<stem>.<precision><suffix>` (`artifacts.artifact_path`)."""
        return artifact_path(self.out_dir, self.stem, self.precision, suffix)


def _plan(request: BuildRequest) -> _Plan:
    """Check the request against the target, this machine and the graph; UserError if it
    cannot be built."""
    from sase_deploy.graph_io import load_onnx

    if request.precision not in PRECISIONS:
        raise UserError(
            f"unknown precision {request.precision!r}; choose one of: {', '.join(PRECISIONS)}"
        )
    target = get_target(request.target)
    check_request(target, request.precision, request.dla_core)
    backend, flavour = plan_backend(target, request.backend, request.dla_core)
    model = load_onnx(request.onnx)
    source_precision = graph_precision(model)
    if source_precision not in ("fp32", request.precision):
        raise UserError(
            f"{request.onnx} is already {source_precision}; pass --precision "
            f"{source_precision} or build from the FP32 export"
        )
    return _Plan(
        target=target,
        backend=backend,
        flavour=flavour,
        source_precision=source_precision,
        profile=_input_profile(model, request.batch),
        workspace_mb=request.workspace_mb or target.default_workspace_mb,
        out_dir=request.output_dir / target.name,
        stem=model_stem(request.onnx),
        precision=request.precision,
    )


def _key_facts(request: BuildRequest, plan: _Plan) -> dict[str, Any]:
    """Everything that decides the artifact's bytes: with the manifest format, what the cache
    key hashes; the engine manifest's first fields."""
    return {
        "sase_deploy": __version__,
        "inputs_sha256": hash_inputs(request),
        "target": plan.target.to_dict(),
        "precision": request.precision,
        "backend": plan.backend,
        "flavour": plan.flavour.to_dict() if plan.flavour else None,
        "profile": plan.profile,
        "workspace_mb": plan.workspace_mb,
        "dla_core": request.dla_core,
        "data": request.data if request.calibration is None else None,
    }


def build(request: BuildRequest, on_stage: StageCallback | None = None) -> BuildResult:
    """Produce the artifact `request` asks for (see `BuildRequest`); cached by its key facts.

    Args:
        request: what to build.
        on_stage: called with the name of each slow step as it starts (convert, calibrate,
            build), e.g. to show progress.

    Raises UserError for bad input or a graph the builder rejects; nothing partial is written.
    """
    stage = on_stage or (lambda _name: None)
    plan = _plan(request)
    key_facts = _key_facts(request, plan)
    key = fact_key({"format": ENGINE_FORMAT, **key_facts})
    manifest_path = plan.path(MANIFEST_SUFFIX)
    with locked(plan.out_dir / f".{plan.stem}.{plan.precision}.lock"):
        cached = cached_manifest(manifest_path, key)
        if cached is not None:
            return BuildResult(
                plan.target.name,
                plan.backend,
                request.precision,
                Path(str(cached.artifact)),
                manifest_path,
                True,
                cached,
            )
        artifact, manifest = _make(request, plan, key_facts, key, stage)
        write_record(manifest_path, manifest)
    return BuildResult(
        plan.target.name, plan.backend, request.precision, artifact, manifest_path, False, manifest
    )


def _make(
    request: BuildRequest, plan: _Plan, facts: dict[str, Any], key: str, stage: StageCallback
) -> tuple[Path, EngineManifest]:
    """Prepare the graph and produce the artifact; returns it and its manifest (not yet
    written), which starts with the key `facts` and their `key`."""
    typed = reads_typed_graph(plan.backend, plan.flavour, plan.target)
    made = prepare_onnx(request, plan.source_precision, plan.out_dir, typed, stage)
    manifest = EngineManifest(
        **facts,
        cache_key=key,
        source_onnx={"path": str(request.onnx), "precision": plan.source_precision},
        built_onnx=made,
        built_onnx_sha256=sha256_model(made.path),
    )
    stage(f"build {plan.backend}")
    artifact = _produce(request, plan, made, manifest)
    manifest.artifact = str(artifact)
    manifest.created_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return artifact, manifest


def _produce(request: BuildRequest, plan: _Plan, made: BuiltOnnx, manifest: EngineManifest) -> Path:
    """Write the artifact for the plan's backend from the graph `made` and add its facts to
    `manifest`."""
    onnx_path = made.path
    if plan.backend == "onnxruntime":
        return _write_ort_model(onnx_path, plan.path(".onnx"), manifest)
    if plan.backend == "bundle":
        from sase_deploy.engines.bundle import write_bundle

        out = plan.path(".bundle")
        manifest.bundle = write_bundle(
            out,
            plan.target,
            onnx_path,
            request.precision,
            calib_cache=made.calib_cache,
            shapes=plan.profile,
            workspace_mb=plan.workspace_mb,
            dla_core=request.dla_core,
            manifest=manifest.to_dict(),
            strongly_typed_graph=request.precision != "fp32" and not made.flags,
            link_onnx=onnx_path != request.onnx,  # made here (convert / calibrate): ours
        )
        return out
    return _build_engine(request, plan, made, manifest)


def _build_engine(
    request: BuildRequest, plan: _Plan, made: BuiltOnnx, manifest: EngineManifest
) -> Path:
    """Build a TensorRT or TensorRT-RTX engine here, write it and add its facts to `manifest`."""
    from sase_deploy.engines.tensorrt import BuildOptions, build_engine

    assert plan.flavour is not None
    target = plan.target
    options = BuildOptions(
        compute_capabilities=target.compute_capabilities if plan.backend == "tensorrt-rtx" else (),
        profile=plan.profile,
        workspace_mb=plan.workspace_mb,
        timing_cache=request.timing_cache,
        flags=made.flags,
        calib_cache=made.calib_cache if made.flags else None,
        dla_core=request.dla_core,
    )
    built = build_engine(made.path, plan.flavour, options)
    engine_path = write_bytes_atomic(plan.path(".engine"), built.engine)
    manifest.build_seconds = round(built.seconds, 3)
    manifest.engine_bytes = len(built.engine)
    manifest.sha256 = hashlib.sha256(built.engine).hexdigest()
    manifest.layers = len(built.layers)
    manifest.layer_types = built.layer_types
    manifest.tensor_dtypes = built.output_dtypes
    manifest.layer_table = built.layers
    manifest.builder_log = built.log
    return engine_path


def _write_ort_model(onnx_path: Path, dest: Path, manifest: EngineManifest) -> Path:
    """The model ONNX Runtime runs, checked by creating a CPU session."""
    from sase_deploy.runtime.ort import OrtRunner

    if onnx_path.resolve() != dest.resolve():
        with atomic_path(dest) as tmp:
            shutil.copyfile(onnx_path, tmp)
    runner = OrtRunner(dest)
    with runner:
        providers: list[str] = runner.session.get_providers() if runner.session else []
    manifest.sha256, manifest.providers = sha256_file(dest), providers
    return dest


__all__ = [
    "BuildResult",
    "build",
    "check_engine_intact",
    "graph_precision",
    "plan_backend",
]
