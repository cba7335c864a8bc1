"""Results of a benchmark run: the JSON layout and its check, the Markdown tables, the PNG plot.

Every measured figure is ``{"median", "min", "max", "values"}`` over the repeats (``values`` in run
order); a figure a recipe does not have is null. Units are in the key: ``_s`` seconds, ``_fps`` frames
per second, ``_mib`` MiB; FLOPs are counts (a multiply-add counts 2).
"""

from __future__ import annotations

import math
from pathlib import Path

FIGURE_KEYS = ("median", "min", "max", "values")
END_TO_END = ("time_to_first_frame_s", "latency_median_s", "latency_p95_s", "latency_max_s", "sustained_fps",
              "real_time_factor", "offline_fps")
STAGES = ("audio_encoder_s_per_media_s", "reference_net_per_session_s", "reference_net_per_clip_s",
          "vae_encode_per_clip_s", "backbone_per_step_per_frame_s", "vae_decode_per_frame_s")
CONFIGURATION_KEYS = ("name", "label", "recipe", "steps", "guidance", "sampler", "vae", "backend", "kernels", "dtype",
                      "clip_frames", "first_clip_frames", "motion_frames", "stream", "end_to_end", "latencies_s",
                      "stages", "breakdown_s_per_frame", "calls", "flops", "bound", "memory")
TOP_KEYS = ("schema", "smoke", "environment", "settings", "notes", "peak", "configurations", "ratios", "wall_s")
ENVIRONMENT_KEYS = ("device", "device_kind", "torch", "python", "packages", "git", "date", "driver", "torch_threads")
BREAKDOWN_ORDER = ("audio encoder", "ReferenceNet", "face locator + speed", "backbone", "VAE encode", "VAE decode")


def check_figure(value: object, where: str, nullable: bool, problems: list[str]) -> None:
    """Append to ``problems`` what is wrong with the figure ``value`` at ``where`` (None allowed when ``nullable``)."""
    if value is None:
        if not nullable:
            problems.append(f"{where}: missing figure")
        return
    if not isinstance(value, dict) or set(value) != set(FIGURE_KEYS):
        problems.append(f"{where}: a figure has exactly the keys {FIGURE_KEYS}")
        return
    values = value["values"]
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
        problems.append(f"{where}.values: a non-empty list of numbers")
        return
    if not min(values) <= value["median"] <= max(values) or value["min"] != min(values) or value["max"] != max(values):
        problems.append(f"{where}: median/min/max disagree with the values")


def check_keys(value: object, keys: tuple[str, ...], where: str, problems: list[str]) -> bool:
    """Whether ``value`` is an object with every key of ``keys``; appends to ``problems`` when not."""
    if not isinstance(value, dict):
        problems.append(f"{where}: not an object")
        return False
    missing = [k for k in keys if k not in value]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
    return not missing


def validate(results: dict) -> list[str]:
    """Problems with ``results``' layout (empty when it is as this module documents)."""
    problems: list[str] = []
    if not check_keys(results, TOP_KEYS, "results", problems):
        return problems
    if results["schema"] != "emote-bench/1":
        problems.append(f"schema: unknown {results['schema']!r}")
    check_keys(results["environment"], ENVIRONMENT_KEYS, "environment", problems)
    if check_keys(results["peak"], ("dtype", "n", "tflops", "best_tflops"), "peak", problems):
        check_figure(results["peak"]["tflops"], "peak.tflops", False, problems)
    configurations = results["configurations"]
    if not isinstance(configurations, list) or not configurations:
        problems.append("configurations: a non-empty list")
        return problems
    recipes = [c.get("recipe") for c in configurations if isinstance(c, dict)]
    if recipes.count("reference") != 1 or "engine" not in recipes:
        problems.append("configurations: exactly one reference and at least one engine configuration")
    for i, config in enumerate(configurations):
        where = f"configurations[{i}]"
        if not check_keys(config, CONFIGURATION_KEYS, where, problems):
            continue
        for key in END_TO_END:
            nullable = key != "offline_fps" and key != "time_to_first_frame_s"
            check_figure(config["end_to_end"].get(key), f"{where}.end_to_end.{key}", nullable, problems)
        for key in STAGES:
            nullable = key not in ("backbone_per_step_per_frame_s", "vae_decode_per_frame_s")
            check_figure(config["stages"].get(key), f"{where}.stages.{key}", nullable, problems)
        if not isinstance(config["flops"].get("per_frame"), (int, float)) or not config["flops"]["per_frame"] > 0:
            problems.append(f"{where}.flops.per_frame: a positive number")
        if not isinstance(config["bound"].get("fps"), (int, float)):
            problems.append(f"{where}.bound.fps: a number")
        check_figure(config["bound"].get("offline_fraction"), f"{where}.bound.offline_fraction", False, problems)
        check_figure(config["memory"].get("host_peak_mib"), f"{where}.memory.host_peak_mib", True, problems)
        if not isinstance(config["latencies_s"], list) or not all(isinstance(r, list) for r in config["latencies_s"]):
            problems.append(f"{where}.latencies_s: a list of lists (one per paced run)")
    engines = {c["name"] for c in configurations if isinstance(c, dict) and c.get("recipe") == "engine"}
    if set(results["ratios"]) != engines:
        problems.append("ratios: one entry per engine configuration")
    return problems


def format_figure(figure: dict | None, scale: float = 1.0, digits: int = 3, spread: bool = True) -> str:
    """``median (min–max)`` of a figure times ``scale``, in ``digits`` significant digits; ``-`` for None."""
    if figure is None:
        return "-"
    median = format_number(figure["median"] * scale, digits)
    if not spread or len(figure["values"]) < 2:
        return median
    return f"{median} ({format_number(figure['min'] * scale, digits)}–{format_number(figure['max'] * scale, digits)})"


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` in ``digits`` significant digits (whole numbers with thousands separators from
    ``10**digits`` up, an exponent only below 1e-3 or from 1e7); ``-`` for None."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 10 ** digits <= magnitude < 1e7:
        return f"{value:,.0f}"
    if magnitude >= 1e7 or magnitude < 1e-3:
        return f"{value:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"


def format_ratio(value: float | None) -> str:
    """A ratio as ``12.3x`` (or ``0.0123x``); ``-`` for None."""
    return "-" if value is None else f"{format_number(value, 3)}x"


def pyplot():
    """``matplotlib.pyplot`` drawing to files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def results_page(title: str, summary: str, table: str, plot_name: str | None, alt: str) -> str:
    """A results Markdown page: the title as a heading, a paragraph saying how it was measured, the table, and the
    plot (alt text ``alt``) when one was drawn."""
    lines = [f"# {title}", "", summary, "", table]
    if plot_name:
        lines += ["", f"![{alt}]({plot_name})"]
    return "\n".join(lines) + "\n"


def grouped_bars(path: Path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> Path:
    """A bar chart written to ``path``: one group of bars per label in ``groups``, one bar per ``series`` entry in
    each (its values in group order), a legend of the series' names."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(groups), 3.6))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(groups))], values, width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table: a header row, the alignment row, then ``rows`` (each as long as ``header``)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError("every row needs one cell per column")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ms(figure: dict | None) -> str:
    return format_figure(figure, 1000.0)


def format_ms(seconds: float | None) -> str:
    """Seconds as milliseconds in 3 significant digits; ``-`` for None."""
    return "-" if seconds is None else format_number(seconds * 1000)


def _percent(figure: dict | None) -> str:
    return format_figure(figure, 100.0, digits=2)


def commit_text(environment: dict) -> str:
    """The environment's git commit, shortened, noting uncommitted changes."""
    git = environment["git"]
    return (git["commit"] or "unknown")[:12] + (" + uncommitted changes" if git["dirty"] else "")


def headline(results: dict) -> list[str]:
    """The lines naming what was measured where: device, torch, date, commit, settings, peak."""
    env, settings, peak = results["environment"], results["settings"], results["peak"]
    commit, driver = commit_text(env), f", driver {env['driver']}" if env.get("driver") else ""
    return [
        f"# Benchmark: `{settings['preset']}` preset at {settings['resolution']}x{settings['resolution']} on "
        f"{env['device']}",
        "",
        f"{env['date']} · torch {env['torch']}{driver} · commit {commit} · "
        f"intra-op threads {env['torch_threads']} · "
        f"{peak['dtype']} matrix-product peak {format_number(peak['best_tflops'], 3)} TFLOP/s (measured in this run, "
        f"n={peak['n']}, best of {len(peak['tflops']['values'])})",
        "",
        f"Stream: {settings['fps']:g} fps video, clips of {settings['clip_frames']} frames + "
        f"{settings['motion_frames']} motion frames, look-ahead {settings['lookahead_frames']} frames; the "
        f"engine's first clip {settings['first_clip_frames'] or settings['clip_frames']} frame(s); "
        f"{settings['repeats']} repeats (figures: median (min–max)). Backends: "
        + "; ".join(sorted({f"{c['recipe']} {c['backend']} {c['dtype']}, fused ops: {c['kernels']}"
                            for c in results["configurations"]})) + ".",
    ] + [f"- {note}" for note in results["notes"]]


def end_to_end_table(configurations: list[dict]) -> str:
    """Throughput against the physical bound, and the paced stream's measures."""
    rows = []
    for c in configurations:
        e2e, bound, stream = c["end_to_end"], c["bound"], c["stream"]
        floors = f"{format_ms(stream['time_to_first_frame_floor_s'])} / {format_ms(stream['latency_floor_s'])}"
        rows.append((c["label"], f"{format_number(stream['media_s'], 3)} s", format_figure(e2e["offline_fps"]),
                     format_number(bound["fps"]), _percent(bound["offline_fraction"]),
                     format_figure(e2e["sustained_fps"]), format_figure(e2e["real_time_factor"]),
                     _ms(e2e["time_to_first_frame_s"]), _ms(e2e["latency_median_s"]), _ms(e2e["latency_p95_s"]),
                     _ms(e2e["latency_max_s"]), floors))
    header = ("configuration", "speech (paced)", "offline fps", "bound fps", "% of bound", "sustained fps (paced)",
              "real-time factor", "time to first frame ms", "latency p50 ms", "latency p95 ms", "latency max ms",
              "floors from the audio alone: first frame / latency ms")
    return markdown_table(header, rows)


def stage_table(configurations: list[dict]) -> str:
    """Per-stage times (ms), FLOPs per frame and peak memory."""
    rows = []
    for c in configurations:
        s, memory = c["stages"], c["memory"]
        rows.append((c["label"], _ms(s["audio_encoder_s_per_media_s"]), _ms(s["reference_net_per_session_s"]),
                     _ms(s["reference_net_per_clip_s"]), _ms(s["vae_encode_per_clip_s"]),
                     _ms(s["backbone_per_step_per_frame_s"]), _ms(s["vae_decode_per_frame_s"]),
                     format_number(c["flops"]["per_frame"] / 1e9), format_figure(memory["host_peak_mib"], digits=4),
                     format_figure(memory["device_peak_mib"], digits=4)))
    header = ("configuration", "audio encoder ms per s of media", "ReferenceNet ms per session",
              "ReferenceNet ms per clip", "VAE encode ms per clip", "backbone ms per step per frame",
              "VAE decode ms per frame", "GFLOP per frame", "host peak MiB", "device peak MiB")
    return markdown_table(header, rows)


RATIO_COLUMNS = (("offline_fps", "offline fps"), ("sustained_fps", "sustained fps"),
                 ("real_time_factor", "real-time factor"), ("time_to_first_frame_s", "time to first frame"),
                 ("latency_median_s", "latency p50"), ("latency_p95_s", "latency p95"),
                 ("latency_max_s", "latency max"),
                 ("backbone_per_step_per_frame_s", "backbone per step per frame"),
                 ("vae_decode_per_frame_s", "VAE decode per frame"), ("flops_per_frame", "FLOP per frame"))


def ratio_table(results: dict) -> str:
    """engine / reference of each figure's median (above 1 is more; for times and FLOPs below 1 is better)."""
    labels = {c["name"]: c["label"] for c in results["configurations"]}
    rows = [(labels[name],) + tuple(format_ratio(r.get(key)) for key, _ in RATIO_COLUMNS)
            for name, r in results["ratios"].items()]
    return markdown_table(("configuration",) + tuple(title for _, title in RATIO_COLUMNS), rows)


def breakdown_table(configurations: list[dict]) -> str:
    """Network milliseconds per output frame, by stage (from the synchronised stage times)."""
    rows = []
    for c in configurations:
        b = c["breakdown_s_per_frame"]
        cells = tuple(format_number(b[s] * 1000) if s in b else "-" for s in BREAKDOWN_ORDER)
        rows.append((c["label"],) + cells + (format_number(sum(b.values()) * 1000),))
    return markdown_table(("configuration",) + BREAKDOWN_ORDER + ("total",), rows)


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The whole report: headline, the four tables, and the plot when named."""
    configurations = results["configurations"]
    parts = headline(results) + [
        "",
        "## End to end",
        "",
        "Offline: the speech given at once, frames per second of generation. Bound: the device's matrix-product "
        "peak over the configuration's FLOPs per frame (counted on the meta device, attention included). "
        "Paced: the speech arriving in real time in 20 ms blocks; the reference recipe cannot start before "
        "the utterance is complete. Floors: what the clip cut and look-ahead alone impose, whatever the compute "
        "(first frame: first clip + look-ahead; latency: a clip's first frame waits for the rest of its clip "
        "and the look-ahead).",
        "",
        end_to_end_table(configurations),
        "",
        "## engine / reference",
        "",
        "Ratio of medians: for fps above 1 is faster; for times, latencies and FLOPs below 1 is better.",
        "",
        ratio_table(results),
        "",
        "## Per stage",
        "",
        "Each distinct network call of the first paced stream replayed with device synchronisation "
        "(CUDA events on a GPU) after a warm-up call. Backbone per step per frame includes every guidance branch.",
        "",
        stage_table(configurations),
        "",
        "## Where the time goes",
        "",
        "Network milliseconds per output frame over the stream, by stage (the streaming runtime overlaps "
        "decoding with denoising, so wall time per frame can be lower than the total).",
        "",
        breakdown_table(configurations),
    ]
    if plot_name:
        parts += ["", f"![latency distribution and per-stage breakdown]({plot_name})"]
    return "\n".join(parts) + "\n"


def plot(results: dict, path: Path) -> Path:
    """PNG: throughput against the bound, latency distribution, share of time per stage."""
    plt = pyplot()

    configurations = results["configurations"]
    labels = [c["label"] for c in configurations]
    positions = list(range(len(configurations)))
    fig, (ax_fps, ax_latency, ax_stages) = plt.subplots(1, 3, figsize=(19, 0.6 * len(labels) + 3.2),
                                                        sharey=True, gridspec_kw={"width_ratios": [1, 1.2, 1.2]})
    for i, c in enumerate(configurations):
        figure = c["end_to_end"]["offline_fps"]
        if figure is not None:
            ax_fps.barh(i, figure["median"], color="tab:blue",
                        xerr=[[figure["median"] - figure["min"]], [figure["max"] - figure["median"]]],
                        label="measured (offline)" if i == 0 else None)
        if c["bound"]["fps"]:
            ax_fps.plot(c["bound"]["fps"], i, marker="|", markersize=18, color="black",
                        label="physical bound" if i == 0 else None)
    ax_fps.set_xscale("log")
    ax_fps.set_xlabel("throughput (frames per second, log scale)")
    ax_fps.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize="small")
    ax_fps.set_title("throughput vs physical bound")

    samples = [[v * 1000 for run in c["latencies_s"] for v in run] or [float("nan")] for c in configurations]
    ax_latency.boxplot(samples, positions=positions, orientation="horizontal", widths=0.6, showfliers=True)
    for i, c in enumerate(configurations):
        ttff = c["end_to_end"]["time_to_first_frame_s"]
        if ttff is not None:
            ax_latency.plot(ttff["median"] * 1000, i, marker="D", color="tab:red",
                            label="time to first frame" if i == 0 else None)
    ax_latency.set_xscale("log")
    ax_latency.set_xlabel("audio-to-frame latency, paced stream (ms, log scale)")
    ax_latency.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize="small")
    ax_latency.set_title("latency distribution")

    colours = ("tab:purple", "tab:olive", "tab:gray", "tab:blue", "tab:cyan", "tab:orange")
    for i, c in enumerate(configurations):
        breakdown = c["breakdown_s_per_frame"]
        total = sum(breakdown.values())
        left = 0.0
        for stage, colour in zip(BREAKDOWN_ORDER, colours):
            share = 100 * breakdown.get(stage, 0.0) / total if total else 0.0
            ax_stages.barh(i, share, left=left, color=colour, label=stage if i == 0 else None)
            left += share
        ax_stages.text(101, i, f"{format_number(total * 1000)} ms/frame", va="center", fontsize="small")
    ax_stages.set_xlim(0, 125)
    ax_stages.set_xlabel("share of network time per output frame (%)")
    ax_stages.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize="small")
    ax_stages.set_title("where the time goes")
    ax_fps.set_yticks(positions, labels)
    ax_fps.set_ylim(len(labels) - 0.5, -0.5)

    env, settings = results["environment"], results["settings"]
    fig.suptitle(f"{settings['preset']} preset, {settings['resolution']}x{settings['resolution']}, {env['device']} "
                 f"(torch {env['torch']}, {env['date'][:10]})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
