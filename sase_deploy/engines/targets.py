"""Deployment targets: what each device can run, and which TensorRT it builds engines with.

The table lives in `sase_deploy/assets/targets.json` (package data) so it can grow without code
changes. `check_request` turns impossible requests (FP8 on Orin, DLA on an H100) into one-line
`UserError`s that name what would work. `local_target` describes this machine's GPU from
`nvidia-smi` without importing torch or TensorRT, so `doctor` stays fast on GPU-less machines.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from sase_deploy.errors import UserError
from sase_deploy.vocabulary import HARDWARE_PRECISIONS

KINDS = ("datacenter", "rtx", "jetson", "local")
DLA_PRECISIONS = ("fp16", "int8")  # DLA has no FP32 (nor BF16/FP8) datapath
LOCAL = "local"
_NVIDIA_SMI = ("nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader")


@dataclass(frozen=True)
class Target:
    """One device class.

    Args:
        name: CLI name (`--target orin-nano`).
        title: marketing name, e.g. "NVIDIA L4".
        kind: "datacenter" | "rtx" | "jetson" | "local".
        compute_capability: CUDA compute capability, e.g. "8.9".
        memory_gb: device memory (on Jetson: memory shared with the CPU).
        dla_cores: the most DLA cores any module of this name has (see `notes`).
        precisions: what the hardware runs, from "fp32", "fp16", "bf16", "int8", "fp8", "fp4".
        tensorrt: the TensorRT the device ships ("10.3"), or None for any current TensorRT.
        jetpack: the JetPack that ships `tensorrt`, or None off Jetson.
        default_workspace_mb: builder workspace to use when none is given.
        notes: facts a user should know (module variants, fallbacks).
        also_compute_capabilities: further SMs one engine for this target runs on (a portable
            TensorRT-RTX engine); empty for a device class.
    """

    name: str
    title: str
    kind: str
    compute_capability: str
    memory_gb: float
    dla_cores: int
    precisions: tuple[str, ...]
    tensorrt: str | None
    jetpack: str | None
    default_workspace_mb: int
    notes: str = ""
    also_compute_capabilities: tuple[str, ...] = ()

    @property
    def compute_capabilities(self) -> tuple[str, ...]:
        """Every compute capability an engine for this target is built for."""
        return (self.compute_capability, *self.also_compute_capabilities)

    @property
    def sm(self) -> str:
        """Compute capability as TensorRT-RTX and nvcc spell it: "8.9" -> "SM89" (a portable
        target lists each: "SM80,SM86,...")."""
        return ",".join(_sm(cc) for cc in self.compute_capabilities)

    @property
    def has_dla(self) -> bool:
        return self.dla_cores > 0

    def supports(self, precision: str) -> bool:
        """Whether the hardware runs `precision` (one of HARDWARE_PRECISIONS)."""
        return precision in self.precisions

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready facts, with `sm` added (for manifests and `doctor --json`)."""
        data = asdict(self)
        data["precisions"] = list(self.precisions)
        data["compute_capabilities"] = list(self.compute_capabilities)
        data["also_compute_capabilities"] = list(self.also_compute_capabilities)
        data["sm"] = self.sm
        return data


def _sm(compute_capability: str) -> str:
    major, _, minor = compute_capability.partition(".")
    return f"SM{major}{minor or '0'}"


def _target_from_json(entry: dict[str, Any]) -> Target:
    target = Target(
        name=str(entry["name"]),
        title=str(entry["title"]),
        kind=str(entry["kind"]),
        compute_capability=str(entry["compute_capability"]),
        memory_gb=float(entry["memory_gb"]),
        dla_cores=int(entry["dla_cores"]),
        precisions=tuple(entry["precisions"]),
        tensorrt=entry.get("tensorrt"),
        jetpack=entry.get("jetpack"),
        default_workspace_mb=int(entry["default_workspace_mb"]),
        notes=str(entry.get("notes", "")),
        also_compute_capabilities=tuple(entry.get("also_compute_capabilities", ())),
    )
    # The JSON ships with the package: a bad entry is a bug, not a user error.
    if target.kind not in KINDS or not set(target.precisions) <= set(HARDWARE_PRECISIONS):
        raise ValueError(f"targets.json: bad kind or precision in {target.name!r}")
    if target.dla_cores and not set(DLA_PRECISIONS) & set(target.precisions):
        raise ValueError(f"targets.json: {target.name!r} has DLA but no fp16/int8")
    return target


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Target, ...]:
    text = resources.files("sase_deploy").joinpath("assets", "targets.json").read_text("utf-8")
    return tuple(_target_from_json(entry) for entry in json.loads(text)["targets"])


def load_targets() -> dict[str, Target]:
    """All packaged targets by name, in table order (datacenter, RTX, Jetson).

    The JSON is read once per process; each call returns a fresh dict.
    """
    return {target.name: target for target in _load()}


def get_target(name: str) -> Target:
    """The target called `name` (case-insensitive); "local" means this machine's GPU.

    Args:
        name: a packaged target name (see `load_targets`) or "local".

    Raises:
        UserError: unknown name, or "local" on a machine without an NVIDIA GPU.
    """
    key = name.strip().lower()
    targets = load_targets()
    if key in targets:
        return targets[key]
    if key == LOCAL:
        local = local_target()
        if local is None:
            raise UserError(
                "--target local: no NVIDIA GPU found (nvidia-smi missing or silent); "
                f"name a target instead: {', '.join(sorted(targets))}"
            )
        return local
    choices = ", ".join([*sorted(targets), LOCAL])
    raise UserError(f"unknown target {name!r}; choose one of: {choices}")


def _names_with(pred: Callable[[Target], bool]) -> str:
    return ", ".join(t.name for t in load_targets().values() if pred(t))


def _join_or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def check_request(target: Target, precision: str, dla_core: int | None) -> None:
    """Reject build requests the target cannot serve, naming what would work.

    Args:
        target: the device to build for.
        precision: one of HARDWARE_PRECISIONS.
        dla_core: DLA core index, or None to build for the GPU.

    Raises:
        UserError: a one-line message (unknown precision, precision the hardware lacks,
            DLA on a target without DLA, DLA core out of range, DLA with a precision DLA lacks).
    """
    if precision not in HARDWARE_PRECISIONS:
        raise UserError(
            f"unknown precision {precision!r}; choose one of: {', '.join(HARDWARE_PRECISIONS)}"
        )
    if not target.supports(precision):
        fallback = [p for p in ("fp16", "int8") if target.supports(p)] or ["fp32"]
        others = _names_with(lambda t: t.supports(precision))
        raise UserError(
            f"{target.name} has no {precision.upper()} ({target.sm}); use {_join_or(fallback)}"
            + (f" (targets with {precision.upper()}: {others})" if others else "")
        )
    if dla_core is None:
        return
    if not target.has_dla:
        raise UserError(
            f"{target.name} has no DLA; drop --dla-core or pick {_names_with(lambda t: t.has_dla)}"
        )
    if not 0 <= dla_core < target.dla_cores:
        cores = _join_or([str(i) for i in range(target.dla_cores)])
        raise UserError(
            f"{target.name} has {target.dla_cores} DLA core(s); --dla-core {dla_core} is out of "
            f"range, use {cores}"
        )
    if precision not in DLA_PRECISIONS:
        raise UserError(
            f"DLA runs fp16 or int8 only, not {precision}; use --precision fp16 or int8, "
            "or drop --dla-core to build for the GPU"
        )


def precisions_for_cc(compute_capability: str) -> tuple[str, ...]:
    """What TensorRT runs on a GPU of this compute capability (for GPUs not in the table).

    Args:
        compute_capability: e.g. "8.9".
    """
    major, _, minor = compute_capability.partition(".")
    cc = (int(major), int(minor or 0))
    found = ["fp32", "fp16"]
    if cc >= (8, 0):
        found.append("bf16")
    found.append("int8")
    if cc >= (8, 9) and cc != (8, 7):  # Ada, Hopper, Blackwell; Orin (8.7) has none
        found.append("fp8")
    if cc >= (10, 0):  # Blackwell
        found.append("fp4")
    return tuple(found)


def parse_nvidia_smi(text: str) -> Target | None:
    """A "local" Target from the first line of `nvidia-smi --query-gpu=name,compute_cap,
    memory.total --format=csv,noheader` output (e.g. "NVIDIA L4, 8.9, 23034 MiB"), or None.

    Args:
        text: nvidia-smi's stdout.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    fields = [field.strip() for field in lines[0].rsplit(",", 2)]
    if len(fields) != 3:
        return None
    title, cc, memory = fields
    try:
        memory_mib = float(memory.split()[0])
        precisions = precisions_for_cc(cc)
    except (ValueError, IndexError):
        return None  # "[N/A]" and friends: a GPU we cannot describe
    extra = f"; {len(lines)} GPUs, described the first" if len(lines) > 1 else ""
    return Target(
        name=LOCAL,
        title=title,
        kind="local",
        compute_capability=cc,
        memory_gb=round(memory_mib / 1024, 1),
        dla_cores=0,
        precisions=precisions,
        tensorrt=None,
        jetpack=None,
        default_workspace_mb=2048,
        notes=f"detected with nvidia-smi{extra}",
    )


def local_target() -> Target | None:
    """This machine's NVIDIA GPU as a Target named "local", or None when there is none.

    Asks `nvidia-smi` (5 s timeout) rather than torch or TensorRT, so it is cheap and safe to
    call where neither is installed. Jetson has no full nvidia-smi: use a named target there.
    """
    try:
        done = subprocess.run(_NVIDIA_SMI, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):  # not installed, not executable, hung
        return None
    if done.returncode != 0:
        return None
    return parse_nvidia_smi(done.stdout)
