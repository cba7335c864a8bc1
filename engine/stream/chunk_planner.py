"""Which frames form the next clip, and when its audio is in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Clip:
    """Frames ``[start, end)`` of the video, the ``index``-th clip; ``idle``: no speech in its audio (always-on
    sessions: its frames come from the silence the clock released)."""

    index: int
    start: int
    end: int
    idle: bool = False

    @property
    def frames(self) -> int:
        return self.end - self.start


class ChunkPlanner:
    """Cuts the frame axis into clips: a first clip of ``first_clip_frames`` (shorter, for a quick first
    frame), then clips of ``clip_frames``; the last clip ends with the audio.

    A clip is released once the audio of its frames plus ``lookahead`` further frames is in (or the
    stream has ended). The cut depends only on the frame count, never on how audio arrived.
    """

    def __init__(self, clip_frames: int, first_clip_frames: int | None = None, lookahead: int = 0):
        first = clip_frames if first_clip_frames is None else first_clip_frames
        if clip_frames < 1 or first < 1:
            raise ValueError(f"clip sizes must be >= 1 (got first {first}, then {clip_frames})")
        self.clip_frames, self.first_clip_frames, self.lookahead = clip_frames, first, lookahead
        self.reset()

    def reset(self) -> None:
        """Start again at frame 0 (a new utterance)."""
        self._next = Clip(0, 0, self.first_clip_frames)

    def restart(self, frame: int) -> None:
        """Continue the cut at ``frame`` (a barge-in): the next clip is a first-size clip starting there."""
        self._next = Clip(self._next.index, frame, frame + self.first_clip_frames)

    def ready(self, frames_available: int, total_frames: int | None = None) -> list[Clip]:
        """Clips that can run now, in order; ``total_frames`` is given once the stream has ended."""
        out = []
        while True:
            clip = self._next
            if total_frames is not None:
                if clip.start >= total_frames:
                    return out
                clip = Clip(clip.index, clip.start, min(clip.end, total_frames))
            elif clip.end + self.lookahead > frames_available:
                return out
            out.append(clip)
            self._next = Clip(clip.index + 1, clip.end, clip.end + self.clip_frames)
