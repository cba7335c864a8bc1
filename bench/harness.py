"""The benchmark run: every configuration of both recipes, measured in the same process, round-robin.

For each configuration (:mod:`bench.recipes`) the run builds the model (seeded random weights of the
preset: the cost of a network does not depend on its weights), warms it up with a short stream, then,
``repeats`` times and round-robin over the configurations (so that a change of load on a shared machine
hits every configuration alike):

1. a stream of speech from a paced source (real time) through the configuration: time to first frame,
   audio-to-frame latency median / p95 / max, sustained fps, real-time factor, peak memory;
2. for the engine, the same speech unpaced (all of it at once; ``offline_s`` of it): the offline
   throughput (fps). The reference cannot start before its utterance is complete, so its offline
   throughput is its compute after the paced audio ended.

The first paced stream records every network call (:class:`bench.recording.RecordingBackend`). Each
distinct call is then replayed ``repeats`` times with device synchronisation for the per-stage times
(round-robin again), and once on the meta device under PyTorch's FLOP counter for the FLOPs per frame;
FLOPs per frame over the matrix-product peak measured in this run is the configuration's physical bound
(fps).
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from bench.cli import select_device
from bench.environment import describe
from bench.flops import FlopCounter
from bench.memory import PeakMemory
from bench.recipes import (HalloRecipe, RecipeSpec, StreamResult, config_for, engine_backend, engine_options,
                           engine_specs, reference_spec, stream_engine, stream_reference)
from bench.recording import Call, RecordingBackend, count_calls
from bench.speech import speech_pcm, write_wav
from bench.timing import Figure, MatmulPeak, figure_or_none, measure_matmul_peak, time_call
from engine.backends import make_backend
from engine.config import ModelConfig, preset
from engine.faces import prepare_portrait
from engine.models.checkpoint import random_model
from engine.models.model import EmoteModel
from engine.stream.session import Session
from emote_kernels import dispatch

SCHEMA = "emote-bench/1"
DEMO_PORTRAIT = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo" / "portrait.png"
WARMUP_STEPS = 2
"""Steps of the reference's warm-up stream (every network and input shape of the real run, fewer steps)."""

STAGES = {
    "audio_tokens": "audio encoder",
    "reference": "ReferenceNet",
    "face_features": "face locator + speed",
    "speed_tokens": "face locator + speed",
    "backbone": "backbone",
    "vae_encode": "VAE encode",
    "vae_decode": "VAE decode",
}
"""Which stage of the time breakdown each network's calls belong to."""


@dataclass
class Settings:
    """What one benchmark run measures.

    Attributes:
        preset: model preset (``tiny``, ``sd15``); resolution: portrait side in pixels (None: the preset's).
        device: ``cpu`` or ``cuda``.
        stream_s: seconds of speech in the engine's paced end-to-end streams.
        offline_s: seconds of speech in the engine's unpaced streams (throughput); None: ``stream_s``.
        reference_clips: clips in the reference's end-to-end stream (the same speech, cut to whole clips).
        repeats: runs of every end-to-end stream and of every stage timing.
        steps / decoders: the engine configurations (each step count with each decoder).
        first_clip_frames: the engine's first clip (shorter: earlier first frame); None: a full clip.
        backend: the engine backend (``auto``: the fastest present).
        threads: torch intra-op threads (None: torch's default).
        block_ms: audio block size of the sources, ms.
        smoke: one short iteration (the test suite's run): nothing it measures means anything.
    """

    preset: str = "tiny"
    device: str = "cpu"
    resolution: int | None = None
    stream_s: float = 30.0
    offline_s: float | None = None
    reference_clips: int = 2
    repeats: int = 3
    steps: tuple[int, ...] = (4, 2, 1)
    decoders: tuple[str, ...] = ("kl", "tiny")
    first_clip_frames: int | None = 1
    backend: str = "auto"
    threads: int | None = None
    seed: int = 0
    block_ms: float = 20.0
    smoke: bool = False


DEVICE_DEFAULTS = {
    "cpu": dict(stream_s=1.6, reference_clips=2, repeats=3, threads=1),
    "cuda": dict(stream_s=30.0, offline_s=10.0, reference_clips=2, repeats=2),
}
"""Per device kind: the CPU run stays within minutes on two cores (a short stream, one intra-op thread per
stage thread, measured faster than two on a shared machine); the GPU run streams 30 s of speech in real
time and measures throughput over 10 s, so that it fits one 10-minute command."""

SMOKE = dict(resolution=32, stream_s=0.4, reference_clips=1, repeats=1, steps=(1,), decoders=("kl", "tiny"),
             threads=None)
"""The smoke run: 32x32 portrait, a 0.4 s stream, one repeat, the reference and two 1-step engine runs,
torch's threads left as they are (the test suite runs it inside its own process)."""


def default_settings(preset_name: str, device: str, smoke: bool = False, **overrides: object) -> Settings:
    """Settings for ``preset_name`` on ``device`` (kind defaults, then smoke, then ``overrides`` not None)."""
    values: dict = dict(preset=preset_name, device=device, smoke=smoke)
    values.update(DEVICE_DEFAULTS[torch.device(device).type])
    if smoke:
        values.update(SMOKE)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def result_stem(settings: Settings, resolution: int) -> str:
    """File name stem of a run's results: ``<preset>-<resolution>``, plus the engine subset when the run
    covers only some decoders or step counts (so split runs do not overwrite each other)."""
    stem = f"{settings.preset}-{resolution}"
    defaults = Settings()
    if settings.decoders != defaults.decoders:
        stem += "-" + "-".join(settings.decoders)
    if settings.steps != defaults.steps:
        stem += "-steps" + "-".join(str(s) for s in settings.steps)
    return stem


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def build_model(config: ModelConfig, device: torch.device, seed: int) -> EmoteModel:
    """Seeded random weights of ``config``, initialised directly on ``device``."""
    with torch.device(device):
        return random_model(config, seed=seed)


def module_mib(module: torch.nn.Module) -> float:
    """Parameter and buffer memory of ``module``, MiB."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def random_portrait(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random ``[size, size, 3]`` uint8 image and a face mask over its middle (for benchmarks whose
    weights are random too)."""
    image = (np.random.RandomState(0).rand(size, size, 3) * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4:3 * size // 4, size // 3:2 * size // 3] = 1
    return image, mask


@dataclass
class Portrait:
    """The portrait both recipes animate: uint8 ``image`` ``[S, S, 3]`` and float face ``mask`` ``[S, S]``."""

    image: np.ndarray
    mask: np.ndarray


class Runner:
    """One configuration: its model, backend (wrapped in a recorder) and everything measured on it."""

    def __init__(self, spec: RecipeSpec, settings: Settings, base: ModelConfig, portrait: Portrait,
                 device: torch.device):
        self.spec, self.settings, self.portrait, self.device = spec, settings, portrait, device
        self.config = config_for(base, spec)
        self.model = build_model(self.config, device, settings.seed)
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        if spec.recipe == "reference":
            backend, self.backend_note = make_backend("torch", self.model, str(device), self.dtype), "torch (eager)"
        else:
            backend, self.backend_note = engine_backend(settings.backend, self.model, device, self.dtype)
        self.recorder = RecordingBackend(backend)
        self.weights_mib = module_mib(self.model)
        self.paced: list[StreamResult] = []
        self.offline: list[StreamResult] = []
        self.memory: list[PeakMemory] = []
        self.calls: list[Call] = []
        self.stage_times: dict[tuple, Figure] = {}
        self.kernel_backend = "torch"

    @property
    def is_reference(self) -> bool:
        return self.spec.recipe == "reference"

    @contextlib.contextmanager
    def kernels(self) -> Iterator[None]:
        """Inside: the reference runs the PyTorch references of the fused ops (eager, as Hallo), the
        engine whatever ``EMOTE_KERNELS`` chooses (Triton on a GPU by default). Records the choice."""
        with dispatch.forced("torch" if self.is_reference else None) as backend:
            self.kernel_backend = backend
            yield

    def stream(self, wav: Path, paced: bool, steps: int | None = None) -> StreamResult:
        """One stream of ``wav`` through this configuration (a new session each time)."""
        recorder, portrait, spec = self.recorder, self.portrait, self.spec
        with self.kernels():
            recorder.phase = "session"
            if self.is_reference:
                recipe = HalloRecipe(recorder, self.config, portrait.image, portrait.mask, steps or spec.steps,
                                     spec.guidance, seed=self.settings.seed)
                recorder.phase = "stream"
                return stream_reference(recipe, wav, paced, self.settings.block_ms)
            options = engine_options(replace(spec, steps=steps or spec.steps), self.settings.first_clip_frames,
                                     self.settings.seed)
            session = Session(recorder, self.config, portrait.image, portrait.mask, options)
            recorder.phase = "stream"
            return stream_engine(session, wav, paced, self.settings.block_ms)

    def time_stages(self, warmup: bool) -> None:
        """Replay each distinct recorded call once, synchronised (after an untimed call when ``warmup``),
        adding one value to its figure in :attr:`stage_times`."""
        inner = self.recorder.inner
        with self.kernels():
            for signature, call in {c.signature: c for c in self.calls}.items():
                args, kwargs = call.inputs(self.device)
                network = getattr(inner, call.network)
                seconds = time_call(lambda: network(*args, **kwargs), self.device, int(warmup), 1)
                self.stage_times.setdefault(signature, Figure()).values.extend(seconds.values)


def _weighted(terms: list[tuple[float, Figure]], repeats: int) -> Figure:
    """``sum(weight * figure)`` value by value (all figures have ``repeats`` values)."""
    return Figure([sum(w * f.values[i] for w, f in terms) for i in range(repeats)])


def stage_figures(calls: list[Call], times: dict[tuple, Figure], frames_out: int, clips: int, media_s: float,
                  repeats: int) -> tuple[dict[str, Figure | None], dict[str, float]]:
    """Per-stage figures and the time breakdown of one configuration.

    Args:
        calls: the recorded calls of one stream (phases "session" and "stream").
        times: seconds per call of each signature, ``repeats`` values each.
        frames_out / clips / media_s: what that stream produced.

    Returns:
        ``(stages, breakdown)``: stages in seconds (per second of media, per session, per clip, per
        step per frame, per frame; None where the recipe has no such call), and the stream's seconds
        of network time per output frame by stage (:data:`STAGES`), medians. The backbone's figure
        is taken at the stream's longest clip (the steady clip size, not a shorter first or last one).
    """
    stream = [c for c in calls if c.phase == "stream"]
    session = [c for c in calls if c.phase == "session"]

    def total(selected: list[Call]) -> Figure | None:
        counts = Counter(c.signature for c in selected)
        return _weighted([(n, times[sig]) for sig, n in counts.items()], repeats) if counts else None

    def of(network: str, pool: list[Call]) -> list[Call]:
        return [c for c in pool if c.network == network]

    audio = total(of("audio_tokens", stream))
    ref_session = total(of("reference", session))
    ref_clip = total(of("reference", stream))
    encode_clip = total(of("vae_encode", stream))
    decodes = of("vae_decode", stream)
    decode = total(decodes)
    backbones = Counter(c.signature for c in of("backbone", stream))
    backbone = None
    if backbones:
        calls_by_signature = {c.signature: c for c in of("backbone", stream)}
        signature = max(backbones, key=lambda sig: (calls_by_signature[sig].frames(), backbones[sig]))
        backbone = times[signature].scaled(1 / calls_by_signature[signature].frames())
    stages = {
        "audio_encoder_s_per_media_s": audio.scaled(1 / media_s) if audio and media_s > 0 else None,
        "reference_net_per_session_s": ref_session,
        "reference_net_per_clip_s": ref_clip.scaled(1 / clips) if ref_clip and clips else None,
        "vae_encode_per_clip_s": encode_clip.scaled(1 / clips) if encode_clip and clips else None,
        "backbone_per_step_per_frame_s": backbone,
        "vae_decode_per_frame_s": decode.scaled(1 / sum(c.frames() for c in decodes)) if decode else None,
    }
    breakdown: dict[str, float] = {}
    for network, stage in STAGES.items():
        figure = total(of(network, stream))
        if figure is not None and frames_out:
            breakdown[stage] = breakdown.get(stage, 0.0) + figure.median / frames_out
    return stages, breakdown


def _json_figure(figure: Figure | None) -> dict | None:
    return figure.to_json() if figure is not None else None


def end_to_end(paced: list[StreamResult], offline: list[StreamResult]) -> dict[str, Figure | None]:
    """The end-to-end figures over the repeats (seconds, fps, ratio)."""
    def pick(key: str, sub: str | None = None) -> Figure | None:
        return figure_or_none([r.summary[key][sub] if sub else r.summary[key] for r in paced])

    return {
        "time_to_first_frame_s": pick("time_to_first_frame_s"),
        "latency_median_s": pick("latency_s", "median"),
        "latency_p95_s": pick("latency_s", "p95"),
        "latency_max_s": pick("latency_s", "max"),
        "sustained_fps": pick("sustained_fps"),
        "real_time_factor": pick("real_time_factor"),
        "offline_fps": figure_or_none([r.offline_fps if math.isfinite(r.offline_fps) else None for r in offline]),
    }


def configuration_result(runner: Runner, flops: FlopCounter, peak: MatmulPeak) -> dict:
    """Everything measured on one configuration, JSON-ready."""
    settings, spec = runner.settings, runner.spec
    first = runner.paced[0]
    frames, clips = first.frames, first.clips
    fps = runner.config.fps
    stages, breakdown = stage_figures(runner.calls, runner.stage_times, frames, clips, frames / fps,
                                      settings.repeats)
    stream_calls = [c for c in runner.calls if c.phase == "stream"]
    session_calls = [c for c in runner.calls if c.phase == "session"]
    per_frame = flops.total(stream_calls) / frames if frames else 0.0
    by_network = {k: v / frames for k, v in flops.by_network(stream_calls).items()} if frames else {}
    offline = runner.offline if not runner.is_reference else runner.paced
    e2e = end_to_end(runner.paced, offline)
    bound_fps = peak.best * 1e12 / per_frame if per_frame else None
    fractions = {}
    for key in ("offline_fps", "sustained_fps"):
        figure = e2e[key]
        fractions[key.replace("_fps", "_fraction")] = (
            _json_figure(figure.scaled(1 / bound_fps)) if figure is not None and bound_fps else None)
    device_peaks = [m.device_mib - m.device_start_mib + runner.weights_mib for m in runner.memory
                    if m.device_mib is not None]
    summary = first.summary
    return {
        "name": spec.name,
        "label": spec.label,
        "recipe": spec.recipe,
        "steps": spec.steps,
        "guidance": spec.guidance,
        "sampler": spec.sampler,
        "vae": spec.vae,
        "backend": runner.backend_note,
        "kernels": runner.kernel_backend,
        "dtype": str(runner.dtype).removeprefix("torch."),
        "clip_frames": runner.config.clip_frames,
        "first_clip_frames": None if runner.is_reference else (settings.first_clip_frames or runner.config.clip_frames),
        "motion_frames": runner.config.motion_frames,
        "stream": {"media_s": summary["media_s"], "frames": frames, "clips": clips,
                   "offline_media_s": offline[0].summary["media_s"],
                   "time_to_first_frame_floor_s": summary["time_to_first_frame_floor_s"],
                   "latency_floor_s": summary["latency_s"]["floor"]},
        "end_to_end": {k: _json_figure(v) for k, v in e2e.items()},
        "latencies_s": [r.latencies_s for r in runner.paced],
        "stages": {k: _json_figure(v) for k, v in stages.items()},
        "breakdown_s_per_frame": breakdown,
        "calls": {"session": dict(count_calls(session_calls)), "stream": dict(count_calls(stream_calls))},
        "flops": {"per_frame": per_frame, "per_session": float(flops.total(session_calls)),
                  "by_network_per_frame": by_network},
        "bound": {"fps": bound_fps, **fractions},
        "memory": {"host_peak_mib": _json_figure(figure_or_none([m.host_mib for m in runner.memory])),
                   "device_peak_mib": _json_figure(figure_or_none(device_peaks)),
                   "weights_mib": runner.weights_mib},
    }


RATIO_GROUPS = ("end_to_end", "stages")


def ratios(configurations: list[dict]) -> dict[str, dict[str, float | None]]:
    """engine / reference of every figure's median, per engine configuration."""
    reference = next((c for c in configurations if c["recipe"] == "reference"), None)
    out: dict[str, dict[str, float | None]] = {}
    if reference is None:
        return out
    for config in configurations:
        if config["recipe"] == "reference":
            continue
        row: dict[str, float | None] = {}
        for group in RATIO_GROUPS:
            for key, figure in config[group].items():
                base = reference[group].get(key)
                row[key] = (figure["median"] / base["median"]
                            if figure is not None and base is not None and base["median"] else None)
        engine_flops, reference_flops = config["flops"]["per_frame"], reference["flops"]["per_frame"]
        row["flops_per_frame"] = engine_flops / reference_flops if reference_flops else None
        out[config["name"]] = row
    return out


def _speech_files(directory: Path, settings: Settings, config: ModelConfig) -> dict[str, Path]:
    """The WAVs of the run: the engine's paced and unpaced streams, the reference's (whole clips of the
    same speech) and the warm-up streams."""
    fps, clip, lookahead = config.fps, config.clip_frames, config.audio.window
    reference_s = min(settings.stream_s, settings.reference_clips * clip / fps)
    first = settings.first_clip_frames or clip
    warm_engine_s = min(settings.stream_s, (first + clip + lookahead + 1) / fps)
    warm_reference_s = min(reference_s, clip / fps)
    lengths = {"engine": settings.stream_s, "offline": settings.offline_s or settings.stream_s,
               "reference": reference_s, "warm_engine": warm_engine_s, "warm_reference": warm_reference_s}
    return {name: write_wav(directory / f"{name}.wav", speech_pcm(seconds)) for name, seconds in lengths.items()}


def run(settings: Settings, progress: Callable[[str], None] = log) -> dict:
    """Run the benchmark; returns the results (see :func:`bench.report.validate` for the layout)."""
    started = time.perf_counter()

    def say(message: str) -> None:
        progress(f"{time.perf_counter() - started:6.1f} s  {message}")

    device = select_device(settings.device, settings.threads)
    base = preset(settings.preset)
    size = settings.resolution or base.resolution
    prepared = prepare_portrait(DEMO_PORTRAIT, size)
    portrait = Portrait(prepared.image, prepared.mask)
    specs = [reference_spec()] + engine_specs(settings.steps, settings.decoders)
    notes = []
    if settings.stream_s < 30:
        notes.append(f"end-to-end streams of {settings.stream_s:g} s of speech (not >= 30 s: that is the GPU run, "
                     "`make bench-gpu`)")
    if settings.smoke:
        notes.append("smoke run: one short iteration to keep the harness working; its figures mean nothing")
    say(f"matrix-product peak on {device.type}")
    peak = measure_matmul_peak(device, repeats=2 if settings.smoke else 10)
    with tempfile.TemporaryDirectory(prefix="emote-bench-") as tmp:
        wavs = _speech_files(Path(tmp), settings, base)
        runners = []
        for spec in specs:
            say(f"building {spec.name}")
            runners.append(Runner(spec, settings, base, portrait, device))
        for runner in runners:
            say(f"warm-up {runner.spec.name}")
            if runner.is_reference:
                runner.stream(wavs["warm_reference"], paced=False, steps=min(WARMUP_STEPS, runner.spec.steps))
            else:
                runner.stream(wavs["warm_engine"], paced=False)
            runner.recorder.take_calls()
        for repeat in range(settings.repeats):
            for runner in runners:
                wav = wavs["reference" if runner.is_reference else "engine"]
                say(f"repeat {repeat + 1}/{settings.repeats}: {runner.spec.name}, paced stream")
                with PeakMemory(device) as memory:
                    runner.paced.append(runner.stream(wav, paced=True))
                runner.memory.append(memory)
                calls = runner.recorder.take_calls()
                if repeat == 0:
                    runner.calls = calls
                if not runner.is_reference:
                    say(f"repeat {repeat + 1}/{settings.repeats}: {runner.spec.name}, unpaced stream")
                    runner.offline.append(runner.stream(wavs["offline"], paced=False))
                    runner.recorder.take_calls()
    for repeat in range(settings.repeats):
        say(f"repeat {repeat + 1}/{settings.repeats}: stage times of every configuration")
        for runner in runners:
            runner.time_stages(warmup=repeat == 0)
    configurations = []
    memo: dict[tuple, int] = {}
    for runner in runners:
        say(f"FLOPs of {runner.spec.name}")
        counter = FlopCounter(runner.config, runner.model.audio_encoder, memo)
        configurations.append(configuration_result(runner, counter, peak))
    return {
        "schema": SCHEMA,
        "smoke": settings.smoke,
        "environment": describe(device),
        "settings": {**asdict(settings), "resolution": size, "fps": base.fps, "clip_frames": base.clip_frames,
                     "motion_frames": base.motion_frames, "lookahead_frames": base.audio.window},
        "notes": notes,
        "peak": peak.to_json(),
        "configurations": configurations,
        "ratios": ratios(configurations),
        "wall_s": time.perf_counter() - started,
    }
