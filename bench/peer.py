"""``python -m bench.peer``: Hallo's own pipeline against the engine, on the same weights and inputs, in one run.

    python -m bench.peer --setup DIR            # make the peer environment (bench/peer_env.py; HALLO_REPO=...)
    python -m bench.peer --peer-env DIR         # tiny tree, 128x128, CPU, 1 and 2 intra-op threads, 3 rounds
    python -m bench.peer --peer-env DIR --device cuda   # sd15 shapes, 512x512, fp16 on both sides
    python -m bench.peer --render bench/results/<device>/peer-hallo-tiny-128.json

The peer environment (``--peer-env``, default ``$EMOTE_PEER_ENV``) holds Hallo's repository at a pinned commit,
a venv with its pins and the stand-ins of ``bench/peer_stubs``. Without one the command says so in one line
and exits 2.

The weights: Hallo's own classes write a checkpoint tree in Hallo's layout (``bench/peer_hallo.py tree``:
``tiny`` at the reduced widths of the engine's import tests, ``sd15`` at the released shapes), every tensor
random (a network's cost does not depend on its weights); ``emote import --from hallo`` turns the same tree
into the engine's model directory. The inputs: the demo portrait cropped to the model's resolution, its face
box and a random face embedding (handed to Hallo's stand-in face analysis and to the engine alike), and
``--frames`` frames of the demo speech at 25 fps (a multiple of Hallo's 16-frame clip, so neither side pads).

Three runs per thread count, each a fresh process, round-robin over ``--rounds`` rounds so that a change of
load hits all alike:

- ``hallo``: Hallo's ``scripts/inference.py`` from the peer environment (40 DDIM steps, CFG 3.5, its config);
- ``engine-hallo-recipe``: the engine on the same recipe (40 DDIM steps, CFG 3.5 on reference and audio alike);
- ``engine-own``: the engine at its own settings (4 DDIM steps, no guidance: its defaults where a model does
  not bring its own; an imported Hallo model brings Hallo's recipe).

What is timed, on both sides: the generation from the decoded inputs (image and speech in memory, models
loaded) to every frame in memory, after an untimed warm-up (one 1-step pass over the first clip); not the
process start, the model loading or the video file. On Hallo's side that is its image and audio
preprocessing (its face analysis and vocal separator are stand-ins and cost nothing) and every clip; on the
engine's, a ``Session`` made and driven through the streaming runtime (``LiveSession``, the network calls on
the backend's compute thread), as ``emote generate`` runs it. Seconds per output frame, and per round
Hallo's time over each engine run's.

Results: ``bench/results/<device>/peer-hallo-<size>-<resolution>.{json,md,png}`` (or ``--out-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.cli import int_tuple, results_dir, write_results
from bench.environment import describe
from bench.peer_env import PeerEnvironment, SetupError, setup
from bench.peer_hallo import SIZES
from bench.report import format_ratio, markdown_table, pyplot
from bench.speech import read_wav, speech_pcm, write_wav
from bench.timing import Figure

SCHEMA = "emote.bench.peer/1"
REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "peer_hallo.py"
DEMO_PORTRAIT = REPO / "engine" / "assets" / "demo" / "portrait.png"
FPS = 25.0
HALLO_STEPS, HALLO_CFG = 40, 3.5


@dataclass(frozen=True)
class Run:
    """One way of generating: which side, with how many DDIM steps and which CFG scale (1: no guidance)."""

    name: str
    label: str
    side: str
    steps: int
    cfg: float


def runs(hallo_steps: int = HALLO_STEPS) -> tuple[Run, ...]:
    """The three runs of a thread count; ``hallo_steps`` replaces Hallo's 40 steps (the smoke run's 2)."""
    return (Run("hallo", "Hallo's own pipeline", "hallo", hallo_steps, HALLO_CFG),
            Run("engine-hallo-recipe", "engine, Hallo's recipe", "engine", hallo_steps, HALLO_CFG),
            Run("engine-own", "engine, its own settings", "engine", 4, 1.0))


def write_inputs(directory: Path, size: str, frames: int) -> Path:
    """``portrait.png`` (the demo portrait cropped around its face at the size's resolution), ``face.json``
    (its face box, pixels), ``face_embedding.npy`` (float32, seeded normal) and ``speech.wav`` (``frames`` /
    25 s of the demo speech) in ``directory``; returns it."""
    from PIL import Image

    from engine.faces import prepare_portrait

    directory.mkdir(parents=True, exist_ok=True)
    spec = SIZES[size]
    portrait = prepare_portrait(DEMO_PORTRAIT, spec["resolution"])
    Image.fromarray(portrait.image).save(directory / "portrait.png")
    box = portrait.face_box
    (directory / "face.json").write_text(json.dumps({"bbox": [box.x0, box.y0, box.x1, box.y1]}) + "\n")
    embedding = np.random.default_rng(25).standard_normal(spec["face_embedding_dim"]).astype(np.float32)
    np.save(directory / "face_embedding.npy", embedding)
    write_wav(directory / "speech.wav", speech_pcm(frames / FPS))
    return directory


def prepare(env: PeerEnvironment, size: str, frames: int, work: Path) -> tuple[Path, Path, Path]:
    """The tree (written by Hallo's classes in the peer environment, kept between runs), its import (the
    engine's model directory, kept) and the inputs (rewritten); returns (tree, model, inputs)."""
    from engine.importers.run import import_model

    tree, model = work / "tree", work / "model"
    marker = tree / "peer-tree.json"
    if not (marker.is_file() and json.loads(marker.read_text())["size"] == size):
        print(f"writing the random {size} tree in Hallo's layout ...", file=sys.stderr)
        done = subprocess.run([str(env.python), str(DRIVER), "tree", "--size", size, "--out", str(tree),
                               "--hallo", str(env.source)], env=env.env(None), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"writing the tree failed:\n{done.stderr[-3000:]}")
        if model.exists():
            shutil.rmtree(model)
    if not (model / "provenance.json").is_file():
        print("emote import --from hallo ...", file=sys.stderr)
        import_model("hallo", tree, model)
    return tree, model, write_inputs(work / "inputs", size, frames)


def engine_generate(model_dir: Path, inputs: Path, steps: int, cfg: float, threads: int | None, device: str,
                    backend_name: str) -> dict:
    """The engine's side of one run, in this process (see the module docstring for what is timed)."""
    from engine.backends import make_backend
    from engine.face_embedding import load_face_embedding
    from engine.faces import FaceBox, prepare_portrait
    from engine.pipeline import open_model
    from engine.stream.runner import LiveSession
    from engine.stream.session import GenerationOptions, Session

    if threads is not None:
        torch.set_num_threads(threads)
    model = open_model(str(model_dir))
    cfg_model = model.config
    portrait = prepare_portrait(inputs / "portrait.png", cfg_model.resolution,
                                face_box=FaceBox(*json.loads((inputs / "face.json").read_text())["bbox"]))
    embedding = load_face_embedding(inputs / "face_embedding.npy", cfg_model.image_proj.embedding_dim)
    cuda = device.startswith("cuda")
    backend = make_backend(backend_name, model, device, torch.float16 if cuda else torch.float32, threads=threads)
    pcm = read_wav(inputs / "speech.wav")

    def stream(options: GenerationOptions, audio: np.ndarray) -> int:
        session = Session(backend, cfg_model, portrait.image, portrait.mask, options, face_embedding=embedding)
        live = LiveSession(session)
        try:
            live.push_audio(audio)
            live.end()
            return len(list(live))
        finally:
            live.close()

    first_clip = round(cfg_model.clip_frames / cfg_model.fps * 16000)
    stream(GenerationOptions(steps=1, sampler="ddim", cfg_audio=1.0, cfg_ref=1.0), pcm[:first_clip])
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    frames = stream(GenerationOptions(steps=steps, sampler="ddim", cfg_audio=cfg, cfg_ref=cfg), pcm)
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "s_per_frame": seconds / frames, "steps": steps, "cfg": cfg,
            "threads": threads, "backend": backend_name, "torch": torch.__version__}


def _last_json(command: list[str], env: dict[str, str] | None, cwd: Path) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_once(run: Run, threads: int | None, env: PeerEnvironment, paths: tuple[Path, Path, Path], work: Path,
             device: str, backend: str) -> dict:
    """One run in a fresh process (Hallo's with the peer environment's python, the engine's with this one)."""
    tree, model, inputs = paths
    if run.side == "hallo":
        command = [str(env.python), str(DRIVER), "run", "--tree", str(tree), "--inputs", str(inputs), "--work",
                   str(work / "hallo-run"), "--hallo", str(env.source), "--steps", str(run.steps), "--cfg",
                   str(run.cfg), "--threads", str(threads or torch.get_num_threads()), "--warmup"]
        run_env = env.env(threads)
        if device == "cpu":
            run_env["CUDA_VISIBLE_DEVICES"] = ""
        return _last_json(command, run_env, work)
    command = [sys.executable, "-m", "bench.peer", "--worker", str(model), "--inputs", str(inputs), "--steps",
               str(run.steps), "--cfg", str(run.cfg), "--device", device, "--backend", backend]
    run_env = dict(os.environ)
    if threads is not None:
        command += ["--worker-threads", str(threads)]
        run_env["OMP_NUM_THREADS"] = str(threads)
    return _last_json(command, run_env, REPO)


def summarise(raw: dict[str, list[dict]], thread_counts: list[int | None], plan: tuple[Run, ...]) -> list[dict]:
    """Rows of the result: per thread count and run, seconds per frame over the rounds and, per round, Hallo's
    seconds per frame over the run's (raw: ``"<threads>/<run name>"`` -> one result per round)."""
    rows = []
    for threads in thread_counts:
        hallo = raw[f"{threads}/hallo"]
        for run in plan:
            results = raw[f"{threads}/{run.name}"]
            ratios = [h["s_per_frame"] / r["s_per_frame"] for h, r in zip(hallo, results, strict=True)]
            rows.append({"threads": threads, "run": run.name, "label": run.label, "side": run.side,
                         "steps": run.steps, "cfg": run.cfg, "frames": results[0]["frames"],
                         "s_per_frame": Figure([r["s_per_frame"] for r in results]).to_json(),
                         "hallo_over_this": Figure(ratios).to_json()})
    return rows


def measure(args: argparse.Namespace, env: PeerEnvironment) -> dict:
    """Every (threads, run) ``args.rounds`` times, round-robin; the results dict."""
    size = args.size or ("sd15" if args.device.startswith("cuda") else "tiny")
    work = args.work or REPO / "out" / "peer" / size
    paths = prepare(env, size, args.frames, work)
    plan = runs(args.hallo_steps)
    thread_counts: list[int | None] = [None] if args.device.startswith("cuda") else list(args.threads)
    raw: dict[str, list[dict]] = {}
    load = []
    for round_index in range(args.rounds):
        load.append(os.getloadavg()[0])
        for threads in thread_counts:
            for run in plan:
                result = run_once(run, threads, env, paths, work, args.device, args.backend)
                raw.setdefault(f"{threads}/{run.name}", []).append(result)
                print(f"round {round_index + 1}/{args.rounds} threads={threads} {run.name}: "
                      f"{result['s_per_frame']:.3f} s/frame ({result['frames']} frames)", file=sys.stderr)
    load.append(os.getloadavg()[0])
    environment = describe(torch.device(args.device))
    return {"schema": SCHEMA, "peer": env.info, "size": size, "resolution": SIZES[size]["resolution"],
            "frames": args.frames, "rounds": args.rounds, "device": args.device, "backend": args.backend,
            "load_average_1min": load, "environment": environment, "raw": raw,
            "rows": summarise(raw, thread_counts, plan)}


def _ratio_text(figure: dict) -> str:
    if figure["min"] == figure["max"]:
        return format_ratio(figure["median"])
    return f"{format_ratio(figure['median'])} ({format_ratio(figure['min'])}-{format_ratio(figure['max'])})"


def _threads_text(threads: int | None) -> str:
    return "default" if threads is None else str(threads)


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The results as Markdown: what was run and timed, and the table (median, min-max over rounds)."""
    env, peer = results["environment"], results["peer"]
    header = ("intra-op threads", "run", "steps", "CFG", "s per frame", "Hallo's own / this (per round)")
    rows = [(_threads_text(r["threads"]), r["label"], str(r["steps"]), f"{r['cfg']:g}" if r["cfg"] != 1 else "none",
             f"{r['s_per_frame']['median']:.3f} ({r['s_per_frame']['min']:.3f}-{r['s_per_frame']['max']:.3f})",
             _ratio_text(r["hallo_over_this"])) for r in results["rows"]]
    load = results.get("load_average_1min") or []
    lines = [f"# Hallo's own pipeline against the engine: {results['size']} at {results['resolution']}x"
             f"{results['resolution']}, {env['device']}", "",
             f"Hallo at commit {peer['commit'][:7]} ({peer['repository']}), torch {peer['torch']} in its own "
             f"environment (stand-ins: {', '.join(peer['stubs'])}); the engine at commit "
             f"{(env.get('git', {}).get('commit') or '?')[:12]}, torch {env['torch']}, backend "
             f"{results['backend']}; {env.get('date', '')}.", "",
             f"The same random weights (a tree in Hallo's layout, imported with `emote import`), the same portrait, "
             f"face box, face embedding and {results['frames']} frames of speech; {results['rounds']} rounds, one "
             "fresh process per run, round-robin. Timed on both sides: the generation from the decoded inputs to "
             "every frame in memory, after a warm-up; not the process start, model loading or video file (see "
             "`bench/peer.py`). Ratios are per round, Hallo's seconds over the run's, then the median.", ""]
    if load:
        lines += [f"Machine load (1-minute load average, {env.get('cpu_count', '?')} cores) at each round's start "
                  f"and at the end: {', '.join(f'{v:.1f}' for v in load)}.", ""]
        if max(load) > (env.get("cpu_count") or 1) and any((r["threads"] or 1) > 1 for r in results["rows"]):
            lines += ["The machine was busier than its cores. At more than one thread, OpenMP workers that spin "
                      "between parallel regions compete with the other load for the cores (docs/cpu-threads.md), "
                      "and how much a process loses depends on how its workers wait: on a loaded machine the "
                      "1-thread ratios are the ones that carry over to an idle one.", ""]
    lines.append(markdown_table(header, rows))
    if plot_name:
        lines += ["", f"![seconds per frame]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    """Bars of seconds per frame (log scale) per run, grouped by thread count."""
    plt = pyplot()
    groups = list(dict.fromkeys(r["threads"] for r in results["rows"]))
    names = list(dict.fromkeys(r["run"] for r in results["rows"]))
    labels = {r["run"]: r["label"] for r in results["rows"]}
    fig, ax = plt.subplots(figsize=(2.6 + 2.2 * len(groups), 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rows = [next(r for r in results["rows"] if (r["threads"], r["run"]) == (g, name)) for g in groups]
        values = [r["s_per_frame"]["median"] for r in rows]
        bars = ax.bar([j + i * width for j in range(len(groups))], values, width, label=labels[name])
        for bar, row in zip(bars, rows, strict=True):
            if row["run"] != "hallo":
                ax.annotate(format_ratio(row["hallo_over_this"]["median"]), (bar.get_x() + bar.get_width() / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    medians = [r["s_per_frame"]["median"] for r in results["rows"]]
    ax.set_ylim(min(medians) / 2, max(medians) * 2)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(groups))],
                  [f"{_threads_text(g)} thread(s)" for g in groups])
    ax.set_ylabel("seconds per frame (median)")
    ax.set_title(f"Hallo's own vs engine, {results['size']} {results['resolution']}px, "
                 f"{results['environment']['device']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict, directory: Path) -> Path:
    """The JSON, Markdown and PNG of ``results`` in ``directory``; returns the Markdown's path."""
    return write_results(results, directory, f"peer-hallo-{results['size']}-{results['resolution']}", markdown, plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-env", type=Path, default=os.environ.get("EMOTE_PEER_ENV"),
                        help="the peer environment (default: $EMOTE_PEER_ENV)")
    parser.add_argument("--setup", type=Path, metavar="DIR", help="make the peer environment in DIR and exit")
    parser.add_argument("--hallo-repo", help="--setup: where to clone Hallo from (default: $HALLO_REPO, else GitHub)")
    parser.add_argument("--torch", dest="torch_spec", help="--setup: pip requirement(s) for torch in the peer "
                        "environment (default: the engine's torch version)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--size", choices=sorted(SIZES), help="the tree (default: tiny on the CPU, sd15 on CUDA)")
    parser.add_argument("--frames", type=int, default=32, help="frames of speech, a multiple of 16 (default: 32)")
    parser.add_argument("--threads", type=int_tuple, default=(1, 2), help="CPU intra-op thread counts (default: 1,2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every kind, round-robin (default: 3)")
    parser.add_argument("--hallo-steps", type=int, default=HALLO_STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help="the engine's backend (default: torch)")
    parser.add_argument("--smoke", action="store_true", help="one round, 1 thread, 16 frames, 2 steps in place of "
                        "40 (checks the benchmark, not speed)")
    parser.add_argument("--work", type=Path, help="where the tree, its import and the inputs go "
                        "(default: out/peer/<size>)")
    parser.add_argument("--out-dir", type=Path, help="where the results go (default: bench/results/<device>/)")
    parser.add_argument("--render", type=Path, help="redraw the .md and .png of a results JSON")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cfg", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(engine_generate(args.worker, args.inputs, args.steps, args.cfg, args.worker_threads,
                                         args.device, args.backend)))
        return 0
    if args.render:
        try:
            results = json.loads(args.render.read_text())
        except (OSError, ValueError) as exc:
            print(f"python -m bench.peer: cannot read {args.render}: {exc}", file=sys.stderr)
            return 2
        print(write(results, args.render.parent).read_text())
        return 0
    try:
        if args.setup:
            info = setup(args.setup, args.hallo_repo, args.torch_spec)
            print(f"peer environment ready in {args.setup}: Hallo {info['commit'][:7]}, torch {info['torch']}, "
                  f"stand-ins {', '.join(info['stubs'])}")
            return 0
        if args.peer_env is None:
            raise SetupError("no peer environment given: pass --peer-env DIR or set EMOTE_PEER_ENV "
                             "(make one with: python -m bench.peer --setup DIR)")
        env = PeerEnvironment(args.peer_env)
    except SetupError as exc:
        print(f"python -m bench.peer: {exc}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("python -m bench.peer: --device cuda, but no CUDA device is available here", file=sys.stderr)
        return 2
    if args.frames < 16 or args.frames % 16:
        parser.error(f"--frames must be a positive multiple of 16 (Hallo's clip), got {args.frames}")
    if args.smoke:
        args.rounds, args.threads, args.frames, args.hallo_steps = 1, (1,), 16, 2
    try:
        results = measure(args, env)
    except RuntimeError as exc:
        print(f"python -m bench.peer: {exc}", file=sys.stderr)
        return 1
    print(write(results, results_dir(args.out_dir, args.smoke, torch.device(args.device))).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
