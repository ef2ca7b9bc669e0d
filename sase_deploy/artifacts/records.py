"""The manifests sase-deploy writes beside its artifacts, as typed records.

Hash fields follow one convention in every record: `sha256` is the sha256 of the artifact the
record describes (the ONNX of an export, the engine or ONNX Runtime model of a build); any other
file it names is `<role>` (its path) with `<role>_sha256` beside it (`checkpoint_sha256`,
`model_sha256`, `built_onnx_sha256`); several files of one role are a map name -> sha256 under
`<role>_sha256` (`inputs_sha256`, a bundle's `files_sha256`, a deploy stage's `outputs_sha256`).

Each record knows its `format` (written first) and the older formats it still reads (`LEGACY`,
upgraded by `upgrade`); `to_dict` is what is written, `from_dict` what is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sase_deploy.errors import UserError

EXPORT_FORMAT = "sase-deploy.export/2"
ENGINE_FORMAT = "sase-deploy.engine/2"
BUNDLE_FORMAT = "sase-deploy.bundle/2"
CALIB_FORMAT = "sase-deploy.calib/1"
STATE_FORMAT = "sase-deploy.deploy-state/2"

R = TypeVar("R", bound="Record")


def _plain(value: Any) -> Any:
    """`value` as JSON takes it: paths as str, nested records as their dicts."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _renamed(data: Mapping[str, Any], **names: str) -> dict[str, Any]:
    """`data` with each key `old` of `names` (new=old) renamed to `new`, order kept."""
    old_to_new = {old: new for new, old in names.items()}
    return {old_to_new.get(k, k): v for k, v in data.items()}


@dataclass(kw_only=True)
class Record:
    """Common reading and writing of the records below (not written itself)."""

    FORMAT: ClassVar[str] = ""
    LEGACY: ClassVar[tuple[str, ...]] = ()  # older formats `upgrade` turns into this one
    LABEL: ClassVar[str] = "manifest"  # for errors: "cannot read <label> <path>"
    REMEDY: ClassVar[str] = "rebuild it"  # what to do with an unreadable or unknown one
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()  # fields left out of the JSON while None

    def to_dict(self) -> dict[str, Any]:
        """The record as written: `format` first, then its fields in order."""
        found: dict[str, Any] = {"format": self.FORMAT} if self.FORMAT else {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None and item.name in self.OPTIONAL:
                continue
            found[item.name] = _plain(value)
        return found

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A record of a `LEGACY` format in this format's field names."""
        return data

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], where: Path | str) -> R:
        """The record from its JSON object (unknown keys are ignored); UserError naming `where`
        when a field without a default is missing."""
        known = {item.name: item for item in dataclasses.fields(cls)}
        required = [
            name
            for name, item in known.items()
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise UserError(f"{where} is not a complete {cls.LABEL} (no {', '.join(missing)}); "
                            f"{cls.REMEDY}")  # fmt: skip
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(kw_only=True)
class ExportManifest(Record):
    """`NAME.manifest.json` beside an export `NAME.onnx`: where it came from, how it was checked.
    `sha256` is the ONNX file's; `checkpoint_sha256` the weights'."""

    FORMAT: ClassVar[str] = EXPORT_FORMAT
    LEGACY: ClassVar[tuple[str, ...]] = ("sase-deploy.export/1",)
    LABEL: ClassVar[str] = "export manifest"
    REMEDY: ClassVar[str] = "export the model again (sase-deploy export)"

    status: str
    onnx: str
    sha256: str
    external_data: str | None
    source: dict[str, Any]
    checkpoint: dict[str, Any] | None
    checkpoint_sha256: str | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dynamic_batch: bool
    opset: int
    ir_version: int
    exporter: str
    exporter_failures: list[Any]
    notes: list[str]
    lowerings: list[dict[str, Any]]
    simplifier: str
    fusion: dict[str, Any]
    node_counts: dict[str, int]
    ops: dict[str, int]
    parity: dict[str, Any]
    versions: dict[str, str]
    timings_s: dict[str, float]

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _renamed(data, sha256="onnx_sha256")

    @property
    def registry_model(self) -> str | None:
        """The registry name of the exported model (None for a factory or TorchScript file)."""
        model = self.source.get("model")
        return model if self.source.get("kind") == "registry" and isinstance(model, str) else None


@dataclass(kw_only=True)
class BuiltOnnx(Record):
    """The ONNX graph a build gave its builder and how it was made (`prepare_onnx`).

    path: the graph. made_by: "input" or the sase-deploy step that made it. flags: builder
    precision flags (TensorRT 10 builds the FP32 graph with `--fp16` / `--int8`).
    calib_cache: TensorRT-10 calibration cache for implicit INT8. calib_json: the ranges FP16
    conversion used. shared_with: an identical graph this one is a hard link to.
    """

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"calib_cache", "calib_json", "shared_with"})

    path: Path
    made_by: str
    flags: tuple[str, ...] = ()
    calib_cache: Path | None = None
    calib_json: Path | None = None
    shared_with: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        found = super().to_dict()
        if not self.flags:
            del found["flags"]
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: Path | str) -> BuiltOnnx:
        paths = ("path", "calib_cache", "calib_json", "shared_with")
        fixed = {k: Path(v) if k in paths and v is not None else v for k, v in data.items()}
        fixed["flags"] = tuple(data.get("flags") or ())
        return super().from_dict(fixed, where)


@dataclass(kw_only=True)
class EngineManifest(Record):
    """`<stem>.<precision>.manifest.json` beside what `build` wrote (engine, ONNX Runtime model or
    bundle folder). The fields up to `cache_key` are the facts the key hashes; `sha256` is the
    artifact file's (None for a bundle folder), `built_onnx_sha256` the built graph's
    (`sha256_model`), `inputs_sha256` the input files' by role."""

    FORMAT: ClassVar[str] = ENGINE_FORMAT
    LEGACY: ClassVar[tuple[str, ...]] = ("sase-deploy.engine/1",)
    LABEL: ClassVar[str] = "build manifest"
    REMEDY: ClassVar[str] = "rebuild it (sase-deploy build)"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"bundle", "build_seconds", "engine_bytes", "sha256", "layers", "layer_types",
         "tensor_dtypes", "layer_table", "builder_log", "providers", "artifact", "created_utc"}
    )  # fmt: skip

    sase_deploy: str
    inputs_sha256: dict[str, str | None]
    target: dict[str, Any]
    precision: str
    backend: str
    flavour: dict[str, Any] | None
    profile: dict[str, Any] | None
    workspace_mb: int
    dla_core: int | None
    data: str | None
    cache_key: str
    source_onnx: dict[str, Any]
    built_onnx: BuiltOnnx
    built_onnx_sha256: str | None  # None only in a 0.2.0 manifest that recorded none
    bundle: dict[str, Any] | None = None
    build_seconds: float | None = None
    engine_bytes: int | None = None
    sha256: str | None = None
    layers: int | None = None
    layer_types: dict[str, int] | None = None
    tensor_dtypes: dict[str, int] | None = None
    layer_table: list[dict[str, Any]] | None = None
    builder_log: list[str] | None = None
    providers: list[str] | None = None
    artifact: str | None = None
    created_utc: str | None = None

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        built = dict(data.get("built_onnx") or {})
        fixed = _renamed(data, inputs_sha256="inputs", sha256="artifact_sha256")
        fixed["built_onnx_sha256"] = built.pop("sha256", None)
        fixed["built_onnx"] = built
        return fixed

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: Path | str) -> EngineManifest:
        built = data.get("built_onnx")
        if not isinstance(built, Mapping) or not built.get("path"):
            raise UserError(f"{where} names no built_onnx; {cls.REMEDY}")
        if not isinstance(data.get("target"), Mapping) or "name" not in data["target"]:
            raise UserError(f"{where} names no target; {cls.REMEDY}")
        fixed = {**data, "built_onnx": BuiltOnnx.from_dict(built, where)}
        return super().from_dict(fixed, where)

    @property
    def target_name(self) -> str:
        return str(self.target["name"])

    @property
    def flavour_name(self) -> str:
        """The TensorRT flavour that built the engine ("tensorrt" when none is recorded)."""
        return str((self.flavour or {}).get("name", "tensorrt"))


@dataclass(kw_only=True)
class BundleManifest(Record):
    """`manifest.json` inside a bundle folder: what it ships (`files`, each file's sha256 in
    `files_sha256`), the trtexec arguments, and under `source` the build manifest's facts."""

    FORMAT: ClassVar[str] = BUNDLE_FORMAT
    LEGACY: ClassVar[tuple[str, ...]] = ("sase-deploy.bundle/1",)
    LABEL: ClassVar[str] = "bundle manifest"
    REMEDY: ClassVar[str] = "write the bundle again (sase-deploy build --backend bundle)"

    sase_deploy: str
    target: dict[str, Any]
    tensorrt: dict[str, Any]
    precision: str
    strongly_typed_graph: bool
    files: dict[str, Any]
    trtexec_args: list[str]
    sase_deploy_command: str
    warnings: list[str]
    source: dict[str, Any]
    files_sha256: dict[str, str] = field(default_factory=dict)

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _renamed(data, files_sha256="sha256")

    @property
    def target_name(self) -> str | None:
        return self.target.get("name") if isinstance(self.target, Mapping) else None

    @property
    def engine_file(self) -> str | None:
        """The engine file name build.sh writes on the device."""
        return self.files.get("engine")

    @property
    def onnx_file(self) -> str | None:
        """The ONNX file name the bundle ships."""
        return self.files.get("onnx")

    @property
    def profile(self) -> dict[str, Any] | None:
        """The batch profile of the build that wrote the bundle."""
        return self.source.get("profile") if isinstance(self.source, Mapping) else None


@dataclass(kw_only=True)
class CalibrationRecord(Record):
    """`<stem>.calib.json` beside `<stem>.int8.onnx` and `<stem>.calib.cache`: the ranges
    `calibrate` measured and how; `model_sha256` is the calibrated model's (`sha256_file`)."""

    FORMAT: ClassVar[str] = CALIB_FORMAT
    LABEL: ClassVar[str] = "calibration json"
    REMEDY: ClassVar[str] = "re-run sase-deploy calibrate"

    model: str
    model_sha256: str | None
    registry_model: str | None
    method: str
    percentile: float | None
    data: dict[str, Any]
    samples: int
    batch: int
    symmetric: bool
    trt_cache: dict[str, str]
    int8_onnx: str
    calib_cache: str
    quantized_nodes: list[str]
    kept_float: dict[str, str]
    cache_tensors: int
    auto_keep: dict[str, Any] | None
    notes: list[str]
    timings_s: dict[str, float]
    tensors: dict[str, dict[str, float]]
    # what the unquantised layers compute in (`calibrate --high-precision`); files written
    # before it existed kept them in FP32
    high_precision: str = "fp32"
    min_channels: int = 0

    def amax(self, where: Path | str) -> dict[str, float]:
        """Tensor name -> amax; UserError naming `where` when a range is not a number."""
        try:
            return {k: float(v["amax"]) for k, v in self.tensors.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"cannot read calibration json {where}: {exc!r}") from exc


@dataclass(kw_only=True)
class StageRecord(Record):
    """One finished deploy stage: the `fact_key` it ran with and the sha256 of each output
    (`sha256_model`), by path relative to the deploy folder."""

    key: str
    outputs_sha256: dict[str, str | None]


@dataclass(kw_only=True)
class DeployStateRecord(Record):
    """`OUT/deploy.state.json`: the finished stages of one deploy folder, by name."""

    FORMAT: ClassVar[str] = STATE_FORMAT
    LEGACY: ClassVar[tuple[str, ...]] = ("sase-deploy.deploy-state/1",)
    LABEL: ClassVar[str] = "deploy state"
    REMEDY: ClassVar[str] = "delete it to re-run every stage"

    stages: dict[str, StageRecord] = field(default_factory=dict)

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        stages = data.get("stages") or {}
        if not isinstance(stages, Mapping):
            return data
        fixed = {n: _renamed(s, outputs_sha256="outputs") if isinstance(s, Mapping) else s
                 for n, s in stages.items()}  # fmt: skip
        return {**data, "stages": fixed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: Path | str) -> DeployStateRecord:
        stages = data.get("stages") or {}
        if not isinstance(stages, Mapping) or not all(
            isinstance(s, Mapping) for s in stages.values()
        ):
            raise UserError(f"{where} is not a {cls.LABEL}; {cls.REMEDY}")
        return cls(stages={n: StageRecord.from_dict(s, where) for n, s in stages.items()})
