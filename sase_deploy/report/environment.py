"""Where a report was measured: package versions, CPU and GPU (read without importing them)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from sase_deploy import __version__

_PACKAGES = {
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "tensorrt_rtx": ("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx"),
}


def _version(distributions: tuple[str, ...]) -> str | None:
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """The report's `environment` object."""
    from sase_deploy.engines.targets import local_target

    gpu = local_target()
    return {
        "sase_deploy": __version__,
        "python": platform.python_version(),
        **{key: _version(dists) for key, dists in _PACKAGES.items()},
        "cpu": cpu_name(),
        "gpu": f"{gpu.title} ({gpu.sm})" if gpu is not None else None,
    }
