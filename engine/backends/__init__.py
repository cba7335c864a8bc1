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
from engine.backends.torch_eager import TorchEagerBackend
from engine.models.model import EmoteModel

BACKENDS = ("torch", "torch-cuda-graphs", "onnxruntime", "tensorrt")


def make_backend(name: str, model: EmoteModel, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 **options: Any) -> Backend:
    """The named backend over ``model``; ``options`` go to the backend's constructor.

    Raises:
        ValueError: an unknown name.
        RuntimeError: the backend's requirement (CUDA, onnxruntime, tensorrt) is missing here.
    """
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
