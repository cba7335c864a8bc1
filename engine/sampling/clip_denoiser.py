"""Denoising with guidance branches batched into one backbone call per step: whole clips, or one step of a window."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.models.backbone_inputs import GUIDANCE, PER_FRAME, BackboneConditions, BackboneInputs
from engine.sampling.guidance import Branch, GuidanceScales, branches_needed, combine, split_batched
from engine.sampling.samplers import Sampler, sample

if TYPE_CHECKING:
    from engine.backends.base import Backend

HALLO_BRANCHES = (Branch.FULL, Branch.UNCOND)
"""The branches of single-scale CFG, the only guidance Hallo's pipeline has."""


@dataclass
class AlternatingReference:
    """Hallo's reference reader, reproduced (``hallo/models/mutual_self_attention.py``, commit 8fd7c57).

    Under CFG Hallo runs its ReferenceNet once on ``[reference, motion_1 .. motion_n]`` repeated for its two
    branches (unconditional first), with the image-projection context ``[zero embedding, face embedding]``
    repeated along that batch, so row ``i`` reads context ``i % 2``. Its reader then takes the reference row
    of each branch and tiles those two rows over the frames, so frame ``f`` of branch ``b`` reads the
    reference row of branch ``(b * F + f) % 2``; and branch ``b`` reads motion frame ``j`` from row
    ``b * (n + 1) + 1 + j``. Its training (``scripts/train_stage2.py``) uses the same reader.

    Attributes:
        banks: per context (0: zero embedding, 1: face embedding), the reference bank, per transformer
            block ``[1, L, C]``.
        motion: per context, the motion-frame features, per motion-module location ``[1, n, C, h, w]``.
    """

    banks: tuple[list[torch.Tensor], list[torch.Tensor]]
    motion: tuple[list[torch.Tensor], list[torch.Tensor]]

    def reference_context(self, branch: int, frame: int, frames: int) -> int:
        """Context of the reference row frame ``frame`` of Hallo's branch ``branch`` (0: unconditional) reads."""
        n = self.motion[0][0].shape[1] if self.motion[0] else 0
        source_branch = (branch * frames + frame) % 2
        return (source_branch * (n + 1)) % 2

    @staticmethod
    def motion_context(branch: int, index: int, n: int) -> int:
        """Context of motion frame ``index`` (0-based of ``n``) in Hallo's branch ``branch``."""
        return (branch * (n + 1) + 1 + index) % 2

    def batched(self, branches: tuple[Branch, ...], frames: int) -> dict:
        """``reference_bank`` (one row per frame: ``[B * F, L, C]``), ``reference_keep`` ``[B * F]`` and
        ``motion_features`` ``[B, n, C, h, w]`` for ``branches`` (a permutation of FULL, UNCOND)."""
        hallo_branch = {Branch.UNCOND: 0, Branch.FULL: 1}
        rows = [self.reference_context(hallo_branch[b], f, frames) for b in branches for f in range(frames)]
        bank = [torch.cat([self.banks[c][block] for c in rows]) for block in range(len(self.banks[0]))]
        keep = torch.tensor([b.uses_reference for b in branches for _ in range(frames)],
                            device=self.banks[0][0].device)
        motion = []
        for location in range(len(self.motion[0])):
            n = self.motion[0][location].shape[1]
            motion.append(torch.cat([
                torch.cat([self.motion[self.motion_context(hallo_branch[b], j, n)][location][:, j:j + 1]
                           for j in range(n)], dim=1) for b in branches]))
        return dict(reference_bank=bank, reference_keep=keep, motion_features=motion)


@dataclass(kw_only=True)
class ClipConditions(BackboneConditions):
    """Everything the backbone reads for one clip besides the noisy latents (batch 1): the
    :class:`~engine.models.backbone_inputs.BackboneConditions` (``reference_keep`` is set per guidance branch)
    and what guidance builds its branches from.

    Attributes:
        uncond_image_tokens: ``[1, T_i, D]`` a zero embedding's tokens, for the unconditional branch
            (needed with ``image_tokens``).
        alternating: Hallo only: its reference reader's per-frame banks and per-branch motion frames,
            used under single-scale CFG in place of ``reference_bank`` / ``motion_features``; None: off.
    """

    uncond_image_tokens: torch.Tensor | None = None
    alternating: AlternatingReference | None = None


class GuidedBackbone:
    """One guided backbone evaluation: the branches guidance needs stacked in one batch.

    :func:`branches_needed` gives one branch when both scales are 1. Branches without audio get zero
    audio tokens; branches without the reference get ``reference_keep = False``, zero face-locator
    features and, with Hallo's inputs, a zero face embedding's tokens: with single-scale CFG this is
    Hallo's and EchoMimic's unconditional half exactly. Region masks are the same in every branch
    (Hallo repeats them). Hallo's inputs are passed only when the conditions carry them; with
    ``alternating`` and single-scale CFG the reference bank is one row per frame and the motion frames
    differ per branch (:class:`AlternatingReference`).
    """

    def __init__(self, backend: Backend, guidance: GuidanceScales):
        self.backend, self.guidance = backend, guidance
        self.branches = branches_needed(guidance)

    def batched(self, cond: ClipConditions) -> BackboneConditions:
        """The backbone's conditions for all branches (batch = number of branches)."""
        n = len(self.branches)
        keep = {"audio": [b.uses_audio for b in self.branches], "reference": [b.uses_reference for b in self.branches]}

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.expand(n, *t.shape[1:])

        def batch(name: str, value: torch.Tensor | list[torch.Tensor] | None) -> torch.Tensor | list | None:
            """``value`` repeated per branch, zero in the branches that drop its condition."""
            if value is None:
                return None
            if isinstance(value, list):
                return [rep(t) for t in value]
            kept = keep.get(GUIDANCE.get(name, ""))
            if kept is None or all(kept):
                return rep(value)
            return rep(value) * torch.tensor(kept, device=value.device, dtype=value.dtype).view(
                n, *(1,) * (value.dim() - 1))

        values = {name: batch(name, value) for name, value in cond.condition_fields().items()}
        values["reference_keep"] = torch.tensor(keep["reference"], device=cond.audio_tokens.device)
        if cond.alternating is not None and self.branches == HALLO_BRANCHES:
            values.update(cond.alternating.batched(self.branches, cond.audio_tokens.shape[1]))
        if cond.image_tokens is not None:
            values["image_tokens"] = self._image_tokens(cond)
        return BackboneConditions(**values)

    def _image_tokens(self, cond: ClipConditions) -> torch.Tensor:
        """``[n, T_i, D]``: the face's tokens for branches with the reference, the zero embedding's without."""
        if all(b.uses_reference for b in self.branches):
            return cond.image_tokens.expand(len(self.branches), *cond.image_tokens.shape[1:])
        if cond.uncond_image_tokens is None:
            raise ValueError("guidance with an unconditional branch needs uncond_image_tokens beside image_tokens")
        return torch.cat([cond.image_tokens if b.uses_reference else cond.uncond_image_tokens
                          for b in self.branches])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, batched: BackboneConditions) -> torch.Tensor:
        """Guided model output for latents ``x`` ``[1, C, F, h, w]`` at timesteps ``t`` ``[1, F]``."""
        n = len(self.branches)
        out = self.backend.backbone(BackboneInputs.at(x.expand(n, *x.shape[1:]), t.expand(n, *t.shape[1:]), batched))
        return combine(split_batched(out.to(x.dtype), self.branches), self.guidance)


def context_windows(frames: int, size: int, overlap: int, step: int) -> list[list[int]]:
    """EchoMimic's context windows over ``frames`` frames at sampler step ``step`` (0-based).

    Its ``uniform`` context schedule as its pipeline calls it (stride 1, closed loop): windows of ``size``
    frames starting every ``size - overlap`` frames, wrapping past the last frame to the first; all frames
    in one window when ``frames <= size``. Its pipeline then shifts every index by ``2 * step`` (mod
    ``frames``), so the windows, and the order of the frames inside them, rotate from step to step.
    """
    if not 0 <= overlap < size:
        raise ValueError(f"context overlap must be in [0, {size}), got {overlap}")
    if frames <= size:
        base = [list(range(frames))]
    else:
        base = [[e % frames for e in range(j, j + size)] for j in range(0, frames, size - overlap)]
    return [[(c + 2 * step) % frames for c in window] for window in base]


def window_conditions(cond: ClipConditions, index: torch.Tensor) -> ClipConditions:
    """``cond`` for the frames ``index`` (``[n]`` long) of its clip: the per-frame inputs
    (:data:`~engine.models.backbone_inputs.PER_FRAME`) gathered in that order; one the same for every frame
    (size 1 on the frame axis) is kept."""
    return dataclasses.replace(cond, **{name: value[:, index] for name in PER_FRAME
                                        if (value := getattr(cond, name)) is not None and value.shape[1] != 1})


@dataclass
class OverlapPredictions:
    """The guided outputs a streamed window leaves to the next window that overlaps it (the causal form of
    EchoMimic's context windows: :meth:`ClipDenoiser.overlapping`).

    Attributes:
        sums: per sampler step, the sum of the guided outputs of every window so far that holds each frame,
            ``[1, C, F, h, w]``.
        counts: ``[F]`` how many windows each frame's sums add up.
    """

    sums: list[torch.Tensor]
    counts: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.counts.numel())

    def tail(self, frames: int) -> OverlapPredictions:
        """The last ``frames`` frames' sums and counts."""
        start = self.frames - frames
        return OverlapPredictions([s[:, :, start:] for s in self.sums], self.counts[start:])


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

    def windowed(self, noise: torch.Tensor, cond: ClipConditions, size: int, overlap: int,
                 generator: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
        """Like :meth:`__call__` on a whole video ``[1, C, F, h, w]``, as EchoMimic denoises it: at each step
        the backbone runs on each of :func:`context_windows` (one guided batch per window) and every
        frame's guided output is the mean over the windows that hold it."""
        calls = itertools.count()

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.windowed_output(x, t, cond, context_windows(x.shape[2], size, overlap, next(calls)))

        return sample(model_fn, self.sampler, noise, steps or self.steps, generator=generator, per_frame=True)

    def windowed_output(self, x: torch.Tensor, t: torch.Tensor, cond: ClipConditions,
                        windows: list[list[int]]) -> torch.Tensor:
        """One step's guided output over ``windows`` of the video ``x`` ``[1, C, F, h, w]`` at timesteps ``t``
        ``[1, F]``: each frame's mean over the windows that hold it."""
        out = torch.zeros_like(x)
        count = torch.zeros(1, 1, x.shape[2], 1, 1, dtype=x.dtype, device=x.device)
        for window in windows:
            index = torch.tensor(window, device=x.device)
            batched = self.model.batched(window_conditions(cond, index))
            out[:, :, index] = out[:, :, index] + self.model(x[:, :, index], t[:, index], batched)
            count[:, :, index] = count[:, :, index] + 1
        return out / count

    def overlapping(self, noise: torch.Tensor, cond: ClipConditions, earlier: OverlapPredictions | None,
                    generator: torch.Generator | None = None,
                    steps: int | None = None) -> tuple[torch.Tensor, OverlapPredictions]:
        """One window ``[1, C, F, h, w]`` of a stream denoised after the windows before it, the causal form of
        :meth:`windowed`: at each step the guided output of its first ``earlier.frames`` frames, which earlier
        windows also held, is the mean of this window's and theirs at that step (``earlier``: None or no
        frames: a window of its own; its step count must be this window's).

        Returns the clean latents and the per-step sums and counts of every frame, this window's included.
        """
        steps = steps or self.steps
        shared = earlier.frames if earlier is not None else 0
        if shared and len(earlier.sums) != steps:
            raise ValueError(f"the earlier window ran {len(earlier.sums)} steps, this one {steps}")
        if shared > noise.shape[2]:
            raise ValueError(f"{shared} frames shared with the earlier window, but the window has {noise.shape[2]}")
        counts = torch.ones(noise.shape[2], dtype=noise.dtype, device=noise.device)
        if shared:
            counts[:shared] += earlier.counts.to(counts)
        batched = self.model.batched(cond)
        sums: list[torch.Tensor] = []

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            total = self.model(x, t, batched)
            if shared:
                total = torch.cat([total[:, :, :shared] + earlier.sums[len(sums)], total[:, :, shared:]], dim=2)
            sums.append(total)
            return total / counts.view(1, 1, -1, 1, 1)

        latents = sample(model_fn, self.sampler, noise, steps, generator=generator, per_frame=True)
        return latents, OverlapPredictions(sums, counts)
