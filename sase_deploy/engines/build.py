"""`build`: one ONNX -> one artifact per target and precision, cached by what went into it.

For each request: pick how this machine produces the target's artifact (`plan_backend`), bring
the graph to the precision the builder needs (strongly typed builders read FP16 casts / INT8
Q/DQ from the graph: this project's own `convert` / `calibrate` run first), then build a
TensorRT-RTX or TensorRT engine, write an ONNX Runtime model, or write a bundle that builds on
the device. Every artifact gets a manifest whose `cache_key` hashes everything that decided its
bytes; an identical request finds it and returns at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from sase_deploy import __version__
from sase_deploy._io import (
    atomic_path,
    output_error,
    output_folder,
    sha256_file,
    sha256_model,
    sweep_stale_temps,
    write_bytes_atomic,
    write_json_atomic,
)
from sase_deploy.engines.flavours import Flavour
from sase_deploy.engines.plan import BACKENDS, PRECISIONS, plan_backend
from sase_deploy.engines.targets import Target, check_request, get_target
from sase_deploy.errors import UserError

DEFAULT_BATCH = (1, 8, 8)
MANIFEST_FORMAT = "sase-deploy.engine/1"
Stage = Callable[[str], None]


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


def graph_precision(model: onnx.ModelProto) -> str:
    """ "int8" when the graph holds Q/DQ, "fp16" when it computes in float16, else "fp32"."""
    ops = {node.op_type for node in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    half = onnx.TensorProto.FLOAT16
    casts_to_half = any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
        for n in model.graph.node
    )
    if casts_to_half or any(init.data_type == half for init in model.graph.initializer):
        return "fp16"
    return "fp32"


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


def _hash_inputs(request: BuildRequest) -> dict[str, str | None]:
    """sha256 of every file that decides the artifact's bytes."""
    found: dict[str, str | None] = {"onnx": sha256_model(request.onnx)}
    if request.precision == "int8" and request.calibration is not None:
        for path in sorted(request.calibration.glob(f"{_stem(request.onnx)}.*")):
            found[f"calibration/{path.name}"] = sha256_file(path)
    elif request.precision == "int8" and request.data and Path(request.data).is_file():
        found["data"] = sha256_file(request.data)
    return found


def _stem(path: Path) -> str:
    name = path.name.removesuffix(".onnx")
    for suffix in (".fp16", ".int8", ".fp32"):
        name = name.removesuffix(suffix)
    return name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock so two builds of the same artifact do not interleave.

    The folders and the lock file made here are removed again when the block fails (bad input
    leaves the output folder as it was); an output place that cannot be written is a UserError.
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


def _prepare_onnx(
    request: BuildRequest, source_precision: str, out_dir: Path, graph_typed: bool, stage: Stage
) -> tuple[Path, dict[str, Any]]:
    """The ONNX to build and how it was made.

    `graph_typed`: the builder takes precision from the graph (TensorRT-RTX, TensorRT >= 11,
    ONNX Runtime), so FP16 / INT8 graphs are made here; otherwise (TensorRT 10 flags) the FP32
    graph is built with flags, INT8 with the calibration cache.
    """
    precision, stem = request.precision, _stem(request.onnx)
    if source_precision == precision or precision == "fp32":
        return request.onnx, {"made_by": "input"}
    if precision == "fp16":
        if not graph_typed:
            return request.onnx, {"made_by": "input", "flags": ["fp16"]}
        from sase_deploy.calibration import convert_onnx

        stage("convert fp16")
        calib_json = _calibration_file(request, "calib.json", required=False)
        out = out_dir / f"{stem}.fp16.onnx"
        convert_onnx(request.onnx, out, precision="fp16", calib_json=calib_json)
        return out, {"made_by": "sase-deploy convert --precision fp16", "calib_json": calib_json}
    int8_onnx, cache = _int8_files(request, out_dir, graph_typed, stage)
    if graph_typed and int8_onnx is not None:  # the Q/DQ graph carries the ranges: no cache
        return int8_onnx, {"made_by": "sase-deploy calibrate (Q/DQ)"}
    return request.onnx, {"made_by": "input", "flags": ["int8"], "calib_cache": cache}


def _calibration_file(request: BuildRequest, suffix: str, required: bool) -> Path | None:
    if request.calibration is None:
        return None
    path = request.calibration / f"{_stem(request.onnx)}.{suffix}"
    if path.is_file():
        return path
    if required:
        raise UserError(
            f"{path} not found; run 'sase-deploy calibrate {request.onnx} --data SRC "
            f"-o {request.calibration}' first"
        )
    return None


def _check_calibration_model(request: BuildRequest) -> None:
    """Ranges calibrated on another model (its sha256 in NAME.calib.json) are refused."""
    calib_json = _calibration_file(request, "calib.json", required=False)
    if calib_json is None:
        return
    try:
        recorded = json.loads(calib_json.read_text()).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{calib_json} is not a calibration record; re-run calibrate") from None
    if recorded is not None and recorded != sha256_file(request.onnx):
        raise UserError(
            f"{calib_json} was calibrated on another model than {request.onnx} (sha256 differs); "
            f"re-run 'sase-deploy calibrate {request.onnx} --data SRC -o {request.calibration}'"
        )


def _int8_files(
    request: BuildRequest, out_dir: Path, graph_typed: bool, stage: Stage
) -> tuple[Path | None, Path | None]:
    """(Q/DQ ONNX, TensorRT-10 cache) from --calibration, or made from --data. A folder needs
    only what the builder reads: the Q/DQ graph when typed, else the cache (Jetson bundles)."""
    if request.calibration is not None:
        _check_calibration_model(request)
        int8 = _calibration_file(request, "int8.onnx", required=graph_typed)
        cache = _calibration_file(request, "calib.cache", required=not graph_typed)
        return int8, cache
    if request.data is None:
        raise UserError(
            "INT8 needs calibration ranges: pass --calibration DIR (from "
            "'sase-deploy calibrate') or --data SRC to calibrate now"
        )
    from sase_deploy.calibration import calibrate_onnx

    stage("calibrate int8")
    result = calibrate_onnx(
        request.onnx, request.data, out_dir / "calibration", samples=request.samples
    )
    return result.int8_onnx, result.cache


def build(request: BuildRequest, on_stage: Stage | None = None) -> BuildResult:
    """Produce the artifact `request` asks for (see `BuildRequest`); cached by `cache_key`.

    Raises UserError for bad input or a graph the builder rejects; nothing partial is written.
    """
    stage = on_stage or (lambda _name: None)
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
    profile = _input_profile(model, request.batch)
    workspace = request.workspace_mb or target.default_workspace_mb
    out_dir = request.output_dir / target.name
    stem = f"{_stem(request.onnx)}.{request.precision}"
    key_facts = {
        "format": MANIFEST_FORMAT,
        "sase_deploy": __version__,
        "inputs": _hash_inputs(request),
        "target": target.to_dict(),
        "precision": request.precision,
        "backend": backend,
        "flavour": flavour.to_dict() if flavour else None,
        "profile": profile,
        "workspace_mb": workspace,
        "dla_core": request.dla_core,
        "data": request.data if request.calibration is None else None,
    }
    cache_key = hashlib.sha256(json.dumps(key_facts, sort_keys=True, default=str).encode())
    manifest_path = out_dir / f"{stem}.manifest.json"
    with _locked(out_dir / f".{stem}.lock"):
        cached = _cached(manifest_path, cache_key.hexdigest())
        if cached is not None:
            return BuildResult(
                target.name,
                backend,
                request.precision,
                Path(cached["artifact"]),
                manifest_path,
                True,
                cached,
            )
        graph_typed = backend != "tensorrt" or bool(flavour and flavour.strongly_typed_only)
        if backend == "bundle":
            graph_typed = not target.tensorrt or int(target.tensorrt.split(".")[0]) >= 11
        built_onnx, made = _prepare_onnx(request, source_precision, out_dir, graph_typed, stage)
        manifest: dict[str, Any] = {
            **key_facts,
            "cache_key": cache_key.hexdigest(),
            "source_onnx": {"path": str(request.onnx), "precision": source_precision},
            "built_onnx": {
                "path": str(built_onnx),
                "sha256": sha256_model(built_onnx),
                **_plain(made),
            },
        }
        stage(f"build {backend}")
        artifact = _produce(
            backend, flavour, built_onnx, out_dir, stem, target, made, profile, request, manifest
        )
        manifest["artifact"] = str(artifact)
        manifest["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(manifest_path, manifest)
    return BuildResult(
        target.name, backend, request.precision, artifact, manifest_path, False, manifest
    )


def _plain(facts: dict[str, Any]) -> dict[str, Any]:
    """Paths as strings, for JSON."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in facts.items()}


def _cached(manifest_path: Path, key: str) -> dict[str, Any] | None:
    """The manifest of an identical earlier build whose artifact is intact, else None."""
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
    overwritten or damaged since the build); manifests without the facts pass."""
    size, digest = manifest.get("engine_bytes"), manifest.get("artifact_sha256")
    actual = engine.stat().st_size
    if (isinstance(size, int) and actual != size) or (
        isinstance(digest, str) and sha256_file(engine) != digest
    ):
        raise UserError(
            f"{engine} ({actual} bytes) is not the engine {manifest_path.name} describes "
            "(truncated or replaced since it was built); rebuild it with 'sase-deploy build'"
        )


def _produce(
    backend: str,
    flavour: Flavour | None,
    onnx_path: Path,
    out_dir: Path,
    stem: str,
    target: Target,
    made: dict[str, Any],
    profile: dict[str, Any] | None,
    request: BuildRequest,
    manifest: dict[str, Any],
) -> Path:
    """Write the artifact for `backend` and add its facts to `manifest`."""
    if backend == "onnxruntime":
        return _write_ort_model(onnx_path, out_dir / f"{stem}.onnx", manifest)
    if backend == "bundle":
        from sase_deploy.engines.bundle import write_bundle

        facts = write_bundle(
            out_dir / f"{stem}.bundle",
            target,
            onnx_path,
            request.precision,
            calib_cache=made.get("calib_cache"),
            shapes=profile,
            workspace_mb=manifest["workspace_mb"],
            dla_core=request.dla_core,
            manifest=manifest,
            strongly_typed_graph=request.precision != "fp32" and not made.get("flags"),
        )
        manifest["bundle"] = facts
        return out_dir / f"{stem}.bundle"
    from sase_deploy.engines.tensorrt import BuildOptions, build_engine

    assert flavour is not None
    options = BuildOptions(
        compute_capabilities=target.compute_capabilities if backend == "tensorrt-rtx" else (),
        profile=profile,
        workspace_mb=manifest["workspace_mb"],
        timing_cache=request.timing_cache,
        flags=tuple(made.get("flags", ())),
        calib_cache=made.get("calib_cache") if made.get("flags") else None,
        dla_core=request.dla_core,
    )
    built = build_engine(onnx_path, flavour, options)
    engine_path = write_bytes_atomic(out_dir / f"{stem}.engine", built.engine)
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
