"""Results of a schedule benchmark run (:mod:`bench.schedules`): the JSON layout and its check, the
Markdown tables, the PNG plot.

Every measured figure is ``{"median", "min", "max", "values"}`` over the repeats (``values`` in run
order). Units are in the key: ``_s`` seconds, ``_fps`` frames per second. Per configuration,
``latencies_s`` and ``floors_s`` hold one list per repeat with one value per frame, in frame order.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.report import (ENVIRONMENT_KEYS, check_figure, check_keys, commit_text, format_figure, format_ms,
                          format_number, format_ratio, markdown_table, pyplot)

SCHEMA = "emote-bench-schedules/1"
TOP_KEYS = ("schema", "smoke", "environment", "settings", "notes", "baseline", "configurations", "ratios", "wall_s")
CONFIGURATION_KEYS = ("name", "label", "schedule", "frames", "steps", "floors", "stream", "end_to_end", "latencies_s",
                      "floors_s", "goal_met")
END_TO_END = ("time_to_first_frame_s", "latency_median_s", "latency_p95_s", "latency_max_s", "above_floor_median_s",
              "above_floor_p95_s", "sustained_fps", "real_time_factor")
FLOORS = ("time_to_first_frame_s", "latency_s", "per_frame_median_s", "per_frame_p95_s")
RATIO_COLUMNS = (("time_to_first_frame_s", "time to first frame"), ("latency_median_s", "latency p50"),
                 ("latency_p95_s", "latency p95"), ("latency_max_s", "latency max"),
                 ("sustained_fps", "sustained fps"))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_runs(value: object, where: str, repeats: int, problems: list[str]) -> list[int]:
    """Check a list of ``repeats`` lists of finite numbers; returns their lengths."""
    if not isinstance(value, list) or len(value) != repeats or not all(isinstance(r, list) and r for r in value):
        problems.append(f"{where}: one non-empty list per repeat ({repeats})")
        return []
    if not all(_finite(v) for run in value for v in run):
        problems.append(f"{where}: finite numbers")
    return [len(run) for run in value]


def _check_configuration(config: dict, where: str, repeats: int, problems: list[str]) -> None:
    for key in END_TO_END:
        check_figure(config["end_to_end"].get(key), f"{where}.end_to_end.{key}", False, problems)
    floors = config["floors"]
    if not isinstance(floors, dict) or not all(_finite(floors.get(k)) for k in FLOORS):
        problems.append(f"{where}.floors: finite numbers {FLOORS}")
    lengths = _check_runs(config["latencies_s"], f"{where}.latencies_s", repeats, problems)
    if lengths and _check_runs(config["floors_s"], f"{where}.floors_s", repeats, problems) != lengths:
        problems.append(f"{where}.floors_s: one floor per latency")
    stream = config["stream"]
    if check_keys(stream, ("media_s", "frames", "clips", "backbone_calls", "backbone_frame_steps", "calls"),
                  f"{where}.stream", problems) and not (isinstance(stream["frames"], int) and stream["frames"] > 0):
        problems.append(f"{where}.stream.frames: a positive integer")


def validate(results: dict) -> list[str]:
    """Problems with ``results``' layout (empty when it is as this module documents)."""
    problems: list[str] = []
    if not check_keys(results, TOP_KEYS, "results", problems):
        return problems
    if results["schema"] != SCHEMA:
        problems.append(f"schema: unknown {results['schema']!r}")
    check_keys(results["environment"], ENVIRONMENT_KEYS, "environment", problems)
    configurations = results["configurations"]
    if not isinstance(configurations, list) or not configurations:
        problems.append("configurations: a non-empty list")
        return problems
    repeats = results["settings"].get("repeats")
    names = []
    for i, config in enumerate(configurations):
        if check_keys(config, CONFIGURATION_KEYS, f"configurations[{i}]", problems):
            names.append(config["name"])
            _check_configuration(config, f"configurations[{i}]", repeats, problems)
    if names and results["baseline"] != names[0]:
        problems.append("baseline: the first configuration")
    if set(results["ratios"]) != set(names):
        problems.append("ratios: one entry per configuration")
    return problems


def _ms(figure: dict | None) -> str:
    return format_figure(figure, 1000.0)


def headline(results: dict) -> list[str]:
    """The lines naming what was measured where, and how."""
    env, settings = results["environment"], results["settings"]
    commit, driver = commit_text(env), f", driver {env['driver']}" if env.get("driver") else ""
    size = settings["resolution"]
    return [
        f"# Clip-wise against rolling denoising: `{settings['preset']}` preset at {size}x{size} on {env['device']}",
        "",
        f"{env['date']} · torch {env['torch']}{driver} · commit {commit} · "
        f"intra-op threads {env['torch_threads']} · backend {settings['backend']} {settings['dtype']}, "
        f"fused ops: {settings['kernels']}",
        "",
        f"Every configuration: {settings['steps']} {settings['sampler'].upper()} steps, no guidance, seed "
        f"{settings['seed']}, the same {settings['stream_s']:g} s of speech arriving in real time in "
        f"{settings['block_ms']:g} ms blocks, {settings['fps']:g} fps video, look-ahead "
        f"{settings['lookahead_frames']} frames, {settings['motion_frames']} motion frames, lag policy grow; "
        f"{settings['repeats']} repeat(s) round-robin (figures: median (min–max)). Goal per session: latency p95 "
        f"<= {settings['goal_p95_s'] * 1000:g} ms at >= {settings['goal_fps']:g} fps sustained.",
    ] + [f"- {note}" for note in results["notes"]]


def end_to_end_table(configurations: list[dict]) -> str:
    """The paced streams' measures beside the floors the audio alone imposes."""
    rows = []
    for c in configurations:
        e2e, floors, stream = c["end_to_end"], c["floors"], c["stream"]
        rows.append((c["label"], format_number(stream["backbone_calls"] / stream["frames"]),
                     f"{format_ms(floors['time_to_first_frame_s'])} / {format_ms(floors['latency_s'])}",
                     _ms(e2e["time_to_first_frame_s"]), _ms(e2e["latency_median_s"]), _ms(e2e["latency_p95_s"]),
                     _ms(e2e["latency_max_s"]), format_ms(floors["per_frame_p95_s"]), _ms(e2e["above_floor_p95_s"]),
                     format_figure(e2e["sustained_fps"]), format_figure(e2e["real_time_factor"]),
                     "yes" if c["goal_met"] else "no"))
    header = ("configuration", "backbone calls per frame", "floors: first frame / latency ms",
              "time to first frame ms", "latency p50 ms", "latency p95 ms", "latency max ms", "p95 of the floors ms",
              "above floor p95 ms", "sustained fps", "real-time factor", "goal met")
    return markdown_table(header, rows)


def ratio_table(results: dict) -> str:
    """Each configuration's medians over the baseline's (for fps above 1 is better, for times below 1)."""
    labels = {c["name"]: c["label"] for c in results["configurations"]}
    rows = [(labels[name],) + tuple(format_ratio(r.get(key)) for key, _ in RATIO_COLUMNS)
            for name, r in results["ratios"].items()]
    return markdown_table(("configuration",) + tuple(title for _, title in RATIO_COLUMNS), rows)


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The whole report: headline, the end-to-end table, the ratios, and the plot when named."""
    configurations = results["configurations"]
    baseline = next(c["label"] for c in configurations if c["name"] == results["baseline"])
    parts = headline(results) + [
        "",
        "## End to end",
        "",
        "Floors from the audio alone, whatever the compute: first frame: its release audio (a clip's frames, "
        "or the S groups of a full rolling window, plus the look-ahead); latency: the first frame of a clip "
        "waits for the rest of its clip and the look-ahead, (F - 1 + m) frames, and the first frame of a rolling "
        "group for S - 1 more groups, (S k - 1 + m) frames, in the window's warm-up and after it alike. "
        "p95 of the floors: over every frame's own floor. Above floor: each frame's latency minus its own floor "
        "as the stream met it (compute and queueing), p95. Backbone calls per frame: the stream's calls over its "
        "frames (clip-wise S per clip; rolling one per group plus S - 1 to empty the window at the end).",
        "",
        end_to_end_table(configurations),
        "",
        f"## Against {baseline}",
        "",
        "Ratio of medians, measured in the same run: for fps above 1 is faster; for times below 1 is better.",
        "",
        ratio_table(results),
    ]
    if plot_name:
        parts += ["", f"![latency distribution and sustained fps]({plot_name})"]
    return "\n".join(parts) + "\n"


def plot(results: dict, path: Path) -> Path:
    """PNG: each configuration's latency distribution beside its floor and the goal, and its sustained fps."""
    from matplotlib import ticker

    plt = pyplot()

    configurations, settings = results["configurations"], results["settings"]
    labels = [c["label"] for c in configurations]
    positions = list(range(len(configurations)))
    fig, (ax_latency, ax_fps) = plt.subplots(1, 2, figsize=(14, 0.55 * len(labels) + 3), sharey=True,
                                             gridspec_kw={"width_ratios": [1.6, 1]})
    samples = [[v * 1000 for run in c["latencies_s"] for v in run] for c in configurations]
    ax_latency.boxplot(samples, positions=positions, orientation="horizontal", widths=0.6, showfliers=True)
    for i, c in enumerate(configurations):
        ax_latency.plot(c["floors"]["latency_s"] * 1000, i, marker="|", markersize=22, markeredgewidth=3,
                        color="tab:purple", label="latency floor" if i == 0 else None)
        ax_latency.plot(c["end_to_end"]["time_to_first_frame_s"]["median"] * 1000, i, marker="D", color="tab:red",
                        label="time to first frame" if i == 0 else None)
    ax_latency.axvline(settings["goal_p95_s"] * 1000, color="tab:green", linestyle="--", label="goal (p95)")
    ax_latency.set_xscale("log")
    ax_latency.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_latency.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax_latency.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax_latency.set_xlabel("audio-to-frame latency, paced stream (ms, log scale)")
    ax_latency.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize="small")
    ax_latency.set_title("latency distribution")

    for i, c in enumerate(configurations):
        figure = c["end_to_end"]["sustained_fps"]
        ax_fps.barh(i, figure["median"], color="tab:blue",
                    xerr=[[figure["median"] - figure["min"]], [figure["max"] - figure["median"]]])
    ax_fps.axvline(settings["goal_fps"], color="tab:green", linestyle="--", label="goal")
    ax_fps.set_xlabel("sustained fps, paced stream")
    ax_fps.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small")
    ax_fps.set_title("sustained frame rate")
    ax_latency.set_yticks(positions, labels)
    ax_latency.set_ylim(len(labels) - 0.5, -0.5)

    env = results["environment"]
    size = settings["resolution"]
    fig.suptitle(f"{settings['preset']} preset, {size}x{size}, {settings['steps']} steps, {env['device']} "
                 f"(torch {env['torch']}, {env['date'][:10]})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
