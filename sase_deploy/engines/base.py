"""The runner template, after Polygraphy's: every backend is timed the same way."""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from types import TracebackType

import numpy as np

Feed = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class Runner(abc.ABC):
    """activate() loads the backend, infer() runs one feed, deactivate() frees it.

    `infer` measures wall time around the backend call only (`last_inference_time`, seconds),
    so latency numbers from different backends are comparable.
    """

    name: str = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_time: float | None = None

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed: Feed) -> Outputs:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: infer() called before activate()")
        start = time.perf_counter()
        outputs = self.infer_impl(feed)
        self.last_inference_time = time.perf_counter() - start
        return outputs

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
