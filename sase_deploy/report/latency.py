"""Latency of one runner at one batch: warm-up, then timed runs through the runner template.

Every backend is timed by `Runner.infer` (wall time around the backend call, inputs already in
host memory), so PyTorch, ONNX Runtime and TensorRT rows are comparable. A row stops early once
`budget_s` is spent and says how many runs it holds: a slow model still finishes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sase_deploy.engines.base import Feed, Runner

DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5
DEFAULT_BUDGET_S = 5.0


def measure_latency(
    runner: Runner,
    feed: Feed,
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    budget_s: float = DEFAULT_BUDGET_S,
    timing: str = "wall",
) -> dict[str, Any]:
    """Time `runner` (active) on `feed`: the report's latency row.

    Args:
        runner: an activated runner.
        feed: one batch; its batch size is read from the first input.
        runs: timed runs (at least 1; fewer when `budget_s` runs out first).
        warmup: untimed runs first (kernel selection, allocator warm-up).
        budget_s: stop timing after this many seconds of timed runs.
        timing: "wall" (host clock around the call) or "device" (the runner's own GPU timer).
    """
    batch = int(next(iter(feed.values())).shape[0])
    for _ in range(warmup):
        runner.infer(feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(runs, 1):
        runner.infer(feed)
        assert runner.last_inference_time is not None
        times.append(runner.last_inference_time)
        if time.perf_counter() - start > budget_s:
            break
    ms = np.asarray(times) * 1e3
    mean = float(ms.mean())
    return {
        "batch": batch,
        "runs": len(times),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "throughput_per_s": batch / (mean / 1e3) if mean > 0 else None,
        "timing": timing,
    }
