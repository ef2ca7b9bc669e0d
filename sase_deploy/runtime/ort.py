"""ONNX Runtime runner (CPU by default; CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx

from sase_deploy.errors import UserError, first_line
from sase_deploy.runtime.base import Feed, InputMetadata, Outputs, Runner, cpu_threads

# ORT's "tensor(float)" element names -> numpy (bfloat16 has none: its dtype is not checked)
_ORT_DTYPES = {
    "float": np.float32, "float16": np.float16, "double": np.float64, "bool": np.bool_,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}  # fmt: skip


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes | onnx.ModelProto,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        optimization: str = "all",
    ) -> None:
        super().__init__()
        self.model = model
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.optimization = optimization
        self.session = None

    def activate_impl(self) -> None:
        import onnxruntime as ort  # lazy: importing ORT costs ~0.3 s

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options.graph_optimization_level = levels[self.optimization]
        if self.providers[0] == "CPUExecutionProvider":
            # Q/DQ pairs run as float arithmetic, i.e. exactly what TensorRT's INT8 kernels
            # compute (int32 accumulation), instead of ORT's fused u8s8 CPU kernels, whose
            # int16 intermediate saturates on CPUs without VNNI (AVX2-only: INT8 worst cosine
            # 0.93 vs 0.998 on sase_resnet_digits): INT8 parity must not depend on the CPU.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        source = self.model
        if isinstance(source, onnx.ModelProto):
            source = source.SerializeToString()
        elif isinstance(source, os.PathLike):
            source = os.fspath(source)
        try:
            self.session = ort.InferenceSession(source, options, providers=list(self.providers))
        except _load_errors() as exc:  # a graph ORT refuses: the user's model, not our bug
            raise UserError(
                f"{self.label} cannot load the model: {first_line(exc)}; check it with "
                "onnx.checker.check_model(m, full_check=True) or re-export it"
            ) from exc

    @property
    def compute_threads(self) -> int | None:
        """The session's intra-op threads (its default when unset); None off the CPU."""
        if self.providers[0] != "CPUExecutionProvider":
            return None
        return self.intra_op_threads or cpu_threads()

    @property
    def label(self) -> str:
        model = self.model
        if isinstance(model, str | os.PathLike):
            return f"{self.name} ({os.path.basename(os.fspath(model))})"
        return self.name

    def input_metadata(self) -> InputMetadata:
        """name -> (dtype, shape) from the session; symbolic dims are None."""
        assert self.session is not None
        found: InputMetadata = {}
        for value in self.session.get_inputs():
            kind = str(value.type).removeprefix("tensor(").removesuffix(")")
            dtype = np.dtype(_ORT_DTYPES[kind]) if kind in _ORT_DTYPES else None
            shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in value.shape)
            found[value.name] = (dtype, shape)
        return found

    @property
    def input_names(self) -> list[str]:
        assert self.session is not None
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        assert self.session is not None
        return [o.name for o in self.session.get_outputs()]

    def infer_impl(self, feed: Feed) -> Outputs:
        assert self.session is not None
        names = self.output_names
        values = self.session.run(names, {k: np.ascontiguousarray(v) for k, v in feed.items()})
        return dict(zip(names, values, strict=True))

    def deactivate_impl(self) -> None:
        self.session = None


def _load_errors() -> tuple[type[Exception], ...]:
    """What ORT raises for a model it cannot load (its own classes, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidGraph", "InvalidProtobuf", "InvalidArgument", "NotImplemented")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def run_onnx(model: str | os.PathLike[str] | bytes | onnx.ModelProto, feed: Feed) -> Outputs:
    """Run one feed through ORT CPU, with the runner's defaults (graph optimisation level `all`,
    Q/DQ pairs computed in float)."""
    with OrtRunner(model) as runner:
        return runner.infer(feed)


class OrtCudaRunner(OrtRunner):
    """ONNX Runtime on the CUDA provider; refuses to start when ORT would fall back to CPU."""

    name = "onnxruntime-cuda"

    def __init__(self, model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> None:
        super().__init__(model, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))

    def activate_impl(self) -> None:
        super().activate_impl()
        assert self.session is not None
        if self.session.get_providers()[0] != "CUDAExecutionProvider":
            self.session = None
            raise UserError(
                "ONNX Runtime cannot use CUDA here (no onnxruntime-gpu or no GPU); "
                "see 'sase-deploy doctor'"
            )
