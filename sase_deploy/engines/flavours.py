"""Which TensorRT is here: the one place that decides between `tensorrt` and `tensorrt_rtx`.

- `tensorrt` 10.x builds with precision flags (and INT8 calibration caches) or strongly typed;
  `tensorrt` >= 11 is strongly typed only. Both build for the GPU they run on.
- `tensorrt_rtx` (TensorRT-RTX) is strongly typed only and builds ahead of time on a machine
  with no GPU for chosen compute capabilities (SM75 and SM80..SM121, not SM90 nor Jetson).

Nothing here imports TensorRT at module import: the package, `--help` and every non-TensorRT
test work without either installed. Polygraphy picks its TensorRT module when its TensorRT
backend is first imported, so a process uses one flavour (`polygraphy_trt`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from sase_deploy.errors import first_line

# Compute capabilities TensorRT-RTX 1.x targets when its module cannot be asked (docs/engines.md).
RTX_KNOWN_CCS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
INSTALL_HINT = {
    "tensorrt-rtx": "pip install 'sase-deploy[trt-rtx]' (tensorrt-rtx-cu13; builds with no GPU)",
    "tensorrt": "install TensorRT 10+ for your GPU (pip install tensorrt, or JetPack on Jetson)",
}


@dataclass(frozen=True)
class Flavour:
    """One TensorRT flavour and whether it can be used here.

    `version` is None when the module is missing or fails to import (`reason` says why).
    """

    name: str  # "tensorrt" | "tensorrt-rtx"
    module: str  # "tensorrt" | "tensorrt_rtx"
    version: str | None
    reason: str | None = None
    compute_capabilities: tuple[str, ...] = field(default=())

    @property
    def installed(self) -> bool:
        return self.version is not None

    @property
    def major(self) -> int:
        return int((self.version or "0").split(".")[0])

    @property
    def strongly_typed_only(self) -> bool:
        """Precision comes from the graph only (casts, Q/DQ): TensorRT-RTX and TensorRT >= 11."""
        return self.name == "tensorrt-rtx" or self.major >= 11

    @property
    def builds_without_gpu(self) -> bool:
        return self.name == "tensorrt-rtx"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "installed": self.installed,
            "version": self.version,
            "strongly_typed_only": self.strongly_typed_only if self.installed else None,
            "builds_without_gpu": self.builds_without_gpu,
            "compute_capabilities": list(self.compute_capabilities),
            "reason": self.reason,
            "install": None if self.installed else INSTALL_HINT[self.name],
        }


def _import(module: str) -> tuple[ModuleType | None, str | None]:
    if importlib.util.find_spec(module) is None:
        return None, f"python module '{module}' is not installed"
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # a stub wheel or missing shared library: report, don't crash
        return None, f"'{module}' is installed but does not import ({first_line(exc)})"


def _rtx_ccs(trt: ModuleType) -> tuple[str, ...]:
    """'SM89' -> '8.9' for every member of trt.ComputeCapability."""
    names = getattr(getattr(trt, "ComputeCapability", None), "__members__", {})
    ccs = [f"{n[2:-1]}.{n[-1]}" for n in names if n.startswith("SM") and n[2:].isdigit()]
    return tuple(ccs) or RTX_KNOWN_CCS


@functools.cache
def find_flavour(name: str) -> Flavour:
    """The flavour `name` ("tensorrt" or "tensorrt-rtx") as installed here (cached)."""
    module_name = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}[name]
    module, reason = _import(module_name)
    if module is None:
        return Flavour(name, module_name, None, reason)
    version = str(getattr(module, "__version__", "0"))
    ccs = _rtx_ccs(module) if name == "tensorrt-rtx" else ()
    return Flavour(name, module_name, version, None, ccs)


def find_flavours() -> dict[str, Flavour]:
    """Both flavours, installed or not."""
    return {name: find_flavour(name) for name in ("tensorrt", "tensorrt-rtx")}


def polygraphy_trt(flavour: Flavour) -> ModuleType:
    """`polygraphy.backend.trt` bound to `flavour`'s TensorRT module.

    Polygraphy reads `config.USE_TENSORRT_RTX` when its TensorRT backend is first imported, so
    it is set here before that import; asking for the other flavour later in the same process
    is a programming error.
    """
    from polygraphy import config
    from polygraphy.logger import G_LOGGER

    want_rtx = flavour.name == "tensorrt-rtx"
    if "polygraphy.backend.trt" in sys.modules and want_rtx != config.USE_TENSORRT_RTX:
        raise RuntimeError(f"Polygraphy is already bound to the other TensorRT, not {flavour.name}")
    config.USE_TENSORRT_RTX = want_rtx
    G_LOGGER.module_severity = G_LOGGER.WARNING  # INFO lines would flood stdout
    return importlib.import_module("polygraphy.backend.trt")


def trt_module(flavour: Flavour) -> ModuleType:
    """The TensorRT Python module of an installed flavour."""
    if not flavour.installed:
        raise RuntimeError(f"{flavour.name} is not installed: {flavour.reason}")
    return importlib.import_module(flavour.module)
