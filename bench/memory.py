"""Peak memory of a stretch of work: the device's (PyTorch's allocator) and the host's (resident set).

Host: Linux keeps the peak resident set size of a process (``VmHWM`` in ``/proc/self/status``); writing
``5`` to ``/proc/self/clear_refs`` resets it to the current size, so each stretch gets its own peak.
Where that file cannot be written, the peak is sampled from ``VmRSS`` every 5 ms by a thread instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_SAMPLE_S = 0.005


def _status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmRSS``), or None where there is no such file."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_host_peak() -> bool:
    """Reset the kernel's peak-RSS counter; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Context manager: peak host RSS and peak device memory allocated inside the ``with`` block, MiB.

    ``host_mib`` is the process's whole resident set at its peak (the Python runtime and the model
    included); ``device_mib`` is ``torch.cuda.max_memory_allocated`` and ``device_start_mib`` what was
    allocated when the block began (both None on the CPU).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.host_mib: float | None = None
        self.device_mib: float | None = None
        self.device_start_mib: float | None = None
        self._sampled_kib = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self._sampled_kib = max(self._sampled_kib, _status_kib("VmRSS") or 0)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.device_start_mib = torch.cuda.memory_allocated(self.device) / 2**20
        if not _reset_host_peak():
            self._sampled_kib = _status_kib("VmRSS") or 0
            self._sampler = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.device_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak_kib = self._sampled_kib
        else:
            peak_kib = _status_kib("VmHWM") or 0
        self.host_mib = peak_kib / 1024 if peak_kib else None
