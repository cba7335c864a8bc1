"""Per-network times of every backend on the calls of one real session, in one run.

One session of the model streams ``stream_s`` seconds of speech (all of it at once) through eager PyTorch
while :class:`bench.recording.RecordingBackend` records every network call. Each distinct call is then
replayed on every variant asked for, on the same inputs (materialised once, seeded), with device
synchronisation: ``warmup`` untimed calls, then ``repeats`` timed ones, round-robin over the variants so
that a change of load hits them alike. Per call: seconds (median and spread), how often the session made
it, and the largest difference of its outputs from the first variant's, the baseline (relative to
each output's largest magnitude: a fast but wrong backend shows here). Per network: seconds per second of
video (calls x time over the session's frames), and the ratio of the baseline to each variant.

Variants (``--variants``): ``torch`` (eager PyTorch with the fused ops' PyTorch references),
``torch+triton`` (the same with the Triton kernels), ``torch-cuda-graphs`` (Triton kernels, one CUDA
graph per input shape), ``onnxruntime`` and ``tensorrt`` (their graphs and plans, built on first use:
the build time is reported apart), ``torchscript`` (CPU: traced, frozen graphs per steady-state shape, the
tracing in the first call's time). A variant that cannot run here (no CUDA, package or plan) is listed
with its reason and skipped. Defaults: ``torch,onnxruntime,torchscript`` on the CPU, all but ``torchscript``
on CUDA.
Results: ``bench/results/<device>/backends-<model>-<size>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.cli import add_common_flags, cuda_missing, results_dir, select_device, write_atomic
from bench.environment import describe
from bench.harness import STAGES, build_model, log, random_portrait
from bench.recording import Call, RecordingBackend
from bench.report import commit_text, format_figure, format_ms, format_number, format_ratio, markdown_table, pyplot
from bench.speech import speech_pcm
from bench.timing import Figure, time_call
from engine.backends import make_backend
from engine.backends.base import Backend
from engine.config import PRESETS, preset
from engine.models.checkpoint import load_model, model_directory
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank
from engine.options import GenerationOptions
from engine.stream.session import Session
from emote_kernels import dispatch

SCHEMA = "bench.backends/1"
VARIANTS = {
    "torch": ("torch", "torch"),
    "torch+triton": ("torch", "triton"),
    "torch-cuda-graphs": ("torch-cuda-graphs", "triton"),
    "onnxruntime": ("onnxruntime", "torch"),
    "torchscript": ("torchscript", "torch"),
    "tensorrt": ("tensorrt", "torch"),
}
"""Variant name -> (backend, kernels) with kernels the ``EMOTE_KERNELS`` mode its eager parts run with."""
DEFAULT_VARIANTS = {"cpu": ("torch", "onnxruntime", "torchscript"),
                    "cuda": tuple(v for v in VARIANTS if v != "torchscript")}
NETWORK_ORDER = ("audio_tokens", "reference", "face_features", "speed_tokens", "image_tokens", "backbone",
                 "vae_encode", "vae_decode")


@dataclass(frozen=True)
class BackendSettings:
    """One run: the model (a preset with seeded random weights, or a model directory), its portrait side
    ``size`` (None: the model's), ``stream_s`` seconds of speech, sampler ``steps``, the ``variants``
    (the first is the baseline of the ratios), ``warmup`` untimed and ``repeats`` timed calls."""

    model: str = "talking64"
    device: str = "cpu"
    size: int | None = None
    stream_s: float = 2.0
    steps: int = 4
    variants: tuple[str, ...] = DEFAULT_VARIANTS["cpu"]
    warmup: int = 2
    repeats: int = 5
    threads: int | None = 1
    seed: int = 0
    smoke: bool = False


def open_benchmark_model(source: str, device: torch.device, seed: int) -> EmoteModel:
    """A model directory's weights, or a preset's seeded random weights built directly on ``device``."""
    directory = model_directory(source)
    if directory is not None:
        return load_model(directory, device)
    if source not in PRESETS:
        raise ValueError(f"--model {source!r} is neither a preset ({', '.join(PRESETS)}) nor a model directory")
    return build_model(preset(source), device, seed)


def record_session(backend: Backend, model: EmoteModel, size: int, settings: BackendSettings) -> tuple[list[Call], int]:
    """The network calls of one session over ``stream_s`` seconds of speech, and its frame count."""
    recorder = RecordingBackend(backend)
    options = GenerationOptions(steps=settings.steps, seed=settings.seed)
    session = Session(recorder, model.config, *random_portrait(size), options)
    session.push_audio(speech_pcm(settings.stream_s))
    session.end()
    frames = sum(1 for _ in session.frames())
    return recorder.take_calls(), frames


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a network's output, flattened (a ReferenceBank's tokens then features)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, ReferenceBank):
        return list(value.tokens) + list(value.features)
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in output_tensors(v)]
    return []


def max_difference(outputs: list[torch.Tensor], baseline: list[torch.Tensor]) -> float | None:
    """Largest difference between two flattened outputs, each tensor's relative to its baseline's largest
    magnitude (``max |a - b| / max |b|``, float32; the ReferenceNet's features reach 1e4 while its tokens
    stay near 1); None if their layouts differ."""
    if len(outputs) != len(baseline) or any(a.shape != b.shape for a, b in zip(outputs, baseline)):
        return None
    return max((float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
                for a, b in zip(outputs, baseline) if a.numel()), default=0.0)


class Variant:
    """One way of running the networks: its backend (built now, timed) and the kernel mode its calls must
    run under (``dispatch.forced(variant.kernel_mode)``, entered once around a block of calls)."""

    def __init__(self, name: str, model: EmoteModel, device: torch.device, dtype: torch.dtype):
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        self.name = name
        backend_name, self.kernel_mode = VARIANTS[name]
        # ONNX Runtime gets torch's intra-op threads (the backend's default, named here so that the
        # results record it), so that the variants compete on equal terms.
        self.options = {"threads": torch.get_num_threads()} if backend_name == "onnxruntime" else {}
        started = time.perf_counter()
        with dispatch.forced(self.kernel_mode):
            self.backend = make_backend(backend_name, model, str(device), dtype, **self.options)
        self.construct_s = time.perf_counter() - started
        self.first_call_s: dict[str, float] = {}

    def call(self, call: Call, args: list, kwargs: dict) -> Any:
        return getattr(self.backend, call.network)(*args, **kwargs)


def _label(call: Call) -> str:
    """What distinguishes a call of its network: the shape of its first tensor argument."""
    first = call.args[0] if call.args else None
    shape = getattr(first, "shape", None)
    return "x".join(str(d) for d in shape) if shape else "-"


def run(settings: BackendSettings) -> dict:
    """Record one session, replay its calls on every variant; the results dictionary."""
    started = time.perf_counter()
    device = select_device(settings.device, settings.threads)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = open_benchmark_model(settings.model, device, settings.seed)
    size = settings.size or model.config.resolution
    log(f"backends: recording one session of {settings.model} at {size}x{size}, {settings.stream_s:g} s of speech")
    with dispatch.forced("torch"):
        calls, frames = record_session(make_backend("torch", model, str(device), dtype), model, size, settings)
    counts = Counter(c.signature for c in calls)
    distinct = {c.signature: c for c in calls}
    torch.manual_seed(settings.seed)
    inputs = {sig: call.inputs(device) for sig, call in distinct.items()}

    variants, skipped = [], {}
    for name in settings.variants:
        log(f"building {name}")
        try:
            variants.append(Variant(name, model, device, dtype))
        except Exception as exc:  # a variant that cannot run here: its reason is the result
            skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log(f"skipped {name}: {skipped[name]}")
    if not variants:
        raise RuntimeError("no variant could be built: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))

    baseline_out: dict[tuple, list[torch.Tensor]] = {}
    differences: dict[str, dict[tuple, float | None]] = {v.name: {} for v in variants}
    for variant in variants:
        log(f"first calls of {variant.name} (builds graphs, plans or CUDA graphs)")
        for sig, call in distinct.items():
            first = time.perf_counter()
            with dispatch.forced(variant.kernel_mode):
                out = output_tensors(variant.call(call, *inputs[sig]))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - first
            variant.first_call_s[call.network] = variant.first_call_s.get(call.network, 0.0) + elapsed
            if variant is variants[0]:
                baseline_out[sig] = [t.detach().clone() for t in out]
            differences[variant.name][sig] = max_difference(out, baseline_out[sig])

    times: dict[str, dict[tuple, Figure]] = {v.name: {sig: Figure() for sig in distinct} for v in variants}
    for repeat in range(settings.repeats):
        log(f"repeat {repeat + 1}/{settings.repeats}")
        for variant in variants:
            with dispatch.forced(variant.kernel_mode):
                for sig, call in distinct.items():
                    args, kwargs = inputs[sig]
                    figure = time_call(lambda: variant.call(call, args, kwargs), device,
                                       settings.warmup if repeat == 0 else 0, 1)
                    times[variant.name][sig].values.extend(figure.values)

    video_s = frames / model.config.fps
    results_calls = []
    for sig, call in distinct.items():
        results_calls.append({
            "network": call.network, "stage": STAGES.get(call.network, call.network), "input": _label(call),
            "phase": call.phase, "count": counts[sig],
            "seconds": {v.name: times[v.name][sig].to_json() for v in variants},
            "max_rel_diff": {v.name: differences[v.name][sig] for v in variants},
        })
    networks = {}
    for network in [n for n in NETWORK_ORDER if any(c["network"] == n for c in results_calls)]:
        mine = [c for c in results_calls if c["network"] == network]
        per_video = {v.name: sum(c["count"] * c["seconds"][v.name]["median"] for c in mine) / video_s
                     for v in variants}
        networks[network] = {
            "stage": STAGES.get(network, network), "calls": sum(c["count"] for c in mine),
            "seconds_per_video_second": per_video,
            "speedup": {name: (per_video[variants[0].name] / s if s else None) for name, s in per_video.items()},
            "max_rel_diff": {v.name: max((c["max_rel_diff"][v.name] for c in mine
                                          if c["max_rel_diff"][v.name] is not None), default=None) for v in variants},
        }
    totals = {v.name: sum(n["seconds_per_video_second"][v.name] for n in networks.values()) for v in variants}
    return {
        "schema": SCHEMA, "smoke": settings.smoke,
        "settings": {**asdict(settings), "size": size, "fps": model.config.fps, "dtype": str(dtype)},
        "environment": describe(device),
        "session": {"frames": frames, "video_s": video_s, "calls": len(calls), "distinct_calls": len(distinct)},
        "baseline": variants[0].name,
        "variants": [{"name": v.name, "backend": v.backend.name, "kernels": v.kernel_mode, "options": v.options,
                      "construct_s": v.construct_s, "first_call_s": v.first_call_s} for v in variants],
        "skipped": skipped,
        "calls": results_calls,
        "networks": networks,
        "total_seconds_per_video_second": totals,
        "total_speedup": {name: (totals[variants[0].name] / t if t else None) for name, t in totals.items()},
        "wall_s": time.perf_counter() - started,
    }


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The results as a Markdown page: per network, then per call."""
    s, env, session = results["settings"], results["environment"], results["session"]
    names = [v["name"] for v in results["variants"]]
    base = results["baseline"]
    driver = f", driver {env['driver']}" if env.get("driver") else ""
    lines = [
        f"# Backends: `{s['model']}` at {s['size']}x{s['size']} on {env['device']}"
        + (" (smoke run, not a measurement)" if results["smoke"] else ""),
        "",
        f"torch {env['torch']}{driver}, {s['dtype'].removeprefix('torch.')}, {env['torch_threads']} intra-op "
        f"thread(s), commit {commit_text(env)}, {env['date']}. One session: {s['stream_s']:g} s of speech, "
        f"{s['steps']} steps, {session['frames']} frames ({session['calls']} network calls, "
        f"{session['distinct_calls']} distinct), each distinct call replayed {s['warmup']} + {s['repeats']} times "
        f"per variant, round-robin. Baseline of the ratios and differences: `{base}`.",
        "",
        "Network time per second of video (ms; calls x median time per call), and the baseline's time over each:",
        "",
    ]
    header = ("network", "calls") + tuple(f"{n} (ms/s)" for n in names) + tuple(f"{n} speed-up" for n in names[1:])
    rows = []
    for network, n in results["networks"].items():
        rows.append((f"{n['stage']} (`{network}`)", str(n["calls"]))
                    + tuple(format_ms(n["seconds_per_video_second"][v]) for v in names)
                    + tuple(format_ratio(n["speedup"][v]) for v in names[1:]))
    totals = results["total_seconds_per_video_second"]
    rows.append(("**all networks**", str(session["calls"])) + tuple(f"**{format_ms(totals[v])}**" for v in names)
                + tuple(f"**{format_ratio(results['total_speedup'][v])}**" for v in names[1:]))
    lines += [markdown_table(header, rows), ""]
    lines += ["Per call (ms, median (min-max)) and the largest difference of its outputs from the baseline "
              "(relative to each output tensor's largest magnitude):", ""]
    header = ("network", "input", "count") + tuple(names) + tuple(f"diff {n}" for n in names[1:])
    rows = [(c["network"], c["input"], str(c["count"])) + tuple(format_figure(c["seconds"][v], 1000.0) for v in names)
            + tuple(format_number(c["max_rel_diff"][v]) for v in names[1:]) for c in results["calls"]]
    lines += [markdown_table(header, rows), ""]
    lines += ["Building each variant (s): " + ", ".join(
        f"{v['name']} {v['construct_s']:.1f} + first calls {sum(v['first_call_s'].values()):.1f}"
        for v in results["variants"]) + "."]
    for name, reason in results["skipped"].items():
        lines.append(f"- skipped `{name}`: {reason}")
    if plot_name:
        lines += ["", f"![network time per second of video]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    """PNG: network time per second of video, one group of bars per network, one bar per variant."""
    plt = pyplot()

    names = [v["name"] for v in results["variants"]]
    networks = list(results["networks"])
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(networks) * len(names) + 2))
    height = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [results["networks"][n]["seconds_per_video_second"][name] * 1000 for n in networks]
        ax.barh([i + j * height for i in range(len(networks))], values, height=height, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(networks))], networks)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("network time per second of video (ms, log scale)")
    ax.legend(fontsize="small")
    s, env = results["settings"], results["environment"]
    ax.set_title(f"{s['model']} {s['size']}x{s['size']}, {s['steps']} steps, {env['device']} ({env['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(results: dict, json_path: Path) -> list[Path]:
    """The Markdown page (and the PNG where matplotlib is installed) beside ``json_path``."""
    written = []
    try:
        written.append(plot(results, json_path.with_suffix(".png")))
    except ImportError:
        print(f"note: matplotlib is not installed: no plot (`python -m bench.backends --render {json_path}` elsewhere)")
    md = json_path.with_suffix(".md")
    write_atomic(md, markdown(results, written[0].name if written else None))
    return [md] + written


def variant_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated variant names, e.g. ``"torch,onnxruntime"``."""
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct variants among {', '.join(VARIANTS)}, got {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="talking64",
                        help="preset (tiny, sd15) or model directory (default talking64)")
    parser.add_argument("--size", type=int, help="portrait side in pixels (default: the model's)")
    parser.add_argument("--variants", type=variant_list,
                        help=f"comma-separated, the first is the baseline (default: torch,onnxruntime on the CPU, "
                             f"{','.join(VARIANTS)} on CUDA)")
    add_common_flags(parser, "device", "threads", "out_dir", "render", stream_s="speech in the session (default 2 s)",
                     steps="sampler steps (default 4)", warmup="untimed calls before the first timed one (default 2)",
                     repeats="timed calls of each distinct call per variant (default 5)",
                     smoke="tiny model at 64x64, 0.5 s, 1 step, 1 repeat")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        results = json.loads(args.render.read_text())
        if results.get("schema") != SCHEMA:
            print(f"bench.backends: {args.render} is not a {SCHEMA} results file", file=sys.stderr)
            return 1
        print("wrote " + ", ".join(str(p) for p in write_reports(results, args.render)))
        return 0
    device = torch.device(args.device)
    if cuda_missing(device, "bench.backends"):
        return 0
    smoke = dict(model="tiny", size=64, stream_s=0.5, steps=1, warmup=1, repeats=1) if args.smoke else {}
    given = {k: v for k, v in dict(model=None if args.model == "talking64" and args.smoke else args.model,
                                   size=args.size, variants=args.variants, stream_s=args.stream_s, steps=args.steps,
                                   warmup=args.warmup, repeats=args.repeats).items() if v is not None}
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    settings = BackendSettings(**{**dict(device=args.device, variants=DEFAULT_VARIANTS[device.type], threads=threads,
                                         smoke=args.smoke), **smoke, **given})
    try:
        results = run(settings)
    except (ValueError, RuntimeError) as exc:
        print(f"bench.backends: {exc}", file=sys.stderr)
        return 2
    out_dir = results_dir(args.out_dir, settings.smoke, device)
    model_name = Path(settings.model).name
    json_path = out_dir / f"backends-{model_name}-{results['settings']['size']}.json"
    write_atomic(json_path, json.dumps(results, indent=1) + "\n")
    written = [json_path] + write_reports(results, json_path)
    print(markdown(results))
    print("results: " + "\n         ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
