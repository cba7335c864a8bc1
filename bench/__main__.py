"""``python -m bench``: the engine against the reference recipe, end to end and per stage, in one run.

    python -m bench                               # tiny preset, 128x128, CPU (make bench)
    python -m bench --preset sd15 --device cuda   # sd15 at 512x512 on a GPU (make bench-gpu)
    python -m bench --smoke --out-dir /tmp/b      # one short iteration (the test suite's)
    python -m bench --render bench/results/<device>/sd15-512.json   # redraw .md and .png from a JSON

Writes ``<preset>-<resolution>.json``, ``.md`` and ``.png`` under ``bench/results/<device>/`` (or
``--out-dir``; a run of only some decoders or step counts adds them to the name) and prints the
Markdown report and where the files are. Without matplotlib (a GPU
machine may lack it) the PNG is left out and ``--render`` draws it later from the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from bench.cli import add_common_flags, cuda_missing, int_tuple, results_dir, write_atomic
from bench.harness import default_settings, result_stem, run
from bench.report import markdown, plot, validate



def _decoders(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or any(v not in ("kl", "tiny") for v in values):
        raise argparse.ArgumentTypeError(f"decoders are 'kl' and/or 'tiny', got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add_common_flags(parser, "preset", "device", stream_s="speech in the engine's paced streams (default: 1.6 on "
                     "CPU, 30 on GPU)", repeats="runs of every stream and stage timing (default 3)")
    parser.add_argument("--resolution", type=int, help="portrait side in pixels (default: the preset's)")
    parser.add_argument("--offline-seconds", type=float, dest="offline_s",
                        help="speech in the engine's unpaced streams (default: as paced on CPU, 10 on GPU)")
    parser.add_argument("--reference-clips", type=int, help="clips in the reference's end-to-end stream (default 2)")
    parser.add_argument("--steps", type=int_tuple, help="engine step counts, comma-separated (default 4,2,1)")
    parser.add_argument("--decoders", type=_decoders, help="engine decoders: kl,tiny (default both)")
    parser.add_argument("--first-clip-frames", type=int, help="engine's first clip in frames (default 1)")
    add_common_flags(parser, "backend", "threads", "seed", "out_dir", "render",
                     smoke="one short iteration; checks the harness, not speed")
    return parser.parse_args(argv)


def has_matplotlib() -> bool:
    """Whether the plot can be drawn here."""
    return importlib.util.find_spec("matplotlib") is not None


def write_reports(results: dict, json_path: Path) -> list[Path]:
    """The Markdown report (and the PNG, where matplotlib is installed) beside ``json_path``; prints the
    report; returns the paths written."""
    stem = json_path.with_suffix("")
    written = []
    png_name = None
    if has_matplotlib():
        written.append(plot(results, stem.with_suffix(".png")))
        png_name = written[-1].name
    else:
        print(f"note: matplotlib is not installed: no plot; draw it elsewhere with "
              f"`python -m bench --render {json_path}`")
    report = markdown(results, png_name)
    write_atomic(stem.with_suffix(".md"), report)
    print(report)
    return [stem.with_suffix(".md")] + written


def render(path: Path) -> int:
    """Redraw the Markdown report and plot of a results JSON."""
    results = json.loads(path.read_text())
    problems = validate(results)
    if problems:
        print(f"bench: {path} does not follow the results layout:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    for written in write_reports(results, path):
        print(f"wrote {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    settings = default_settings(args.preset, args.device, args.smoke, resolution=args.resolution,
                                stream_s=args.stream_s, offline_s=args.offline_s,
                                reference_clips=args.reference_clips, repeats=args.repeats,
                                steps=args.steps, decoders=args.decoders, first_clip_frames=args.first_clip_frames,
                                backend=args.backend, threads=args.threads, seed=args.seed)
    device = torch.device(settings.device)
    if cuda_missing(device, "bench"):
        return 2
    results = run(settings)
    problems = validate(results)
    if problems:
        print("bench: the results do not follow their layout:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    out_dir = results_dir(args.out_dir, settings.smoke, device)
    json_path = out_dir / f"{result_stem(settings, results['settings']['resolution'])}.json"
    write_atomic(json_path, json.dumps(results, indent=1) + "\n")
    written = [json_path] + write_reports(results, json_path)
    for note in results["notes"]:
        print(f"note: {note}")
    print("results: " + "\n         ".join(str(p) for p in written))
    print(f"benchmark wall time: {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
