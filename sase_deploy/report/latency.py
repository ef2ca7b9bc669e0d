"""Latency of one runner at one batch: warm-up, then timed runs through the runner template.

Every backend is timed by `Runner.infer` (wall time around the backend call, inputs already in
host memory), so PyTorch, ONNX Runtime and TensorRT rows are comparable. A row stops early once
`budget_s` is spent and says how many runs it holds: a slow model still finishes.

A row also says whether its numbers can be trusted. The timed runs are cut into `ROUNDS`
consecutive rounds; `spread` is (largest − smallest round median) / p50: how far the p50 would
move had the measurement been cut shorter or started later. One stray slow run does not move a
round median; another job taking the cores for part of the measurement does. A row whose spread
exceeds `NOISY_SPREAD` is `noisy` (docs/reports.md has the measurements behind the threshold).

Spread misses one case measured here: PyTorch with a thread per core while another process
holds a core runs steadily, but hundreds of times slower (each parallel region waits for the
descheduled thread). So on Linux a row also records `other_cpus`, the CPUs other processes kept
busy during its timed runs (from /proc/stat), and is noisy when they left the runner fewer
cores than its threads.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from sase_deploy.runtime.base import Feed, Runner

DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5
DEFAULT_BUDGET_S = 5.0

ROUNDS = 5
NOISY_SPREAD = 0.5
NOISY_NOTE = "noisy: machine busy?"
_MIN_LOAD_WINDOW_S = 0.25  # /proc/stat counts in 10 ms ticks: shorter windows are guesses


def measure_latency(
    runner: Runner,
    feed: Feed,
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    budget_s: float = DEFAULT_BUDGET_S,
    timing: str = "wall",
    threads: int | None = None,
) -> dict[str, Any]:
    """Time `runner` (active) on `feed`: the report's latency row.

    Args:
        runner: an activated runner.
        feed: one batch; its batch size is read from the first input.
        runs: timed runs (at least 1; fewer when `budget_s` runs out first).
        warmup: untimed runs first (kernel selection, allocator warm-up).
        budget_s: stop timing after this many seconds of timed runs.
        timing: "wall" (host clock around the call) or "device" (the runner's own GPU timer).
        threads: the runner's intra-op CPU threads, recorded in the row (None: not a CPU runner
            or not known).
    """
    batch = int(next(iter(feed.values())).shape[0])
    for _ in range(warmup):
        runner.infer(feed)
    times: list[float] = []
    clock = _cpu_clock()
    start = time.perf_counter()
    while len(times) < max(runs, 1):
        runner.infer(feed)
        assert runner.last_inference_time is not None
        times.append(runner.last_inference_time)
        if time.perf_counter() - start > budget_s:
            break
    others = _other_cpus(clock, _cpu_clock(), time.perf_counter() - start)
    return latency_row(np.asarray(times) * 1e3, batch, timing, threads, others)


def latency_row(
    ms: np.ndarray,
    batch: int,
    timing: str = "wall",
    threads: int | None = None,
    other_cpus: float | None = None,
) -> dict[str, Any]:
    """The latency row of timed runs `ms` (milliseconds, in the order they ran).

    Args:
        ms: one time per timed run.
        batch: the batch size timed.
        timing: "wall" or "device".
        threads: intra-op CPU threads, or None.
        other_cpus: CPUs other processes kept busy meanwhile, or None (not measured).
    """
    mean = float(ms.mean())
    p50 = float(np.percentile(ms, 50))
    p99 = float(np.percentile(ms, 99))
    spread = round_spread(ms)
    return {
        "batch": batch,
        "runs": len(ms),
        "p50_ms": p50,
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": p99,
        "mean_ms": mean,
        "throughput_per_s": batch / (mean / 1e3) if mean > 0 else None,
        "timing": timing,
        "threads": threads,
        "p99_over_p50": p99 / p50 if p50 > 0 else None,
        "spread": spread,
        "other_cpus": other_cpus,
        "noisy": (spread is not None and spread > NOISY_SPREAD) or _crowded(other_cpus, threads),
    }


def _crowded(other_cpus: float | None, threads: int | None) -> bool:
    # Other processes left fewer idle CPUs than the runner has threads (a GPU runner needs one
    # host thread); half a CPU of slack absorbs tick rounding and short daemons.
    if other_cpus is None:
        return False
    return other_cpus > (os.cpu_count() or 1) - (threads or 1) + 0.5


def round_spread(ms: np.ndarray) -> float | None:
    """(max − min) of the medians of `ROUNDS` consecutive rounds, over the median of all runs;
    None with fewer than `ROUNDS` runs (a round of nothing has no median)."""
    if len(ms) < ROUNDS:
        return None
    p50 = float(np.median(ms))
    medians = [float(np.median(r)) for r in np.array_split(ms, ROUNDS)]
    return (max(medians) - min(medians)) / p50 if p50 > 0 else None


def _cpu_clock() -> tuple[float, float] | None:
    """(CPU-seconds all CPUs were busy, CPU-seconds of this process); None without /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait; steal
    # (a hypervisor running other guests) takes the CPU from us as surely as a local process.
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy, own.user + own.system


def _other_cpus(
    before: tuple[float, float] | None, after: tuple[float, float] | None, seconds: float
) -> float | None:
    """CPUs' worth of time other processes used between two `_cpu_clock` readings."""
    if before is None or after is None or seconds < _MIN_LOAD_WINDOW_S:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(others, 0.0) / seconds, 2)
