"""The runner template, after Polygraphy's: every backend is timed and fed the same way."""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import numpy as np

from sase_deploy.errors import UserError

Feed = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]
Shape = tuple[int | None, ...]
# input name -> (dtype, shape); None where the backend does not say (bfloat16, a dynamic dim)
InputMetadata = dict[str, tuple[np.dtype | None, Shape]]

FEED_FIX = (
    "compare models exported from the same network with the same input names, dtypes and "
    "shapes (sase-deploy export --input-shape / --input-name)"
)


def cpu_threads() -> int:
    """The intra-op threads ONNX Runtime's CPU provider uses by default: one per physical core
    this process may run on (ORT leaves hyper-threads idle). PyTorch is given the same number,
    so a reference and its ONNX candidates are timed with equal parallelism."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:  # no sysfs (containers, macOS): count logical CPUs
            return max(1, len(allowed))
        cores.add((package, core))
    return max(1, len(cores) or (os.cpu_count() or 1))


class Runner(abc.ABC):
    """activate() loads the backend, infer() runs one feed, deactivate() frees it.

    `infer` checks the feed against `input_metadata()` (once, here, for every backend: a wrong
    name, dtype or shape is a UserError naming both sides rather than a backend traceback), then
    measures wall time around the backend call only (`last_inference_time`, seconds), so latency
    numbers from different backends are comparable. `on_infer`, when set, is called after each
    inference (progress counting), outside the timed call.
    """

    name: str = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_time: float | None = None
        self._inputs: InputMetadata | None = None
        self.on_infer: Callable[[], None] | None = None

    @property
    def label(self) -> str:
        """How error messages name this runner (backend, and the model file where known)."""
        return self.name

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
            self._inputs = self.input_metadata()

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False
            self._inputs = None

    def infer(self, feed: Feed) -> Outputs:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: infer() called before activate()")
        if self._inputs is not None:
            check_feed(self.label, self._inputs, feed)
        start = time.perf_counter()
        outputs = self.infer_impl(feed)
        self.last_inference_time = time.perf_counter() - start
        if self.on_infer is not None:
            self.on_infer()
        return outputs

    @property
    def compute_threads(self) -> int | None:
        """The intra-op CPU threads this runner computes with (the latency rows record it);
        None (the default) for a GPU runner or one that cannot say."""
        return None

    def input_metadata(self) -> InputMetadata | None:
        """The inputs the active backend takes: name -> (dtype, shape with None for dynamic
        dims). None (the default) when the backend cannot say; its feeds are then not checked."""
        return None

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, feed: Feed) -> Outputs: ...

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        pass


def describe_inputs(inputs: InputMetadata) -> str:
    """`x float32[?,1,8,8], y int64[2]`: names, dtypes and shapes, `?` for a dynamic dim."""

    def one(name: str, dtype: np.dtype | None, shape: Shape) -> str:
        dims = ",".join("?" if d is None else str(d) for d in shape)
        return f"{name} {dtype.name if dtype is not None else '?'}[{dims}]"

    return ", ".join(one(n, d, s) for n, (d, s) in inputs.items()) or "nothing"


def feed_mismatch(expected: InputMetadata, given: InputMetadata) -> str | None:
    """What differs between the inputs a model takes and those it is given (None: they match).

    Args:
        expected: the model's inputs (None dims and dtypes match anything).
        given: what is fed (or another model's inputs).
    """
    missing = [n for n in expected if n not in given]
    extra = [n for n in given if n not in expected]
    if missing or extra:
        parts = [f"{', '.join(missing)} missing"] if missing else []
        parts += [f"{', '.join(extra)} not an input"] if extra else []
        return " and ".join(parts)
    for name, (dtype, shape) in expected.items():
        got_dtype, got_shape = given[name]
        if dtype is not None and got_dtype is not None and dtype != got_dtype:
            return f"{name} is {got_dtype.name}, not {dtype.name}"
        fits = len(shape) == len(got_shape) and all(
            a is None or b is None or a == b for a, b in zip(shape, got_shape, strict=True)
        )
        if not fits:
            return f"{name} has shape {_dims(got_shape)}, not {_dims(shape)}"
    return None


def _dims(shape: Shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def feed_metadata(feed: Feed) -> InputMetadata:
    """The names, dtypes and shapes of a feed, as `input_metadata` spells them."""
    return {n: (np.asarray(v).dtype, tuple(np.shape(v))) for n, v in feed.items()}


def check_feed(runner: str, expected: InputMetadata, feed: Feed) -> None:
    """UserError naming `runner`, the inputs it takes and the feed given, when they differ.

    Args:
        runner: the runner's label (backend and model).
        expected: its `input_metadata()`.
        feed: the arrays about to be run.
    """
    given = feed_metadata(feed)
    problem = feed_mismatch(expected, given)
    if problem is not None:
        raise UserError(
            f"{runner} takes {describe_inputs(expected)} but was fed {describe_inputs(given)} "
            f"({problem}); {FEED_FIX}"
        )
