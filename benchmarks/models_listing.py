"""What `sase-deploy models` costs per model: a real build vs a build on the meta device.

Run: python benchmarks/models_listing.py
Both timings are taken side by side in this run (read the ratio on a shared machine). The
command counts parameters on a real build; this table shows what the meta device (shapes, no
storage) would save, per model, and whether the factory can run there at all (a failed meta
attempt is timed too: that is what a meta-first listing would pay before falling back).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from sase_deploy.models.registry import count_parameters, list_model_specs


def _timed(fn: Callable[[], int]) -> tuple[int | None, float, str]:
    start = time.perf_counter()
    try:
        value: int | None = fn()
        status = "ok"
    except (RuntimeError, NotImplementedError) as exc:
        value, status = None, f"fails: {str(exc)[:40]}"
    return value, time.perf_counter() - start, status


def _on_meta(factory: Callable[[], torch.nn.Module]) -> int:
    with torch.device("meta"):
        return count_parameters(factory())


def main() -> None:
    with torch.device("meta"):  # one-off warm-up of torch's meta kernels, outside the timings
        torch.nn.Conv2d(3, 3, 3)(torch.empty(1, 3, 8, 8))
    header = f"{'model':22s} {'params':>12s} {'real s':>8s} {'meta s':>8s} {'real/meta':>9s}"
    print(header + "  meta build")
    total_real = total_meta = 0.0
    for spec in list_model_specs():
        real, t_real, _ = _timed(lambda spec=spec: count_parameters(spec.factory()))
        meta, t_meta, status = _timed(lambda spec=spec: _on_meta(spec.factory))
        if meta is not None and meta != real:
            status = f"COUNT DIFFERS ({meta})"
        total_real += t_real
        total_meta += t_meta if meta is not None else t_meta + t_real  # fallback builds for real
        print(f"{spec.name:22s} {real or 0:>12,d} {t_real:>8.2f} {t_meta:>8.2f} "
              f"{t_real / t_meta:>9.1f}  {status}")  # fmt: skip
    print(f"{'total (meta-first)':22s} {'':>12s} {total_real:>8.2f} {total_meta:>8.2f} "
          f"{total_real / total_meta:>9.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
