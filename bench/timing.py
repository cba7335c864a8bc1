"""Timing with device synchronisation, spreads over repeats, and the matrix-product peak of the device.

On a GPU every timed call is bracketed by CUDA events on the current stream and read after the
events completed; on the CPU by ``time.perf_counter``. A figure is the list of its repeated values with
their median and spread (min, max): :class:`Figure`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Figure:
    """One measured quantity over repeated runs: ``values`` in the quantity's unit, in run order."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def min(self) -> float:
        return float(min(self.values))

    @property
    def max(self) -> float:
        return float(max(self.values))

    def scaled(self, factor: float) -> Figure:
        """The same figure in another unit (every value times ``factor``)."""
        return Figure([v * factor for v in self.values])

    def to_json(self) -> dict:
        """``{"median", "min", "max", "values"}``."""
        return {"median": self.median, "min": self.min, "max": self.max, "values": list(self.values)}


def figure_or_none(values: list[float | None]) -> Figure | None:
    """A :class:`Figure` of the values that were measurable, or None when none was."""
    kept = [float(v) for v in values if v is not None]
    return Figure(kept) if kept else None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Figure:
    """Seconds per call of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones.

    CUDA: events recorded around each call on the current stream, then the end event is waited for.
    CPU: ``time.perf_counter`` around each call.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    values = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            values.append(start.elapsed_time(end) / 1000.0)
        else:
            started = time.perf_counter()
            fn()
            values.append(time.perf_counter() - started)
    return Figure(values)


def matmul_flops(n: int) -> int:
    """FLOPs of one ``[n, n] @ [n, n]`` product (a multiply-add counts 2)."""
    return 2 * n**3


@dataclass
class MatmulPeak:
    """The matrix-product peak measured on this device: ``tflops`` (TFLOP/s) per repeat, its ``dtype``
    and the square size ``n`` used. The bound of a configuration uses the best repeat (a peak)."""

    dtype: str
    n: int
    tflops: Figure

    @property
    def best(self) -> float:
        """The highest TFLOP/s seen: the peak."""
        return self.tflops.max

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "n": self.n, "tflops": self.tflops.to_json(), "best_tflops": self.best}


def measure_matmul_peak(device: torch.device, repeats: int = 10, n: int | None = None) -> MatmulPeak:
    """The matrix-product throughput of ``device``: bf16 on a GPU, fp32 on the CPU.

    Sizes: 8192 on a GPU (large enough to saturate the tensor cores), 1024 on the CPU (in cache-friendly
    BLAS territory, a few ms per product on a laptop core). Each repeat times a batch of products.
    """
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = n or (8192 if cuda else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    products = 10 if cuda else 4

    def run() -> None:
        for _ in range(products):
            torch.mm(a, b)

    seconds = time_call(run, device, warmup=2, repeats=repeats)
    per_product = matmul_flops(n) * products
    return MatmulPeak("bf16" if cuda else "fp32", n, Figure([per_product / s / 1e12 for s in seconds.values]))
