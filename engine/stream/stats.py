"""Stream measures, live and per run, each defined exactly as below.

- time to first frame (TTFF): from the first audio sample entering the engine to the first frame
  leaving it.
- audio-to-frame latency of frame ``i``: from the moment the audio of frame ``i`` was completely in
  (the block holding sample ``round((i + 1) * sr / fps) - 1`` entered; block arrival times are used
  as recorded, never interpolated) to the moment frame ``i`` left. Median, p95 and max.
- sustained fps: frame intervals / (last frame's time - first frame's time), i.e. (frames out - 1) / span.
- real-time factor: generation wall time (first audio in -> last frame out) / media time (frames out
  and skipped, over fps). Below 1 is faster than real time; a paced source keeps it near 1 + latency.
- per-stage seconds per clip, and frames skipped.
- always-on sessions: idle frames (made from the silence the clock released), their sampler steps, and
  each interrupt (barge-in): the frame and pts generation went on from, the speech dropped (seconds), and
  the frames made past the cut that were discarded unseen.
- the lag policy in force (what happens to a clip whose audio waited longer than its threshold).

Times come from one clock (``time.perf_counter`` by default), read when each event is recorded.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Callable

import numpy as np

from engine.stream.idle import Interruption
from engine.timebase import SAMPLE_RATE, frame_start


def latency_floor(clip_frames: int, lookahead: int, fps: float) -> float:
    """Seconds the first frame of a clip waits for sound alone: ``(clip_frames - 1 + lookahead) / fps``.

    The clip is released once the audio of its last frame plus ``lookahead`` frames is in; its first
    frame's own audio was complete that many frame periods earlier. No compute can beat this.
    """
    return (clip_frames - 1 + lookahead) / fps


def ttff_floor(first_clip_frames: int, lookahead: int, fps: float) -> float:
    """Seconds from the first sample until the first clip's audio is in: ``(first_clip_frames + lookahead) / fps``."""
    return (first_clip_frames + lookahead) / fps


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


class StreamStats:
    """Records one stream's events and turns them into the measures above.

    Thread-safe: audio may be recorded from a source thread while frames are recorded elsewhere.
    """

    def __init__(self, fps: float, clock: Callable[[], float] = time.perf_counter, *, sample_rate: int = SAMPLE_RATE,
                 latency_floor_s: float | None = None, ttff_floor_s: float | None = None):
        """``fps`` of the video; ``clock`` returns seconds; the floors (see :func:`latency_floor`,
        :func:`ttff_floor`) are printed beside the measured values when given."""
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps, self.clock, self.sample_rate = float(fps), clock, int(sample_rate)
        self.latency_floor_s, self.ttff_floor_s = latency_floor_s, ttff_floor_s
        self._lock = threading.Lock()
        self._block_ends: list[int] = []  # cumulative samples in after each block
        self._block_times: list[float] = []  # clock time each block entered
        self._out: dict[int, float] = {}  # frame index -> clock time it left
        self._latency: dict[int, float] = {}  # frame index -> seconds (audio complete -> frame out)
        self._pending: list[int] = []  # frames that left before their audio was complete (end-of-stream flush)
        self._skipped: set[int] = set()
        self._idle: set[int] = set()  # frames out or skipped that were made from silence
        self._discarded = 0
        self._interrupts: list[Interruption] = []
        self._idle_steps: int | None = None
        self._policy: tuple[str, float] | None = None
        self._stages: dict[str, list[tuple[int, float]]] = {}
        self._drift_guard: tuple[float, int] | None = None  # strength, motion-frame updates pulled

    # ------------------------------------------------------------------------------------ recording

    def audio_in(self, num_samples: int) -> None:
        """A block of ``num_samples`` samples entered the engine now."""
        if num_samples <= 0:
            return
        now = self.clock()
        with self._lock:
            total = self._block_ends[-1] if self._block_ends else 0
            self._block_ends.append(total + int(num_samples))
            self._block_times.append(now)

    def audio_truncated(self, num_samples: int) -> None:
        """A barge-in cut the audio timeline to its first ``num_samples`` samples: later blocks are forgotten
        (the block holding the cut ends there), and the audio that follows continues from the cut."""
        with self._lock:
            keep = bisect.bisect_left(self._block_ends, num_samples)  # blocks ending before the cut
            straddles = keep < len(self._block_ends) and num_samples > 0
            self._block_ends = self._block_ends[:keep] + ([num_samples] if straddles else [])
            self._block_times = self._block_times[:keep + straddles]

    def interrupted(self, report: Interruption) -> None:
        """A barge-in happened (what it dropped: ``report``)."""
        with self._lock:
            self._interrupts.append(report)

    def frame_discarded(self) -> None:
        """A frame made past a barge-in's cut was dropped unseen."""
        with self._lock:
            self._discarded += 1

    def idle_steps(self, steps: int) -> None:
        """Idle clips (always-on sessions) run ``steps`` sampler steps."""
        with self._lock:
            self._idle_steps = int(steps)

    def lag_policy(self, kind: str, max_lag_s: float) -> None:
        """The lag policy in force: ``kind`` ("grow", "skip", "steps") acting past ``max_lag_s`` seconds of lag."""
        with self._lock:
            self._policy = (kind, float(max_lag_s))

    def drift_guard_acted(self, strength: float, updates: int) -> None:
        """The session's drift guard so far: its ``strength`` (share of the way back to the reference's
        features per motion-frame update, 0 = off) and how many ``updates`` it has pulled."""
        with self._lock:
            self._drift_guard = (float(strength), int(updates))

    def frame_out(self, frame_index: int, idle: bool = False) -> None:
        """Frame ``frame_index`` left the engine now (a repeat of an index is ignored); ``idle``: made from silence."""
        now = self.clock()
        with self._lock:
            if frame_index in self._out:
                return
            self._out[frame_index] = now
            if idle:
                self._idle.add(frame_index)
            arrival = self._audio_complete(frame_index, clamp=False)
            if arrival is None:
                self._pending.append(frame_index)
            else:
                self._latency[frame_index] = now - arrival

    def frame_skipped(self, frame_index: int, idle: bool = False) -> None:
        """Frame ``frame_index`` was dropped by the real-time policy (``idle``: it would have been made from
        silence)."""
        with self._lock:
            self._skipped.add(frame_index)
            if idle:
                self._idle.add(frame_index)

    def stage(self, name: str, seconds: float, clip_index: int) -> None:
        """Stage ``name`` ("audio", "denoise", "decode", ...) took ``seconds`` for clip ``clip_index``."""
        with self._lock:
            self._stages.setdefault(name, []).append((int(clip_index), float(seconds)))

    # ------------------------------------------------------------------------------------ measures

    def _needed_samples(self, frame_index: int) -> int:
        """Samples that must be in for frame ``frame_index``'s audio to be complete (its last sample + 1)."""
        return frame_start(frame_index + 1, self.fps, self.sample_rate)

    def _arrival(self, samples: int) -> float | None:
        """Clock time the block holding sample ``samples - 1`` entered (caller holds the lock)."""
        if not self._block_ends or samples > self._block_ends[-1]:
            return None
        return self._block_times[bisect.bisect_left(self._block_ends, max(1, samples))]

    def audio_arrival(self, samples: int) -> float | None:
        """Clock time at which the first ``samples`` samples were all in: the arrival of the block
        holding sample ``samples - 1``; None while fewer have arrived."""
        with self._lock:
            return self._arrival(samples)

    def _audio_complete(self, frame_index: int, clamp: bool) -> float | None:
        """Arrival time of the block holding frame ``frame_index``'s last sample (caller holds the lock).

        ``clamp``: a frame reaching past the audio received counts as complete with the last block
        (the stream ended mid-frame); without it such a frame has no time yet (None).
        """
        needed = self._needed_samples(frame_index)
        if clamp and self._block_ends:
            needed = min(needed, self._block_ends[-1])
        return self._arrival(needed)

    def _settle(self) -> None:
        """Give pending frames their latency against the audio received so far (caller holds the lock)."""
        for index in self._pending:
            arrival = self._audio_complete(index, clamp=True)
            if arrival is not None:
                self._latency[index] = self._out[index] - arrival
        self._pending = [i for i in self._pending if i not in self._latency]

    @property
    def samples_in(self) -> int:
        """Audio samples received so far."""
        with self._lock:
            return self._block_ends[-1] if self._block_ends else 0

    @property
    def frames_out(self) -> int:
        """Frames that left the engine."""
        return len(self._out)

    @property
    def frames_skipped(self) -> int:
        """Frames dropped by the real-time policy."""
        return len(self._skipped)

    @property
    def frames_idle(self) -> int:
        """Frames out or skipped that an always-on session made from silence."""
        return len(self._idle)

    def latencies(self) -> dict[int, float]:
        """Audio-to-frame latency in seconds of every frame out, by frame index."""
        with self._lock:
            self._settle()
            return dict(self._latency)

    def _media_frames(self) -> int:
        """Frames of media covered so far: one past the highest index out or skipped."""
        last = max(max(self._out, default=-1), max(self._skipped, default=-1))
        return last + 1

    def summary(self) -> dict:
        """Every measure, JSON-ready (seconds, frames; None where not measurable yet)."""
        with self._lock:
            self._settle()
            lat = np.array(list(self._latency.values()), dtype=np.float64)
            out_times = sorted(self._out.values())
            first_in = self._block_times[0] if self._block_times else None
            media_s = self._media_frames() / self.fps
            wall = out_times[-1] - first_in if out_times and first_in is not None else None
            span = out_times[-1] - out_times[0] if len(out_times) > 1 else 0.0
            stages = {name: self._stage_summary(rows) for name, rows in self._stages.items()}
            audio_s = (self._block_ends[-1] if self._block_ends else 0) / self.sample_rate
            guard = self._drift_guard
            idle, discarded, idle_steps = len(self._idle), self._discarded, self._idle_steps
            interrupts = [{"frame": r.frame, "pts": r.pts, "speech_samples": r.speech_samples, "speech_s": r.speech_s}
                          for r in self._interrupts]
            policy = self._policy
        return {
            "fps": self.fps,
            "frames_out": len(out_times),
            "frames_skipped": len(self._skipped),
            "audio_in_s": audio_s,
            "media_s": media_s,
            "time_to_first_frame_s": out_times[0] - first_in if out_times and first_in is not None else None,
            "time_to_first_frame_floor_s": self.ttff_floor_s,
            "latency_s": {
                "median": float(np.percentile(lat, 50)) if lat.size else None,
                "p95": float(np.percentile(lat, 95)) if lat.size else None,
                "max": float(lat.max()) if lat.size else None,
                "floor": self.latency_floor_s,
            },
            "sustained_fps": (len(out_times) - 1) / span if span > 0 else None,
            "generation_wall_s": wall,
            "real_time_factor": wall / media_s if wall is not None and media_s > 0 else None,
            "stages": stages,
            "drift_guard": None if guard is None else {"strength": guard[0], "updates": guard[1]},
            "frames_idle": idle,
            "idle_steps": idle_steps,
            "interrupts": interrupts,
            "frames_discarded": discarded,
            "lag_policy": None if policy is None else {"kind": policy[0], "max_lag_s": policy[1]},
        }

    @staticmethod
    def _stage_summary(rows: list[tuple[int, float]]) -> dict:
        """Per-clip seconds of one stage: totals, the first clip (warm-up) apart from the steady ones."""
        rows = sorted(rows)
        seconds = [s for _, s in rows]
        steady = seconds[1:]
        return {
            "clips": len(rows),
            "total_s": float(sum(seconds)),
            "mean_s": float(np.mean(seconds)),
            "max_s": float(max(seconds)),
            "first_s": seconds[0],
            "steady_mean_s": float(np.mean(steady)) if steady else None,
            "per_clip": [[clip, s] for clip, s in rows],
        }

    def table(self) -> str:
        """The end-of-run summary as a Markdown table, each floor from the audio alone beside its measure."""
        s = self.summary()
        lat = s["latency_s"]
        fps = "-" if s["sustained_fps"] is None else f"{s['sustained_fps']:.2f}"
        rtf = "-" if s["real_time_factor"] is None else f"{s['real_time_factor']:.3f}"
        rows = [
            ("frames out", str(s["frames_out"]), ""),
            ("frames skipped", str(s["frames_skipped"]), ""),
            ("time to first frame", _ms(s["time_to_first_frame_s"]),
             "" if s["time_to_first_frame_floor_s"] is None else _ms(s["time_to_first_frame_floor_s"])),
            ("audio-to-frame latency, median", _ms(lat["median"]), ""),
            ("audio-to-frame latency, p95", _ms(lat["p95"]), ""),
            ("audio-to-frame latency, max", _ms(lat["max"]), "" if lat["floor"] is None else _ms(lat["floor"])),
            ("sustained fps", fps, f"{self.fps:g} (video)"),
            ("real-time factor (wall / media)", rtf, ""),
        ]
        guard = s["drift_guard"]
        if guard is not None:
            acted = (f"{guard['updates']} motion-frame updates, each {guard['strength']:g} of the way back"
                     if guard["strength"] > 0 else "off")
            rows.append(("drift guard (toward the reference)", acted, ""))
        if s["lag_policy"] is not None:
            rows.append(("lag policy", f"{s['lag_policy']['kind']} past {s['lag_policy']['max_lag_s']:g} s of lag", ""))
        if s["idle_steps"] is not None:
            rows.append(("idle frames (from silence)", f"{s['frames_idle']}, {s['idle_steps']} steps per clip", ""))
        if s["interrupts"]:
            dropped = sum(r["speech_s"] for r in s["interrupts"])
            rows.append(("interrupts (barge-in)", f"{len(s['interrupts'])}: {dropped:.2f} s of speech dropped, "
                                                  f"{s['frames_discarded']} frames discarded unseen", ""))
        for name, st in s["stages"].items():
            steady = "" if st["steady_mean_s"] is None else f", then {_ms(st['steady_mean_s'])}"
            rows.append((f"{name} per clip ({st['clips']} clips)", f"first {_ms(st['first_s'])}{steady}", ""))
        lines = ["| measure | measured | floor from the audio alone |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        return "\n".join(lines)

    def status_line(self) -> str:
        """One live line: frames, fps, latency p50/p95, lag behind real time, frames skipped.

        The lag is the audio received that has no frame yet, in seconds (audio in - media out); it
        includes the floor's wait for look-ahead and grows without bound when generation falls behind.
        """
        with self._lock:
            lat = np.array(list(self._latency.values()), dtype=np.float64)
            out_times = sorted(self._out.values())
            audio_s = (self._block_ends[-1] if self._block_ends else 0) / self.sample_rate
            lag = max(0.0, audio_s - self._media_frames() / self.fps)
            skipped = len(self._skipped)
        span = out_times[-1] - out_times[0] if len(out_times) > 1 else 0.0
        fps = f"{len(out_times) / span:.1f}" if span > 0 else "-"
        p50 = f"{np.percentile(lat, 50) * 1000:.0f}" if lat.size else "-"
        p95 = f"{np.percentile(lat, 95) * 1000:.0f}" if lat.size else "-"
        return (f"frames {len(out_times)} | {fps} fps | latency p50 {p50} ms p95 {p95} ms | "
                f"lag {lag:.2f} s | skipped {skipped}")
