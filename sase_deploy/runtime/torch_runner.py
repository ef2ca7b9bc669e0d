"""PyTorch runner: the reference every engine is compared with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sase_deploy.runtime.base import Feed, Outputs, Runner, cpu_threads

if TYPE_CHECKING:  # torch is imported when a runner is made
    import torch


class TorchRunner(Runner):
    """Runs a module under `torch.inference_mode`.

    Args:
        module: the network (put in eval mode and on `device` when activated).
        input_names / output_names: how feeds and outputs are named.
        device: "cpu" or a CUDA device.
        threads: intra-op threads while active (None: `cpu_threads()`, as ONNX Runtime); the
            process-wide setting is restored on deactivate.
    """

    name = "pytorch"

    def __init__(
        self,
        module: torch.nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        import torch

        super().__init__()
        self.module = module
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.device = torch.device(device)
        self.threads = threads if threads is not None else cpu_threads()
        self._previous_threads: int | None = None

    @property
    def compute_threads(self) -> int | None:
        return self.threads

    def activate_impl(self) -> None:
        import torch

        self._previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.module.eval().to(self.device)

    def deactivate_impl(self) -> None:
        import torch

        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None

    def infer_impl(self, feed: Feed) -> Outputs:
        import torch

        args = [
            torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device)
            for n in self.input_names
        ]
        with torch.inference_mode():
            result = self.module(*args)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        flat = list(result) if isinstance(result, list | tuple) else [result]
        if len(flat) != len(self.output_names):
            raise RuntimeError(
                f"model returned {len(flat)} outputs but {len(self.output_names)} names were given"
            )
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, flat, strict=True)}
