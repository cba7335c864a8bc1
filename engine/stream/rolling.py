"""Rolling (diagonal) denoising: groups of frames at staggered noise levels share each backbone call.

The window holds up to S groups of k frames; group ``i`` from the oldest sits at step ``S - 1 - i``
of an S-step schedule. Each call advances every group by one step (per-frame timesteps), the
oldest group leaves the window clean, and the group whose audio just came in enters as noise. So
every call finishes k frames, whatever S is. The window fills during the first S - 1 groups (the
first frame waits for S groups of audio: its floor is (S k - 1 + m) frames), and empties at the end
of the stream with calls that take no new group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sampling.clip_denoiser import ClipConditions, GuidedBackbone
from engine.sampling.samplers import Sampler
from engine.stream.chunk_planner import Clip


@dataclass
class _Group:
    clip: Clip
    latents: torch.Tensor  # [1, C, k, h, w]
    audio_tokens: torch.Tensor  # [1, k, T, D]
    step: int  # index into the schedule of the next step to take


class RollingWindow:
    """The window of groups, advanced one backbone call at a time.

    Args:
        model: the guided backbone call.
        sampler: the update rule; its ``timesteps(steps)`` and ``prev_timesteps(steps)`` give each
            group's (t, t_prev) by the step it is at.
        steps: S, the schedule length (= the window's depth in groups).
    """

    def __init__(self, model: GuidedBackbone, sampler: Sampler, steps: int):
        self.model, self.sampler, self.steps = model, sampler, steps
        self.t = sampler.timesteps(steps)
        self.t_prev = sampler.prev_timesteps(steps)
        self.groups: list[_Group] = []

    def reset(self) -> None:
        self.groups = []

    def enter(self, clip: Clip, noise: torch.Tensor, audio_tokens: torch.Tensor) -> None:
        """Add the newest group as noise ``[1, C, k, h, w]`` at the schedule's first step."""
        start = torch.full((1, clip.frames), int(self.t[0]), dtype=torch.long)
        latents = self.sampler.init_sample(noise, start.to(noise.device))
        self.groups.append(_Group(clip, latents, audio_tokens, 0))

    def _per_frame(self, table: torch.Tensor, device: torch.device) -> torch.Tensor:
        values = [int(table[g.step]) for g in self.groups for _ in range(g.clip.frames)]
        return torch.tensor([values], dtype=torch.long, device=device)

    def audio_tokens(self) -> torch.Tensor:
        """The window's audio tokens ``[1, frames, T, D]``, oldest group first."""
        return torch.cat([g.audio_tokens for g in self.groups], dim=1)

    def advance(self, cond: ClipConditions,
                generator: torch.Generator | None = None) -> list[tuple[Clip, torch.Tensor]]:
        """One backbone call over the whole window; returns the groups that became clean, oldest first.

        ``cond`` is for the window's frames (:meth:`audio_tokens`; the motion features of the frames
        just before the oldest group; face and speed tokens).
        """
        if not self.groups:
            return []
        x = torch.cat([g.latents for g in self.groups], dim=2)
        t = self._per_frame(self.t, x.device)
        t_prev = self._per_frame(self.t_prev, x.device)
        out = self.model(x, t, self.model.batched(cond))
        x = self.sampler.step(out, t, t_prev, x, generator=generator)
        finished = []
        for group, latents in zip(self.groups, x.split([g.clip.frames for g in self.groups], dim=2)):
            group.latents, group.step = latents, group.step + 1
            if group.step == self.steps:
                finished.append((group.clip, latents))
        self.groups = [g for g in self.groups if g.step < self.steps]
        return finished

    @property
    def frames(self) -> int:
        """Frames in the window."""
        return sum(g.clip.frames for g in self.groups)
