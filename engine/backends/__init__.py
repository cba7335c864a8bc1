"""Backends: one module per way of running the networks, all with :class:`Backend`'s signature."""

from __future__ import annotations

import torch

from engine.backends.base import Backend
from engine.backends.torch_eager import TorchEagerBackend
from engine.models.model import EmoteModel

BACKENDS = ("torch",)


def make_backend(name: str, model: EmoteModel, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Backend:
    """The named backend over ``model``."""
    if name == "torch":
        return TorchEagerBackend(model, device, dtype)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "TorchEagerBackend", "make_backend"]
