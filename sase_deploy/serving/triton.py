"""Triton Inference Server model repositories for built engines and ONNX models: the public API.

A repository holds one folder per model: `<repo>/<name>/config.pbtxt` and the model file in
version folder `1/` (`model.plan` for TensorRT engines, platform `tensorrt_plan`; `model.onnx`
plus its external-data files for ONNX models, platform `onnxruntime_onnx`).

The work is split by concern; this module gathers the names callers use:
  `serving/model.py`       `TritonModel`, `TritonTensor`, model names (`default_model_name`).
  `serving/artifact.py`    `triton_model_from`: the artifact's kind, the ONNX graph it runs (for
                           an engine, the `built_onnx` its build manifest names), that graph's
                           I/O and the batching its profile allows.
  `serving/pbtxt.py`       `config_pbtxt`: the config text, written by hand (deterministic, no
                           tritonclient at run time; the tests parse it with Triton's schema).
  `serving/repository.py`  `write_triton_repository`: the folders and files, atomically.
"""

from __future__ import annotations

from sase_deploy.serving.artifact import triton_model_from
from sase_deploy.serving.model import (
    TritonModel,
    TritonTensor,
    check_model_name,
    default_model_name,
)
from sase_deploy.serving.pbtxt import config_pbtxt
from sase_deploy.serving.repository import write_triton_repository

__all__ = [
    "TritonModel",
    "TritonTensor",
    "check_model_name",
    "config_pbtxt",
    "default_model_name",
    "triton_model_from",
    "write_triton_repository",
]
