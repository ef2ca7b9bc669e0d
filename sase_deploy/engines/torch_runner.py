"""PyTorch runner: the reference every engine is compared with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sase_deploy.engines.base import Feed, Outputs, Runner


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(
        self,
        module: torch.nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str = "cpu",
    ) -> None:
        super().__init__()
        self.module = module
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.device = torch.device(device)

    def activate_impl(self) -> None:
        self.module.eval().to(self.device)

    def infer_impl(self, feed: Feed) -> Outputs:
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
