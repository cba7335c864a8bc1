"""``python -m bench.schedules``: clip-wise against rolling (diagonal) denoising, end to end, in one run.

    python -m bench.schedules                                 # tiny preset, 128x128, CPU
    python -m bench.schedules --preset sd15 --device cuda     # sd15 at 512x512 on a GPU
    python -m bench.schedules --smoke --out-dir /tmp/s        # one short iteration (the test suite's)
    python -m bench.schedules --render bench/results/<device>/schedules-tiny-128.json   # redraw .md and .png

Every configuration (:mod:`bench.schedule_specs`: clip 12, 4, 2 and rolling k = 1, 2, 4 by default) runs
on one model and backend (seeded random weights of the preset: a network's cost does not depend on its
weights), the same sampler steps, seed and speech. Each is warmed up with a short unpaced stream (every
input shape of the real run), then, ``repeats`` times and round-robin (so that a change of load on a
shared machine hits every configuration alike), the speech is streamed in real time in 20 ms blocks
through the streaming runtime (lag policy "grow": no frame skipped): time to first frame, audio-to-frame
latency median / p95 / max, sustained fps and real-time factor (:class:`engine.stream.stats.StreamStats`),
each frame's floor from the audio alone, and the network calls. A frame leaves after its pixels were
copied to the host, which waits for the device's work (the device is synchronised before each stream).

Writes ``schedules-<preset>-<resolution>.json``, ``.md`` and ``.png`` under ``bench/results/<device>/``
(or ``--out-dir``) and prints the Markdown report; without matplotlib the PNG is left out and
``--render`` draws it later from the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.cli import add_common_flags, cuda_missing, int_tuple, results_dir, select_device, write_atomic
from bench.environment import describe
from bench.harness import DEMO_PORTRAIT, build_model, log
from bench.recipes import engine_backend
from bench.recording import Call, RecordingBackend, count_calls
from bench.schedule_report import SCHEMA, markdown, plot, validate
from bench.schedule_specs import ScheduleSpec, frame_floors_s, schedule_specs
from bench.speech import SAMPLE_RATE, speech_pcm, write_wav
from bench.timing import Figure, figure_or_none, synchronize
from engine.config import ModelConfig, preset
from engine.faces import prepare_portrait
from engine.stream.runner import LagPolicy, LiveSession, run_stream
from engine.stream.session import Session
from engine.stream.sources import FileSource
from engine.stream.stats import StreamStats
from emote_kernels import dispatch



@dataclass
class ScheduleSettings:
    """What one schedule benchmark measures.

    Attributes:
        preset: model preset (``tiny``, ``sd15``); resolution: portrait side in pixels (None: the preset's).
        device: ``cpu`` or ``cuda``.
        stream_s: seconds of speech in every paced stream.
        repeats: paced streams of every configuration (round-robin).
        steps / sampler: the sampler's steps and name, the same for every configuration.
        clips / groups: clip lengths of the clip-wise configurations, group sizes of the rolling ones
            (frames); the first configuration is the baseline of the ratios.
        backend: the engine backend (``auto``: the fastest present).
        threads: torch intra-op threads (None: torch's default).
        seed: weights and noise seed. block_ms: audio block size of the paced source, ms.
        goal_p95_s / goal_fps: the per-session goal (latency p95 at most, sustained fps at least).
        smoke: one short iteration (the test suite's run): nothing it measures means anything.
    """

    preset: str = "tiny"
    device: str = "cpu"
    resolution: int | None = None
    stream_s: float = 8.0
    repeats: int = 3
    steps: int = 4
    sampler: str = "ddim"
    clips: tuple[int, ...] = (12, 4, 2)
    groups: tuple[int, ...] = (1, 2, 4)
    backend: str = "auto"
    threads: int | None = None
    seed: int = 0
    block_ms: float = 20.0
    goal_p95_s: float = 0.2
    goal_fps: float = 25.0
    smoke: bool = False


DEVICE_DEFAULTS = {
    "cpu": dict(stream_s=8.0, repeats=3, threads=1),
    "cuda": dict(stream_s=15.0, repeats=3),
}
"""Per device kind: 6 configurations x 3 repeats x the stream, plus warm-up, fits one 10-minute command
on a GPU (15 s streams) and about a quarter of an hour on two shared CPU cores (8 s streams, one
intra-op thread per stage thread)."""

SMOKE = dict(resolution=32, stream_s=0.64, repeats=1, threads=None)
"""The smoke run: 32x32 portrait, 16 frames of speech, one repeat, torch's threads left as they are."""


def default_settings(preset_name: str, device: str, smoke: bool = False, **overrides: object) -> ScheduleSettings:
    """Settings for ``preset_name`` on ``device`` (kind defaults, then smoke, then ``overrides`` not None)."""
    values: dict = dict(preset=preset_name, device=device, smoke=smoke)
    values.update(DEVICE_DEFAULTS[torch.device(device).type])
    if smoke:
        values.update(SMOKE)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ScheduleSettings(**values)


@dataclass
class Measured:
    """One paced stream of one configuration.

    Attributes:
        summary: :meth:`StreamStats.summary` of the stream.
        latencies_s: audio-to-frame latency of every frame, seconds, in frame order.
        floors_s: every frame's floor as the stream met it (its release audio's arrival - its own audio's
            arrival, :func:`bench.schedule_specs.frame_floors_s`), seconds, in frame order.
        calls: the network calls of the stream (phase "session": set-up; "stream": per clip).
    """

    summary: dict
    latencies_s: list[float]
    floors_s: list[float]
    calls: list[Call]


class ScheduleRunner:
    """Runs streams of any configuration on one model, backend and portrait."""

    def __init__(self, settings: ScheduleSettings, config: ModelConfig, device: torch.device):
        self.settings, self.config, self.device = settings, config, device
        size = settings.resolution or config.resolution
        self.portrait = prepare_portrait(DEMO_PORTRAIT, size)
        self.model = build_model(config, device, settings.seed)
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        backend, self.backend_note = engine_backend(settings.backend, self.model, device, self.dtype)
        self.recorder = RecordingBackend(backend)

    def stream(self, spec: ScheduleSpec, wav: Path, paced: bool) -> Measured:
        """One stream of ``wav`` through ``spec`` (a new session: the reference bank is part of it)."""
        settings, config, recorder = self.settings, self.config, self.recorder
        fps, lookahead = config.fps, config.audio.window
        synchronize(self.device)
        recorder.take_calls()
        recorder.phase = "session"
        session = Session(recorder, config, self.portrait.image, self.portrait.mask,
                          spec.options(settings.steps, settings.sampler, settings.seed))
        recorder.phase = "stream"
        stats = StreamStats(fps, latency_floor_s=spec.latency_floor_s(settings.steps, lookahead, fps),
                            ttff_floor_s=spec.ttff_floor_s(settings.steps, lookahead, fps))
        live = LiveSession(session, LagPolicy("grow"), stats)
        run_stream(FileSource(wav, block_ms=settings.block_ms, realtime=paced), live, [])
        latencies = stats.latencies()
        release = spec.release_frames(settings.steps, lookahead, session.audio.total_frames)
        floors = frame_floors_s(release, stats.audio_arrival, stats.samples_in, fps, SAMPLE_RATE)
        return Measured(stats.summary(), [latencies[i] for i in sorted(latencies)], floors, recorder.take_calls())


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def end_to_end(measured: list[Measured]) -> dict[str, Figure | None]:
    """The end-to-end figures over the repeats: seconds, fps, ratio."""
    def pick(key: str, sub: str | None = None) -> Figure | None:
        return figure_or_none([m.summary[key][sub] if sub else m.summary[key] for m in measured])

    def above(q: float) -> Figure | None:
        return figure_or_none([_percentile([lat - floor for lat, floor in zip(m.latencies_s, m.floors_s)], q)
                               for m in measured])

    return {
        "time_to_first_frame_s": pick("time_to_first_frame_s"),
        "latency_median_s": pick("latency_s", "median"),
        "latency_p95_s": pick("latency_s", "p95"),
        "latency_max_s": pick("latency_s", "max"),
        "above_floor_median_s": above(50),
        "above_floor_p95_s": above(95),
        "sustained_fps": pick("sustained_fps"),
        "real_time_factor": pick("real_time_factor"),
    }


def configuration_result(spec: ScheduleSpec, measured: list[Measured], settings: ScheduleSettings,
                         config: ModelConfig) -> dict:
    """Everything measured on one configuration, JSON-ready."""
    fps, lookahead, steps = config.fps, config.audio.window, settings.steps
    first = measured[0]
    frames = len(first.latencies_s)
    samples = round(first.summary["audio_in_s"] * SAMPLE_RATE)
    release = spec.release_frames(steps, lookahead, frames)
    nominal = frame_floors_s(release, lambda n: n / SAMPLE_RATE, samples, fps, SAMPLE_RATE)
    stream_calls = [c for c in first.calls if c.phase == "stream"]
    backbones = [c for c in stream_calls if c.network == "backbone"]
    e2e = end_to_end(measured)
    p95, sustained = e2e["latency_p95_s"], e2e["sustained_fps"]
    return {
        "name": spec.name,
        "label": spec.label,
        "schedule": spec.schedule,
        "frames": spec.frames,
        "steps": steps,
        "floors": {"time_to_first_frame_s": spec.ttff_floor_s(steps, lookahead, fps),
                   "latency_s": spec.latency_floor_s(steps, lookahead, fps),
                   "per_frame_median_s": _percentile(nominal, 50),
                   "per_frame_p95_s": _percentile(nominal, 95)},
        "stream": {"media_s": first.summary["media_s"], "frames": frames, "clips": len(spec.clips(frames)),
                   "backbone_calls": len(backbones),
                   "backbone_frame_steps": sum(c.frames() for c in backbones),
                   "calls": {"session": dict(count_calls(first.calls, "session")),
                             "stream": dict(count_calls(stream_calls))}},
        "end_to_end": {k: v.to_json() if v is not None else None for k, v in e2e.items()},
        "latencies_s": [m.latencies_s for m in measured],
        "floors_s": [m.floors_s for m in measured],
        "goal_met": bool(p95 is not None and sustained is not None
                         and p95.median <= settings.goal_p95_s and sustained.median >= settings.goal_fps),
    }


def ratios(configurations: list[dict]) -> dict[str, dict[str, float | None]]:
    """Each configuration's end-to-end medians over the baseline's (the first configuration)."""
    baseline = configurations[0]["end_to_end"]
    out = {}
    for config in configurations:
        out[config["name"]] = {
            key: figure["median"] / baseline[key]["median"]
            if figure is not None and baseline.get(key) is not None and baseline[key]["median"] else None
            for key, figure in config["end_to_end"].items()}
    return out


def _notes(settings: ScheduleSettings, configurations: list[dict], fps: float) -> list[str]:
    """What a reader must know to read the figures: which configurations fell behind real time."""
    notes = []
    behind = [c["label"] for c in configurations if c["end_to_end"]["sustained_fps"]["median"] < fps]
    if behind:
        notes.append(f"sustained fps below the video's {fps:g}: {', '.join(behind)}; their latency grows through "
                     f"the stream, so their percentiles depend on its length ({settings.stream_s:g} s)")
    if settings.smoke:
        notes.append("smoke run: one short iteration to keep the benchmark working; its figures mean nothing")
    return notes


def _speech_files(directory: Path, settings: ScheduleSettings, config: ModelConfig,
                  specs: list[ScheduleSpec]) -> dict[str, Path]:
    """The WAVs of the run: the paced stream, and a warm-up long enough for every configuration to run
    its first, steady and last clip shapes (rolling: fill the window, run full, and empty it)."""
    lookahead, fps = config.audio.window, config.fps
    warm_frames = max(spec.span(settings.steps) + spec.frames + lookahead + 1 for spec in specs)
    lengths = {"stream": settings.stream_s, "warm": min(settings.stream_s, warm_frames / fps)}
    return {name: write_wav(directory / f"{name}.wav", speech_pcm(seconds)) for name, seconds in lengths.items()}


def run(settings: ScheduleSettings, progress: Callable[[str], None] = log) -> dict:
    """Run the schedule benchmark; returns the results (layout: :func:`bench.schedule_report.validate`)."""
    started = time.perf_counter()

    def say(message: str) -> None:
        progress(f"{time.perf_counter() - started:6.1f} s  {message}")

    device = select_device(settings.device, settings.threads)
    config = preset(settings.preset)
    specs = schedule_specs(settings.clips, settings.groups)
    say(f"building {settings.preset} on {device}")
    runner = ScheduleRunner(settings, config, device)
    measured: dict[str, list[Measured]] = {spec.name: [] for spec in specs}
    with tempfile.TemporaryDirectory(prefix="emote-bench-schedules-") as tmp:
        wavs = _speech_files(Path(tmp), settings, config, specs)
        for spec in specs:
            say(f"warm-up {spec.name}")
            runner.stream(spec, wavs["warm"], paced=False)
        for repeat in range(settings.repeats):
            for spec in specs:
                say(f"repeat {repeat + 1}/{settings.repeats}: {spec.name}, paced stream")
                measured[spec.name].append(runner.stream(spec, wavs["stream"], paced=True))
    configurations = [configuration_result(spec, measured[spec.name], settings, config) for spec in specs]
    return {
        "schema": SCHEMA,
        "smoke": settings.smoke,
        "environment": describe(device),
        "settings": {**asdict(settings), "resolution": runner.portrait.image.shape[0], "fps": config.fps,
                     "lookahead_frames": config.audio.window, "motion_frames": config.motion_frames,
                     "backend": runner.backend_note, "kernels": dispatch.active_backend(),
                     "dtype": str(runner.dtype).removeprefix("torch.")},
        "notes": _notes(settings, configurations, config.fps),
        "baseline": configurations[0]["name"],
        "configurations": configurations,
        "ratios": ratios(configurations),
        "wall_s": time.perf_counter() - started,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.schedules", description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, help="portrait side in pixels (default: the preset's)")
    parser.add_argument("--clips", type=int_tuple, help="clip-wise clip lengths, comma-separated (default 12,4,2)")
    parser.add_argument("--groups", type=int_tuple, help="rolling group sizes, comma-separated (default 1,2,4)")
    add_common_flags(parser, "preset", "device", "backend", "threads", "seed", "out_dir", "render",
                     stream_s="speech in every paced stream (default: 8 on CPU, 15 on GPU)",
                     repeats="paced streams of every configuration (default 3)",
                     steps="sampler steps of every configuration (default 4)",
                     smoke="one short iteration; checks the benchmark, not speed")
    return parser.parse_args(argv)


def write_reports(results: dict, json_path: Path) -> list[Path]:
    """The Markdown report (and the PNG, where matplotlib is installed) beside ``json_path``; prints the
    report; returns the paths written."""
    written, png_name = [], None
    if importlib.util.find_spec("matplotlib") is not None:
        written.append(plot(results, json_path.with_suffix(".png")))
        png_name = written[-1].name
    else:
        print(f"note: matplotlib is not installed: no plot; draw it elsewhere with "
              f"`python -m bench.schedules --render {json_path}`")
    report = markdown(results, png_name)
    write_atomic(json_path.with_suffix(".md"), report)
    print(report)
    return [json_path.with_suffix(".md")] + written


def _check(results: dict, where: str) -> bool:
    problems = validate(results)
    if problems:
        print(f"bench.schedules: {where} does not follow the results layout:\n  " + "\n  ".join(problems),
              file=sys.stderr)
    return not problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        results = json.loads(args.render.read_text())
        if not _check(results, str(args.render)):
            return 1
        for written in write_reports(results, args.render):
            print(f"wrote {written}")
        return 0
    settings = default_settings(args.preset, args.device, args.smoke, resolution=args.resolution,
                                stream_s=args.stream_s, repeats=args.repeats, steps=args.steps, clips=args.clips,
                                groups=args.groups, backend=args.backend, threads=args.threads, seed=args.seed)
    device = torch.device(settings.device)
    if cuda_missing(device, "bench.schedules"):
        return 2
    results = run(settings)
    if not _check(results, "this run"):
        return 1
    out_dir = results_dir(args.out_dir, settings.smoke, device)
    json_path = out_dir / f"schedules-{settings.preset}-{results['settings']['resolution']}.json"
    write_atomic(json_path, json.dumps(results, indent=1) + "\n")
    written = [json_path] + write_reports(results, json_path)
    for note in results["notes"]:
        print(f"note: {note}")
    print("results: " + "\n         ".join(str(p) for p in written))
    print(f"benchmark wall time: {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
