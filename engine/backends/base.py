"""The one call signature every backend implements, so the pipeline never sees which one runs."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from engine.models.reference_net import ReferenceBank


class Backend(ABC):
    """Runs the networks of one model on one device. All tensors in and out live on ``device``.

    Shapes: latents ``[N, C, h, w]``; clips ``[B, C, F, h, w]``; images ``[N, 3, H, W]`` in [-1, 1];
    PCM ``[samples]`` float32 mono at 16 kHz.
    """

    name: str = "abstract"
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        """PCM covering ``num_frames`` video frames -> per-frame audio tokens ``[num_frames, T, D]``."""

    @abstractmethod
    def reference(self, latents: torch.Tensor) -> ReferenceBank:
        """ReferenceNet at timestep 0 on ``[N, C, h, w]`` latents."""

    @abstractmethod
    def backbone(self, sample: torch.Tensor, timestep: torch.Tensor, audio_tokens: torch.Tensor,
                 reference_bank: list[torch.Tensor], motion_features: list[torch.Tensor],
                 face_features: torch.Tensor, speed_tokens: torch.Tensor | None,
                 reference_keep: torch.Tensor) -> torch.Tensor:
        """One denoising step (see :meth:`engine.models.backbone.Backbone.forward` for the shapes)."""

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
