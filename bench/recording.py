"""A backend wrapper that records every network call (which network, input shapes, when), so that a
run can be counted, replayed with device synchronisation for per-stage times, and replayed on the meta
device for its FLOPs.

A call's inputs are kept as a *spec*: tensors become :class:`TensorSpec` (shape and dtype, no data),
lists become :class:`ListSpec`, everything else (None, ints, floats, bools, strings) stays as it is.
Specs are hashable, so calls with the same inputs share one :attr:`Call.signature`.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from engine.backends.base import Backend
from engine.models.backbone_inputs import BackboneInputs, BackboneLayout
from engine.models.reference_net import ReferenceBank

_TIMESTEP = 500
_PCM_SCALE = 0.1


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's ``shape`` and ``dtype`` (e.g. ``"torch.float16"``), without its data."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ListSpec:
    """A list of specs (the backbone's per-layer reference bank and motion features)."""

    items: tuple[Any, ...]


def spec_of(value: Any) -> Any:
    """The spec of one call argument (see the module docstring)."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), str(value.dtype))
    if isinstance(value, (list, tuple)):
        return ListSpec(tuple(spec_of(v) for v in value))
    return value


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def materialise(spec: Any, device: torch.device | str, float_dtype: torch.dtype | None = None) -> Any:
    """A value matching ``spec`` on ``device``.

    Floating tensors: Gaussian, times 0.1 (PCM-like levels; the networks' cost does not depend on the
    values), in their recorded dtype or ``float_dtype`` when given (the meta device counts fp32).
    Integer tensors (timesteps) are filled with 500, boolean ones (guidance masks) with True. On the
    meta device every tensor is empty.
    """
    if isinstance(spec, ListSpec):
        return [materialise(s, device, float_dtype) for s in spec.items]
    if not isinstance(spec, TensorSpec):
        return spec
    dtype = _dtype(spec.dtype)
    if dtype.is_floating_point and float_dtype is not None:
        dtype = float_dtype
    if torch.device(device).type == "meta":
        return torch.empty(spec.shape, dtype=dtype, device=device)
    if dtype == torch.bool:
        return torch.ones(spec.shape, dtype=dtype, device=device)
    if not dtype.is_floating_point:
        return torch.full(spec.shape, _TIMESTEP, dtype=dtype, device=device)
    return (torch.randn(spec.shape, device=device) * _PCM_SCALE).to(dtype)


@dataclass(frozen=True)
class Call:
    """One network call: ``network`` (a :class:`Backend` method name), the run ``phase`` it fell in
    ("session": set-up before the first clip; "stream": per clip), and the specs of its arguments."""

    network: str
    phase: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]

    @property
    def signature(self) -> tuple:
        """What makes two calls cost the same: the network and its input specs (not the phase)."""
        return (self.network, self.args, self.kwargs)

    def inputs(self, device: torch.device | str, float_dtype: torch.dtype | None = None) -> tuple[list, dict]:
        """Materialised ``(args, kwargs)`` for a replay (see :func:`materialise`); a backbone call's flat form is
        made one :class:`BackboneInputs` again."""
        args = [materialise(a, device, float_dtype) for a in self.args]
        kwargs = {k: materialise(v, device, float_dtype) for k, v in self.kwargs}
        layout = kwargs.pop("layout", None)
        return ([layout.unflatten(args)], kwargs) if isinstance(layout, BackboneLayout) else (args, kwargs)

    def frames(self) -> int:
        """Output frames of the call: ``F`` of a backbone sample ``[B, C, F, h, w]``, ``N`` of a VAE
        decode's latents ``[N, C, h, w]``; 0 for other networks."""
        first = self.args[0] if self.args else None
        if not isinstance(first, TensorSpec):
            return 0
        if self.network == "backbone":
            return first.shape[2]
        if self.network == "vae_decode":
            return first.shape[0]
        return 0

    def batch(self) -> int:
        """Leading dimension of the first tensor argument (images for ReferenceNet, branches for the backbone)."""
        first = self.args[0] if self.args else None
        return first.shape[0] if isinstance(first, TensorSpec) and first.shape else 0


class RecordingBackend(Backend):
    """Delegates every call to ``inner`` and records it as a :class:`Call` in :attr:`calls`.

    Set :attr:`phase` to label the calls that follow. Thread-safe (the streaming runtime calls the
    backend from its denoise and decode threads). Recording is off while :attr:`recording` is False.
    """

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name, self.device, self.dtype = inner.name, inner.device, inner.dtype
        self.phase = "session"
        self.recording = True
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def _call(self, network: str, *args: Any, **kwargs: Any) -> Any:
        out = getattr(self.inner, network)(*args, **kwargs)
        self._record(network, tuple(spec_of(a) for a in args),
                     tuple(sorted((k, spec_of(v)) for k, v in kwargs.items())))
        return out

    def _record(self, network: str, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]) -> None:
        if self.recording:
            with self._lock:
                self.calls.append(Call(network, self.phase, args, kwargs))

    def take_calls(self) -> list[Call]:
        """The calls recorded so far, cleared from the recorder."""
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self._call("audio_tokens", pcm, num_frames)

    def reference(self, latents: torch.Tensor, **extra: Any) -> ReferenceBank:
        return self._call("reference", latents, **extra)

    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        """The inner backend's backbone; recorded in its flat form (the sample first), keyed by its layout."""
        out = self.inner.backbone(inputs)
        layout = BackboneLayout.of(inputs)
        self._record("backbone", tuple(spec_of(t) for t in layout.flatten(inputs)), (("layout", layout),))
        return out

    def face_features(self, mask: torch.Tensor) -> torch.Tensor:
        return self._call("face_features", mask)

    def image_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        return self._call("image_tokens", embedding)

    def speed_tokens(self, speed: torch.Tensor) -> torch.Tensor | None:
        return self._call("speed_tokens", speed)

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._call("vae_encode", images)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._call("vae_decode", latents)


def count_calls(calls: list[Call], phase: str | None = None) -> Counter:
    """How many calls of each network, optionally only those of one ``phase``."""
    return Counter(c.network for c in calls if phase is None or c.phase == phase)
