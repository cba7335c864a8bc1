"""Motion-frame augmentation: what a training stage does to the motion frames it conditions on, so that the
model learns not to trust them blindly. At inference the motion frames are the model's own earlier frames,
imperfect and drifting; trained only on ground-truth motion frames, the model copies its own errors forward
clip after clip (exposure bias), which shows as a face whose colours drift within seconds of a live stream.

- ``noise``: Gaussian noise on the motion latents (standard deviation uniform in ``[0, noise]`` per sample);
- ``patch_drop``: each ``patch`` x ``patch`` block of latent cells of a motion frame is zeroed with this
  probability (the patch-drop augmentation of Hallo2, arXiv 2410.07718), so that appearance has to come from
  the reference rather than from the motion frames;
- ``rollout``: the share of batches whose motion frames the model generates itself, without gradient, with
  its current weights (:mod:`engine.training.rollout`), over ``segments`` segments of ``motion_frames``
  frames in a row, each conditioned on the one before; ``steps`` sampler steps each;
- ``anchor``: the motion features pulled toward the reference's by a fraction uniform in ``[0, anchor]`` per
  sample, as the engine's drift guard (``GenerationOptions.motion_anchor``) does at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MotionAugment:
    """One stage's motion-frame augmentation (see the module docstring); the defaults change nothing."""

    noise: float = 0.0
    patch_drop: float = 0.0
    patch: int = 2
    rollout: float = 0.0
    segments: int = 1
    steps: int = 2
    anchor: float = 0.0

    def __post_init__(self) -> None:
        for name in ("patch_drop", "rollout", "anchor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"motion augmentation: {name} must be within [0, 1], got {getattr(self, name)}")
        if self.noise < 0 or self.patch < 1 or self.segments < 1 or self.steps < 1:
            raise ValueError("motion augmentation: noise >= 0, patch >= 1, segments >= 1 and steps >= 1 required")

    def rolls_out(self, generator: torch.Generator) -> bool:
        """Draw whether the next batch's motion frames are the model's own (probability ``rollout``)."""
        return self.rollout > 0 and float(torch.rand((), generator=generator)) < self.rollout


def corrupt_latents(latents: torch.Tensor, augment: MotionAugment, generator: torch.Generator) -> torch.Tensor:
    """Motion latents ``[B, n, C, h, w]`` with ``augment``'s noise and dropped patches (a new tensor)."""
    b, n, _, h, w = latents.shape
    if augment.noise > 0:
        std = torch.rand(b, generator=generator) * augment.noise
        latents = latents + torch.randn(latents.shape, generator=generator) * std.view(b, 1, 1, 1, 1)
    if augment.patch_drop > 0:
        p = augment.patch
        rows, cols = -(-h // p), -(-w // p)
        keep = (torch.rand(b, n, 1, rows, cols, generator=generator) >= augment.patch_drop).to(latents.dtype)
        keep = keep.repeat_interleave(p, dim=3).repeat_interleave(p, dim=4)[..., :h, :w]
        latents = latents * keep
    return latents


def anchor_features(features: list[torch.Tensor], reference: list[torch.Tensor], augment: MotionAugment,
                    generator: torch.Generator) -> list[torch.Tensor]:
    """Motion features (``[B, n, C, h, w]`` per location) moved toward the reference's (``[B, C, h, w]``)
    by a fraction uniform in ``[0, anchor]`` per sample."""
    if augment.anchor <= 0:
        return features
    b = features[0].shape[0]
    weight = torch.rand(b, generator=generator) * augment.anchor
    return [torch.lerp(f, r[:, None].expand_as(f), weight.view(b, 1, 1, 1, 1).to(f.dtype))
            for f, r in zip(features, reference)]
