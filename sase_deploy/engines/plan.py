"""Which backend produces a target's artifact on this machine (`build --backend auto`)."""

from __future__ import annotations

from collections.abc import Callable

from sase_deploy.engines.flavours import Flavour, find_flavour
from sase_deploy.engines.targets import Target, local_target
from sase_deploy.errors import UserError
from sase_deploy.vocabulary import BACKENDS, PRECISIONS


def build_precisions(target: Target) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(precisions `build` makes for `target`, those its hardware runs that `build` does not
    make yet: BF16, FP8, FP4).

    Args:
        target: a packaged or local target.
    """
    made = tuple(p for p in PRECISIONS if target.supports(p))
    return made, tuple(p for p in target.precisions if p not in PRECISIONS)


def plan_backend(
    target: Target,
    backend: str,
    dla_core: int | None,
    local_gpu: Callable[[], Target | None] = local_target,
) -> tuple[str, Flavour | None]:
    """(backend, flavour) this machine uses for `target`; impossible choices are UserErrors.

    `local_gpu` finds this machine's GPU (callers planning many targets pass a cached answer:
    it runs nvidia-smi).

    auto: TensorRT when it is installed and a GPU of the target's compute capability is here;
    else a TensorRT-RTX engine built ahead of time when TensorRT-RTX targets that SM (never for
    DLA or Jetson: their engines come from the TensorRT they ship); else a bundle.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend in ("onnxruntime", "bundle"):
        return backend, None
    trt_ok, trt_why = _tensorrt_can_build(target, local_gpu)
    rtx_ok, rtx_why = _rtx_can_build(target, dla_core)
    if backend == "tensorrt" and not trt_ok:
        raise UserError(
            f"cannot build {target.name} with TensorRT here: {trt_why}; "
            "use --backend bundle to build on the device"
        )
    if backend == "tensorrt-rtx" and not rtx_ok:
        raise UserError(
            f"cannot build {target.name} with TensorRT-RTX: {rtx_why}; "
            "use --backend bundle (or tensorrt on a matching GPU)"
        )
    if backend == "tensorrt" or (backend == "auto" and trt_ok):
        return "tensorrt", find_flavour("tensorrt")
    if backend == "tensorrt-rtx" or (backend == "auto" and rtx_ok):
        return "tensorrt-rtx", find_flavour("tensorrt-rtx")
    return "bundle", None


def _tensorrt_can_build(target: Target, local_gpu: Callable[[], Target | None]) -> tuple[bool, str]:
    flavour = find_flavour("tensorrt")
    if not flavour.installed:
        return False, str(flavour.reason)
    if target.also_compute_capabilities:
        return False, f"one engine for several GPUs ({target.name}) is a TensorRT-RTX build"
    if target.tensorrt and not flavour.version.startswith(target.tensorrt):  # type: ignore[union-attr]
        return False, f"{target.name} ships TensorRT {target.tensorrt}, here is {flavour.version}"
    gpu = local_gpu()
    if gpu is None or gpu.compute_capability != target.compute_capability:
        have = f"a {gpu.title} ({gpu.sm})" if gpu else "no GPU"
        return False, f"TensorRT builds for the GPU it runs on and here is {have}, not {target.sm}"
    return True, ""


def _rtx_can_build(target: Target, dla_core: int | None) -> tuple[bool, str]:
    flavour = find_flavour("tensorrt-rtx")
    if not flavour.installed:
        return False, str(flavour.reason)
    if dla_core is not None or target.kind == "jetson":
        return False, f"{target.name} engines come from the TensorRT it ships ({target.tensorrt})"
    if not set(target.compute_capabilities) <= set(flavour.compute_capabilities):
        supported = ", ".join(flavour.compute_capabilities)
        return False, f"TensorRT-RTX targets compute capabilities {supported}, not {target.sm}"
    return True, ""
