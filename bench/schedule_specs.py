"""The denoising schedules the schedule benchmark compares, and what the audio alone imposes on each.

Clip-wise (``schedule="clip"``, clip ``F``): a clip is released once the audio of its ``F`` frames plus
``m`` frames of look-ahead is in, and denoised through all ``S`` steps (``S`` backbone calls of ``F``
frames). Its first frame waits for ``F - 1 + m`` frames of audio beyond its own.

Rolling (``schedule="rolling"``, group ``k``): a group of ``k`` frames is released like a clip of ``k``
frames, enters the window as noise, and every release advances the window by one backbone call
(up to ``S k`` frames). A group leaves clean at the call of the group ``S - 1`` after it, so its first
frame waits for ``S k - 1 + m`` frames of audio: for the very first frame (the window's warm-up) and,
the window's depth being fixed, for every group after it. At the end of the stream the window empties
with ``S - 1`` calls that take no new group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from engine.options import GenerationOptions
from engine.stream.chunk_planner import ChunkPlanner, Clip
from engine.stream.stats import latency_floor, ttff_floor
from engine.timebase import frame_start

SCHEDULES = ("clip", "rolling")


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule under test.

    Attributes:
        schedule: ``"clip"`` or ``"rolling"``.
        frames: the clip length ``F`` (clip-wise) or the group size ``k`` (rolling), video frames.
    """

    schedule: str
    frames: int

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")

    @property
    def rolling(self) -> bool:
        return self.schedule == "rolling"

    @property
    def name(self) -> str:
        """Short id in the results: ``clip-12``, ``rolling-k1``."""
        return f"rolling-k{self.frames}" if self.rolling else f"clip-{self.frames}"

    @property
    def label(self) -> str:
        """A human name for tables and plots."""
        return f"rolling, k = {self.frames}" if self.rolling else f"clip-wise, clip {self.frames}"

    def options(self, steps: int, sampler: str, seed: int) -> GenerationOptions:
        """The engine's generation options: ``steps`` sampler steps, no guidance, no shorter first clip."""
        if self.rolling:
            return GenerationOptions(steps=steps, sampler=sampler, cfg_audio=1.0, cfg_ref=1.0, seed=seed,
                                     schedule="rolling", group_frames=self.frames)
        return GenerationOptions(steps=steps, sampler=sampler, cfg_audio=1.0, cfg_ref=1.0, seed=seed,
                                 schedule="clip", clip_frames=self.frames)

    def span(self, steps: int) -> int:
        """Frames of audio, from a clip's (group's) first frame on, that must be in (besides the
        look-ahead) before that frame can leave: ``F``, or ``S k`` for rolling."""
        return steps * self.frames if self.rolling else self.frames

    def latency_floor_s(self, steps: int, lookahead: int, fps: float) -> float:
        """Seconds the first frame of a clip (group) waits for audio alone: ``(span - 1 + m) / fps``."""
        return latency_floor(self.span(steps), lookahead, fps)

    def ttff_floor_s(self, steps: int, lookahead: int, fps: float) -> float:
        """Seconds from the first sample until the first frame's release audio is in: ``(span + m) / fps``."""
        return ttff_floor(self.span(steps), lookahead, fps)

    def clips(self, total_frames: int) -> list[Clip]:
        """The clips (groups) of a stream of ``total_frames`` frames, as the session cuts them."""
        return ChunkPlanner(self.frames).ready(0, total_frames)

    def release_frames(self, steps: int, lookahead: int, total_frames: int) -> list[int]:
        """Per frame of a ``total_frames`` stream: how many frames of audio must be in before it can be
        generated (may exceed ``total_frames``: then the whole stream's audio, at its end)."""
        clips = self.clips(total_frames)
        out = []
        for index, clip in enumerate(clips):
            finisher = clips[min(index + steps - 1, len(clips) - 1)] if self.rolling else clip
            out += [finisher.end + lookahead] * clip.frames
        return out

    def backbone_calls(self, steps: int, total_frames: int) -> int:
        """Backbone calls of a stream: ``S`` per clip, or one per group plus ``S - 1`` to empty the window."""
        clips = math.ceil(total_frames / self.frames)
        return clips + steps - 1 if self.rolling else clips * steps


def schedule_specs(clips: tuple[int, ...] = (12, 4, 2), groups: tuple[int, ...] = (1, 2, 4)) -> list[ScheduleSpec]:
    """Clip-wise with each clip length, then rolling with each group size (the first is the baseline)."""
    return [ScheduleSpec("clip", f) for f in clips] + [ScheduleSpec("rolling", k) for k in groups]


def frame_floors_s(release_frames: list[int], arrival: Callable[[int], float], samples: int, fps: float,
                   sample_rate: int) -> list[float]:
    """Per frame: seconds from its own audio being complete to its release audio being in.

    Args:
        release_frames: :meth:`ScheduleSpec.release_frames` of the stream.
        arrival: time (s) at which the first ``n`` samples were all in; ``lambda n: n / sample_rate``
            gives the nominal floors, a stream's recorded block arrivals the floors it actually met.
        samples: samples in the stream (every count is clamped to it: the stream's end releases all).
        fps / sample_rate: video frames and audio samples per second.

    Frame ``i``'s audio is complete with sample ``frame_start(i + 1) - 1`` (:mod:`engine.timebase`), as
    :class:`engine.stream.stats.StreamStats` counts it, so a frame's latency is never below its floor.
    """
    def sample(frame: int) -> int:
        return min(frame_start(frame, fps, sample_rate), samples)

    return [arrival(sample(release)) - arrival(sample(i + 1)) for i, release in enumerate(release_frames)]
