"""Serving stage: model repositories for Triton Inference Server (`sase_deploy.serving.triton`).

`triton_model_from(artifact)` describes a built engine or an ONNX model as a `TritonModel`
(I/O read from the ONNX graph the artifact runs), `config_pbtxt` renders its Triton config and
`write_triton_repository` lays out `<repo>/<name>/config.pbtxt` + `<repo>/<name>/1/model.*`.

Names are imported on first use (`from sase_deploy.serving import triton_model_from`), so the
CLI can import this package without loading ONNX.
"""

from __future__ import annotations

import importlib
from typing import Any

_TRITON = "sase_deploy.serving.triton"
_EXPORTS = {
    "TritonModel": _TRITON,
    "TritonTensor": _TRITON,
    "config_pbtxt": _TRITON,
    "default_model_name": _TRITON,
    "triton_model_from": _TRITON,
    "write_triton_repository": _TRITON,
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sase_deploy.serving' has no attribute {name!r}")
