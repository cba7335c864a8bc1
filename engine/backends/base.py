"""The one call signature every backend implements, so the pipeline never sees which one runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, TypeVar

import torch

from engine.models.backbone_inputs import BackboneInputs
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank

T = TypeVar("T")


class Backend(ABC):
    """Runs the networks of one model on one device. All tensors in and out live on ``device``.

    Shapes: latents ``[N, C, h, w]``; clips ``[B, C, F, h, w]``; images ``[N, 3, H, W]`` in [-1, 1];
    PCM ``[samples]`` float32 mono at 16 kHz.

    ``per_frame_reference_bank``: the backbone takes a reference bank with one row per frame (``[B * F, L, C]``,
    :class:`engine.sampling.clip_denoiser.AlternatingReference`), not only one per clip; exported graphs
    take one per clip.

    ``serial``: every call, from any thread, runs on one thread one at a time (the CPU's compute thread), so
    work handed over later waits behind work already handed over: the streaming stages then decode a clip
    in the same call as its last step, not behind the next clip's step.
    """

    name: str = "abstract"
    per_frame_reference_bank: bool = False
    serial: bool = False
    device: torch.device
    dtype: torch.dtype

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` where this backend runs its networks: here, on the calling thread.

        The streaming stages hand a clip's whole step and decode to it, so that the torch work around the
        network calls (noise, sampler updates, pixel conversion) runs on the same thread as the calls.
        """
        return fn(*args, **kwargs)

    def prepare(self, size: int, batch: int | None = None) -> None:
        """Make now what the first calls at the steady-state shapes of portrait side ``size`` and ``batch``
        guidance branches (None: every batch served) would make (the torchscript backend's traces), so that a
        live session does not wait for it. Nothing here."""

    @abstractmethod
    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        """PCM covering ``num_frames`` video frames -> per-frame audio tokens ``[num_frames, T, D]``."""

    @abstractmethod
    def reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        """ReferenceNet at timestep 0 on ``[N, C, h, w]`` latents.

        ``context``: ``[1, T_i, D]`` face-embedding tokens for its ``attn2`` (Hallo, :meth:`image_tokens`);
        None reads the model's default (a zero embedding's tokens, or nothing).
        """

    @abstractmethod
    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        """One denoising step -> model output ``[B, C_out, F, h, w]`` (the inputs' shapes:
        :class:`~engine.models.backbone_inputs.BackboneInputs`)."""

    @abstractmethod
    def image_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        """Face embeddings ``[N, E]`` -> ``attn2`` tokens ``[N, T_i, D]`` through the model's image projection.

        Raises ValueError for a model without one (see :func:`project_face_embedding`).
        """

    @abstractmethod
    def face_features(self, mask: torch.Tensor) -> torch.Tensor:
        """Face-region mask ``[N, 1, H, W]`` -> face-locator features ``[N, C', h, w]``."""

    @abstractmethod
    def speed_tokens(self, speed: torch.Tensor) -> torch.Tensor | None:
        """Head speed ``[B, F]`` (rad/s) -> ``[B, F, S, D]``, or None when the model has no speed layers."""

    @abstractmethod
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> scaled latents."""

    @abstractmethod
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""


def project_face_embedding(model: EmoteModel, embedding: torch.Tensor, device: torch.device,
                           dtype: torch.dtype) -> torch.Tensor:
    """``model.image_proj`` on ``embedding`` ``[N, E]`` (on ``device``) -> tokens ``[N, T_i, D]`` in ``dtype``.

    Raises ValueError when the model has no image projection (only Hallo's reads a face embedding).
    """
    if not hasattr(model, "image_proj"):
        raise ValueError(f"model {model.config.name!r} has no image projection: it takes no face embedding")
    with torch.inference_mode():
        return model.image_proj.to(device)(embedding.to(device)).to(dtype)


class TorchPerSessionNetworks:
    """Image projection, face locator and speed encoder in eager PyTorch (these run once per session), for every
    backend: :meth:`use_per_session_networks` sets them up over the backend's ``model``, ``device`` and ``dtype``.
    The face locator runs in ``face_dtype`` (the graph backends keep it float32, their model being unconverted;
    the eager backend in its own dtype), the speed encoder in float32; their outputs come back in ``dtype``."""

    model: EmoteModel
    device: torch.device
    dtype: torch.dtype

    def use_per_session_networks(self, model: EmoteModel, face_dtype: torch.dtype) -> None:
        """Move ``model``'s face locator (to ``face_dtype``) and speed encoder (if any) to :attr:`device`."""
        self.face_dtype = face_dtype
        self.face_locator = model.face_locator.to(self.device, face_dtype)
        self.speed_encoder = model.speed_encoder.to(self.device) if hasattr(model, "speed_encoder") else None

    def image_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        return project_face_embedding(self.model, embedding, self.device, self.dtype)

    @torch.inference_mode()
    def face_features(self, mask: torch.Tensor) -> torch.Tensor:
        return self.face_locator(mask.to(self.device, self.face_dtype)).to(self.dtype)

    @torch.inference_mode()
    def speed_tokens(self, speed: torch.Tensor) -> torch.Tensor | None:
        if self.speed_encoder is None:
            return None
        return self.speed_encoder(speed.to(self.device)).to(self.dtype)
