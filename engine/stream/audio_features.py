"""Per-clip audio tokens from a growing PCM buffer, deterministic in the audio alone.

The tokens of clip ``[s, e)`` come from one encoder call over the audio of frames
``[s - m - L, e + m)`` (clamped to the stream): ``L`` frames of left context, ``m`` frames of
look-ahead (the +-m window each frame's tokens see). That window depends only on the clip and the
audio, so a file fed whole and a microphone fed in 10 ms blocks give the same tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.backends.base import Backend
from engine.stream.chunk_planner import Clip
from engine.timebase import SAMPLE_RATE, frame_start, frames_complete, frames_covering


class StreamingAudioFeatures:
    """A PCM buffer (mono float32 at ``sample_rate``) that turns into audio tokens clip by clip.

    Frame ``i`` covers samples ``[frame_start(i), frame_start(i + 1))`` (:mod:`engine.timebase`). The buffer drops
    audio no future clip can need, so memory stays bounded over long streams.
    """

    def __init__(self, backend: Backend, fps: float, lookahead: int, left_context: int, sample_rate: int = SAMPLE_RATE):
        self.backend, self.fps, self.sample_rate = backend, fps, sample_rate
        self.lookahead, self.left_context = lookahead, left_context
        self.reset()

    def reset(self) -> None:
        """Forget all audio (a new utterance)."""
        self._chunks: list[np.ndarray] = []
        self._offset = 0
        self._samples = 0
        self.ended = False
        self._whole: torch.Tensor | None = None

    def frame_sample(self, frame: int) -> int:
        """First sample of ``frame``."""
        return frame_start(frame, self.fps, self.sample_rate)

    def push(self, pcm: np.ndarray) -> None:
        """Append PCM samples (any block size)."""
        if self.ended:
            raise RuntimeError("audio pushed after end of stream; call reset() for a new utterance")
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size:
            self._chunks.append(pcm)
            self._samples += pcm.size

    def end(self) -> None:
        """No more audio will come."""
        self.ended = True

    @property
    def samples(self) -> int:
        """Samples received since the start (or the last reset)."""
        return self._samples

    @property
    def frames_available(self) -> int:
        """Frames whose audio is completely in."""
        return frames_complete(self._samples, self.fps, self.sample_rate)

    def frame_count(self, samples: int) -> int:
        """Video frames of ``samples`` samples of audio: ceil(duration x fps)."""
        return frames_covering(samples, self.fps, self.sample_rate)

    @property
    def total_frames(self) -> int | None:
        """ceil(duration x fps) once the stream has ended, else None."""
        return self.frame_count(self._samples) if self.ended else None

    def _pcm(self, start: int, stop: int) -> np.ndarray:
        buffer = np.concatenate(self._chunks) if len(self._chunks) > 1 else (
            self._chunks[0] if self._chunks else np.zeros(0, np.float32))
        self._chunks = [buffer]
        out = buffer[start - self._offset: stop - self._offset]
        return np.pad(out, (0, stop - start - out.size))

    def tokens(self, clip: Clip) -> torch.Tensor:
        """Audio tokens ``[clip.frames, T, D]`` of the clip's frames."""
        first = max(0, clip.start - self.lookahead - self.left_context)
        last = clip.end + self.lookahead
        if self.ended:
            last = min(last, self.total_frames)
        elif last > self.frames_available:
            raise RuntimeError(f"clip {clip} needs audio up to frame {last}, only {self.frames_available} in")
        pcm = self._pcm(self.frame_sample(first), self.frame_sample(last))
        tokens = self.backend.audio_tokens(torch.from_numpy(pcm), last - first)
        return tokens[clip.start - first: clip.end - first]

    def whole_tokens(self, frames: int) -> torch.Tensor:
        """Audio tokens ``[frames, T, D]`` of the whole audio in one encoder call, the audio zero-padded to
        ``frames`` frames (Hallo's front end: it pads to whole clips); computed once per utterance.

        Needs the ended stream with nothing released yet (the first call; later calls reuse the result).
        """
        if self._whole is None:
            if not self.ended:
                raise RuntimeError("whole-audio tokens need the end of the audio")
            if self._offset:
                raise RuntimeError("whole-audio tokens need all the audio, but its start was released")
            self._whole = self.backend.audio_tokens(torch.from_numpy(self._pcm(0, self._samples)), frames)
        if self._whole.shape[0] != frames:
            raise RuntimeError(f"whole-audio tokens were made for {self._whole.shape[0]} frames, not {frames}")
        return self._whole

    def truncate(self, sample: int) -> None:
        """Drop the samples from ``sample`` on (a barge-in); the ones already released stay released."""
        if sample >= self._samples:
            return
        if sample < self._offset:
            raise RuntimeError(f"cannot cut the audio at sample {sample}: samples before {self._offset} were released")
        self._chunks = [self._pcm(self._offset, sample)]
        self._samples = sample

    def release_before(self, frame: int) -> None:
        """Drop audio only clips starting at ``frame`` or later could have needed (left context kept)."""
        keep_from = self.frame_sample(max(0, frame - self.lookahead - self.left_context))
        if keep_from > self._offset and self._chunks:
            buffer = np.concatenate(self._chunks)
            self._chunks = [buffer[keep_from - self._offset:]]
            self._offset = keep_from
