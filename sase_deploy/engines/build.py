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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from sase_deploy import __version__
from sase_deploy._io import (
    atomic_path,
    sha256_file,
    sha256_model,
    write_bytes_atomic,
    write_json_atomic,
)
from sase_deploy.engines.cache import (
    cache_key,
    cached_manifest,
    check_engine_intact,
    hash_inputs,
    locked,
)
from sase_deploy.engines.flavours import Flavour
from sase_deploy.engines.plan import BACKENDS, PRECISIONS, plan_backend
from sase_deploy.engines.precision import (
    Stage,
    graph_precision,
    model_stem,
    prepare_onnx,
    reads_typed_graph,
)
from sase_deploy.engines.targets import Target, check_request, get_target
from sase_deploy.errors import UserError

DEFAULT_BATCH = (1, 8, 8)
MANIFEST_FORMAT = "sase-deploy.engine/1"


@dataclass(frozen=True)
class BuildRequest:
    """One `sase-deploy build` call.

    onnx: the input model (FP32 export, or already FP16 / INT8). target: a target name
    (`sase-deploy targets`). precision: fp32 | fp16 | int8. output_dir: artifacts go to
    `output_dir/<target>/`. calibration: a `calibrate` output folder (INT8 ranges); data: a
    calibration source (as for `calibrate --data`) used when no folder is given. batch:
    (min, opt, max) of a dynamic batch dim. workspace_mb: builder workspace (default: the
    target's). timing_cache: TensorRT timing cache file. backend: one of BACKENDS.
    dla_core: build for this DLA core (Jetson). samples: calibration samples for `data`.
    """

    onnx: Path
    target: str
    output_dir: Path
    precision: str = "fp32"
    calibration: Path | None = None
    data: str | None = None
    batch: tuple[int, int, int] | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    backend: str = "auto"
    dla_core: int | None = None
    samples: int = 512


@dataclass
class BuildResult:
    """What was produced: `artifact` is the engine, ONNX model or bundle folder."""

    target: str
    backend: str
    precision: str
    artifact: Path
    manifest_path: Path
    cached: bool
    manifest: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        facts = {k: self.manifest.get(k) for k in ("build_seconds", "engine_bytes", "layers")}
        return {
            "target": self.target,
            "backend": self.backend,
            "precision": self.precision,
            "artifact": str(self.artifact),
            "manifest": str(self.manifest_path),
            "cached": self.cached,
            "built_onnx": self.manifest.get("built_onnx", {}).get("path"),
            **facts,
            "layer_types": self.manifest.get("layer_types"),
            "tensor_dtypes": self.manifest.get("tensor_dtypes"),
        }


def _input_profile(
    model: onnx.ModelProto, batch: tuple[int, int, int] | None
) -> dict[str, tuple[tuple[int, ...], ...]] | None:
    """(min, opt, max) shapes for inputs with a dynamic batch dim; None for a static graph."""
    inits = {i.name for i in model.graph.initializer}
    profile: dict[str, tuple[tuple[int, ...], ...]] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
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
    stem: `<model>.<precision>`, the artifact's file stem.
    """

    target: Target
    backend: str
    flavour: Flavour | None
    source_precision: str
    profile: dict[str, Any] | None
    workspace_mb: int
    out_dir: Path
    stem: str


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
        stem=f"{model_stem(request.onnx)}.{request.precision}",
    )


def _key_facts(request: BuildRequest, plan: _Plan) -> dict[str, Any]:
    """Everything that decides the artifact's bytes: what `cache_key` hashes."""
    return {
        "format": MANIFEST_FORMAT,
        "sase_deploy": __version__,
        "inputs": hash_inputs(request),
        "target": plan.target.to_dict(),
        "precision": request.precision,
        "backend": plan.backend,
        "flavour": plan.flavour.to_dict() if plan.flavour else None,
        "profile": plan.profile,
        "workspace_mb": plan.workspace_mb,
        "dla_core": request.dla_core,
        "data": request.data if request.calibration is None else None,
    }


def build(request: BuildRequest, on_stage: Stage | None = None) -> BuildResult:
    """Produce the artifact `request` asks for (see `BuildRequest`); cached by `cache_key`.

    Args:
        request: what to build.
        on_stage: called with the name of each slow step as it starts (convert, calibrate,
            build), e.g. to show progress.

    Raises UserError for bad input or a graph the builder rejects; nothing partial is written.
    """
    stage = on_stage or (lambda _name: None)
    plan = _plan(request)
    key_facts = _key_facts(request, plan)
    key = cache_key(key_facts)
    manifest_path = plan.out_dir / f"{plan.stem}.manifest.json"
    with locked(plan.out_dir / f".{plan.stem}.lock"):
        cached = cached_manifest(manifest_path, key)
        if cached is not None:
            return BuildResult(
                plan.target.name,
                plan.backend,
                request.precision,
                Path(cached["artifact"]),
                manifest_path,
                True,
                cached,
            )
        artifact, manifest = _make(request, plan, {**key_facts, "cache_key": key}, stage)
        write_json_atomic(manifest_path, manifest)
    return BuildResult(
        plan.target.name, plan.backend, request.precision, artifact, manifest_path, False, manifest
    )


def _make(
    request: BuildRequest, plan: _Plan, keyed: dict[str, Any], stage: Stage
) -> tuple[Path, dict[str, Any]]:
    """Prepare the graph and produce the artifact; returns it and its manifest (not yet
    written), which starts with `keyed`: the key facts and their `cache_key`."""
    typed = reads_typed_graph(plan.backend, plan.flavour, plan.target)
    built_onnx, made = prepare_onnx(request, plan.source_precision, plan.out_dir, typed, stage)
    manifest: dict[str, Any] = {
        **keyed,
        "source_onnx": {"path": str(request.onnx), "precision": plan.source_precision},
        "built_onnx": {
            "path": str(built_onnx),
            "sha256": sha256_model(built_onnx),
            **_plain(made),
        },
    }
    stage(f"build {plan.backend}")
    artifact = _produce(request, plan, built_onnx, made, manifest)
    manifest["artifact"] = str(artifact)
    manifest["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return artifact, manifest


def _plain(facts: dict[str, Any]) -> dict[str, Any]:
    """Paths as strings, for JSON."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in facts.items()}


def _produce(
    request: BuildRequest,
    plan: _Plan,
    onnx_path: Path,
    made: dict[str, Any],
    manifest: dict[str, Any],
) -> Path:
    """Write the artifact for the plan's backend from `onnx_path` (made as `made` says) and add
    its facts to `manifest`."""
    if plan.backend == "onnxruntime":
        return _write_ort_model(onnx_path, plan.out_dir / f"{plan.stem}.onnx", manifest)
    if plan.backend == "bundle":
        from sase_deploy.engines.bundle import write_bundle

        out = plan.out_dir / f"{plan.stem}.bundle"
        manifest["bundle"] = write_bundle(
            out,
            plan.target,
            onnx_path,
            request.precision,
            calib_cache=made.get("calib_cache"),
            shapes=plan.profile,
            workspace_mb=plan.workspace_mb,
            dla_core=request.dla_core,
            manifest=manifest,
            strongly_typed_graph=request.precision != "fp32" and not made.get("flags"),
            link_onnx=onnx_path != request.onnx,  # made here (convert / calibrate): ours
        )
        return out
    return _build_engine(request, plan, onnx_path, made, manifest)


def _build_engine(
    request: BuildRequest,
    plan: _Plan,
    onnx_path: Path,
    made: dict[str, Any],
    manifest: dict[str, Any],
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
        flags=tuple(made.get("flags", ())),
        calib_cache=made.get("calib_cache") if made.get("flags") else None,
        dla_core=request.dla_core,
    )
    built = build_engine(onnx_path, plan.flavour, options)
    engine_path = write_bytes_atomic(plan.out_dir / f"{plan.stem}.engine", built.engine)
    manifest.update(
        {
            "build_seconds": round(built.seconds, 3),
            "engine_bytes": len(built.engine),
            "artifact_sha256": hashlib.sha256(built.engine).hexdigest(),
            "layers": len(built.layers),
            "layer_types": built.layer_types,
            "tensor_dtypes": built.output_dtypes,
            "layer_table": built.layers,
            "builder_log": built.log,
        }
    )
    return engine_path


def _write_ort_model(onnx_path: Path, dest: Path, manifest: dict[str, Any]) -> Path:
    """The model ONNX Runtime runs, checked by creating a CPU session."""
    from sase_deploy.engines.ort import OrtRunner

    if onnx_path.resolve() != dest.resolve():
        with atomic_path(dest) as tmp:
            shutil.copyfile(onnx_path, tmp)
    runner = OrtRunner(dest)
    with runner:
        providers: list[str] = runner.session.get_providers() if runner.session else []
    manifest.update({"artifact_sha256": sha256_file(dest), "providers": providers})
    return dest


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BuildRequest",
    "BuildResult",
    "build",
    "check_engine_intact",
    "graph_precision",
    "plan_backend",
]
