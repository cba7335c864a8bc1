"""The VAE: diffusers' AutoencoderKL (SD VAE) or AutoencoderTiny (TAESD), loaded from local files, or a
fixed pixel codec (``kind="pixel"``: space-to-depth, exactly invertible, no weights) for small models.

Images are ``[N, 3, H, W]`` in [-1, 1]; latents are ``[N, 4, H/8, W/8]`` (pixel codec:
``[N, 3 f^2, H/f, W/f]``) already multiplied by the scaling factor (the scale the diffusion networks
work in).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from torch import nn

from engine.config import VAEConfig


class PixelCodec(nn.Module):
    """Space-to-depth by ``factor``: ``[N, C, H, W]`` <-> ``[N, C f^2, H/f, W/f]``, lossless, no parameters.

    A trained VAE costs training time and loses detail; on small flat-shaded images this codec serves
    as the latent space of a small model (what the synthetic talking-face model uses).
    """

    def __init__(self, factor: int = 4, in_channels: int = 3):
        super().__init__()
        if factor < 1:
            raise ValueError(f"pixel codec factor must be >= 1, got {factor}")
        self.factor, self.in_channels = factor, in_channels

    @property
    def latent_channels(self) -> int:
        return self.in_channels * self.factor ** 2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` (H, W multiples of ``factor``) -> ``[N, C f^2, H/f, W/f]``."""
        return torch.nn.functional.pixel_unshuffle(images, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`."""
        return torch.nn.functional.pixel_shuffle(latents, self.factor)


_KINDS = {"kl": AutoencoderKL, "tiny": AutoencoderTiny, "pixel": PixelCodec}


class VAE(nn.Module):
    """A diffusers autoencoder held as ``model`` (its state dict keys are the diffusers ones)."""

    def __init__(self, cfg: VAEConfig, model: nn.Module | None = None):
        super().__init__()
        if cfg.kind not in _KINDS:
            raise ValueError(f"unknown VAE kind {cfg.kind!r}; known: {', '.join(_KINDS)}")
        self.kind = cfg.kind
        self.scaling_factor = cfg.scaling_factor
        self.model = model if model is not None else _KINDS[cfg.kind](**cfg.config)

    @staticmethod
    def config_from_pretrained(path: Path) -> VAEConfig:
        """The :class:`VAEConfig` of a local diffusers VAE directory (``config.json`` + weights)."""
        data = json.loads((Path(path) / "config.json").read_text())
        kind = "tiny" if data.get("_class_name") == "AutoencoderTiny" else "kl"
        params = {k: v for k, v in data.items() if not k.startswith("_")}
        default_scale = 1.0 if kind == "tiny" else 0.18215
        return VAEConfig(kind=kind, config=params, scaling_factor=data.get("scaling_factor", default_scale))

    @classmethod
    def from_pretrained(cls, path: Path) -> "VAE":
        """Load a local diffusers VAE directory (no download)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers VAE directory (no config.json)")
        cfg = cls.config_from_pretrained(path)
        return cls(cfg, _KINDS[cfg.kind].from_pretrained(path, local_files_only=True))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [-1, 1] -> scaled latents ``[N, C, H/8, W/8]`` (the posterior mean)."""
        if self.kind == "pixel":
            latents = self.model.encode(images)
        elif self.kind == "tiny":
            latents = self.model.encode(images).latents
        else:
            latents = self.model.encode(images).latent_dist.mean
        return latents * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[N, C, h, w]`` -> images ``[N, 3, 8h, 8w]`` in [-1, 1] (clamped)."""
        if self.kind == "pixel":
            return self.model.decode(latents / self.scaling_factor).clamp(-1, 1)
        return self.model.decode(latents / self.scaling_factor).sample.clamp(-1, 1)
