"""Deterministic stand-in weights: a tensor's values are a function of its key name and shape only.

Used both by ``fixtures/make_fixtures.py`` (to fill Hallo's / EchoMimic's own modules before running
them) and by the tests (to write the same checkpoint files the way those systems ship them), so the
parity fixtures need no committed weights. Pure torch: no engine imports (the fixture script runs in
the other projects' environments).

Values: a sine hash of (key, index) in float64 -> uniform in [-1, 1), scaled by the tensor's role so
activations stay of order one: matrices and convolutions by ``sqrt(3 / fan_in)``, biases by 0.1,
one-dimensional weights (norm scales) as ``1 + 0.1 u``, everything else (position tables, embeddings)
as ``u``.
"""

from __future__ import annotations

import math
import zlib

import torch


def uniform(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``shape`` values in [-1, 1), float64, fixed by ``key`` and the element index."""
    seed = zlib.crc32(key.encode()) / 2**32
    index = torch.arange(math.prod(shape), dtype=torch.float64)
    x = torch.sin(index * 0.6180339887 + seed * 6.283185307) * 43758.5453
    return (2.0 * (x - torch.floor(x)) - 1.0).reshape(shape)


def synth_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The stand-in value of the checkpoint entry ``key`` with ``shape`` (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    u = uniform(key, shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias":
        values = 0.1 * u
    elif leaf in ("weight", "weight_v", "original1") and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        values = u * math.sqrt(3.0 / fan_in)
    elif leaf in ("weight", "weight_g", "original0"):
        values = 1.0 + 0.1 * u
    else:
        values = u
    return values.to(dtype)
