"""What this machine can build and run, and how to get what is missing (`sase-deploy doctor`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sase_deploy.engines.flavours import find_flavours
from sase_deploy.engines.plan import plan_backend
from sase_deploy.engines.targets import Target, load_targets, local_target

ORT_GPU_HINT = "pip install onnxruntime-gpu (CUDA 12/13 build matching the driver)"
JETSON_RELEASE = Path("/etc/nv_tegra_release")


def ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cuda_runs_here(gpu: Target | None = None) -> tuple[bool, str]:
    """Whether ORT's CUDA provider is installed *and* a GPU answers (ORT silently falls back).
    `gpu`: this machine's GPU when the caller already looked it up."""
    if "CUDAExecutionProvider" not in ort_providers():
        return False, "ONNX Runtime has no CUDA provider"
    if (gpu or local_target()) is None:
        return False, "no NVIDIA GPU found (nvidia-smi missing or silent)"
    return True, ""


def how_built(target: Target, gpu: Target | None) -> str:
    """How this machine produces `target`'s engine (what `build --backend auto` does)."""
    backend, flavour = plan_backend(target, "auto", None, local_gpu=lambda: gpu)
    if backend == "tensorrt-rtx" and flavour is not None:
        return f"tensorrt-rtx {flavour.version} AOT ({target.sm}, no GPU needed)"
    if backend == "tensorrt" and flavour is not None:
        return f"tensorrt {flavour.version} on this {gpu.title if gpu else 'GPU'}"
    where = "on the device" if target.kind == "jetson" else "on a machine with that GPU"
    return f"bundle: trtexec {where} (TensorRT {target.tensorrt or '10+'})"


def diagnose() -> dict[str, Any]:
    """Flavours, GPU, ORT providers, DLA, and per target how its engine is made here."""
    flavours = find_flavours()
    gpu = local_target()
    providers = ort_providers()
    cuda_ok, cuda_why = cuda_runs_here(gpu)
    jetson = JETSON_RELEASE.read_text().split(",")[0].strip() if JETSON_RELEASE.is_file() else None
    missing: list[dict[str, str]] = []
    for flavour in flavours.values():
        if not flavour.installed:
            missing.append({"what": flavour.name, "why": str(flavour.reason),
                            "how": flavour.to_dict()["install"]})  # fmt: skip
    if gpu is None:
        missing.append({"what": "GPU", "why": "no NVIDIA GPU found (nvidia-smi missing or silent)",
                        "how": "run engines on a machine with an NVIDIA GPU; builds with "
                        "TensorRT-RTX and bundles work without one"})  # fmt: skip
    if not cuda_ok:
        missing.append({"what": "ONNX Runtime CUDA", "why": cuda_why, "how": ORT_GPU_HINT})
    return {
        "flavours": {name: f.to_dict() for name, f in flavours.items()},
        "gpu": gpu.to_dict() if gpu else None,
        "onnxruntime_providers": providers,
        "jetson": jetson,
        "dla": bool(jetson) and os.path.exists("/dev/nvhost-nvdla0"),
        "can_run": {"tensorrt_engines": gpu is not None and any(
            f.installed for f in flavours.values()), "onnxruntime_cuda": cuda_ok},
        "targets": {name: how_built(t, gpu) for name, t in load_targets().items()},
        "missing": missing,
    }  # fmt: skip
