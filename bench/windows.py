"""How far a stream's causal context windows are from EchoMimic's offline windows: ``python -m bench.windows``.

EchoMimic v1 denoises a whole video at once in overlapping context windows (12 frames, overlap 3, wrapping
round, rotated 2 frames a step), each frame's prediction the mean over its windows. A stream runs the
causal form (:meth:`engine.stream.session.Session.denoise_window`). On the stream's own noise and audio
tokens this runs four forms of one video and prints how far apart they are:

- ``stream``: the session, clip by clip as the audio arrives (windows one after another, overlap averaged,
  the last frames held back);
- ``joint``: the same windows, every window at every step on the one video (no wrap-round, no rotation);
- ``offline``: EchoMimic's windows (:meth:`engine.sampling.clip_denoiser.ClipDenoiser.windowed`);
- ``clips``: independent clips of the window size (the stream before the causal form).

Differences: latents, max and mean absolute difference over the reference's max and mean magnitude; decoded
frames, the mean absolute frame-to-frame change (pixels in [-1, 1]) at the seams of the independent clips,
where a window's overlap begins (its first frame shared with the next window), and elsewhere.

A model of our own runs with ``--window`` / ``--overlap`` and without motion frames (the windows have no
motion-frame form); an imported EchoMimic model with its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
import torch

from bench.harness import DEMO_PORTRAIT
from bench.speech import speech_pcm
from engine.backends import make_backend
from engine.config import ReproductionConfig
from engine.faces import prepare_portrait
from engine.media import load_image
from engine.options import GenerationOptions
from engine.pipeline import open_model
from engine.sampling.clip_denoiser import ClipConditions
from engine.sampling.samplers import sample
from engine.stream.session import Session
from engine.timebase import SAMPLE_RATE

BLOCK = SAMPLE_RATE // 10
"""Samples per pushed block (100 ms)."""


def run_stream(session: Session, pcm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, ClipConditions]:
    """Stream ``pcm`` through ``session`` in 100 ms blocks: its latents ``[1, C, F, h, w]`` and the noise and
    conditions of every frame, as its windows read them."""
    noise, conds, pieces = [], [], []

    def run(clips: list) -> None:
        for clip in clips:
            conds.append(session.conditions(clip))
            noise.append(session.noise(clip)[0])
            pieces.extend(latents for _, latents in session.step(clip))

    with torch.no_grad():
        for start in range(0, pcm.size, BLOCK):
            session.push_audio(pcm[start:start + BLOCK])
            run(session.ready_clips())
        session.end()
        run(session.ready_clips())
        pieces.extend(latents for _, latents in session.flush())
    speed = None if conds[0].speed_tokens is None else torch.cat([c.speed_tokens for c in conds], dim=1)
    cond = dataclasses.replace(conds[0], audio_tokens=torch.cat([c.audio_tokens for c in conds], dim=1),
                               speed_tokens=speed)
    return torch.cat(pieces, dim=2), torch.cat(noise, dim=2), cond


def forms(session: Session, pcm: np.ndarray, window: int, overlap: int, steps: int) -> dict[str, torch.Tensor]:
    """The four forms' clean latents ``[1, C, F, h, w]`` (module docstring)."""
    stream, noise, cond = run_stream(session, pcm)
    frames = noise.shape[2]
    denoiser = session.denoiser
    chain = [list(range(a, min(a + window, frames))) for a in range(0, max(frames - overlap, 1), window - overlap)]

    def part(a: int) -> ClipConditions:
        b = min(a + window, frames)
        return dataclasses.replace(cond, audio_tokens=cond.audio_tokens[:, a:b],
                                   speed_tokens=None if cond.speed_tokens is None else cond.speed_tokens[:, a:b])

    with torch.no_grad():
        joint = sample(lambda x, t: denoiser.windowed_output(x, t, cond, chain), denoiser.sampler, noise, steps,
                       per_frame=True)
        offline = denoiser.windowed(noise, cond, window, overlap, steps=steps)
        clips = torch.cat([denoiser(noise[:, :, a:a + window], part(a), steps=steps)
                           for a in range(0, frames, window)], dim=2)
    return dict(stream=stream, joint=joint, offline=offline, clips=clips)


def difference(ours: torch.Tensor, reference: torch.Tensor) -> str:
    """``max / mean`` of ``|ours - reference|`` over the reference's max / mean magnitude."""
    diff = (ours - reference).abs()
    return f"{float(diff.max() / reference.abs().max()):.3f} / {float(diff.mean() / reference.abs().mean()):.3f}"


def seams(session: Session, latents: torch.Tensor, window: int, overlap: int) -> str:
    """Mean frame-to-frame change of the decoded frames at clip seams / where overlaps begin / elsewhere."""
    with torch.no_grad():
        images = session.backend.vae_decode(latents[0].transpose(0, 1))
    change = (images[1:] - images[:-1]).abs().mean(dim=(1, 2, 3))
    pairs = change.shape[0]
    clip = list(range(window - 1, pairs, window))
    begins = [i for i in range(window - overlap - 1, pairs, window - overlap) if i not in clip]
    inside = [i for i in range(pairs) if i not in clip and i not in begins]
    return " / ".join(f"{float(change[i].mean()):.4f}" if i else "-" for i in (clip, begins, inside))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.windows", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an imported EchoMimic model directory, or any model")
    parser.add_argument("--window", type=int, help="window frames (default: the model's reproduce section)")
    parser.add_argument("--overlap", type=int, help="overlap frames (default: the model's reproduce section)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--seconds", type=float, default=2.0, help="of the demo speech")
    args = parser.parse_args(argv)
    model = open_model(args.model)
    rep = model.config.reproduce
    window, overlap = args.window or rep.context_frames, args.overlap or rep.context_overlap
    if not window or not 0 < overlap < window:
        print(f"error: give --window and --overlap (0 < overlap < window); {args.model} has no context windows",
              file=sys.stderr)
        return 2
    config = dataclasses.replace(model.config, motion_frames=0, reproduce=ReproductionConfig(
        system=rep.system, context_frames=window, context_overlap=overlap, noise_clamp=rep.noise_clamp))
    backend = make_backend("torch", model, "cpu", torch.float32)
    portrait = prepare_portrait(load_image(DEMO_PORTRAIT), config.resolution)
    pcm = speech_pcm(args.seconds)
    print(f"{args.model}: windows of {window} overlapping by {overlap}, {args.sampler}, {args.seconds:g} s of "
          f"speech at {config.fps:g} fps, fp32 CPU")
    print("| steps | stream - joint | clips - joint | joint - offline | stream - offline | clips - offline |")
    print("|---|---|---|---|---|---|")
    frame_changes = {}
    for steps in args.steps:
        session = Session(backend, config, portrait.image, portrait.mask,
                          GenerationOptions(steps=steps, sampler=args.sampler, motion_anchor=0.0))
        got = forms(session, pcm, window, overlap, steps)
        print(f"| {steps} | " + " | ".join(difference(got[a], got[b]) for a, b in (
            ("stream", "joint"), ("clips", "joint"), ("joint", "offline"), ("stream", "offline"),
            ("clips", "offline"))) + " |")
        frame_changes[steps] = {name: seams(session, latents, window, overlap) for name, latents in got.items()}
    print("\nframe-to-frame change of the decoded frames: at clip seams / where overlaps begin / elsewhere")
    for steps, changes in frame_changes.items():
        print(f"{steps} steps: " + "; ".join(f"{name} {value}" for name, value in changes.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
