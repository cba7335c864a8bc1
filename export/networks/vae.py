"""The VAE networks: the decoder (scaled latents -> images in [-1, 1]) and the encoder (images -> scaled
latents, the reference image). The VAE itself: :mod:`engine.models.vae`."""

from __future__ import annotations

import torch
from torch import nn

from export.networks.spec import Network, Shape, TensorSpec


class _VAEGraph(nn.Module):
    """The VAE's ``decode`` (scaled latents ``[N, C, h, w]`` -> images ``[N, 3, H, W]`` in [-1, 1]) or ``encode``
    (images -> scaled latents, the posterior mean) as a module of its own."""

    def __init__(self, vae: nn.Module, method: str):
        super().__init__()
        self.vae, self.method = vae, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.vae, self.method)(x)


class VAEDecoderNetwork(Network):
    """Scaled latents ``[frames, C, h, w]`` -> images ``[frames, 3, H, W]`` in [-1, 1] (one clip at a time)."""

    name = "vae_decoder"
    component = "vae"

    @property
    def inputs(self) -> list[TensorSpec]:
        lat = self.shapes.latent
        return [TensorSpec("latents", ("frames", self.config.unet.in_channels, lat, lat))]

    @property
    def outputs(self) -> list[TensorSpec]:
        size = self.shapes.size
        return [TensorSpec("images", ("frames", 3, size, size))]

    def module(self) -> nn.Module:
        return _VAEGraph(self.model.vae, "decode")

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        s = self.shapes
        points = [(f"f{f}", {"frames": f}, {"frames": f}, {"frames": f}) for f in s.frame_buckets]
        points.append(("dynamic", {"frames": 1}, {"frames": s.max_frames}, {"frames": s.max_frames}))
        return points


class VAEEncoderNetwork(Network):
    """Images ``[images, 3, H, W]`` in [-1, 1] -> scaled latents ``[images, C, h, w]`` (the reference image)."""

    name = "vae_encoder"
    component = "vae"

    @property
    def inputs(self) -> list[TensorSpec]:
        size = self.shapes.size
        return [TensorSpec("images", ("images", 3, size, size))]

    @property
    def outputs(self) -> list[TensorSpec]:
        lat = self.shapes.latent
        return [TensorSpec("latents", ("images", self.config.unet.in_channels, lat, lat))]

    def module(self) -> nn.Module:
        return _VAEGraph(self.model.vae, "encode")

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        return [("i1", {"images": 1}, {"images": 1}, {"images": 1})]

    def _sample_value(self, spec: TensorSpec, shape: Shape, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * 2 - 1
