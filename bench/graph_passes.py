"""``python -m bench.graph_passes``: the torchscript backend's frozen graphs against the same graphs put through
``torch.jit.optimize_for_inference``, per traced network, on the CPU, in one run.

    python -m bench.graph_passes                         # talking64's backbone and ReferenceNet, 1 and 2 threads
    python -m bench.graph_passes --threads 2 --rounds 12
    python -m bench.graph_passes --smoke --out-dir /tmp/g   # the tiny preset, two one-call rounds (the tests')

``optimize_for_inference`` converts the convolutions to oneDNN's blocked layout (with conversions to and from it
around them) and pre-transposes the linear layers' weights; the backend does not apply it (its module docstring).
Per intra-op thread count, both graphs of every traced network are made at the network's steady-state shape (its
first static profile: one session's batch) from the same module, checked against each other, warmed up, then timed
in rounds that alternate which goes first; a round's figure is the median call of ``--calls``. The ratio is
optimised over frozen, round by round: above 1, the pass costs time. Writes ``graph-passes-<model>.json``, ``.md``
and ``.png`` under ``bench/results/<device>/`` (or ``--out-dir``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.backends import open_benchmark_model
from bench.cli import int_tuple, results_dir, write_results
from bench.environment import describe
from bench.report import commit_text, format_figure, grouped_bars, markdown_table, results_page
from bench.timing import Figure, time_call
from engine.backends.torchscript_backend import TRACED_NETWORKS, TorchScriptBackend, static_dims, trace_network
from export.networks.spec import Network

SCHEMA = "emote.bench.graph_passes/1"
PASSES = ("frozen", "optimize_for_inference")
"""The graphs compared: what the backend runs, and the same frozen graph after ``torch.jit.optimize_for_inference``."""
TOLERANCE = 1e-5
"""Largest difference allowed between the two graphs' outputs, relative to each output's largest magnitude (float32;
both compute the module's arithmetic, in another order)."""


def make_graphs(network: Network, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.jit.ScriptModule]:
    """Both graphs of ``network`` for ``inputs``, run once: the backend's frozen trace, and a second trace optimised
    for inference before its first run (the pass rewrites its module in place, so each has its own)."""
    graphs = {"frozen": trace_network(network, inputs),
              "optimize_for_inference": torch.jit.optimize_for_inference(trace_network(network, inputs))}
    with torch.no_grad():
        for graph in graphs.values():
            graph(*inputs)
    return graphs


def relative_difference(graphs: dict[str, torch.jit.ScriptModule], inputs: tuple[torch.Tensor, ...]) -> float:
    """The largest difference between the graphs' outputs on ``inputs``, over each output's largest magnitude."""
    with torch.inference_mode():
        outputs = [graph(*inputs) for graph in graphs.values()]
    flat = [out if isinstance(out, (tuple, list)) else (out,) for out in outputs]
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(*flat))


def measure(args: argparse.Namespace) -> dict:
    """Every (threads, network) pair: both graphs timed ``args.rounds`` times, alternating."""
    model = open_benchmark_model(args.model, torch.device("cpu"), seed=0)
    backend = TorchScriptBackend(model)
    size = model.config.resolution
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in TRACED_NETWORKS:
            network = backend.network(name, size)
            dims = static_dims(network)[0]
            inputs = network.sample_input(dims)
            graphs = make_graphs(network, inputs)
            difference = relative_difference(graphs, inputs)
            if difference > TOLERANCE:
                raise RuntimeError(f"{name}: the two graphs differ by {difference:.3g} (more than {TOLERANCE:g})")
            ms: dict[str, list[float]] = {p: [] for p in PASSES}
            with torch.inference_mode():
                for graph in graphs.values():
                    time_call(lambda: graph(*inputs), torch.device("cpu"), args.warmup, 1)
                for round_index in range(args.rounds):
                    for kind in (PASSES if round_index % 2 == 0 else PASSES[::-1]):
                        graph = graphs[kind]
                        figure = time_call(lambda: graph(*inputs), torch.device("cpu"), 0, args.calls)
                        ms[kind].append(figure.median * 1e3)
            ratio = Figure([o / f for o, f in zip(ms["optimize_for_inference"], ms["frozen"])])
            rows.append({"network": name, "dims": dims, "threads": threads, "relative_difference": difference,
                         "ms": {k: Figure(v).to_json() for k, v in ms.items()}, "ratio": ratio.to_json()})
            print(f"{name} at {dims}, {threads} thread(s): frozen {Figure(ms['frozen']).median:.1f} ms, "
                  f"optimised {Figure(ms['optimize_for_inference']).median:.1f} ms "
                  f"({ratio.median:.2f}x)", file=sys.stderr)
    return {"schema": SCHEMA, "model": args.model, "size": size, "rounds": args.rounds, "calls": args.calls,
            "environment": describe(torch.device("cpu")), "rows": rows}


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The results as a Markdown table (median, min-max over rounds)."""
    env = results["environment"]
    header = ("network", "shape", "intra-op threads", "frozen ms", "+ optimize_for_inference ms",
              "optimised / frozen (min-max)")
    rows = [(r["network"], ", ".join(f"{k} {v}" for k, v in r["dims"].items()), str(r["threads"]),
             format_figure(r["ms"]["frozen"]), format_figure(r["ms"]["optimize_for_inference"]),
             format_figure(r["ratio"]))
            for r in results["rows"]]
    return results_page(
        f"Frozen TorchScript graphs with and without optimize_for_inference: {results['model']}, {env['device']}",
        f"{results['size']}x{results['size']}, one call per network at its steady-state shape; per round the median "
        f"of {results['calls']} calls, {results['rounds']} rounds alternating which graph goes first; commit "
        f"{commit_text(env)}, {env['date']}.", markdown_table(header, rows), plot_name, "ms per call")


def plot(results: dict, path: Path) -> Path:
    """Bars of ms per call per graph, grouped by network and thread count."""
    groups = [f"{r['network']}\n{r['threads']} thread(s)" for r in results["rows"]]
    series = {kind: [r["ms"][kind]["median"] for r in results["rows"]] for kind in PASSES}
    return grouped_bars(path, groups, series, "ms per call (median)",
                        f"{results['model']} on {results['environment']['device']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.graph_passes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="talking64", help="a shipped model or preset (default: talking64)")
    parser.add_argument("--threads", type=int_tuple, default=(1, 2), help="intra-op thread counts (default: 1,2)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per graph, alternating (default 8)")
    parser.add_argument("--calls", type=int, default=6, help="calls per round (default 6)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed calls per graph first (default 6)")
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny preset at 1 thread, two one-call rounds (checks the layout, not a time)")
    parser.add_argument("--out-dir", type=Path, help="where the results go (default: bench/results/<device>/)")
    parser.add_argument("--render", type=Path, help="redraw the .md and .png of a results JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        print(write_results(results, args.render.parent, args.render.stem, markdown, plot).read_text())
        return 0
    if args.smoke:
        args.model, args.threads, args.rounds, args.calls, args.warmup = "tiny", (1,), 2, 1, 1
    results = measure(args)
    directory = results_dir(args.out_dir, args.smoke, torch.device("cpu"))
    print(write_results(results, directory, f"graph-passes-{results['model']}", markdown, plot).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
