"""The on-disk cache of synthetic clips, and loading it for training.

A cache folder holds one ``clip-<seed>.npz`` per clip (frames, audio, ground truth; written atomically,
so an interrupted build resumes where it stopped) and ``manifest.json`` once complete. Its name
records what made it (split, size, frame rate, generator version), so a change of any of them never
reads stale clips.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.synthetic.clips import TalkingClip, make_clip, recipe

GENERATOR_VERSION = 3
"""Bumped whenever drawing, speech or timing changes what a seed produces."""

_ARRAYS = ("frames", "audio", "opening", "width", "eyes_open", "roll", "head_speed", "face_boxes", "mouth_box",
           "reference")


@dataclass(frozen=True)
class CacheSpec:
    """Which clips a cache holds: seeds ``first_seed .. first_seed + count - 1`` of ``split``."""

    split: str = "train"
    count: int = 256
    size: int = 64
    fps: float = 25.0
    first_seed: int = 0

    def folder(self, root: Path) -> Path:
        """``root/<split>-<size>px-<fps>fps-v<version>``."""
        return Path(root) / f"{self.split}-{self.size}px-{self.fps:g}fps-v{GENERATOR_VERSION}"

    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.count)


def clip_path(folder: Path, seed: int) -> Path:
    return Path(folder) / f"clip-{seed:06d}.npz"


def save_clip(clip: TalkingClip, path: Path) -> None:
    """Write a clip's arrays and recipe summary (atomic: temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    meta = dict(seed=clip.recipe.seed, split=clip.recipe.split, text=clip.recipe.text, voice=clip.recipe.voice.name,
                moving=bool(clip.recipe.head.amplitudes), sentences=clip.recipe.sentences, fps=clip.fps,
                sample_rate=clip.sample_rate)
    np.savez_compressed(tmp, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                        **{name: getattr(clip, name) for name in _ARRAYS})
    os.replace(tmp, path)


def load_clip(path: Path) -> TalkingClip:
    """Read a clip written by :func:`save_clip` (its recipe is re-derived from the seed; no phonemes)."""
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        arrays = {name: data[name] for name in _ARRAYS}
    rec = recipe(meta["seed"], meta["split"], head_motion=meta["moving"], sentences=meta.get("sentences"))
    return TalkingClip(recipe=rec, fps=meta["fps"], sample_rate=meta["sample_rate"], **arrays)


def _build_one(job: tuple[str, int, str, int, float]) -> int:
    folder, seed, split, size, fps = job
    target = clip_path(Path(folder), seed)
    if not target.exists():
        save_clip(make_clip(seed, split, size, fps), target)
    return seed


def build_cache(root: Path, spec: CacheSpec, workers: int | None = None, progress: bool = True) -> Path:
    """Render the clips of ``spec`` under ``root`` that are not there yet; returns the cache folder.

    ``workers``: processes (None: the CPU count). Each clip is deterministic in its seed, so the
    folder's contents do not depend on the number of workers or on interruptions.
    """
    folder = spec.folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    missing = [s for s in spec.seeds() if not clip_path(folder, s).exists()]
    jobs = [(str(folder), s, spec.split, spec.size, spec.fps) for s in missing]
    workers = max(1, workers or os.cpu_count() or 1)
    with tqdm(total=spec.count, initial=spec.count - len(missing), desc=f"clips ({spec.split})", unit="clip",
              disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                _build_one(job)
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_build_one, jobs, chunksize=4):
                    bar.update(1)
    seeds = list(spec.seeds())
    manifest.write_text(json.dumps(dict(version=GENERATOR_VERSION, split=spec.split, size=spec.size, fps=spec.fps,
                                        seeds=[seeds[0], seeds[-1]] if seeds else [], count=len(seeds)), indent=1))
    return folder


def load_clips(folder: Path, seeds: range | list[int]) -> list[TalkingClip]:
    """Read the clips of ``seeds`` from a cache folder (all must exist)."""
    return [load_clip(clip_path(folder, s)) for s in seeds]
