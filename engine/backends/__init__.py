"""Backends: one module per way of running the networks, all with :class:`Backend`'s signature.

``torch``: eager PyTorch (any device). ``torch-cuda-graphs``: eager modules captured into CUDA
graphs per static shape (CUDA only). ``onnxruntime``: exported ONNX graphs in ONNX Runtime (CPU
here; CUDA with onnxruntime-gpu). ``torchscript``: the same networks traced per steady-state shape and frozen
(CPU only). ``tensorrt``: TensorRT plans from the engine cache (CUDA and the
tensorrt package). Each backend's module is imported only when it is asked for, so a missing package
is a clear error at that point, never an import failure elsewhere, and the names cost no import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from engine.backends.base import Backend
    from engine.models.model import EmoteModel
    from engine.options import GenerationOptions

_CLASSES = {
    "torch": ("engine.backends.torch_eager", "TorchEagerBackend"),
    "torch-cuda-graphs": ("engine.backends.torch_cuda_graphs", "TorchCudaGraphsBackend"),
    "onnxruntime": ("engine.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "torchscript": ("engine.backends.torchscript_backend", "TorchScriptBackend"),
    "tensorrt": ("engine.backends.tensorrt_backend", "TensorRTBackend"),
}
"""The registry: each backend's name -> (its module, its class). Importing this package imports none of them."""

BACKENDS = tuple(_CLASSES)
"""The backends' names, the first the default."""
SHAPED_BY_SESSIONS = frozenset({"torchscript", "tensorrt"})
"""The backends that make their graphs for the sessions' clip sizes (their ``options`` argument: traced shapes,
TensorRT profiles); the others make theirs for the model's defaults, or none."""
LIVE_CPU_BACKEND = "torchscript"
"""What a long-running live process (``emote serve``, an always-on avatar) runs on the CPU unless told: it traces
its graphs once at start (seconds), then runs a stream about 1.1-1.2x faster than eager at 1 or 2 intra-op threads
(README, Backends); a short ``generate`` would not earn the tracing back, so the general default stays the first of
:data:`BACKENDS`."""


def live_backend(backend: str | None, device: str) -> str:
    """A live process's backend: ``backend`` when given, else :data:`LIVE_CPU_BACKEND` on the CPU, the default
    elsewhere."""
    if backend is not None:
        return backend
    return LIVE_CPU_BACKEND if device == "cpu" else BACKENDS[0]


def make_backend(name: str, model: EmoteModel, device: str = "cpu", dtype: torch.dtype | None = None,
                 threads: int | None = None, generation: GenerationOptions | None = None, **options: Any) -> Backend:
    """The named backend over ``model`` (``dtype`` None: float32); ``options`` go to the backend's constructor.

    On the CPU the backend's network calls all run on one thread of their own
    (:class:`~engine.backends.compute_thread.ComputeThreadBackend`) with ``threads`` intra-op threads (None:
    ``torch.get_num_threads()`` of the calling thread); ONNX Runtime's sessions get the same count.
    ``generation``: the sessions' options, whose clip sizes the graphs of the backends in
    :data:`SHAPED_BY_SESSIONS` follow (ignored by the others; None: the model's defaults).

    Raises:
        ValueError: an unknown name.
        RuntimeError: the backend's requirement (CUDA, onnxruntime, tensorrt) is missing here.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    import torch

    from engine.backends.compute_thread import ComputeThreadBackend

    dtype = torch.float32 if dtype is None else dtype
    if generation is not None and name in SHAPED_BY_SESSIONS:
        options["options"] = generation
    if torch.device(device).type == "cpu":
        threads = threads or torch.get_num_threads()
        if name == "onnxruntime":
            options["threads"] = threads
        return ComputeThreadBackend(lambda: _make(name, model, device, dtype, **options), threads)
    return _make(name, model, device, dtype, **options)


def _make(name: str, model: EmoteModel, device: str, dtype: torch.dtype, **options: Any) -> Backend:
    """The registered class of backend ``name``, imported now and built over ``model``."""
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)(model, device, dtype, **options)


__all__ = ["BACKENDS", "LIVE_CPU_BACKEND", "SHAPED_BY_SESSIONS", "live_backend", "make_backend"]
