"""The streaming runtime: a :class:`Session` driven by worker threads joined by bounded queues.

Stages (one class each): :class:`DenoiseStage` (audio in -> clips released by the planner ->
latents), :class:`DecodeStage` (latents -> frames; overlaps the next clip's denoising), and the
consumer iterating :class:`LiveSession`. On a serial backend (the CPU's one compute thread) nothing can
overlap: there the denoise stage decodes a clip in the same call as its last step, so its frames never wait
behind the next clip's whole step (which the decode stage's call, handed over a moment later, would).
:func:`run_stream` adds a source thread and the sinks. When generation falls behind real time,
:class:`LagPolicy` decides: let latency grow, skip clips (their frames repeat the last image and are reported as
skipped), or run fewer steps.

Always-on (``LiveSession(always_on=True)``): the session's clock releases silence into its audio timeline
(:mod:`engine.stream.idle`) whenever no speech is queued, so frames keep coming at the stream's fps; idle
clips run ``GenerationOptions.idle_steps``. :meth:`LiveSession.interrupt` (barge-in) cuts the timeline at
the first frame not yet taken out: queued speech is dropped, frames generated past the cut are discarded, and
generation goes on from there on silence, from the motion frames of the frames already out. The cut travels
through the stages' queues as a marker, so every stage knows which of its items are stale.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from engine.stream.chunk_planner import Clip
from engine.stream.idle import AudioBlock, AudioTimeline, Interruption, TimelineAudio
from engine.stream.session import Frame, Session
from engine.stream.sinks import FrameSink
from engine.stream.sources import AudioSource
from engine.stream.stats import StreamStats, latency_floor, ttff_floor

POLICIES = ("grow", "skip", "steps")
SILENCE_POLL_S = 0.02
"""How often an always-on session's denoise stage, with no audio queued, asks the clock for silence (seconds)."""
_END = object()


@dataclass(frozen=True)
class LagPolicy:
    """What to do with a clip whose audio has been in for longer than ``max_lag_s`` before it starts.

    ``grow``: run it anyway (no frame lost, latency grows). ``skip``: drop it (its frames repeat the
    last image, marked skipped). ``steps``: run it with ``min_steps`` sampler steps (clip schedule
    only; a rolling window's depth is fixed, so there it acts as ``grow``).
    """

    kind: str = "grow"
    max_lag_s: float = 1.0
    min_steps: int = 1

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"lag policy must be one of {', '.join(POLICIES)}, not {self.kind!r}")


@dataclass
class _Latents:
    clip: Clip
    latents: object | None  # torch.Tensor, or None for a skipped clip
    epoch: int  # interrupts processed before this clip was made
    frames: list[Frame] | None = None  # already decoded (a serial backend decodes with the step)


@dataclass
class _Cut:
    """A barge-in on its way through the stages: the ``epoch``-th interrupt, generation going on from ``frame``;
    ``last_image`` is the last frame taken out (what a skipped frame repeats from then on)."""

    epoch: int
    frame: int
    last_image: np.ndarray


class _Interrupts:
    """Interrupts requested so far: written by :meth:`LiveSession.interrupt`, read by the stages."""

    def __init__(self) -> None:
        self.requested = 0


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class DenoiseStage(threading.Thread):
    """Feeds audio into the session and denoises every clip the planner releases, in order."""

    def __init__(self, session: Session, audio: queue.Queue, out: queue.Queue, stats: StreamStats,
                 policy: LagPolicy, clock: Callable[[], float], interrupts: _Interrupts,
                 release_silence: Callable[[], None] | None = None):
        """``release_silence`` (always-on): queues the silence the clock owes; called when no audio is queued."""
        super().__init__(name="emote-denoise", daemon=True)
        self.session, self.audio, self.out = session, audio, out
        self.stats, self.policy, self.clock = stats, policy, clock
        self.interrupts, self.release_silence = interrupts, release_silence
        self.epoch = 0
        self.stop_requested = threading.Event()

    def _take_audio(self) -> bool:
        """Move queued audio (and cuts) into the session (waits for at least one item, or always-on, for the
        clock's silence); False once the stream ended."""
        items = []
        try:
            items.append(self.audio.get(timeout=None if self.release_silence is None else SILENCE_POLL_S))
        except queue.Empty:
            self.release_silence()
        while True:
            try:
                items.append(self.audio.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is _END:
                self.session.end()
            elif isinstance(item, _Cut):
                self._cut(item)
            else:
                self.session.push_audio(item.pcm, item.speech)
        return not self.session.audio.ended

    def _cut(self, cut: _Cut) -> None:
        """Go on from ``cut.frame``: the session rewinds, and the cut goes down the queue ahead of the new clips."""
        self.session.interrupt(cut.frame)
        self.epoch = cut.epoch
        self._pending = {}
        self._next_start = cut.frame
        self.out.put(cut)

    @property
    def _stale(self) -> bool:
        """An interrupt was requested that this stage has not taken in yet: what it would make now is dropped."""
        return self.interrupts.requested != self.epoch

    def _lag(self, clip: Clip) -> float:
        arrival = self.stats.audio_arrival(self.session.needed_samples(clip))
        return 0.0 if arrival is None else self.clock() - arrival

    def _run_clip(self, clip: Clip) -> list[_Latents]:
        late = self._lag(clip) > self.policy.max_lag_s
        if late and self.policy.kind == "skip":
            held = [_Latents(c, latents, self.epoch) for c, latents in self.session.skip(clip)]
            return held + [_Latents(clip, None, self.epoch)]
        steps = self.policy.min_steps if late and self.policy.kind == "steps" else None
        started = time.perf_counter()
        items, decode_s = self._denoised(lambda: self.session.step(clip, steps=steps))
        self.stats.stage("denoise", time.perf_counter() - started - sum(decode_s), clip.index)
        self._report_decodes(items, decode_s)
        self._report_drift_guard()
        return items

    def _denoised(self, make: Callable[[], list[tuple[Clip, object]]]) -> tuple[list[_Latents], list[float]]:
        """Run ``make`` (a clip's step, or the flush) where the backend runs; on a serial backend the clips it
        finishes are decoded in the same call. Returns the clips and each one's decode time in seconds."""

        def job() -> tuple[list[_Latents], list[float]]:
            items = [_Latents(c, latents, self.epoch) for c, latents in make()]
            seconds = []
            if self.session.backend.serial:
                for item in items:
                    started = time.perf_counter()
                    item.frames = self.session.decode(item.clip, item.latents)
                    seconds.append(time.perf_counter() - started)
            return items, seconds

        return self.session.backend.run(job)

    def _report_decodes(self, items: list[_Latents], seconds: list[float]) -> None:
        for item, elapsed in zip(items, seconds):
            self.stats.stage("decode", elapsed, item.clip.index)

    def _report_drift_guard(self) -> None:
        self.stats.drift_guard_acted(self.session.options.motion_anchor, self.session.anchored)

    def _emit(self, items: list[_Latents]) -> None:
        """Hand clips on in frame order (a rolling window finishes a clip after later ones were skipped)."""
        for item in items:
            self._pending[item.clip.start] = item
        while self._next_start in self._pending:
            item = self._pending.pop(self._next_start)
            self._next_start = item.clip.end
            self.out.put(item)

    def run(self) -> None:
        self._pending: dict[int, _Latents] = {}
        self._next_start = 0
        try:
            open_stream = True
            while open_stream and not self.stop_requested.is_set():
                open_stream = self._take_audio()
                if self._stale:
                    continue
                for clip in self.session.ready_clips():
                    if self.stop_requested.is_set() or self._stale:
                        break
                    self._emit(self._run_clip(clip))
                    self.session.backend.run(self.session.advance_motion)  # deferred: after the frames went out
            if not self.stop_requested.is_set():
                items, decode_s = self._denoised(self.session.flush)
                self._report_decodes(items, decode_s)
                self._emit(items)
                self.session.backend.run(self.session.advance_motion)
                self._report_drift_guard()
            self.out.put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self.out.put(_Failure(exc))


class DecodeStage(threading.Thread):
    """Decodes each clip's latents into frames while the next clip is denoised."""

    def __init__(self, session: Session, latents: queue.Queue, out: queue.Queue, stats: StreamStats,
                 interrupts: _Interrupts):
        super().__init__(name="emote-decode", daemon=True)
        self.session, self.latents, self.out, self.stats = session, latents, out, stats
        self.interrupts = interrupts
        self.last_image = np.zeros((session.size, session.size, 3), np.uint8)

    def run(self) -> None:
        while True:
            item = self.latents.get()
            if item is _END or isinstance(item, _Failure):
                self.out.put(item)
                return
            if isinstance(item, _Cut):
                self.last_image = item.last_image
                self.out.put(item)
                continue
            if item.epoch != self.interrupts.requested:
                continue  # made before an interrupt: dropped undecoded
            try:
                self._decode(item)
            except BaseException as exc:
                self.out.put(_Failure(exc))
                return

    def _decode(self, item: _Latents) -> None:
        clip = item.clip
        if item.latents is None:
            for i in range(clip.start, clip.end):
                self.out.put(Frame(i, i / self.session.fps, self.last_image, skipped=True, idle=clip.idle))
            return
        frames = item.frames
        if frames is None:
            started = time.perf_counter()
            frames = self.session.backend.run(self.session.decode, clip, item.latents)
            self.stats.stage("decode", time.perf_counter() - started, clip.index)
        self.last_image = frames[-1].image
        for frame in frames:
            self.out.put(frame)


class LiveSession:
    """Push audio in from any thread; iterate frames out (``for frame in live`` or ``async for``).

    Audio of unknown total length: call :meth:`end` when it stops; the remaining frames are
    flushed and the iteration ends. :meth:`reset` then starts a new utterance with the same
    portrait (the reference bank is not recomputed).

    ``always_on``: frames come at the stream's fps whether or not speech arrives. Sample ``k`` of the audio
    timeline belongs at ``t0 + k / SAMPLE_RATE`` on ``clock`` (``t0``: when the session started or was reset);
    pushed speech starts now or right after the speech still queued, and silence fills the rest. Frame ``i``
    has ``pts = i / fps`` on that same timeline. :meth:`interrupt` is a barge-in. This is the session API
    live integrations (the WebSocket server, and WebRTC or agent frameworks) build on.

    ``keep_audio``: the timeline's samples (speech and the silence released between it) are kept in
    :attr:`audio_out` (:class:`~engine.stream.idle.TimelineAudio`) for whoever plays the audio beside the
    frames; a barge-in cuts them too. The reader frees what it played.
    """

    def __init__(self, session: Session, policy: LagPolicy | None = None, stats: StreamStats | None = None,
                 queue_clips: int = 2, clock: Callable[[], float] = time.perf_counter, always_on: bool = False,
                 keep_audio: bool = False):
        self.session, self.policy = session, policy or LagPolicy()
        self.clock = clock
        self.queue_clips = queue_clips
        self.always_on = always_on
        self.keep_audio = keep_audio
        if always_on:
            session.keep_for_rewind(self.rewind_frames)
        session.defer_motion = session.backend.serial
        self.stats = stats or self.new_stats()
        self._start()

    @property
    def rewind_frames(self) -> int:
        """How far behind the newest clip a cut can fall: every frame the queues and stages can hold."""
        planner = self.session.planner
        clip = max(planner.clip_frames, planner.first_clip_frames) + self.session.held_frames
        window = self.session.options.steps * planner.clip_frames if self.session.rolling else 0
        return (2 * self.queue_clips + 3) * clip + window

    def new_stats(self) -> StreamStats:
        """Stats for this session's clip sizes, with the latency floors filled in.

        Rolling schedule: a group of k frames leaves the window after S calls, one per new group, so a
        frame waits for the audio of S k frames (S = steps), not k: the floors use S k as the clip size.
        Streamed context windows: a window's last ``held_frames`` frames wait for the next window, so the
        clip size is a window's new frames plus those; a first clip no longer than that is all held, and
        frame 0 leaves with the second window.
        """
        planner, fps = self.session.planner, self.session.fps
        held = self.session.held_frames
        clip, first = planner.clip_frames + held, planner.first_clip_frames
        if held and first <= held:
            first += planner.clip_frames
        if self.session.rolling:
            clip = first = self.session.options.steps * planner.clip_frames
        stats = StreamStats(fps, self.clock, latency_floor_s=latency_floor(clip, planner.lookahead, fps),
                            ttff_floor_s=ttff_floor(first, planner.lookahead, fps))
        stats.lag_policy(self.policy.kind, self.policy.max_lag_s)
        if self.idle_steps is not None:
            stats.idle_steps(self.idle_steps)
        return stats

    @property
    def idle_steps(self) -> int | None:
        """Sampler steps of an idle clip (always-on, clip schedule), else None."""
        if not self.always_on or self.session.rolling:
            return None
        return min(self.session.options.idle_steps, self.session.options.steps)

    def _start(self) -> None:
        self._audio: queue.Queue = queue.Queue()
        latents: queue.Queue = queue.Queue(maxsize=self.queue_clips)
        self._frames: queue.Queue = queue.Queue(maxsize=self.queue_clips * self.session.planner.clip_frames)
        self._lock = threading.Lock()
        self._interrupts = _Interrupts()
        self._seen_cut = 0
        self._next_index = 0
        self._last_image = np.zeros((self.session.size, self.session.size, 3), np.uint8)
        self._timeline = AudioTimeline(self.clock, self.clock() if self.always_on else None)
        self._audio_out = TimelineAudio() if self.keep_audio else None
        self._denoise = DenoiseStage(self.session, self._audio, latents, self.stats, self.policy, self.clock,
                                     self._interrupts, self.release_silence if self.always_on else None)
        self._decode = DecodeStage(self.session, latents, self._frames, self.stats, self._interrupts)
        self._ended = False
        self._finished = False
        self._denoise.start()
        self._decode.start()

    def _queue(self, blocks: list[AudioBlock]) -> None:
        """Hand timeline blocks to the denoise stage, recording their arrival (caller holds the lock)."""
        for block in blocks:
            self.stats.audio_in(block.pcm.size)
            self._audio.put(block)
            if self._audio_out is not None:
                self._audio_out.append(block.pcm)

    @property
    def audio_out(self) -> TimelineAudio | None:
        """With ``keep_audio``: the timeline's samples not yet freed by their reader (read and free them under
        :attr:`audio_lock`); else None. A new one after :meth:`reset`."""
        return self._audio_out

    @property
    def audio_lock(self) -> threading.Lock:
        """The lock under which :attr:`audio_out` changes."""
        return self._lock

    def push_audio(self, pcm: np.ndarray) -> int:
        """Append 16 kHz mono float32 PCM speech (any block size); never blocks.

        Returns the timeline sample (16 kHz) at which this speech starts: frame ``i`` shows it from
        ``pts = sample / 16000`` on. Always-on, that is after the silence the clock had released, so
        integrations can play their own copy of the speech at the same time as the lips.
        """
        if self._ended:
            raise RuntimeError("audio pushed after end(); call reset() for a new utterance")
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        with self._lock:
            self._queue(self._timeline.push(pcm))
            return self._timeline.samples - pcm.size

    def release_silence(self) -> None:
        """Always-on: queue the silence the clock owes now (the denoise stage calls this whenever it finds no
        audio queued; calling it more often changes no frame)."""
        with self._lock:
            self._queue(self._timeline.silence_due())

    def interrupt(self) -> Interruption:
        """Barge-in (always-on sessions): drop the speech not yet shown and go back to idle.

        The cut is at the first frame not yet taken out (:meth:`next_frame`): no frame generated from the
        dropped speech leaves after this call, frames go on from that index and pts without a gap, made from
        silence with the motion frames of the frames already out, so the face does not jump. A frame's audio
        tokens see its neighbours' audio ``lookahead`` frames either side, so from the cut plus ``lookahead``
        on (two frames for every preset) frames see silence only. Returns what was dropped.
        """
        if not self.always_on:
            raise RuntimeError("interrupt() needs an always-on session: there is no idle to go back to")
        with self._lock:
            frame = self._next_index
            dropped = self._timeline.truncate(self.session.audio.frame_sample(frame))
            if self._audio_out is not None:
                self._audio_out.truncate(self._timeline.samples)
            self.stats.audio_truncated(self._timeline.samples)
            self._interrupts.requested += 1
            self._audio.put(_Cut(self._interrupts.requested, frame, self._last_image))
            report = Interruption(frame, frame / self.session.fps, dropped, dropped / self._timeline.sample_rate)
            self.stats.interrupted(report)
        return report

    def end(self) -> None:
        """No more audio for this utterance: the remaining frames will be produced."""
        with self._lock:
            if not self._ended:
                self._ended = True
                self._timeline.end()
                self._audio.put(_END)

    def next_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame (waits for it), or None when the utterance is over; re-raises a worker's error.

        After :meth:`interrupt`, frames made before the cut reached the decoder are discarded here (counted).
        """
        while True:
            if self._finished:
                return None
            item = self._frames.get(timeout=timeout)
            with self._lock:
                if item is _END:
                    self._finished = True
                    return None
                if isinstance(item, _Failure):
                    self._finished = True
                    raise item.error
                if isinstance(item, _Cut):
                    self._seen_cut = item.epoch
                    continue
                if self._seen_cut != self._interrupts.requested:
                    self.stats.frame_discarded()
                    continue
                if item.skipped:
                    self.stats.frame_skipped(item.index, item.idle)
                else:
                    self.stats.frame_out(item.index, item.idle)
                    self._last_image = item.image
                self._next_index = item.index + 1
                return item

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        while (frame := await loop.run_in_executor(None, self.next_frame)) is not None:
            yield frame

    def reset(self) -> None:
        """Start a new utterance (after the last one's frames were drained, or abandoning them)."""
        self.close()
        self.session.reset()
        self.stats = self.new_stats()
        self._start()

    def close(self) -> None:
        """Stop the workers and drop what is still queued."""
        self._denoise.stop_requested.set()
        self.end()
        while self._denoise.is_alive() or self._decode.is_alive():
            try:
                self._frames.get(timeout=0.05)
            except queue.Empty:
                pass
        self._finished = True


def run_stream(source: AudioSource, live: LiveSession, sinks: list[FrameSink],
               on_frame: Callable[[Frame, LiveSession], None] | None = None) -> StreamStats:
    """Feed ``source`` into ``live`` from a thread and write every frame (and the audio) to ``sinks``.

    The sinks get the source's audio as it was heard, or with ``live.keep_audio`` (always-on) the session's
    timeline: the speech with the silence the clock released between it, so sound and frames stay in step.
    Ctrl-C stops the source and flushes what was already heard, so the output stays playable.
    On any other error the sinks are aborted (nothing half-written is left). Every sink is finished
    before any is closed, so the outputs appear together or not at all.
    """
    heard: deque[np.ndarray] = deque()
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            for block in source.blocks():
                if live.audio_out is None:
                    heard.append(block)
                live.push_audio(block)
        except BaseException as exc:
            failure.append(exc)
        finally:
            live.end()

    def write_audio() -> None:
        blocks = []
        while heard:
            blocks.append(heard.popleft())
        if live.audio_out is not None:
            with live.audio_lock:
                kept = live.audio_out
                blocks.append(kept.read(kept.first, kept.end - kept.first))
                kept.forget_before(kept.end)
        for block in blocks:
            if block.size:
                for sink in sinks:
                    sink.write_audio(block)

    feeder = threading.Thread(target=feed, name="emote-source", daemon=True)
    feeder.start()
    try:
        while True:
            try:
                frame = live.next_frame()
            except KeyboardInterrupt:
                print("\nstopping: finishing the frames already heard", file=sys.stderr)
                source.close()
                continue
            if frame is None:
                break
            write_audio()
            for sink in sinks:
                sink.write(frame)
            if on_frame is not None:
                on_frame(frame, live)
        feeder.join(timeout=5)
        if failure:
            raise failure[0]
        write_audio()
        for sink in sinks:
            sink.finish()
        for sink in sinks:
            sink.close()
    except BaseException:
        for sink in sinks:
            sink.abort()
        source.close()
        live.close()
        raise
    return live.stats
