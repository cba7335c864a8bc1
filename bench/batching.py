"""Session batching throughput: N sessions one after another on the plain backend against the same N at once
on a :class:`~engine.stream.batching.BatchScheduler` (shared backbone calls), round-robin in one run.

Each session has its own speech (the demo utterance from its own offset) and seed; all audio is pushed at
once (unpaced), so the figure is compute throughput: frames of all sessions per second of wall time, the
sessions' construction (reference bank) excluded.
Results: ``bench/results/<device>/batching-<preset>-<size>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bench.cli import add_common_flags, cuda_missing, results_dir
from bench.environment import describe
from bench.harness import build_model, log, random_portrait
from bench.speech import session_speech
from engine.backends import make_backend
from engine.backends.base import Backend
from engine.config import ModelConfig, preset
from engine.models.backbone_inputs import BackboneInputs
from engine.options import GenerationOptions
from engine.stream.batching import BatchScheduler
from engine.stream.session import Session

SCHEMA = "bench.batching/1"


@dataclass(frozen=True)
class BatchingSettings:
    """One run's settings: ``stream_s`` seconds of speech per session, ``gather_ms`` the scheduler's window."""

    preset: str = "tiny"
    device: str = "cpu"
    backend: str = "torch"
    sessions: int = 4
    stream_s: float = 1.6
    steps: int = 2
    repeats: int = 3
    gather_ms: float = 5.0
    threads: int = 1
    seed: int = 0
    smoke: bool = False


class _CountingBackend:
    """Counts the backbone calls of ``inner`` (every other attribute passes through)."""

    def __init__(self, inner: Backend):
        self.inner, self.backbone_calls = inner, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        self.backbone_calls += 1
        return self.inner.backbone(inputs)


def _sessions(backends: list[Backend | _CountingBackend], config: ModelConfig,
              settings: BatchingSettings) -> list[Session]:
    portrait = random_portrait(config.resolution)
    return [Session(b, config, *portrait, GenerationOptions(steps=settings.steps, first_clip_frames=4, seed=i))
            for i, b in enumerate(backends)]


def _generate(session: Session, pcm: np.ndarray) -> int:
    """All of ``pcm`` through ``session``; the number of frames."""
    session.push_audio(pcm)
    session.end()
    return sum(1 for _ in session.frames())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sequential(backend: Backend, config: ModelConfig, settings: BatchingSettings) -> dict:
    """The sessions one after another on the plain backend: frames, seconds, backbone calls."""
    counting = _CountingBackend(backend)
    sessions = _sessions([counting] * settings.sessions, config, settings)
    counting.backbone_calls = 0
    device = torch.device(settings.device)
    _synchronize(device)
    started = time.perf_counter()
    frames = sum(_generate(s, session_speech(i, settings.stream_s)) for i, s in enumerate(sessions))
    _synchronize(device)
    return {"frames": frames, "seconds": time.perf_counter() - started, "backbone_calls": counting.backbone_calls}


def run_batched(backend: Backend, config: ModelConfig, settings: BatchingSettings) -> dict:
    """The sessions at once, one thread each, on a scheduler over the backend: frames, seconds, calls, occupancy."""
    counting = _CountingBackend(backend)
    scheduler = BatchScheduler(counting, slots=settings.sessions, gather_s=settings.gather_ms / 1000)
    try:
        slots = [scheduler.attach() for _ in range(settings.sessions)]
        sessions = _sessions(slots, config, settings)
        counting.backbone_calls = 0
        frames = [0] * settings.sessions

        def work(i: int) -> None:
            frames[i] = _generate(sessions[i], session_speech(i, settings.stream_s))
            slots[i].detach()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(settings.sessions)]
        device = torch.device(settings.device)
        _synchronize(device)
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _synchronize(device)
        seconds = time.perf_counter() - started
    finally:
        scheduler.close()
    if 0 in frames:
        raise RuntimeError("a batched session produced no frames (its thread failed)")
    return {"frames": sum(frames), "seconds": seconds, "backbone_calls": counting.backbone_calls,
            "occupancy": {str(k): v for k, v in sorted(scheduler.occupancy.items())}}


def run(settings: BatchingSettings) -> dict:
    """Warm-up, then ``repeats`` rounds of (sequential, batched); the results dictionary."""
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    config = preset(settings.preset)
    model = build_model(config, device, settings.seed)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    backend = make_backend(settings.backend, model, settings.device, dtype)
    log(f"batching: {settings.sessions} sessions x {settings.stream_s} s, {settings.steps} steps, warm-up")
    warm_up = BatchingSettings(**{**asdict(settings), "stream_s": 0.4})
    run_sequential(backend, config, warm_up)
    run_batched(backend, config, warm_up)
    rounds = {"sequential": [], "batched": []}
    for repeat in range(settings.repeats):
        rounds["sequential"].append(run_sequential(backend, config, settings))
        rounds["batched"].append(run_batched(backend, config, settings))
        log(f"round {repeat + 1}/{settings.repeats}: " + ", ".join(
            f"{mode} {r[-1]['frames'] / r[-1]['seconds']:.2f} fps" for mode, r in rounds.items()))
    fps = {mode: statistics.median(r["frames"] / r["seconds"] for r in runs) for mode, runs in rounds.items()}
    return {"schema": SCHEMA, "smoke": settings.smoke,
            "settings": {**asdict(settings), "resolution": config.resolution},
            "environment": describe(device), "rounds": rounds, "fps": fps, "ratio": fps["batched"] / fps["sequential"],
            "wall_s": time.perf_counter() - started}


def markdown(results: dict) -> str:
    """The results as a Markdown page."""
    s, env = results["settings"], results["environment"]
    seq, bat = results["rounds"]["sequential"][-1], results["rounds"]["batched"][-1]
    lines = [
        f"# Session batching: {s['sessions']} sessions, {s['preset']} {s['resolution']}x{s['resolution']}"
        + (" (smoke run, not a measurement)" if results["smoke"] else ""),
        "",
        f"{env['device']}, torch {env['torch']}, {s['threads']} intra-op thread(s), {env['date']}. Each session: "
        f"{s['stream_s']} s of its own speech pushed at once, {s['steps']} sampler steps, first clip 4 frames; "
        f"median of {s['repeats']} rounds; scheduler gather window {s['gather_ms']} ms.",
        "",
        "| mode | frames/s | frames | backbone calls (last round) |",
        "|---|---|---|---|",
        f"| sequential (plain backend, one session after another) | {results['fps']['sequential']:.2f} | "
        f"{seq['frames']} | {seq['backbone_calls']} |",
        f"| batched (BatchScheduler, {s['sessions']} slots) | {results['fps']['batched']:.2f} | {bat['frames']} | "
        f"{bat['backbone_calls']} |",
        "",
        f"batched / sequential: **{results['ratio']:.2f}x**. Batched calls by sessions in them (last round): "
        + ", ".join(f"{n}: {c}" for n, c in bat["occupancy"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4, help="sessions (= scheduler slots), default 4")
    parser.add_argument("--gather-ms", type=float, help="the scheduler's gather window (default 5 ms)")
    add_common_flags(parser, "preset", "device", "out_dir", backend="engine backend (default torch)",
                     stream_s="speech per session (default 1.6 s)", steps="sampler steps (default 2)",
                     repeats="rounds of both modes (default 3)", threads="torch intra-op threads (default 1)",
                     smoke="2 sessions, 0.3 s, 1 step, 1 round: checks the benchmark")
    parser.set_defaults(backend="torch")
    args = parser.parse_args(argv)
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smoke = dict(sessions=min(args.sessions, 2), stream_s=0.3, steps=1, repeats=1) if args.smoke else {}
    given = {k: v for k, v in dict(stream_s=args.stream_s, steps=args.steps, repeats=args.repeats,
                                   gather_ms=args.gather_ms, threads=args.threads).items() if v is not None}
    settings = BatchingSettings(**{**dict(preset=args.preset, device=args.device, backend=args.backend,
                                          sessions=args.sessions, smoke=args.smoke), **smoke, **given})
    device = torch.device(settings.device)
    if cuda_missing(device, "bench.batching"):
        return 2
    results = run(settings)
    out_dir = results_dir(args.out_dir, settings.smoke, device)
    stem = out_dir / f"batching-{settings.preset}-{results['settings']['resolution']}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path.write_text(markdown(results))
    print(f"sequential {results['fps']['sequential']:.2f} fps, batched {results['fps']['batched']:.2f} fps, "
          f"ratio {results['ratio']:.2f}x")
    print(f"results: {json_path}\n         {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
