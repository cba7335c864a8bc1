"""The face of a voice agent, framework-free: an always-on live session driven by the agent's speech, giving
each video frame together with the agent's own audio that plays during it.

Voice-agent frameworks hand over their TTS audio at their own rate (LiveKit and Pipecat: 16-bit mono, often
24 or 48 kHz), in bursts faster than real time, and expect the avatar to play it back in step with the lips.
:class:`AvatarStream` resamples a copy to the engine's 16 kHz for the model and keeps the original on a second
timeline at the agent's rate, placed where the live session placed the speech: the engine's sample ``k``
and the agent's sample ``k * rate / SAMPLE_RATE`` are the same instant, so frame ``i`` (``pts = i / fps``) plays
the agent's samples ``[round(i * rate / fps), round((i + 1) * rate / fps))``. Nothing is resampled back:
the agent's audio goes out bit for bit.

The resampler holds back a few output samples (under a millisecond) until more input comes; speech that runs
dry and resumes after a pause is re-anchored where the session put it, so that offset never accumulates.

Speech is grouped in segments (one reply of the agent: :meth:`AvatarStream.end_segment`); a frame reports the
segments whose last sample it plays, which is when the framework may tell the agent that playback finished.
:meth:`AvatarStream.interrupt` is the barge-in: the session's cut (the first frame not yet taken out) drops
the agent's audio from the same instant, and the segments that had not finished are reported as interrupted.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import DEFAULT_MODEL
from engine.backends import live_backend
from engine.options import GenerationOptions
from engine.pipeline import StreamRequest, open_session
from engine.stream.idle import Interruption
from engine.stream.runner import LagPolicy, LiveSession
from engine.stream.session import Frame
from engine.stream.sources import StreamingResampler
from engine.timebase import SAMPLE_RATE as ENGINE_RATE

POLL_S = 0.1
"""How long :meth:`AvatarStream.frames` waits for a frame before asking again (seconds)."""


@dataclass(frozen=True)
class AvatarFrame:
    """One video frame and the agent's audio that plays with it.

    Attributes:
        frame: the engine's frame (``image`` uint8 [size, size, 3] RGB, ``index``, ``pts`` seconds).
        audio: int16 [n] mono at the stream's ``sample_rate``: the samples of ``[pts, pts + 1 / fps)``
            (``n`` is ``rate / fps`` give or take one by rounding), zeros where nobody speaks.
        speech: True when any of the agent's speech falls in ``audio`` (False: the frame is silent).
        segments_done: ids of the speech segments whose last sample is in ``audio`` or before it, in order.
    """

    frame: Frame
    audio: np.ndarray
    speech: bool
    segments_done: tuple[int, ...] = ()


@dataclass(frozen=True)
class AvatarInterruption:
    """What a barge-in dropped: the session's report, and the ids of the segments cut short (not finished)."""

    report: Interruption
    segments: tuple[int, ...] = field(default_factory=tuple)


class AvatarStream:
    """An always-on :class:`LiveSession` fed with a voice agent's speech at ``sample_rate`` Hz.

    :meth:`push_audio` and :meth:`end_segment` from any thread (the framework's event loop); :meth:`next_frame`
    from one consumer thread. Closing the stream closes the session.
    """

    def __init__(self, live: LiveSession, sample_rate: int):
        """``live`` must be always-on (frames keep coming while the agent is silent); ``sample_rate``: Hz of the
        agent's audio, in and out."""
        if not live.always_on:
            raise ValueError("an avatar needs an always-on live session: LiveSession(session, always_on=True)")
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        self.live, self.sample_rate = live, int(sample_rate)
        self.fps = live.session.fps
        self._lock = threading.Lock()
        self._chunks: list[tuple[int, np.ndarray]] = []  # (first sample, int16 [n]) on the agent's timeline
        self._placed_end = 0  # where the last placed speech ends, agent samples
        self._taken = 0  # agent samples handed out with frames so far
        self._pending: list[np.ndarray] = []  # speech whose 16 kHz copy the resampler still holds
        self._resampler: StreamingResampler | None = None
        self._segment: int | None = None  # the open segment (speech pushed since the last end_segment)
        self._next_segment = 0
        self._ends: list[tuple[int, int]] = []  # (segment id, its last sample + 1), not yet played out

    def _to_agent(self, engine_sample: int) -> int:
        return round(engine_sample * self.sample_rate / ENGINE_RATE)

    def _frame_sample(self, index: int) -> int:
        return round(index * self.sample_rate / self.fps)

    def push_audio(self, pcm: np.ndarray) -> None:
        """Append the agent's speech: int16 [n] mono at ``sample_rate`` (any block size; never blocks)."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise TypeError(f"agent audio must be int16 PCM, got {pcm.dtype}")
        pcm = pcm.reshape(-1)
        if pcm.size == 0:
            return
        with self._lock:
            if self._segment is None:
                self._segment = self._next_segment
                self._next_segment += 1
                self._resampler = StreamingResampler(self.sample_rate, ENGINE_RATE)
            self._pending.append(pcm.copy())
            self._feed(self._resampler.process(pcm.astype(np.float32) / 32768.0))

    def _feed(self, engine_pcm: np.ndarray) -> None:
        """Push 16 kHz speech to the session and place the agent's audio behind it (caller holds the lock)."""
        if engine_pcm.size == 0:
            return  # the resampler held it all back: placed with the next block that comes out
        start = self._to_agent(self.live.push_audio(engine_pcm))
        if not self._pending:
            return  # the resampler's tail: its original is already placed
        audio = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        at = max(self._placed_end, start)
        skip = max(0, self._taken - at)  # only when the session placed speech where frames already went out
        if skip < audio.size:
            self._chunks.append((at + skip, audio[skip:]))
        self._placed_end = at + audio.size

    def end_segment(self) -> int | None:
        """The agent's reply is complete: flush the resampler; returns the segment's id (None: no speech since
        the last one)."""
        with self._lock:
            segment = self._segment
            if segment is None:
                return None
            tail = self._resampler.flush()
            if tail.size:
                self._feed(tail)
            elif self._pending:  # nothing came out at all: play it from the next frame
                audio = np.concatenate(self._pending)
                self._pending = []
                at = max(self._placed_end, self._taken)
                self._chunks.append((at, audio))
                self._placed_end = at + audio.size
            self._ends.append((segment, self._placed_end))
            self._segment, self._resampler = None, None
            return segment

    def interrupt(self) -> AvatarInterruption:
        """Barge-in: the session's :meth:`LiveSession.interrupt`, and the agent's audio cut at the same instant.

        Frames before the cut keep their audio; the open segment and those not yet played out are returned.
        """
        with self._lock:
            report = self.live.interrupt()
            cut = self._frame_sample(report.frame)
            self._chunks = [(s, a[:cut - s]) for s, a in self._chunks if s < cut]
            self._placed_end = min(self._placed_end, cut)
            cut_short = [segment for segment, end in self._ends if end > cut]
            self._ends = [(segment, end) for segment, end in self._ends if end <= cut]
            if self._segment is not None:
                cut_short.append(self._segment)
            self._segment, self._resampler, self._pending = None, None, []
        return AvatarInterruption(report, tuple(cut_short))

    async def frames(self) -> AsyncIterator[AvatarFrame]:
        """The frames with their audio for an asyncio consumer, until the session ended; the wait is polled
        every ``POLL_S`` seconds on an executor thread, so cancelling the consumer's task never hangs it."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                item = await loop.run_in_executor(None, self.next_frame, POLL_S)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def next_frame(self, timeout: float | None = None) -> AvatarFrame | None:
        """The next frame with its audio (waits for it); None once the session ended. Raises ``queue.Empty``
        when ``timeout`` (seconds) passes first."""
        frame = self.live.next_frame(timeout=timeout)
        if frame is None:
            return None
        start, end = self._frame_sample(frame.index), self._frame_sample(frame.index + 1)
        audio = np.zeros(end - start, np.int16)
        speech = False
        with self._lock:
            kept = []
            for s, a in self._chunks:
                lo, hi = max(s, start), min(s + a.size, end)
                if lo < hi:
                    audio[lo - start:hi - start] = a[lo - s:hi - s]
                    speech = True
                if s + a.size > end:
                    kept.append((s, a))
            self._chunks = kept
            self._taken = end
            done = tuple(segment for segment, last in self._ends if last <= end)
            self._ends = [(segment, last) for segment, last in self._ends if last > end]
        return AvatarFrame(frame, audio, speech, done)

    def close(self) -> None:
        """Stop the session's workers."""
        self.live.close()


def open_live(image: str | Path, model: str = DEFAULT_MODEL, *, device: str = "cpu", backend: str | None = None,
              options: GenerationOptions | None = None, policy: LagPolicy | None = None) -> LiveSession:
    """An always-on live session of ``model`` (a shipped model's name, a model directory or a preset) for the
    portrait at ``image``: what the integrations' ``open_live`` argument builds. ``backend`` None: a live
    process's default (:func:`engine.backends.live_backend`: torchscript on the CPU), prepared before it returns
    (:meth:`~engine.backends.base.Backend.prepare`), so the first words do not wait for a trace. Blocking (face
    detection, reference bank, traces: seconds): the integrations call it from a worker thread."""
    request = StreamRequest(image=Path(image), out=Path(os.devnull), model=model, device=device,
                            backend=live_backend(backend, device), options=options or GenerationOptions(),
                            policy=policy or LagPolicy())
    session, _ = open_session(request)
    return LiveSession(session, request.policy, always_on=True)
