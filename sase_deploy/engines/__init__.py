"""One runner interface (activate / infer / deactivate) for PyTorch, ONNX Runtime and TensorRT,
and the build stage: TensorRT flavours, targets, engines, bundles (`sase_deploy.engines.build`).

The runners are imported on first use (`from sase_deploy.engines import TorchRunner`), so the
CLI can read this package's constants without loading torch, ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import importlib
from typing import Any

_RUNNERS = {
    "Runner": "sase_deploy.engines.base",
    "OrtRunner": "sase_deploy.engines.ort",
    "OrtCudaRunner": "sase_deploy.engines.ort",
    "TorchRunner": "sase_deploy.engines.torch_runner",
}
__all__ = sorted(_RUNNERS)


def __getattr__(name: str) -> Any:
    if name in _RUNNERS:
        return getattr(importlib.import_module(_RUNNERS[name]), name)
    raise AttributeError(f"module 'sase_deploy.engines' has no attribute {name!r}")
