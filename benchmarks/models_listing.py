"""What `sase-deploy models` costs per model: its parameter count vs building the model for real.

Run: python benchmarks/models_listing.py
Both timings are taken side by side in this run (read the ratio on a shared machine).
"listing" is what the command does (`count_spec_parameters`: meta device, falling back to a real
build when the factory cannot run on meta; the failed attempt is included).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from sase_deploy.commands import models as models_command
from sase_deploy.models.registry import count_parameters, list_model_specs


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _runs_on_meta(spec) -> bool:  # type: ignore[no-untyped-def]
    try:
        with torch.device("meta"):
            spec.factory()
        return True
    except (RuntimeError, NotImplementedError):
        return False


def main() -> None:
    with torch.device("meta"):  # one-off warm-up of torch's meta kernels, outside the timings
        torch.nn.Conv2d(3, 3, 3)(torch.empty(1, 3, 8, 8))
    print(f"{'model':22s} {'params':>12s} {'real build s':>13s} {'listing s':>10s} {'ratio':>6s}  meta")
    total_real = total_listing = 0.0
    for spec in list_model_specs():
        real, t_real = _timed(lambda spec=spec: count_parameters(spec.factory()))
        models_command._PARAMETER_COUNTS.pop(spec.name, None)
        listed, t_listing = _timed(lambda spec=spec: models_command.count_spec_parameters(spec))
        assert listed == real, (spec.name, listed, real)
        meta = "yes" if _runs_on_meta(spec) else "no (built for real)"
        total_real += t_real
        total_listing += t_listing
        print(f"{spec.name:22s} {real:>12,d} {t_real:>13.2f} {t_listing:>10.2f} "
              f"{t_real / t_listing:>6.1f}  {meta}")  # fmt: skip
    print(f"{'total':22s} {'':>12s} {total_real:>13.2f} {total_listing:>10.2f} "
          f"{total_real / total_listing:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
