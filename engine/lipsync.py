"""Lip-sync score: does the mouth in generated frames follow the speech?

On held-out synthetic clips the truth is known: the mouth opening the renderer drew for each frame, and
where the mouth is (``Identity.mouth_box``). The score measures the opening in generated frames from
pixels alone, as the dark area inside that box (the mouth's cavity is near black; lips and skin are
not), and correlates it with the true opening:

- ``correlation``: Pearson correlation at lag 0, each clip's two series standardised, clips pooled. The
  spread of the measured series is floored at ``MIN_SPREAD_PX`` pixels (scaled to the frame size), so a
  mouth that does not move scores near 0 rather than the correlation of pixel noise;
- ``lag``: the shift in frames (generated behind truth when positive) at which the cross-correlation peaks,
  within +-``MAX_LAG`` frames, and ``peak_correlation`` there;
- ``pixel_error``: mean absolute difference from the ground-truth rendering, 0-255 per channel;
- ``smoothness``: mean absolute change from one frame to the next, 0-255 per channel (the ground truth's
  own is the yardstick: it moves only where the mouth, eyes and head move).

Controls: the same clips driven by silence, or by another clip's speech, must score near 0.
``python -m engine.lipsync`` runs the comparison table of a teacher and a student.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.backends import make_backend
from engine.faces import FaceBox, box_mask
from engine.models.checkpoint import load_model
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from engine.stream.session import Session
from engine.synthetic.clips import TalkingClip, make_clip

DARK_LOW, DARK_HIGH = 30.0, 100.0
"""Luma (0-255) at and below which a pixel counts as fully dark, and above which not at all. On the
ground-truth renders of 12 held-out clips the pooled correlation with the true opening is 0.946 with this
ramp (0.926 with 30-60, whose top rejects a cavity softened by a few-step sampler: cavity and lip
colours blended read 60-90)."""
MIN_SPREAD_PX = 0.5
"""Floor of the measured opening's standard deviation, in dark pixels at 64 x 64."""
MAX_LAG = 5
MASK_MARGIN = 0.1


def mouth_opening(frames: np.ndarray, box: np.ndarray | tuple[float, float, float, float]) -> np.ndarray:
    """Dark area (pixels) inside ``box`` (x0, y0, x1, y1 in pixels) of uint8 frames [F, H, W, 3] -> float32 [F].

    Each pixel counts ``clip((DARK_HIGH - luma) / (DARK_HIGH - DARK_LOW), 0, 1)`` (Rec. 601 luma).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"frames must be [F, S, S, 3], got {list(frames.shape)}")
    mask = box_mask(FaceBox(*[float(v) for v in box]), frames.shape[1])
    luma = frames[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    dark = np.clip((DARK_HIGH - luma) / (DARK_HIGH - DARK_LOW), 0.0, 1.0)
    return (dark * mask).sum(axis=(1, 2)).astype(np.float32)


def _standardise(x: np.ndarray, floor: float = 0.0) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x - x.mean()) / max(float(x.std()), floor, 1e-12)


def lagged_correlation(measured: list[np.ndarray], truth: list[np.ndarray], lag: int, floor: float) -> float:
    """Pooled correlation of ``measured[t + lag]`` with ``truth[t]`` over clips (each standardised)."""
    a, b = [], []
    for m, g in zip(measured, truth):
        m, g = _standardise(m, floor), _standardise(g)
        if lag >= 0:
            m, g = m[lag:], g[:g.shape[0] - lag]
        else:
            m, g = m[:m.shape[0] + lag], g[-lag:]
        a.append(m)
        b.append(g)
    a, b = np.concatenate(a), np.concatenate(b)
    return float((a * b).mean()) if a.size else 0.0


@dataclass
class LipSync:
    """Scores of one configuration over a set of clips (see the module docstring)."""

    correlation: float
    lag: int
    peak_correlation: float
    pixel_error: float | None
    frames: int
    seconds_per_second: float | None = None
    smoothness: float | None = None
    by_lag: dict[int, float] = field(default_factory=dict)


def score(measured: list[np.ndarray], truth: list[np.ndarray], size: int, pixel_error: float | None = None,
          max_lag: int = MAX_LAG) -> LipSync:
    """Correlation, lag and peak of measured vs true openings (lists of [F] arrays, one per clip)."""
    floor = MIN_SPREAD_PX * (size / 64) ** 2
    by_lag = {lag: lagged_correlation(measured, truth, lag, floor) for lag in range(-max_lag, max_lag + 1)}
    best = max(by_lag, key=lambda k: (by_lag[k], -abs(k)))
    return LipSync(correlation=by_lag[0], lag=best, peak_correlation=by_lag[best], pixel_error=pixel_error,
                   frames=int(sum(len(m) for m in measured)), by_lag=by_lag)


def frame_change(frames: np.ndarray) -> float:
    """Mean absolute difference between consecutive uint8 frames [F, H, W, 3], 0-255 per channel."""
    frames = np.asarray(frames, np.float32)
    return float(np.abs(np.diff(frames, axis=0)).mean()) if frames.shape[0] > 1 else 0.0


def portrait_mask(clip: TalkingClip) -> np.ndarray:
    """The face-locator mask the session gets for a clip's reference (face box at rest grown by 10 %)."""
    size = clip.frames.shape[1]
    box = FaceBox(*(np.asarray(clip.recipe.identity.face_box()) * size).tolist())
    return box_mask(box.grow(MASK_MARGIN), size)


def generate(model: EmoteModel, reference: np.ndarray, mask: np.ndarray, audio: np.ndarray,
             options: GenerationOptions, block: int | None = None) -> np.ndarray:
    """Frames uint8 [F, H, W, 3] for 16 kHz ``audio`` through a :class:`Session` (the engine's one path):
    the whole audio at once (``block`` None, as ``emote generate``) or in blocks of ``block`` samples
    with frames collected as they become ready (a live source)."""
    backend = make_backend("torch", model, "cpu", torch.float32)
    session = Session(backend, model.config, reference, mask, options)
    frames = []
    blocks = [audio] if block is None else [audio[i:i + block] for i in range(0, audio.shape[0], block)]
    for chunk in blocks:
        session.push_audio(chunk)
        if block is not None:
            frames.extend(f.image for f in session.frames())
    session.end()
    frames.extend(f.image for f in session.frames())
    return np.stack(frames)


def heldout_clips(count: int, first_seed: int = 0, size: int = 64, fps: float = 25.0,
                  sentences: int | None = 2) -> list[TalkingClip]:
    """Held-out clips (still heads, as generation runs at head speed 0) for scoring."""
    return [make_clip(first_seed + i, "heldout", size, fps, head_motion=False, sentences=sentences)
            for i in range(count)]


def evaluate(model: EmoteModel, clips: list[TalkingClip], options: GenerationOptions, audio: str = "own",
             block: int | None = None) -> tuple[LipSync, list[np.ndarray]]:
    """Generate every clip from its rest reference and score it against its own ground truth.

    ``audio``: ``"own"`` (the clip's speech), ``"silence"`` (zeros of the same length) or ``"other"``
    (the next clip's speech, cut or zero-padded to this clip's length). Returns the score and the frames.
    """
    measured, truth, errors, changes, outputs = [], [], [], [], []
    seconds = media = 0.0
    for i, clip in enumerate(clips):
        pcm = clip.audio
        if audio == "silence":
            pcm = np.zeros_like(clip.audio)
        elif audio == "other":
            other = clips[(i + 1) % len(clips)].audio
            pcm = np.pad(other[:clip.audio.shape[0]], (0, max(0, clip.audio.shape[0] - other.shape[0])))
        elif audio != "own":
            raise ValueError(f"audio must be 'own', 'silence' or 'other', got {audio!r}")
        started = time.perf_counter()
        frames = generate(model, clip.reference, portrait_mask(clip), pcm, options, block)
        seconds += time.perf_counter() - started
        media += clip.audio.shape[0] / clip.sample_rate
        outputs.append(frames)
        measured.append(mouth_opening(frames, clip.mouth_box))
        truth.append(clip.opening[:frames.shape[0]])
        errors.append(float(np.abs(frames.astype(np.float32) - clip.frames.astype(np.float32)).mean()))
        changes.append(frame_change(frames))
    result = score(measured, truth, clips[0].frames.shape[1], pixel_error=float(np.mean(errors)))
    result.seconds_per_second = seconds / media
    result.smoothness = float(np.mean(changes))
    return result, outputs


CONFIGURATIONS = (("teacher", "ddim", 40), ("teacher", "ddim", 4), ("student", "lcm", 4), ("student", "lcm", 2),
                  ("student", "lcm", 1))
ROLLING_GROUPS = (1, 2, 4)
"""Group sizes k of the rolling-schedule rows (4-step student, one backbone call per k frames)."""


def ground_truth_row(clips: list[TalkingClip]) -> dict:
    """The metric on the ground-truth renderings themselves (its ceiling) and their frame-to-frame change."""
    measured = [mouth_opening(c.frames, c.mouth_box) for c in clips]
    result = score(measured, [c.opening for c in clips], clips[0].frames.shape[1], pixel_error=0.0)
    result.smoothness = float(np.mean([frame_change(c.frames) for c in clips]))
    return dict(model="ground truth", sampler="-", steps=0, cfg_audio=1.0, audio="own", schedule="-",
                **asdict(result))


def comparison_table(teacher: EmoteModel | None, student: EmoteModel, clips: list[TalkingClip], guidance: float,
                     controls: bool = True, rolling: bool = True) -> list[dict]:
    """The table of the issue: teacher (DDIM, audio guidance ``guidance``) at 40 and 4 steps, student
    (LCM, no guidance) at 4, 2 and 1 steps; silence / other-speech controls of the 4-step student; the
    4-step student on the rolling schedule (groups of ``ROLLING_GROUPS``); and the ground truth. Without a
    ``teacher`` its rows are left out (students compared on the same clips)."""
    rows = [ground_truth_row(clips)]
    for name, sampler, steps in CONFIGURATIONS:
        if name == "teacher" and teacher is None:
            continue
        model = teacher if name == "teacher" else student
        cfg = guidance if name == "teacher" else 1.0
        options = GenerationOptions(steps=steps, sampler=sampler, cfg_audio=cfg)
        result, _ = evaluate(model, clips, options)
        rows.append(dict(model=name, sampler=sampler, steps=steps, cfg_audio=cfg, audio="own", schedule="clip",
                         **asdict(result)))
    if controls:
        for audio in ("silence", "other"):
            result, _ = evaluate(student, clips, GenerationOptions(steps=4, sampler="lcm", cfg_audio=1.0), audio=audio)
            rows.append(dict(model="student", sampler="lcm", steps=4, cfg_audio=1.0, audio=audio, schedule="clip",
                             **asdict(result)))
    if rolling:
        for k in ROLLING_GROUPS:
            options = GenerationOptions(steps=4, sampler="lcm", cfg_audio=1.0, schedule="rolling", group_frames=k)
            result, _ = evaluate(student, clips, options)
            rows.append(dict(model="student", sampler="lcm", steps=4, cfg_audio=1.0, audio="own",
                             schedule=f"rolling k={k}", **asdict(result)))
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | sampler | steps | audio CFG | schedule | audio | lip-sync r (lag 0) | peak lag (frames) "
             "| peak r | pixel error (0-255) | frame change (0-255) | s per s of video |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = "-" if r["seconds_per_second"] is None else f"{r['seconds_per_second']:.2f}"
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps'] or '-'} | {r['cfg_audio']:g} | {r['schedule']} "
                     f"| {r['audio']} | {r['correlation']:.3f} | {r['lag']} | {r['peak_correlation']:.3f} "
                     f"| {r['pixel_error']:.1f} | {r['smoothness']:.2f} | {speed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.lipsync", description="Lip-sync table of a teacher "
                                     "and a student on held-out synthetic speech.")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model directory")
    parser.add_argument("--student", type=Path, required=True, help="student model directory")
    parser.add_argument("--clips", type=int, default=6, help="held-out clips (default: 6)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="teacher audio guidance (default: the teacher config's cfg_audio)")
    parser.add_argument("--students-only", action="store_true",
                        help="leave the teacher's rows out (the teacher still gives the clips' size and frame rate)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, student = load_model(args.teacher).float(), load_model(args.student).float()
    guidance = args.guidance or teacher.config.sampling.cfg_audio or 1.0
    clips = heldout_clips(args.clips, size=teacher.config.resolution, fps=teacher.config.fps)
    rows = comparison_table(None if args.students_only else teacher, student, clips, guidance)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
