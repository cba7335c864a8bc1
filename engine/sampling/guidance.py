"""Classifier-free guidance with separate reference and audio scales.

Three branches of the backbone, by which conditions they keep:
    full      reference bank and audio tokens
    ref_only  reference bank, audio dropped
    uncond    both dropped
Guided output, with s_ref = `GuidanceScales.reference` and s_audio = `GuidanceScales.audio`:
    out = uncond + s_ref * (ref_only - uncond) + s_audio * (full - ref_only)
        = s_audio * full + (s_ref - s_audio) * ref_only + (1 - s_ref) * uncond.
A branch whose weight in the second form is 0 need not run: scales (1, 1) run only `full` (one
batch, no CFG); s_ref = 1 runs `full` and `ref_only`; s_ref = s_audio != 1 runs `full` and `uncond`
(plain single-scale CFG); otherwise all three. The pipeline batches the branches it is told to run.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from engine.options import GenerationOptions


class Branch(enum.Enum):
    """One conditioning branch of a guided backbone call."""

    FULL = "full"
    REF_ONLY = "ref_only"
    UNCOND = "uncond"

    @property
    def uses_reference(self) -> bool:
        """Whether this branch reads the reference bank."""
        return self is not Branch.UNCOND

    @property
    def uses_audio(self) -> bool:
        """Whether this branch reads the audio tokens."""
        return self is Branch.FULL


@dataclass(frozen=True)
class GuidanceScales:
    """Guidance scales (dimensionless); 1 means "no guidance" for that condition."""

    reference: float = 1.0
    audio: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reference) and math.isfinite(self.audio)):
            raise ValueError(f"guidance scales must be finite, got {self.reference}, {self.audio}")

    @classmethod
    def of(cls, options: GenerationOptions) -> GuidanceScales:
        """The scales ``options`` ask for (``cfg_ref``, ``cfg_audio``; the model's defaults already applied)."""
        return cls(reference=options.cfg_ref, audio=options.cfg_audio)

    def weights(self) -> dict[Branch, float]:
        """Weight of each branch in the guided output (they sum to 1), branches of weight 0 left out,
        in the order FULL, REF_ONLY, UNCOND."""
        weights = {
            Branch.FULL: self.audio,
            Branch.REF_ONLY: self.reference - self.audio,
            Branch.UNCOND: 1.0 - self.reference,
        }
        return {branch: weight for branch, weight in weights.items() if weight != 0}


def branches_needed(scales: GuidanceScales) -> tuple[Branch, ...]:
    """The branches the backbone must run for `scales`, in batch order (FULL, REF_ONLY, UNCOND)."""
    return tuple(scales.weights())


def combine(outputs: Mapping[Branch, torch.Tensor], scales: GuidanceScales) -> torch.Tensor:
    """Guided model output from the branch outputs (see the module docstring).

    Args:
        outputs: model output of each branch in `branches_needed(scales)` (others are ignored),
            all the same shape, e.g. [B, C, F, h, w].
        scales: the guidance scales.

    Returns:
        The guided output, shaped like the branch outputs; the FULL output itself for scales (1, 1).
    """
    weights = scales.weights()
    missing = [branch.value for branch in weights if branch not in outputs]
    if missing:
        raise ValueError(f"guidance needs the branch outputs: {', '.join(missing)}")
    if weights == {Branch.FULL: 1.0}:
        return outputs[Branch.FULL]
    (first, first_weight), *rest = weights.items()
    guided = outputs[first] * first_weight
    for branch, weight in rest:
        guided = guided + outputs[branch] * weight
    return guided


def split_batched(output: torch.Tensor, branches: Sequence[Branch]) -> dict[Branch, torch.Tensor]:
    """Split a backbone output batched as len(branches) equal parts along dim 0, in `branches` order."""
    if output.shape[0] % len(branches):
        raise ValueError(f"batch {output.shape[0]} is not a multiple of {len(branches)} branches")
    return dict(zip(branches, output.chunk(len(branches), dim=0)))
