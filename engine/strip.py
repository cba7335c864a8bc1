"""A strip of frames from a talking-head video above its speech waveform, as one PNG (the README's picture).

    python -m engine.strip --video out/demo.mp4 --out docs/demo.png [--frames 8]

The frames are taken at evenly spaced times; the waveform below them carries a marker at each frame's
time, so a reader sees which sound each mouth shape goes with.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from engine.media import load_audio, load_video_frames
from engine.timebase import SAMPLE_RATE


def pick(count: int, frames: int) -> list[int]:
    """``count`` frame indices spread evenly over ``frames`` (first and last included when count > 1)."""
    if count < 1:
        raise ValueError(f"the strip needs at least one frame, got {count}")
    count = min(count, frames)
    return [round(i * (frames - 1) / max(1, count - 1)) for i in range(count)]


def draw_strip(frames: list[np.ndarray], fps: float, pcm: np.ndarray, out: Path, count: int = 8,
               title: str | None = None) -> Path:
    """Write the strip: ``count`` of ``frames`` (at ``fps``) above ``pcm`` (float mono, 16 kHz), to ``out``
    (PNG, written through a temporary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = pick(count, len(frames))
    fig = plt.figure(figsize=(1.6 * len(chosen), 3.2))
    grid = fig.add_gridspec(2, len(chosen), height_ratios=[1.6, 1])
    for column, index in enumerate(chosen):
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(frames[index])
        ax.set_title(f"{index / fps:.2f} s", fontsize=9)
        ax.axis("off")
    wave = fig.add_subplot(grid[1, :])
    seconds = np.arange(pcm.size) / SAMPLE_RATE
    wave.plot(seconds, pcm, linewidth=0.4, color="#345")
    for index in chosen:
        wave.axvline(index / fps, color="#c33", linewidth=0.8)
    wave.set(xlim=(0, max(len(frames) / fps, seconds[-1] if seconds.size else 0)), xlabel="time (s)",
             ylabel="speech", yticks=[])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.png")
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    os.replace(partial, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.strip", description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True, help="an MP4 with its speech (e.g. out/demo.mp4)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--frames", type=int, default=8, help="frames in the strip (default: 8)")
    parser.add_argument("--title", default=None, help="a line above the strip")
    args = parser.parse_args(argv)
    try:
        frames, fps = load_video_frames(args.video)
        pcm = load_audio(args.video, SAMPLE_RATE)
        draw_strip(frames, fps, pcm, args.out, args.frames, args.title)
    except ValueError as exc:  # MediaError is one
        print(f"engine.strip: error: {exc}", file=sys.stderr)
        return 2
    print(f"strip: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
