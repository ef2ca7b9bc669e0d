"""Export-friendly average pools with the exact semantics of `nn.AdaptiveAvgPool2d`.

`nn.AdaptiveAvgPool2d(k)` on a map whose side is not a multiple of `k` (7x7 -> 4x4, 14x14 -> 4x4,
7x7 -> 2x2) uses uneven, overlapping bins: bin `i` covers `[floor(i*n/k), ceil((i+1)*n/k))`. The
TorchScript ONNX exporter refuses such pools and the dynamo exporter emits chains of Gathers.
Here the pool is lowered by hand (no library offers it) from the static input size:

- output 1x1          -> `x.mean((2, 3), keepdim=True)`              (ONNX ReduceMean)
- sides divisible     -> `F.avg_pool2d(kernel = stride = n // k)`    (ONNX AveragePool)
- anything else       -> `A_h @ x @ A_w^T` with fixed averaging matrices (two ONNX MatMuls)

The pools hold no parameters or buffers, so state-dict layouts are unaffected. The export
stage reuses `ExportableAdaptiveAvgPool2d` / `adaptive_avg_pool_matrix` to lower
`nn.AdaptiveAvgPool2d` in users' models.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def adaptive_pool_bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """The `[start, end)` input range of each output bin, as `nn.AdaptiveAvgPool*` defines it."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"pool sizes must be positive, got in={in_size}, out={out_size}")
    return [
        ((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)
    ]


@functools.lru_cache(maxsize=64)
def _pool_matrix_np(in_size: int, out_size: int) -> np.ndarray:
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i, (start, end) in enumerate(adaptive_pool_bins(in_size, out_size)):
        matrix[i, start:end] = 1.0 / (end - start)
    matrix.setflags(write=False)
    return matrix


def adaptive_avg_pool_matrix(
    in_size: int, out_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The (out_size, in_size) matrix whose row `i` averages the inputs of adaptive bin `i`.

    `A @ v` equals `adaptive_avg_pool1d(v, out_size)` for a vector `v` of length `in_size`.
    """
    return torch.tensor(_pool_matrix_np(in_size, out_size), dtype=dtype)


def adaptive_avg_pool2d_exportable(
    x: torch.Tensor, output_size: int | tuple[int, int]
) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, output_size)` lowered to ReduceMean / AveragePool / MatMul.

    The input's spatial size must be static when exporting (it is read as Python ints).
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
    if out_h == 1 and out_w == 1:
        return x.mean((-2, -1), keepdim=True)
    if in_h == out_h and in_w == out_w:
        return x
    if in_h % out_h == 0 and in_w % out_w == 0:
        kernel = (in_h // out_h, in_w // out_w)
        return F.avg_pool2d(x, kernel_size=kernel, stride=kernel)
    rows = adaptive_avg_pool_matrix(in_h, out_h, x.dtype).to(x.device)
    cols_t = adaptive_avg_pool_matrix(in_w, out_w, x.dtype).to(x.device).t()
    return torch.matmul(torch.matmul(rows, x), cols_t)


class ExportableAdaptiveAvgPool2d(nn.Module):
    """Drop-in for `nn.AdaptiveAvgPool2d(output_size)` that exports without Gather chains.

    Same numbers as `nn.AdaptiveAvgPool2d` (up to float rounding of the 1/count weights); no
    parameters or buffers. `output_size` entries of `None` are not supported.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if any(not isinstance(s, int) or s < 1 for s in output_size):
            raise ValueError(f"output_size must be positive ints, got {output_size!r}")
        self.output_size: tuple[int, int] = (int(output_size[0]), int(output_size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d_exportable(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class GlobalAvgPool2d(nn.Module):
    """Global average pool as `x.mean((2, 3))`: ONNX ReduceMean (kept 4-D unless `flatten`)."""

    def __init__(self, flatten: bool = False) -> None:
        super().__init__()
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=not self.flatten)
