"""Backends: one module per way of running the networks, all with :class:`Backend`'s signature.

``torch``: eager PyTorch (any device). ``torch-cuda-graphs``: eager modules captured into CUDA
graphs per static shape (CUDA only). ``onnxruntime``: exported ONNX graphs in ONNX Runtime (CPU
here; CUDA with onnxruntime-gpu). ``tensorrt``: TensorRT plans from the engine cache (CUDA and the
tensorrt package). The optional backends are imported only when asked for, so a missing package
is a clear error at that point, never an import failure elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.backends.base import Backend
from engine.backends.compute_thread import ComputeThreadBackend
from engine.backends.torch_eager import TorchEagerBackend
from engine.models.model import EmoteModel

BACKENDS = ("torch", "torch-cuda-graphs", "onnxruntime", "tensorrt")


def make_backend(name: str, model: EmoteModel, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 threads: int | None = None, **options: Any) -> Backend:
    """The named backend over ``model``; ``options`` go to the backend's constructor.

    On the CPU the backend's network calls all run on one thread of their own
    (:class:`~engine.backends.compute_thread.ComputeThreadBackend`) with ``threads`` intra-op threads (None:
    ``torch.get_num_threads()`` of the calling thread); ONNX Runtime's sessions get the same count.

    Raises:
        ValueError: an unknown name.
        RuntimeError: the backend's requirement (CUDA, onnxruntime, tensorrt) is missing here.
    """
    if torch.device(device).type == "cpu":
        threads = threads or torch.get_num_threads()
        if name == "onnxruntime":
            options["threads"] = threads
        return ComputeThreadBackend(lambda: _make(name, model, device, dtype, **options), threads)
    return _make(name, model, device, dtype, **options)


def _make(name: str, model: EmoteModel, device: str, dtype: torch.dtype, **options: Any) -> Backend:
    if name == "torch":
        return TorchEagerBackend(model, device, dtype, **options)
    if name == "torch-cuda-graphs":
        from engine.backends.torch_cuda_graphs import TorchCudaGraphsBackend

        return TorchCudaGraphsBackend(model, device, dtype, **options)
    if name == "onnxruntime":
        from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device, dtype, **options)
    if name == "tensorrt":
        from engine.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model, device, dtype, **options)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "TorchEagerBackend", "make_backend"]
