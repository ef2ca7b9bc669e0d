"""Reading what Triton needs from an artifact: its kind, the ONNX graph it runs, that graph's
inputs and outputs, and the batching the engine's profile allows; `triton_model_from` puts them
together as a `TritonModel`.

The I/O comes from the ONNX graph the artifact runs: the ONNX file itself, or for an engine the
`built_onnx` its build manifest names (an FP16 or INT8 graph may keep float32 I/O, so types are
read, never assumed). Batching follows the graph's first dim: dynamic -> `max_batch_size` > 0
with the batch dim left out of `dims`; fixed -> 0, full dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from sase_deploy._io import sha256_file
from sase_deploy.artifacts import (
    BundleManifest,
    EngineManifest,
    bundle_manifest_path,
    manifest_path,
    read_record,
    try_read,
)
from sase_deploy.errors import UserError
from sase_deploy.serving.model import (
    ENGINE_SUFFIXES,
    PLATFORMS,
    TritonModel,
    TritonTensor,
    check_model_name,
    default_model_name,
)

DEFAULT_MAX_BATCH = 8  # ONNX models with a dynamic batch dim and no --max-batch
_TYPE_NAMES = (
    {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "DOUBLE": "FP64"}
    | {n: n for n in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}
    | {"BOOL": "BOOL", "STRING": "STRING"}
)
TRITON_TYPES = {getattr(onnx.TensorProto, k): f"TYPE_{v}" for k, v in _TYPE_NAMES.items()}
RTX_NOTE = (
    "built with TensorRT-RTX: stock Triton's tensorrt_plan backend (TensorRT) cannot load it; "
    "serve the ONNX, or build with --backend bundle / tensorrt on the serving GPU"
)


@dataclass(frozen=True)
class _EngineSource:
    """What an engine's manifest says: the ONNX it was built from, its batch profile, target."""

    onnx: Path
    profile: dict[str, Any] | None
    target: str
    backend: str


def _kind(artifact: Path) -> str:
    """ "engine" or "onnx"; UserError for a bundle folder, a missing file or another suffix."""
    if artifact.is_dir() and (artifact / "build.sh").is_file():
        engine = next(iter(sorted(artifact.glob("*.engine"))), None)
        hint = f"pass {engine}" if engine else "then pass the engine it writes"
        raise UserError(
            f"{artifact} is a bundle, which Triton cannot serve: build the engine on the device "
            f"first (bash {artifact}/build.sh), {hint}"
        )
    if artifact.is_dir():
        raise UserError(f"{artifact} is a folder; pass the engine or .onnx file to serve")
    if not artifact.is_file():
        raise UserError(f"no such file: {artifact}; pass a built engine or an .onnx model")
    if artifact.suffix in ENGINE_SUFFIXES:
        return "engine"
    if artifact.suffix == ".onnx":
        return "onnx"
    raise UserError(
        f"{artifact}: cannot serve a '{artifact.suffix}' file; pass a TensorRT engine "
        f"({', '.join(ENGINE_SUFFIXES)}, from 'sase-deploy build') or an .onnx model"
    )


def _engine_source(engine: Path) -> _EngineSource:
    """Read the manifest beside `engine`: `sase-deploy build`'s `<stem>.manifest.json`, or the
    `manifest.json` of the bundle whose build.sh wrote the engine on the device."""
    from sase_deploy._io import sha256_model
    from sase_deploy.engines.cache import check_engine_intact

    build_manifest = manifest_path(engine)
    if build_manifest.is_file():
        facts = read_record(build_manifest, EngineManifest)
        check_engine_intact(engine, facts, build_manifest)
        onnx_path = _locate(facts.built_onnx.path, build_manifest.parent, engine)
        recorded = facts.built_onnx_sha256
        if recorded and sha256_model(onnx_path) != recorded:
            raise UserError(
                f"{onnx_path} changed since {engine.name} was built from it; rebuild the engine "
                "(sase-deploy build) so that its I/O can be read"
            )
        return _EngineSource(onnx_path, facts.profile, facts.target_name, facts.backend)
    bundle_manifest = bundle_manifest_path(engine.parent)
    # a bundle's manifest.json of this version or 0.2.0; any other manifest.json is not ours
    bundle = try_read(bundle_manifest, BundleManifest)
    if bundle is not None and bundle.engine_file == engine.name:
        onnx_path = _locate(engine.parent / str(bundle.onnx_file), engine.parent, engine)
        recorded = bundle.files_sha256.get(onnx_path.name)
        if recorded is not None and recorded != sha256_file(onnx_path):
            raise UserError(f"{onnx_path} changed since the bundle was written; bundle again")
        target = bundle.target_name or engine.parent.name
        return _EngineSource(onnx_path, bundle.profile, target, "tensorrt")
    raise UserError(
        f"{engine}: no build manifest beside it ({build_manifest.name}); the I/O is read from the "
        "ONNX the manifest names: pass an engine as 'sase-deploy build' wrote it, or the .onnx"
    )


def _locate(recorded: Path, folder: Path, engine: Path) -> Path:
    """The built ONNX at its recorded path, else by name beside the manifest (a moved folder,
    or a relative path recorded from another working directory)."""
    for candidate in (recorded, folder / recorded.name):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"{recorded}: the ONNX {engine.name} was built from is gone; its I/O comes from it: "
        "keep it beside the engine or rebuild (sase-deploy build)"
    )


def _value_dims(value: onnx.ValueInfoProto, where: Path) -> tuple[str, list[int]]:
    """(Triton type, dims with -1 for dynamic) of a graph input or output."""
    if not value.type.HasField("tensor_type"):
        raise UserError(f"{where}: '{value.name}' is not a tensor; Triton serves tensors only")
    tensor = value.type.tensor_type
    dtype = TRITON_TYPES.get(tensor.elem_type)
    if dtype is None:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise UserError(f"{where}: '{value.name}' has element type {kind}, which Triton lacks")
    if not tensor.HasField("shape"):
        raise UserError(f"{where}: '{value.name}' has no shape; export with output shapes")
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim
    ]
    return dtype, dims


IO = list[tuple[str, str, list[int]]]  # (name, Triton type, dims with -1 for dynamic)


def _graph_io(path: Path) -> tuple[IO, IO]:
    """(inputs, outputs) of the ONNX at `path`."""
    from sase_deploy.graph_io import infer_shapes, load_onnx, real_inputs

    model = load_onnx(path)
    if any(not o.type.tensor_type.HasField("shape") for o in model.graph.output):
        model = infer_shapes(model)  # fills what the export left out
    found = [(v.name, *_value_dims(v, path)) for v in real_inputs(model)]
    return found, [(v.name, *_value_dims(v, path)) for v in model.graph.output]


def _batch_range(profile: dict[str, Any] | None, engine: Path) -> tuple[int, int, int]:
    """(min, opt, max) of the batch dim in an engine's profile; one range for all inputs."""
    ranges = {tuple(int(shape[0]) for shape in shapes) for shapes in (profile or {}).values()}
    if len(ranges) != 1:
        raise UserError(
            f"{engine}: its manifest has {'no' if not ranges else 'several'} batch profile(s) for "
            "a dynamic batch dim; rebuild it with sase-deploy build"
        )
    low, opt, high = next(iter(ranges))
    return low, opt, high


def _batching(
    dynamic: bool, engine: _EngineSource | None, max_batch: int | None, where: Path
) -> tuple[int, tuple[int, ...], int | None]:
    """(max_batch_size, preferred sizes, fixed batch replacing a dynamic batch dim or None)."""
    if max_batch is not None and max_batch < 1:
        raise UserError(f"--max-batch {max_batch}: give a batch size of 1 or more")
    fixed_hint = "it has a fixed batch (export with --dynamic-batch to batch in Triton)"
    if not dynamic:
        if max_batch is not None:
            raise UserError(f"{where}: --max-batch needs a dynamic batch dim; {fixed_hint}")
        return 0, (), None
    if engine is None:  # ONNX Runtime takes any batch: Triton's batcher is capped here
        cap = max_batch or DEFAULT_MAX_BATCH
        return cap, (cap,), None
    low, opt, high = _batch_range(engine.profile, where)
    if low == high:  # the engine runs one batch size only: serve it unbatched at that size
        if max_batch is not None:
            raise UserError(f"{where}: --max-batch: the engine was built for batch {low} only")
        return 0, (), low
    if low > 1:
        raise UserError(
            f"{where}: its profile starts at batch {low} but Triton sends batches from 1; "
            f"rebuild with --batch 1:{opt}:{high}"
        )
    if max_batch is not None and max_batch > high:
        raise UserError(f"{where}: --max-batch {max_batch} exceeds the engine's profile max {high}")
    cap = max_batch or high
    return cap, tuple(sorted({min(opt, cap), cap})), None


def _tensors(
    values: IO, batching: bool, fixed: int | None, where: Path
) -> tuple[TritonTensor, ...]:
    found = []
    for name, dtype, dims in values:
        if batching and (not dims or dims[0] != -1):
            raise UserError(
                f"{where}: '{name}' has no dynamic batch dim {dims} while the inputs batch; "
                "Triton's batching needs it on every input and output"
            )
        if fixed is not None and dims and dims[0] == -1:
            dims = [fixed, *dims[1:]]
        found.append(TritonTensor(name, dtype, tuple(dims[1:] if batching else dims)))
    return tuple(found)


def triton_model_from(
    artifact: Path, name: str | None = None, max_batch: int | None = None
) -> TritonModel:
    """Describe `artifact` (a TensorRT engine `.engine`/`.plan` or an `.onnx`) for Triton.

    Args:
        artifact: an engine as `sase-deploy build` wrote it (its manifest beside it names the
            ONNX it was built from and the batch profile) or an ONNX model.
        name: the Triton model name; default `default_model_name(artifact, target)`.
        max_batch: cap on `max_batch_size` for a dynamic batch dim (default: the engine
            profile's max, or 8 for ONNX); an error for a fixed batch.

    Raises:
        UserError: a bundle folder, an unknown suffix, an engine without its manifest or built
            ONNX, an invalid name, I/O Triton cannot describe.
    """
    artifact = Path(artifact)
    kind = _kind(artifact)
    engine = _engine_source(artifact) if kind == "engine" else None
    source = engine.onnx if engine else artifact
    inputs, outputs = _graph_io(source)
    dynamic = any(dims and dims[0] == -1 for _, _, dims in inputs)
    cap, preferred, fixed = _batching(dynamic, engine, max_batch, artifact)
    if name is None:
        name = default_model_name(artifact, engine.target if engine else None)
    return TritonModel(
        name=check_model_name(name),
        artifact=artifact,
        platform=PLATFORMS[kind],
        inputs=_tensors(inputs, cap > 0, fixed, source),
        outputs=_tensors(outputs, cap > 0, fixed, source),
        max_batch_size=cap,
        preferred_batch_sizes=preferred,
        source_onnx=source,
        engine_backend=engine.backend if engine else None,
        notes=(RTX_NOTE,) if engine and engine.backend == "tensorrt-rtx" else (),
    )
