"""Denoising with guidance branches batched into one backbone call per step: whole clips, or one step of a window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.sampling.guidance import GuidanceScales, branches_needed, combine, split_batched
from engine.sampling.samplers import Sampler, sample

if TYPE_CHECKING:
    from engine.backends.base import Backend


@dataclass
class ClipConditions:
    """Everything the backbone reads for one clip besides the noisy latents (batch 1).

    Attributes:
        audio_tokens: ``[1, F, T, D]``.
        reference_bank: per transformer block ``[1, L, C]``.
        motion_features: per motion-module location ``[1, n, C, h, w]``.
        face_features: ``[1, 1 or F, C', h, w]`` face-locator output (``1``: the same mask for every frame).
        speed_tokens: ``[1, F, S, D_s]`` or None.
        image_tokens: Hallo only: ``[1, T_i, D]`` tokens of the portrait's face embedding, or None (the
            backbone reads a zero embedding's tokens in every branch).
        uncond_image_tokens: ``[1, T_i, D]`` a zero embedding's tokens, for the unconditional branch
            (needed with ``image_tokens``).
        region_masks: Hallo only: per resolution level ``[1, 3, h_l * w_l]`` full / face / lip weights,
            or None (weight 1 everywhere).
    """

    audio_tokens: torch.Tensor
    reference_bank: list[torch.Tensor]
    motion_features: list[torch.Tensor]
    face_features: torch.Tensor
    speed_tokens: torch.Tensor | None
    image_tokens: torch.Tensor | None = None
    uncond_image_tokens: torch.Tensor | None = None
    region_masks: list[torch.Tensor] | None = None


class GuidedBackbone:
    """One guided backbone evaluation: the branches guidance needs stacked in one batch.

    :func:`branches_needed` gives one branch when both scales are 1. Branches without audio get zero
    audio tokens; branches without the reference get ``reference_keep = False``, zero face-locator
    features and, with Hallo's inputs, a zero face embedding's tokens: with single-scale CFG this is
    Hallo's and EchoMimic's unconditional half exactly. Region masks are the same in every branch
    (Hallo repeats them). Hallo's inputs are passed only when the conditions carry them.
    """

    def __init__(self, backend: Backend, guidance: GuidanceScales):
        self.backend, self.guidance = backend, guidance
        self.branches = branches_needed(guidance)

    def batched(self, cond: ClipConditions) -> dict:
        """The backbone's keyword inputs for all branches (batch = number of branches)."""
        n = len(self.branches)
        keep_audio = [b.uses_audio for b in self.branches]
        keep_reference = [b.uses_reference for b in self.branches]

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.expand(n, *t.shape[1:])

        def kept(t: torch.Tensor, keep: list[bool]) -> torch.Tensor:
            """``t`` repeated per branch, zero in the branches whose ``keep`` is False."""
            if all(keep):
                return rep(t)
            return rep(t) * torch.tensor(keep, device=t.device, dtype=t.dtype).view(n, *(1,) * (t.dim() - 1))

        inputs = dict(
            audio_tokens=kept(cond.audio_tokens, keep_audio),
            reference_bank=[rep(t) for t in cond.reference_bank],
            motion_features=[rep(t) for t in cond.motion_features],
            face_features=kept(cond.face_features, keep_reference),
            speed_tokens=rep(cond.speed_tokens) if cond.speed_tokens is not None else None,
            reference_keep=torch.tensor(keep_reference, device=cond.audio_tokens.device),
        )
        if cond.image_tokens is not None:
            inputs["image_tokens"] = self._image_tokens(cond)
        if cond.region_masks is not None:
            inputs["region_masks"] = [rep(m) for m in cond.region_masks]
        return inputs

    def _image_tokens(self, cond: ClipConditions) -> torch.Tensor:
        """``[n, T_i, D]``: the face's tokens for branches with the reference, the zero embedding's without."""
        if all(b.uses_reference for b in self.branches):
            return cond.image_tokens.expand(len(self.branches), *cond.image_tokens.shape[1:])
        if cond.uncond_image_tokens is None:
            raise ValueError("guidance with an unconditional branch needs uncond_image_tokens beside image_tokens")
        return torch.cat([cond.image_tokens if b.uses_reference else cond.uncond_image_tokens
                          for b in self.branches])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, batched: dict) -> torch.Tensor:
        """Guided model output for latents ``x`` ``[1, C, F, h, w]`` at timesteps ``t`` ``[1, F]``."""
        n = len(self.branches)
        out = self.backend.backbone(x.expand(n, *x.shape[1:]), t.expand(n, *t.shape[1:]), **batched)
        return combine(split_batched(out.to(x.dtype), self.branches), self.guidance)


class ClipDenoiser:
    """Runs ``steps`` sampler steps on a clip, one guided backbone batch per step."""

    def __init__(self, backend: Backend, sampler: Sampler, steps: int, guidance: GuidanceScales):
        self.sampler, self.steps = sampler, steps
        self.model = GuidedBackbone(backend, guidance)

    def __call__(self, noise: torch.Tensor, cond: ClipConditions, generator: torch.Generator | None = None,
                 steps: int | None = None) -> torch.Tensor:
        """``noise`` ``[1, C, F, h, w]`` (unit Gaussian) -> clean latents of the same shape.

        ``steps`` overrides the configured number of steps for this clip (the "fewer steps" lag policy).
        """
        batched = self.model.batched(cond)
        return sample(lambda x, t: self.model(x, t, batched), self.sampler, noise, steps or self.steps,
                      generator=generator, per_frame=True)
