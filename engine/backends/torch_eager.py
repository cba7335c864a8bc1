"""PyTorch eager backend: the model's own modules, under ``torch.inference_mode``."""

from __future__ import annotations

import dataclasses

import torch

from engine.backends.base import Backend, TorchPerSessionNetworks
from engine.models.backbone_inputs import BackboneInputs
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank


class TorchEagerBackend(TorchPerSessionNetworks, Backend):
    """Runs :class:`EmoteModel` as it is, in ``dtype`` on ``device``.

    The audio encoder and the speed encoder always run in float32 (they are cheap, and wav2vec2's
    normalisation and whisper's log-mel need the range); the face locator runs in ``dtype``.
    """

    name = "torch"
    per_frame_reference_bank = True

    def __init__(self, model: EmoteModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device).eval()
        for name in ("reference_net", "backbone", "vae"):
            getattr(self.model, name).to(dtype)
        self.use_per_session_networks(self.model, dtype)

    @torch.inference_mode()
    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.model.audio_encoder.tokens(pcm.float().to(self.device), num_frames).to(self.dtype)

    @torch.inference_mode()
    def reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        if context is not None:
            context = context.to(self.dtype).expand(latents.shape[0], *context.shape[1:])
        return self.model.reference_net(latents.to(self.dtype), context=context)

    @torch.inference_mode()
    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        return self.model.backbone(**dataclasses.replace(inputs, sample=inputs.sample.to(self.dtype)).kwargs())

    @torch.inference_mode()
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.vae.encode(images.to(self.dtype))

    @torch.inference_mode()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.vae.decode(latents.to(self.dtype))
