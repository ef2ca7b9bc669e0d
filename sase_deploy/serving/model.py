"""What Triton is told about one model: `TritonModel` and its `TritonTensor` inputs and outputs,
the platforms and model files, and the rules for model (folder) names.

`sase_deploy.serving.artifact` fills these in from an engine or ONNX; `sase_deploy.serving.pbtxt`
renders them; `sase_deploy.serving.repository` writes them out.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sase_deploy.errors import UserError

ENGINE_SUFFIXES = (".engine", ".plan")
PLATFORMS = {"engine": "tensorrt_plan", "onnx": "onnxruntime_onnx"}
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
VERSION = "1"
# Triton names a model by its folder; keep to what every filesystem and URL path carries.
_VALID_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


@dataclass(frozen=True)
class TritonTensor:
    """One input or output: `name`, Triton `data_type` (e.g. TYPE_FP32) and `dims` (-1 for a
    dynamic dim; without the batch dim when the model batches)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dims": list(self.dims)}


@dataclass(frozen=True)
class TritonModel:
    """One model to serve.

    name: the Triton model name (folder name). artifact: the engine (`.engine`/`.plan`) or
    `.onnx` to copy. platform: `tensorrt_plan` or `onnxruntime_onnx`. inputs/outputs: the I/O.
    max_batch_size: 0 for a model that does not batch. preferred_batch_sizes: the dynamic
    batcher's preferred sizes (each <= max_batch_size). source_onnx: the graph the I/O was read
    from. engine_backend: `tensorrt` / `tensorrt-rtx` for engines, None for ONNX. notes: caveats
    for the user (e.g. a TensorRT-RTX engine).
    """

    name: str
    artifact: Path
    platform: str
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    max_batch_size: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    source_onnx: Path | None = None
    engine_backend: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def model_file(self) -> str:
        """File name inside the version folder (Triton's default for the platform)."""
        return MODEL_FILES[self.platform]

    @property
    def instance_kind(self) -> str | None:
        """KIND_GPU for engines. None (no instance_group) for ONNX: Triton then makes one
        instance per GPU, or a CPU instance where there is none; an explicit KIND_GPU would
        fail to load on a CPU-only server."""
        return "KIND_GPU" if self.platform == "tensorrt_plan" else None

    def paths_in(self, repo: Path) -> tuple[Path, Path]:
        """(config.pbtxt, model file) of this model inside repository `repo`."""
        return repo / self.name / "config.pbtxt", repo / self.name / VERSION / self.model_file

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: paths as strings, tuples as lists."""
        return {**json.loads(json.dumps(asdict(self), default=str)), "model_file": self.model_file}


def default_model_name(artifact: Path, target: str | None = None) -> str:
    """The default Triton name of `artifact`.

    Engine: its file name without `.engine`/`.plan`, then the target (from the manifest, else
    the folder name) unless the name already holds it as a dot-separated part, so that one repo
    can hold the same model for several GPUs: `l4/sase_resnet_digits.fp16.engine` ->
    `sase_resnet_digits_fp16_l4`. ONNX: the whole file name, so it never collides with an engine
    of the same stem: `sase_resnet_digits.int8.qdq.onnx` -> `sase_resnet_digits_int8_qdq_onnx`.
    Then every character other than letters, digits, `_` and `-` becomes `_`.
    """
    artifact = Path(artifact)
    if artifact.suffix in ENGINE_SUFFIXES:
        parts = artifact.stem.split(".")
        where = target or artifact.parent.name
        text = ".".join(parts if not where or where in parts else [*parts, where])
    else:
        text = artifact.name
    text = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    return "_" + text if text.startswith("-") else text


def check_model_name(name: str) -> str:
    """`name` if Triton can use it as a model (folder) name, else UserError."""
    if not _VALID_NAME.fullmatch(name):
        raise UserError(
            f"model name {name!r}: use letters, digits, '_', '-' and '.', not starting with "
            "'.' or '-' (at most 200 characters)"
        )
    return name
