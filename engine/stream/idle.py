"""Always-on sessions: the engine's sample timeline, where silence is released by the clock when no speech comes.

An always-on session's audio is one timeline of samples: sample ``k`` belongs at ``start + k / SAMPLE_RATE``
on the session's clock. Speech is appended as it is pushed; when the clock runs ahead of the audio (nobody
speaks), :meth:`AudioTimeline.silence_due` releases zeros up to the clock. Silence is audio to the planner,
so idle frames come from the same model path as speech, and speech joins at the next sample without a seam.
A barge-in (:meth:`AudioTimeline.truncate`) cuts the timeline at the first frame not yet shown: the speech
after it is dropped, and the clock fills the gap with silence again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.timebase import SAMPLE_RATE


@dataclass(frozen=True)
class AudioBlock:
    """A block of the timeline: float32 mono ``pcm`` [n] at SAMPLE_RATE, ``speech`` (pushed) or silence
    (released by the clock)."""

    pcm: np.ndarray
    speech: bool


@dataclass(frozen=True)
class Interruption:
    """What a barge-in dropped.

    Attributes:
        frame: the first frame generated again, from silence (every frame before it had already left).
        pts: that frame's presentation time, seconds.
        speech_samples: samples of speech (16 kHz) pushed but never shown, dropped.
        speech_s: the same in seconds.
    """

    frame: int
    pts: float
    speech_samples: int
    speech_s: float


class SpeechSpans:
    """Which sample ranges of a timeline are speech: sorted, disjoint ``[start, end)`` pairs (adjacent ones merged)."""

    def __init__(self) -> None:
        self._spans: list[list[int]] = []

    def add(self, start: int, end: int) -> None:
        """Samples ``[start, end)`` are speech (``start`` at or after every earlier span)."""
        if end <= start:
            return
        if self._spans and self._spans[-1][1] == start:
            self._spans[-1][1] = end
        else:
            self._spans.append([start, end])

    def count(self, start: int, end: int) -> int:
        """Speech samples within ``[start, end)``."""
        return sum(max(0, min(e, end) - max(s, start)) for s, e in self._spans)

    def drop_from(self, sample: int) -> int:
        """Forget the speech at or after ``sample``; returns how many samples that was."""
        dropped = self.count(sample, self._spans[-1][1]) if self._spans else 0
        self._spans = [[s, min(e, sample)] for s, e in self._spans if s < sample]
        return dropped

    def forget_before(self, sample: int) -> None:
        """Drop the spans that end at or before ``sample`` (no question will reach back that far)."""
        self._spans = [span for span in self._spans if span[1] > sample]


class AudioTimeline:
    """The sample timeline of one stream: what was pushed, what the clock released, and the speech in it.

    ``start`` (clock seconds) makes it always-on: :meth:`silence_due` releases zeros so the timeline never
    falls behind the clock. Without it (an utterance), silence comes only from the caller. Not locked: a
    :class:`~engine.stream.runner.LiveSession` calls it under its own lock, together with queueing the blocks.
    """

    def __init__(self, clock: Callable[[], float], start: float | None, sample_rate: int = SAMPLE_RATE):
        """``clock`` returns seconds; ``start`` is the clock time of sample 0 (None: not always-on)."""
        self.clock, self.start, self.sample_rate = clock, start, sample_rate
        self.samples = 0
        self.speech = SpeechSpans()
        self.ended = False

    def silence_due(self) -> list[AudioBlock]:
        """The silence the clock owes now (none when the timeline is up to the clock or ahead of it)."""
        if self.start is None or self.ended:
            return []
        owed = round((self.clock() - self.start) * self.sample_rate) - self.samples
        if owed <= 0:
            return []
        self.samples += owed
        return [AudioBlock(np.zeros(owed, np.float32), speech=False)]

    def push(self, pcm: np.ndarray) -> list[AudioBlock]:
        """Append speech: the silence owed before it (it starts now, or after the speech still queued), then it."""
        blocks = self.silence_due()
        if pcm.size:
            self.speech.add(self.samples, self.samples + pcm.size)
            self.samples += pcm.size
            blocks.append(AudioBlock(pcm, speech=True))
        return blocks

    def end(self) -> None:
        """No more audio: the clock releases nothing from now on."""
        self.ended = True

    def truncate(self, sample: int) -> int:
        """Cut the timeline at ``sample`` (a barge-in): what follows is dropped; returns the speech samples dropped."""
        sample = min(sample, self.samples)
        self.samples = sample
        return self.speech.drop_from(sample)


class TimelineAudio:
    """The samples of a timeline kept for playback beside the video: speech and released silence, in order.

    Sample ``k`` is the audio under video time ``k / SAMPLE_RATE`` s (the frames' ``pts`` are on the same
    timeline), so a player that sends samples ``[frame_start(i), frame_start(i + 1))`` (:mod:`engine.timebase`)
    with frame ``i`` keeps lips and voice together. A barge-in :meth:`truncate` s it like the timeline;
    readers :meth:`forget_before` what they have played, so an hours-long session holds only the samples not
    yet played. Not locked (the owner's lock).
    """

    def __init__(self) -> None:
        self.first = 0
        self._pcm = np.zeros(0, np.float32)

    @property
    def end(self) -> int:
        """Samples appended so far (less any truncated): the next sample's index."""
        return self.first + self._pcm.size

    def append(self, pcm: np.ndarray) -> None:
        """Append float32 mono 16 kHz samples."""
        self._pcm = np.concatenate([self._pcm, np.asarray(pcm, np.float32).reshape(-1)])

    def truncate(self, sample: int) -> None:
        """Drop the samples at or after ``sample`` (those already forgotten stay forgotten)."""
        self._pcm = self._pcm[:max(0, sample - self.first)]

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``[start, start + count)`` as far as they exist (fewer at the end; none before :attr:`first`)."""
        begin = max(0, start - self.first)
        return self._pcm[begin:max(begin, start + count - self.first)].copy()

    def forget_before(self, sample: int) -> None:
        """Free the samples before ``sample`` (they were played)."""
        cut = min(max(0, sample - self.first), self._pcm.size)
        self._pcm = self._pcm[cut:]
        self.first += cut
