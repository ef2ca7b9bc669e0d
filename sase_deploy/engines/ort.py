"""ONNX Runtime runner (CPU by default; CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx

from sase_deploy.engines.base import Feed, Outputs, Runner
from sase_deploy.errors import UserError


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
        source = self.model
        if isinstance(source, onnx.ModelProto):
            source = source.SerializeToString()
        elif isinstance(source, os.PathLike):
            source = os.fspath(source)
        self.session = ort.InferenceSession(source, options, providers=list(self.providers))

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


def run_onnx(model: str | os.PathLike[str] | bytes | onnx.ModelProto, feed: Feed) -> Outputs:
    """Run one feed through ORT CPU (no graph optimisation surprises: level `all`, default)."""
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
