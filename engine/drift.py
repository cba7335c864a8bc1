"""Quality over a long stream: does the face stay the reference's face, and where does the video jump?

A live avatar feeds the model its own last frames (the motion frames), so small errors can accumulate and
the face drift away from the reference over seconds to minutes. Measured per window of ``WINDOW_S``
seconds, on uint8 frames ``[F, H, W, 3]`` (errors are mean absolute differences, 0-255 per channel):

- ``face``: inside the face box, against the truth (held-out synthetic clips, whose renderer drew every
  frame) or against the reference image (real photos, where no truth exists: the face moves, so this
  has a floor above 0, but it must stay flat);
- ``static``: outside the face box grown by ``STATIC_MARGIN`` (background and clothes), against the
  reference image: with a still head nothing there should change;
- ``drift_ratio``: last window's face error over the first's;
- frame change (mean absolute difference of consecutive frames) inside clips and at clip seams, whose
  ratio says whether the cut between clips shows.

``python -m engine.drift`` prints the table for a model on long held-out clips and on real photos, and
plots error against time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.faces import FaceBox, box_mask, prepare_portrait
from engine.lipsync import generate, mouth_opening, portrait_mask, score
from engine.models.checkpoint import load_model
from engine.models.model import EmoteModel
from engine.options import NOISE_MODES, GenerationOptions
from engine.stream.chunk_planner import ChunkPlanner
from engine.synthetic.clips import make_clip
from engine.timebase import frame_start

WINDOW_S = 5.0
"""Window length, seconds."""
STATIC_MARGIN = 0.35
"""How much the face box grows (share of its size on each side) before the rest counts as static: the
hair, ears and neck move with the face."""


def region_error(frames: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-frame mean absolute difference inside ``mask`` ([H, W] weights) between uint8 ``frames``
    [F, H, W, 3] and ``target`` ([F, H, W, 3] per frame, or [H, W, 3] for every frame) -> float64 [F]."""
    frames = np.asarray(frames, np.float32)
    target = np.asarray(target, np.float32)
    if target.ndim == 3:
        target = target[None]
    weights = np.asarray(mask, np.float32)[None, :, :, None]
    total = float(weights.sum()) * 3
    if total == 0:
        raise ValueError("the region is empty")
    per_frame = np.empty(frames.shape[0], np.float64)
    for start in range(0, frames.shape[0], 256):
        stop = start + 256
        diff = np.abs(frames[start:stop] - (target[start:stop] if target.shape[0] > 1 else target))
        per_frame[start:stop] = (diff * weights).sum(axis=(1, 2, 3)) / total
    return per_frame


def windows(values: np.ndarray, fps: float, window_s: float = WINDOW_S) -> list[float]:
    """Means of ``values`` [F] over consecutive windows of ``window_s`` seconds (a last window shorter than
    half a window joins the one before it)."""
    size = max(1, round(window_s * fps))
    starts = list(range(0, len(values), size))
    if len(starts) > 1 and len(values) - starts[-1] < size / 2:
        starts.pop()
    bounds = starts + [len(values)]
    return [float(np.mean(values[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


def seam_and_inside_change(frames: np.ndarray, clip_starts: list[int]) -> tuple[float, float]:
    """Mean frame change (0-255) at clip seams (the step into each clip but the first) and inside clips."""
    change = np.abs(np.diff(np.asarray(frames, np.float32), axis=0)).mean(axis=(1, 2, 3))
    seam = np.zeros(change.shape[0], bool)
    for start in clip_starts:
        if 0 < start <= change.shape[0]:
            seam[start - 1] = True
    inside = change[~seam]
    return (float(change[seam].mean()) if seam.any() else 0.0, float(inside.mean()) if inside.size else 0.0)


@dataclass
class DriftReport:
    """One stream's quality over time (see the module docstring); per-window lists start at 0 s."""

    name: str
    seconds: float
    window_s: float
    face: list[float]
    static: list[float]
    drift_ratio: float
    seam_change: float
    inside_change: float
    lipsync: list[float] | None = None

    @property
    def seam_ratio(self) -> float:
        """Frame change at seams over frame change inside clips."""
        return self.seam_change / max(self.inside_change, 1e-9)


def drift_report(name: str, frames: np.ndarray, fps: float, face_box: FaceBox, reference: np.ndarray,
                 clip_starts: list[int], truth: np.ndarray | None = None,
                 window_s: float = WINDOW_S) -> DriftReport:
    """The report of one stream: ``frames`` uint8 [F, S, S, 3] at ``fps``, ``face_box`` in pixels,
    ``reference`` uint8 [S, S, 3], ``clip_starts`` the first frame of each clip, ``truth`` the
    ground-truth frames [F, S, S, 3] where known (else the face is compared with the reference)."""
    size = frames.shape[1]
    face_mask = box_mask(face_box, size)
    static_mask = 1.0 - box_mask(face_box.grow(STATIC_MARGIN), size)
    face = windows(region_error(frames, reference if truth is None else truth[:len(frames)], face_mask), fps,
                   window_s)
    static = windows(region_error(frames, reference, static_mask), fps, window_s)
    seam, inside = seam_and_inside_change(frames, clip_starts)
    return DriftReport(name=name, seconds=len(frames) / fps, window_s=window_s, face=face, static=static,
                       drift_ratio=face[-1] / max(face[0], 1e-9), seam_change=seam, inside_change=inside)


def clip_starts(frames: int, options: GenerationOptions, clip_frames: int) -> list[int]:
    """The first frame of each clip (each group, on the rolling schedule) of a ``frames``-long stream, as a
    :class:`Session` with ``options`` cuts it (``clip_frames``: the model's clip length)."""
    if options.schedule == "rolling":
        planner = ChunkPlanner(options.group_frames)
    else:
        planner = ChunkPlanner(options.clip_frames or clip_frames, options.first_clip_frames)
    return [clip.start for clip in planner.ready(frames, frames)]


@dataclass
class Stream:
    """One long stream to measure: a portrait, its speech, and the truth where known."""

    name: str
    reference: np.ndarray
    mask: np.ndarray
    face_box: FaceBox
    audio: np.ndarray
    truth: np.ndarray | None = None
    mouth_box: np.ndarray | None = None
    opening: np.ndarray | None = None


def synthetic_streams(count: int, seconds: float, size: int, fps: float, first_seed: int = 0) -> list[Stream]:
    """``count`` held-out synthetic talkers (still heads) speaking for ``seconds`` each, with their truth."""
    needed = round(seconds * fps)
    out = []
    for seed in range(first_seed, first_seed + count):
        sentences = math.ceil(seconds / 3.0) + 1
        clip = make_clip(seed, "heldout", size, fps, head_motion=False, sentences=sentences)
        while clip.frames.shape[0] < needed:  # sentences run 2.5-4 s: add some until the speech is long enough
            sentences += math.ceil((needed - clip.frames.shape[0]) / fps / 2.5)
            clip = make_clip(seed, "heldout", size, fps, head_motion=False, sentences=sentences)
        box = FaceBox(*clip.face_boxes[0].tolist())
        out.append(Stream(f"synthetic {seed}", clip.reference, portrait_mask(clip), box,
                          clip.audio[:frame_start(needed, fps, clip.sample_rate)], clip.frames[:needed], clip.mouth_box,
                          clip.opening[:needed]))
    return out


def photo_stream(path: Path, size: int, audio: np.ndarray) -> Stream:
    """A real photograph (cropped around its face as ``emote generate`` does) speaking ``audio``; no truth."""
    portrait = prepare_portrait(path, size)
    return Stream(f"photo {path.name}", portrait.image, portrait.mask, portrait.face_box, audio)


def measure(model: EmoteModel, stream: Stream, options: GenerationOptions, window_s: float = WINDOW_S) -> DriftReport:
    """Generate ``stream`` through a :class:`Session` and report its drift (and per-window lip sync where
    the truth is known)."""
    frames = generate(model, stream.reference, stream.mask, stream.audio, options)
    fps = model.config.fps
    truth = None if stream.truth is None else stream.truth[:len(frames)]
    report = drift_report(stream.name, frames, fps, stream.face_box, stream.reference,
                          clip_starts(len(frames), options, model.config.clip_frames), truth, window_s)
    if stream.opening is not None:
        opening = mouth_opening(frames, stream.mouth_box)
        size = max(1, round(window_s * fps))
        report.lipsync = [score([opening[a:a + size]], [stream.opening[a:a + size]], frames.shape[1],
                                max_lag=0).correlation
                          for a in range(0, len(frames) - size // 2, size)][:len(report.face)]
    return report


def markdown(rows: list[tuple[float, DriftReport]]) -> str:
    """(anchor, report) rows as a Markdown table."""
    lines = ["| stream | drift guard | face, first window | face, last window | drift ratio | static, first | "
             "static, last | seam / inside change | lip-sync r (mean of windows) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for anchor, r in rows:
        sync = "-" if not r.lipsync else f"{np.mean(r.lipsync):.3f}"
        lines.append(f"| {r.name} ({r.seconds:.0f} s) | {anchor:g} | {r.face[0]:.1f} | {r.face[-1]:.1f} "
                     f"| {r.drift_ratio:.2f} | {r.static[0]:.1f} | {r.static[-1]:.1f} "
                     f"| {r.seam_change:.2f} / {r.inside_change:.2f} = {r.seam_ratio:.2f} | {sync} |")
    return "\n".join(lines)


def plot(rows: list[tuple[float, DriftReport]], out: Path, title: str) -> None:
    """Face error against time, one line per stream and drift-guard setting, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    anchors = sorted({a for a, _ in rows})
    styles = ["-", "--", ":", "-."]
    names = sorted({r.name for _, r in rows})
    colours = {n: f"C{i % 10}" for i, n in enumerate(names)}
    for anchor, r in rows:
        t = (np.arange(len(r.face)) + 0.5) * r.window_s
        axes.plot(t, r.face, styles[anchors.index(anchor) % len(styles)], color=colours[r.name],
                  label=f"{r.name}, guard {anchor:g}")
    axes.set_xlabel("time (s), window centres")
    axes.set_ylabel("face-box error (0-255)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.drift", description="Drift of a model over long "
                                     "streams: face error per window against time, on held-out synthetic talkers "
                                     "and real photos.")
    parser.add_argument("--model", default="talking64", help="model directory or shipped name (default: talking64)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each stream (default: 60)")
    parser.add_argument("--clips", type=int, default=3, help="held-out synthetic talkers (default: 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first held-out talker (default: 0)")
    parser.add_argument("--photo", type=Path, action="append", default=[],
                        help="a real photograph to measure too (repeatable; evaluation only)")
    parser.add_argument("--anchor", type=float, action="append", default=None,
                        help="drift-guard strength to compare (repeatable; default: 0 and the model's own)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--schedule", choices=("clip", "rolling"), default="clip")
    parser.add_argument("--noise", choices=NOISE_MODES, default=None,
                        help="each clip's noise: clip or session (default: the model's)")
    parser.add_argument("--group", type=int, default=2, help="frames per group on the rolling schedule")
    parser.add_argument("--window", type=float, default=WINDOW_S, help="window length, s (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out-dir", type=Path, default=Path("out/drift"),
                        help="where drift.json, drift.md and drift.png go (default: out/drift)")
    args = parser.parse_args(argv)
    if args.seconds < args.window or args.clips < 0 or args.window <= 0:
        parser.error("--seconds must be at least one --window, --clips >= 0, --window > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).float()
    size, fps = model.config.resolution, model.config.fps
    streams = synthetic_streams(args.clips, args.seconds, size, fps, args.first_seed)
    speech = streams[0].audio if streams else synthetic_streams(1, args.seconds, size, fps, args.first_seed)[0].audio
    streams += [photo_stream(p, size, speech) for p in args.photo]
    rows = []
    anchors = args.anchor or sorted({0.0, model.config.sampling.motion_anchor or 0.0})
    for anchor in anchors:
        options = GenerationOptions(steps=args.steps, schedule=args.schedule, group_frames=args.group,
                                    motion_anchor=anchor, noise=args.noise)
        for stream in streams:
            rows.append((anchor, measure(model, stream, options, args.window)))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    print(table)
    (args.out_dir / "drift.md").write_text(table + "\n")
    (args.out_dir / "drift.json").write_text(json.dumps(
        [dict(anchor=a, **asdict(r)) for a, r in rows], indent=1) + "\n")
    title = (f"{model.config.name}: face-box error per {args.window:g}-s window, {args.schedule} schedule, "
             f"{args.steps or model.config.sampling.steps or 'default'} steps")
    plot(rows, args.out_dir / "drift.png", title)
    print(f"wrote {args.out_dir / 'drift.md'}, drift.json and drift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
