"""``python -m bench.threads``: the streaming runtime's threads against a synchronous loop, on the CPU, in one run.

    python -m bench.threads                      # the default model, torch, 1 and 2 intra-op threads
    python -m bench.threads --backends torch,onnxruntime --rounds 5
    python -m bench.threads --smoke --out-dir /tmp/t   # one short round (the test suite's)
    python -m bench.threads --render bench/results/<device>/threads-talking64.json

Three ways of generating the same frames from the same speech (unpaced, the model's default settings):

- ``sync``: the backend called from the main thread, the session driven by a plain loop (no stage threads);
- ``stages``: the streaming runtime's stage threads calling the backend themselves (the runtime before
  networks got a compute thread of their own);
- ``compute-thread``: the streaming runtime as ``emote generate`` runs it, every network call on the
  backend's one compute thread (:mod:`engine.backends.compute_thread`).

Each run is a fresh process (OpenMP's worker teams live as long as the threads that made them), warmed up
with a short stream, then timed on one stream; runs alternate round-robin so that a change of load hits
every way alike. Per run: seconds per frame and voluntary context switches per frame (a thread that sleeps
instead of spinning between parallel regions switches once per region). Ratios are against ``sync`` at the
same thread count. Writes ``threads-<model>.json``, ``.md`` and ``.png`` under ``bench/results/<device>/``
(or ``--out-dir``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.cli import int_tuple, results_dir, write_results
from bench.environment import describe
from bench.harness import DEMO_PORTRAIT
from bench.report import commit_text, format_figure, format_ratio, grouped_bars, markdown_table, results_page
from bench.speech import speech_pcm
from bench.timing import Figure

MODES = ("sync", "stages", "compute-thread")
SCHEMA = "emote.bench.threads/1"


def generate(mode: str, backend_name: str, model_name: str, threads: int, seconds: float) -> dict:
    """One timed stream of ``seconds`` of speech in this process (after a 1-s warm-up stream), with the allocator
    settings the ``emote`` command starts with."""
    from engine.allocator import tune_allocator
    from engine.backends import _make, make_backend
    from engine.faces import prepare_portrait
    from engine.pipeline import open_model
    from engine.stream.runner import LiveSession
    from engine.stream.session import GenerationOptions, Session

    tune_allocator()
    torch.set_num_threads(threads)
    model = open_model(model_name)
    portrait = prepare_portrait(DEMO_PORTRAIT, model.config.resolution)
    if mode == "compute-thread":
        backend = make_backend(backend_name, model, "cpu", threads=threads)
    else:
        options = {"threads": threads} if backend_name == "onnxruntime" else {}
        backend = _make(backend_name, model, "cpu", torch.float32, **options)
    session = Session(backend, model.config, portrait.image, portrait.mask, GenerationOptions())

    def stream(pcm: np.ndarray) -> int:
        session.reset()
        if mode == "sync":
            session.push_audio(pcm)
            session.end()
            return len(list(session.frames()))
        live = LiveSession(session)
        try:
            live.push_audio(pcm)
            live.end()
            return len(list(live))
        finally:
            live.close()

    pcm = speech_pcm(seconds)
    stream(speech_pcm(1.0))
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    started = time.perf_counter()
    frames = stream(pcm)
    elapsed = time.perf_counter() - started
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches
    return {"frames": frames, "s_per_frame": elapsed / frames, "switches_per_frame": switches / frames}


def run_worker(mode: str, backend: str, model: str, threads: int, seconds: float) -> dict:
    """:func:`generate` in a fresh Python process."""
    command = [sys.executable, "-m", "bench.threads", "--worker", mode, "--backends", backend, "--model", model,
               "--threads", str(threads), "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict:
    """Every (backend, threads, mode) run ``args.rounds`` times, round-robin."""
    runs: dict[str, list[dict]] = {}
    keys = [(b, t, m) for b in args.backends for t in args.threads for m in MODES]
    for round_index in range(args.rounds):
        for backend, threads, mode in keys:
            result = run_worker(mode, backend, args.model, threads, args.seconds)
            runs.setdefault(f"{backend}/{threads}/{mode}", []).append(result)
            print(f"round {round_index + 1}/{args.rounds} {backend} threads={threads} {mode}: "
                  f"{result['s_per_frame'] * 1e3:.1f} ms/frame, {result['switches_per_frame']:.0f} switches/frame",
                  file=sys.stderr)
    rows = []
    for backend, threads, mode in keys:
        results = runs[f"{backend}/{threads}/{mode}"]
        sync = runs[f"{backend}/{threads}/sync"]
        ratios = [r["s_per_frame"] / s["s_per_frame"] for r, s in zip(results, sync)]
        rows.append({"backend": backend, "threads": threads, "mode": mode, "frames": results[0]["frames"],
                     "s_per_frame": Figure([r["s_per_frame"] for r in results]).to_json(),
                     "switches_per_frame": Figure([r["switches_per_frame"] for r in results]).to_json(),
                     "ratio_to_sync": Figure(ratios).to_json()})
    return {"schema": SCHEMA, "model": args.model, "seconds": args.seconds, "rounds": args.rounds,
            "environment": describe(torch.device("cpu")), "rows": rows}


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The results as a Markdown table (median, min-max over rounds)."""
    env = results["environment"]
    header = ("backend", "intra-op threads", "way", "ms per frame", "voluntary switches per frame", "/ sync")
    rows = [(r["backend"], str(r["threads"]), r["mode"],
             format_figure(r["s_per_frame"], scale=1e3),
             f"{r['switches_per_frame']['median']:.0f}", format_ratio(r["ratio_to_sync"]["median"]))
            for r in results["rows"]]
    return results_page(
        f"Stage threads against a synchronous loop: {results['model']}, {env['device']}",
        f"{results['seconds']:g} s of speech per run, unpaced, the model's default settings; {results['rounds']} "
        f"rounds, one fresh process per run, round-robin; commit {commit_text(env)}, "
        f"{env['date']}.", markdown_table(header, rows), plot_name, "ms per frame")


def plot(results: dict, path: Path) -> Path:
    """Bars of ms per frame per way, grouped by backend and thread count."""
    groups = sorted({(r["backend"], r["threads"]) for r in results["rows"]})
    series = {mode: [next(r["s_per_frame"]["median"] * 1e3 for r in results["rows"]
                          if (r["backend"], r["threads"], r["mode"]) == (*g, mode)) for g in groups] for mode in MODES}
    return grouped_bars(path, [f"{b}\n{t} thread(s)" for b, t in groups], series, "ms per frame (median)",
                        f"{results['model']} on {results['environment']['device']}")


def write(results: dict, directory: Path) -> Path:
    """The JSON, Markdown and PNG of ``results`` in ``directory``; returns the Markdown's path."""
    return write_results(results, directory, f"threads-{results['model']}", markdown, plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="talking64", help="a shipped model or preset (default: talking64)")
    parser.add_argument("--backends", type=lambda s: tuple(s.split(",")), default=("torch",),
                        help="comma-separated CPU backends (default: torch)")
    parser.add_argument("--threads", type=int_tuple, default=(1, 2), help="intra-op thread counts (default: 1,2)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of speech per timed stream")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every way, round-robin")
    parser.add_argument("--smoke", action="store_true", help="one short round (checks the layout, not a time)")
    parser.add_argument("--out-dir", type=Path, help="where the results go (default: bench/results/<device>/)")
    parser.add_argument("--render", type=Path, help="redraw the .md and .png of a results JSON")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(generate(args.worker, args.backends[0], args.model, args.threads[0], args.seconds)))
        return 0
    if args.render:
        results = json.loads(args.render.read_text())
        print(write(results, args.render.parent).read_text())
        return 0
    if args.smoke:
        args.rounds, args.seconds, args.threads = 1, 0.5, (1,)
    results = measure(args)
    print(write(results, results_dir(args.out_dir, args.smoke, torch.device("cpu"))).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
