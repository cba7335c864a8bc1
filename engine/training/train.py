"""``python -m engine.training.train``: the whole recipe, from synthetic data to a distilled student.

    python -m engine.training.train --out out/training/talking64            # full recipe (~67 min, 1 core)
    python -m engine.training.train --out /tmp/t --recipe tiny              # seconds: end-to-end check

Steps: render (or reuse) the cached synthetic clips; stages ``audio``, ``image``, ``video``, ``speed``
(:mod:`engine.training.stages`); write the teacher's model directory; distil (:mod:`engine.training.distill`);
write the student's. Every stage resumes from its last checkpoint when the command is run again with
the same ``--out``; finished stages are skipped. ``--out`` receives ``log.csv`` (one row per step),
``summary.json`` (times and losses per stage; ``stage_seconds`` sums the stages over every run of a resumed
recipe, ``process_seconds`` is the last run's), ``teacher/`` and ``student/``; ``--ship DIR`` copies the
student into the repository with a manifest of hashes (:mod:`engine.training.ship`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from engine.models.checkpoint import random_model, save_model
from engine.models.model import EmoteModel
from engine.sampling.schedules import NoiseSchedule
from engine.synthetic.dataset import CacheSpec, build_cache, load_clips
from engine.training.data import ClipSampler
from engine.training.distill import distill_stage
from engine.training.model_config import talking_head_config
from engine.training.recipe import STAGES, Recipe
from engine.training.ship import ship
from engine.training.stages import (audio_stage, copy_backbone_into_reference_net, image_stage, run_stage,
                                    speed_stage, video_stage, zero_audio_attention_outputs)
from engine.training.state import LossLog

TEACHER_STEPS = 40
STUDENT_STEPS = 4


def stage_summary(log: LossLog, stage: str) -> dict:
    """Steps, seconds and the mean loss of the first and last tenth of a stage's logged steps."""
    rows = log.rows(stage)
    if not rows:
        return {}
    losses = [float(r["loss"]) for r in rows]
    tenth = max(1, len(losses) // 10)
    return dict(steps=int(rows[-1]["step"]), seconds=float(rows[-1]["seconds"]),
                loss_first=sum(losses[:tenth]) / tenth, loss_last=sum(losses[-tenth:]) / tenth)


def train(out: Path, recipe: Recipe, data_root: Path, threads: int | None = None, progress: bool = True,
          workers: int | None = None) -> dict:
    """Run (or resume) the recipe into ``out``; returns the summary written to ``out/summary.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    cfg = talking_head_config()
    spec = CacheSpec(split="train", count=recipe.train_clips, size=cfg.resolution, fps=cfg.fps,
                     first_seed=recipe.first_seed)
    folder = build_cache(data_root, spec, workers=workers, progress=progress)
    data_seconds = time.perf_counter() - started
    clips = load_clips(folder, spec.seeds())
    schedule = NoiseSchedule.from_dict(cfg.scheduler)
    model = random_model(cfg, seed=recipe.seed)
    copy_backbone_into_reference_net(model)
    zero_audio_attention_outputs(model)
    model.eval()
    log = LossLog(out / "log.csv")
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1))

    def sampler(offset: int) -> ClipSampler:
        return ClipSampler(clips, cfg, seed=recipe.seed * 1000 + offset)

    seed = recipe.seed
    stages = [audio_stage(model, sampler(1), recipe.audio, seed + 1),
              image_stage(model, sampler(2), schedule, recipe.image, seed + 2),
              video_stage(model, sampler(3), schedule, recipe.video, seed + 3, recipe.motion),
              speed_stage(model, sampler(4), schedule, recipe.speed, seed + 4, recipe.motion)]
    for stage in stages:
        run_stage(stage, model, out, log, recipe.checkpoint_every, progress)
    teacher_dir = out / "teacher"
    export(model, teacher_dir, steps=TEACHER_STEPS, sampler_name="ddim", cfg_audio=recipe.distill_guidance)
    stage, _ = distill_stage(model, sampler(5), schedule, recipe.distill, seed + 5, recipe.distill_guidance,
                             recipe.distill_temporal, recipe.distill_motion)
    run_stage(stage, model, out, log, recipe.checkpoint_every, progress)
    export(model, out / "student", steps=STUDENT_STEPS, sampler_name="lcm", cfg_audio=1.0)
    stages = {s: stage_summary(log, s) for s in STAGES}
    summary = dict(recipe="tiny" if recipe == Recipe.tiny() else "custom" if recipe != Recipe() else "full",
                   data_seconds=round(data_seconds, 1),
                   stage_seconds=round(sum(stage.get("seconds", 0.0) for stage in stages.values()), 1),
                   process_seconds=round(time.perf_counter() - started, 1),
                   threads=torch.get_num_threads(), cpu_count=os.cpu_count(), stages=stages,
                   teacher=str(teacher_dir), student=str(out / "student"))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def stage_steps(text: str) -> tuple[str, int]:
    """argparse type: ``"video=3000"`` -> ``("video", 3000)``."""
    stage, _, count = text.partition("=")
    if stage not in STAGES or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected STAGE=N with STAGE one of {', '.join(STAGES)}, got {text!r}")
    return stage, int(count)


MOTION_ANCHOR = 0.5
"""The drift guard the exported models carry (``SamplingDefaults.motion_anchor``): on talking64's student it
keeps the face-box error flat over 60-s held-out streams and real photos (docs/drift.md)."""
NOISE = "session"
"""The exported models' noise mode (``SamplingDefaults.noise``): one noise for every clip of a stream, which
brings the frame change at clip seams within 1.5x of that inside a clip (docs/drift.md)."""


def export(model: EmoteModel, directory: Path, steps: int, sampler_name: str, cfg_audio: float) -> None:
    """Write a model directory whose config carries its generation defaults (steps, sampler, guidance, drift
    guard, noise mode)."""
    model.config.sampling.steps = steps
    model.config.sampling.sampler = sampler_name
    model.config.sampling.cfg_audio = cfg_audio
    model.config.sampling.cfg_ref = 1.0
    model.config.sampling.motion_anchor = MOTION_ANCHOR
    model.config.sampling.noise = NOISE
    save_model(model, directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.training.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder (checkpoints, log, model dirs)")
    parser.add_argument("--recipe", default="full", choices=["full", "tiny"], help="budget (default: full)")
    parser.add_argument("--data", type=Path, default=Path("out/training/data"),
                        help="synthetic clip cache (default: out/training/data)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1; on a shared 2-core machine 2 threads ran 30x slower)")
    parser.add_argument("--workers", type=int, default=None, help="processes rendering clips (default: CPU count)")
    parser.add_argument("--ship", type=Path, default=None,
                        help="also copy the student here with a manifest (e.g. engine/assets/models/talking64)")
    parser.add_argument("--stage-steps", type=stage_steps, action="append", default=[], metavar="STAGE=N",
                        help=f"override a stage's optimiser steps (repeatable; stages: {', '.join(STAGES)})")
    parser.add_argument("--distill-temporal", type=float, default=None, metavar="W",
                        help="weight of the distillation's frame-difference term (default: the recipe's, 0 = off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        recipe = Recipe.named(args.recipe).with_steps(dict(args.stage_steps))
        if args.distill_temporal is not None:
            recipe = recipe.with_distill_temporal(args.distill_temporal)
    except ValueError as exc:
        parser.error(str(exc))
    summary = train(args.out, recipe, args.data, args.threads, not args.quiet, args.workers)
    if args.ship is not None:
        command = "python -m engine.training.train " + " ".join(argv if argv is not None else sys.argv[1:])
        ship(Path(summary["student"]), args.ship, dict(command=command, training=summary))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
