"""TensorRT engines through Polygraphy: parse + build (both flavours) and a runner.

Polygraphy's loaders do the work (`create_network`, `CreateConfig` / `CreateConfigRTX`,
`EngineBytesFromNetwork`, `EngineFromBytes`, `TrtRunner`); written here is only what they do
not: parser errors turned into one-line user errors naming the node, the layer table of the
parsed network for the manifest, and capture of their log lines (which go to stdout, where
`--json` output lives).
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sase_deploy.engines.flavours import Flavour, polygraphy_trt, trt_module
from sase_deploy.errors import UserError
from sase_deploy.runtime.base import Feed, InputMetadata, Outputs, Runner

Shape = tuple[int, ...]
Profile = Mapping[str, tuple[Shape, Shape, Shape]]


@dataclass(frozen=True)
class BuildOptions:
    """What the builder is asked for.

    compute_capabilities: ("8.9",) targets those SMs ahead of time (TensorRT-RTX; several give one
        engine that runs on each); empty builds for the local GPU (TensorRT).
    profile: input name -> (min, opt, max) shapes for dynamic inputs.
    workspace_mb: workspace pool limit (None: the builder's default). timing_cache: file read and
        updated (TensorRT only). flags: "fp16"/"int8" builder flags (TensorRT 10 weakly typed;
        empty for strongly typed builds). calib_cache: TensorRT-10 INT8 calibration cache.
    dla_core: DLA core with GPU fallback (Jetson).
    """

    compute_capabilities: tuple[str, ...] = ()
    profile: Profile | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    flags: tuple[str, ...] = ()
    calib_cache: Path | None = None
    dla_core: int | None = None

    @property
    def strongly_typed(self) -> bool:
        return not self.flags


@dataclass
class EngineBuild:
    """A serialized engine and what the builder saw."""

    engine: bytes
    seconds: float
    layers: list[dict[str, Any]]
    log: list[str] = field(default_factory=list)

    @property
    def layer_types(self) -> dict[str, int]:
        return dict(collections.Counter(layer["type"] for layer in self.layers).most_common())

    @property
    def output_dtypes(self) -> dict[str, int]:
        counts = collections.Counter(d for layer in self.layers for d in layer["dtypes"])
        return dict(counts.most_common())


@contextlib.contextmanager
def _captured_log(lines: list[str]) -> Iterator[None]:
    """Polygraphy prints its (and TensorRT's) log to stdout and stderr: keep it for the
    manifest (and the error message) instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        lines.extend(line for line in buffer.getvalue().splitlines() if line.strip())


def _first_error(log: list[str], exc: Exception) -> str:
    """The builder's first error line (TensorRT says why; Polygraphy only that it failed)."""
    errors = [line.split("]", 1)[-1].strip() for line in log if line.startswith("[E]")]
    return " ".join((errors[0] if errors else str(exc)).split())


# TensorRT-RTX compiles no FP32 GEMM for Turing; its Myelin error names the node and the SM.
_NO_FP32_GEMM = re.compile(
    r"Cannot compile operation '(?P<node>[^']*)' for (?P<arch>\w+) \((?P<sm>SM\d+)\): "
    r"FP32 GEMM is not supported"
)


def _build_failure(onnx_path: Path, flavour: Flavour, log: list[str], exc: Exception) -> UserError:
    """The one-line UserError for a failed build: the builder's own reason, and for failures
    with a known way out (FP32 GEMM on Turing with TensorRT-RTX) what to build instead."""
    reason = _first_error(log, exc)
    gemm = _NO_FP32_GEMM.search(reason)
    if gemm is not None:
        return UserError(
            f"{flavour.name} {flavour.version} cannot build {onnx_path.name} for "
            f"{gemm['arch']} ({gemm['sm']}): node '{gemm['node']}' is an FP32 MatMul/Gemm and "
            "FP32 GEMM is not supported there; use --precision fp16 or a TensorRT build "
            "(--backend bundle to build on the device, or --backend tensorrt on that GPU)"
        )
    return UserError(f"{flavour.name} failed to build {onnx_path.name}: {reason}")


def _short(kind: Any) -> str:
    return str(kind).rsplit(".", 1)[-1]


def layer_table(network: Any) -> list[dict[str, Any]]:
    """name, type and output dtypes of every layer of a parsed network."""
    table = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        dtypes = [_short(layer.get_output(i).dtype) for i in range(layer.num_outputs)]
        table.append({"name": layer.name, "type": _short(layer.type), "dtypes": dtypes})
    return table


def parse_onnx(onnx_path: Path, flavour: Flavour, strongly_typed: bool) -> tuple[Any, Any, Any]:
    """(builder, network, parser) for `onnx_path`; a rejected graph is a UserError naming the
    node, its op and the parser's message."""
    ptrt = polygraphy_trt(flavour)
    trt = trt_module(flavour)
    builder, network = ptrt.create_network(strongly_typed=strongly_typed)
    parser = trt.OnnxParser(network, ptrt.get_trt_logger())
    if parser.parse_from_file(os.fspath(onnx_path)):
        return builder, network, parser
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errors:
        raise UserError(f"{flavour.name} could not parse {onnx_path}; is it a valid ONNX file?")
    first = errors[0]
    message = " ".join(str(first.desc()).split())
    raise UserError(
        f"{flavour.name} {flavour.version} rejects {onnx_path.name}: node '{first.node_name()}' "
        f"({first.node_operator()}): {message}"
        + (f" (+{len(errors) - 1} more parser errors)" if len(errors) > 1 else "")
        + "; re-export with 'sase-deploy export' or report the graph"
    )


def _config(flavour: Flavour, options: BuildOptions) -> Any:
    ptrt = polygraphy_trt(flavour)
    profiles = None
    if options.profile:
        profile = ptrt.Profile()
        for name, (low, opt, high) in options.profile.items():
            profile.add(name, low, opt, high)
        profiles = [profile]
    pools = None
    if options.workspace_mb is not None:
        trt = trt_module(flavour)
        pools = {trt.MemoryPoolType.WORKSPACE: options.workspace_mb << 20}
    common: dict[str, Any] = {"profiles": profiles, "memory_pool_limits": pools}
    if flavour.name == "tensorrt-rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        ccs = [tuple(int(p) for p in cc.split(".")) for cc in options.compute_capabilities]
        return CreateConfigRTX(compute_capabilities=ccs or None, **common)
    calibrator = None
    if options.calib_cache is not None:  # reads ranges from the cache; no data loader needed
        calibrator = ptrt.Calibrator(data_loader=None, cache=os.fspath(options.calib_cache))
    return ptrt.CreateConfig(
        fp16="fp16" in options.flags,
        int8="int8" in options.flags,
        calibrator=calibrator,
        use_dla=options.dla_core is not None,
        allow_gpu_fallback=options.dla_core is not None,
        load_timing_cache=os.fspath(options.timing_cache) if options.timing_cache else None,
        **common,
    )


def build_engine(onnx_path: Path, flavour: Flavour, options: BuildOptions) -> EngineBuild:
    """Parse `onnx_path` and build a serialized engine with `flavour` (see `BuildOptions`)."""
    ptrt = polygraphy_trt(flavour)
    log: list[str] = []
    try:
        with _captured_log(log):
            builder, network, parser = parse_onnx(onnx_path, flavour, options.strongly_typed)
            layers = layer_table(network)
            config = _config(flavour, options)
            timing = os.fspath(options.timing_cache) if options.timing_cache else None
            loader = ptrt.EngineBytesFromNetwork((builder, network, parser), config, timing)
            start = time.perf_counter()
            engine = loader()
            seconds = time.perf_counter() - start
    except UserError:
        raise
    except Exception as exc:  # Polygraphy raises PolygraphyException on a failed build
        raise _build_failure(onnx_path, flavour, log, exc) from exc
    return EngineBuild(bytes(engine), seconds, layers, log)


def engine_runtime(flavour: Flavour, allow_host_code: bool = False) -> Any:
    """A TensorRT runtime to deserialize engines with; host code embedded in an engine (plugins
    compiled into it) runs only when `allow_host_code` is True -- an engine from someone else
    is code, and this keeps it from executing on the host unless asked."""
    trt = trt_module(flavour)
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    if hasattr(runtime, "engine_host_code_allowed"):  # TensorRT >= 10 and TensorRT-RTX
        runtime.engine_host_code_allowed = allow_host_code
    return runtime


class TrtRunner(Runner):
    """A serialized engine run by Polygraphy's TrtRunner (needs a GPU of its compute capability).

    `allow_host_code`: see `engine_runtime` (off by default).
    """

    name = "tensorrt"

    def __init__(self, engine: bytes | Path, flavour: Flavour, allow_host_code: bool = False):
        super().__init__()
        self.engine = engine
        self.flavour = flavour
        self.allow_host_code = allow_host_code
        self._runner: Any = None

    def activate_impl(self) -> None:
        ptrt = polygraphy_trt(self.flavour)
        data = self.engine.read_bytes() if isinstance(self.engine, Path) else self.engine
        runtime = engine_runtime(self.flavour, self.allow_host_code)
        self._runner = ptrt.TrtRunner(ptrt.EngineFromBytes(data, runtime=runtime))
        self._runner.activate()

    @property
    def label(self) -> str:
        where = f" ({self.engine.name})" if isinstance(self.engine, Path) else ""
        return f"{self.flavour.name}{where}"

    def input_metadata(self) -> InputMetadata:
        """name -> (dtype, shape) from Polygraphy's runner; -1 (dynamic) dims are None."""
        found: InputMetadata = {}
        for name, meta in self._runner.get_input_metadata().items():
            shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in meta.shape)
            found[name] = (_numpy_dtype(meta.dtype), shape)
        return found

    def infer_impl(self, feed: Feed) -> Outputs:
        outputs = self._runner.infer(dict(feed), copy_outputs_to_host=True)
        return {name: value for name, value in outputs.items()}

    def deactivate_impl(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None


def _numpy_dtype(dtype: Any) -> np.dtype | None:
    """A Polygraphy DataType (or numpy dtype) as numpy, by name: None where numpy has no such
    type (bfloat16, FP8), so those inputs are not dtype-checked."""
    try:
        return np.dtype(getattr(dtype, "name", None) or dtype)
    except TypeError:
        return None
