"""Sessions per replica: how many live sessions one ``emote serve`` process holds at 25 fps, latency in bound.

For each session count N and each mode (``plain``: every session makes its own backbone calls; ``batched``:
the server's session batching, ``--batch-ms``; ``ray``: ``emote serve --ray`` with one replica, sessions
through Ray Serve's proxy), a fresh ``emote serve`` process (one replica: one loaded
model, N slots, lag policy ``grow``) is started on a loopback port, warmed up by one short session, and N
clients stream their own speech to it at real time in 20 ms blocks over the session protocol, session i
joining i x 0.37 s after the first. Each frame's latency is measured at the client: from sending the audio
block holding that frame's time to receiving the frame (JPEG encoding and the socket included).

N sessions are *held* when every session got all its frames (none skipped, no error) and the p95 of the
pooled frame latencies is within the bound: the configuration's latency floor (what the clip cut and
look-ahead impose, whatever the compute) plus ``--budget-ms``. Sessions per replica: the largest N held
with every smaller N held too. Cost per stream-hour: the replica's price per hour over that.
Results: ``bench/results/<device>/sessions-<model>-<size>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.cli import add_common_flags, cuda_missing, int_tuple, results_dir, write_atomic
from bench.environment import describe, slug
from bench.harness import log
from bench.report import commit_text, format_ms, format_number, format_ratio, markdown_table, pyplot
from bench.speech import SAMPLE_RATE, SESSION_OFFSET_S, session_speech
from engine.backends import live_backend
from engine.serve.client import SessionResult, stream_session, to_pcm16
from engine.timebase import frame_start, frames_complete

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "emote-bench-sessions/1"
MODES = ("plain", "batched", "ray")
"""plain: `emote serve`; batched: with `--batch-ms`; ray: `emote serve --ray` with one replica (Ray Serve's proxy in
front of the same session code)."""
BLOCK_MS = 20.0
START_TIMEOUT_S = 180.0
BUSY_RETRY_S = 0.05
BUSY_WAIT_S = 5.0
POINT_KEYS = ("mode", "sessions", "repeat", "held", "sessions_ok", "frames_expected", "frames", "frames_skipped",
              "errors", "latency_floor_s", "bound_s", "latency_median_s", "latency_p95_s", "latency_max_s",
              "server_latency_p95_s", "min_sustained_fps", "replica_cpu_s", "stage_s_per_media_s")


@dataclass(frozen=True)
class SessionsSettings:
    """One run's settings.

    ``sessions``: the session counts tried; ``stream_s``: seconds of speech per session; ``budget_ms``: the
    latency allowed above the floor; ``backend``: the server's (None: ``emote serve``'s default for the device);
    ``threads``: the server's torch intra-op threads (None: torch's default); ``price_per_hour``: the replica's
    price in dollars per hour (None: $2.50 for a CUDA device, an on-demand H100 price, $0.085 for a CPU replica,
    a 2-vCPU cloud VM).
    """

    model: str = "talking64"
    device: str = "cpu"
    backend: str | None = None
    sessions: tuple[int, ...] = (1, 2, 3, 4)
    modes: tuple[str, ...] = ("plain", "batched")
    stream_s: float = 8.0
    steps: int | None = None
    first_clip: int = 4
    schedule: str = "clip"
    group: int = 2
    gather_ms: float = 5.0
    budget_ms: float = 250.0
    repeats: int = 1
    threads: int | None = None
    price_per_hour: float | None = None
    smoke: bool = False
    extra_serve_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", live_backend(self.backend, self.device))

    @property
    def price(self) -> float:
        """The replica's price in dollars per hour."""
        if self.price_per_hour is not None:
            return self.price_per_hour
        return 2.50 if self.device.startswith("cuda") else 0.085


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReplicaProcess:
    """``emote serve`` in a child process on a loopback port: one replica, ``slots`` session slots."""

    def __init__(self, settings: SessionsSettings, slots: int, mode: str, log_dir: Path):
        self.port = free_port()
        self.log_path = log_dir / f"serve-{slots}-{mode}-{self.port}.log"
        self.args = [sys.executable, "-m", "engine.cli", "serve", "--port", str(self.port), "--model", settings.model,
                     "--device", settings.device, "--backend", settings.backend, "--max-sessions", str(slots),
                     "--policy", "grow", "--first-clip", str(settings.first_clip),
                     "--schedule", settings.schedule, "--group", str(settings.group), *settings.extra_serve_args]
        if settings.steps is not None:
            self.args += ["--steps", str(settings.steps)]
        if mode == "batched":
            self.args += ["--batch-ms", str(settings.gather_ms)]
        if mode == "ray":  # the replica gets as many CPUs (torch threads) as the plain server's torch uses
            self.args += ["--ray", "--replicas", "1", "--replica-cpus", str(settings.threads or os.cpu_count())]
        self.env = dict(os.environ)
        if settings.threads is not None:
            self.env["OMP_NUM_THREADS"] = str(settings.threads)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The session WebSocket's address."""
        return f"ws://127.0.0.1:{self.port}/session"

    def __enter__(self) -> ReplicaProcess:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"emote serve exited with {self.process.returncode}: {self.last_line()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as page:
                    if page.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"emote serve did not answer within {START_TIMEOUT_S:.0f} s: {self.last_line()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server's processes (its session: with Ray, the
        replica, the proxy and Ray's own daemons too), in seconds."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.process.pid:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Ctrl-C the server, then kill whatever of its process group is left (Ray's daemons included)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()

    def last_line(self) -> str:
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "(no output)"


def frame_latencies(result: SessionResult, fps: float) -> list[float]:
    """Each received frame's latency at the client, in seconds: from sending the audio block that holds the
    frame's time (frame i at i / fps) to receiving the frame."""
    sent = np.asarray(result.sent_samples)
    latencies = []
    for frame, arrival in zip(result.frames, result.arrivals):
        sample = frame_start(frame.index, fps)
        block = int(np.searchsorted(sent, sample, side="right"))
        if block < len(sent):
            latencies.append(arrival - result.sent_at[block])
    return latencies


async def admitted_session(url: str, pcm16: np.ndarray, **options: object) -> SessionResult:
    """:func:`stream_session` of ``pcm16`` at ``url`` paced in real time in BLOCK_MS blocks (``options``: its other
    keywords), started again while it is answered ``busy`` (every BUSY_RETRY_S, for BUSY_WAIT_S at most): the
    server frees a slot only after the previous client's socket has closed, so a warm-up's slot can still be held
    for a moment when a measured session connects."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        result = await stream_session(url, pcm16, SAMPLE_RATE, block_ms=BLOCK_MS, realtime=True,
                                      timeout_s=3 * pcm16.size / SAMPLE_RATE + 120, **options)
        if (result.error or {}).get("code") != "busy" or time.monotonic() > deadline:
            return result
        await asyncio.sleep(BUSY_RETRY_S)


async def _clients(url: str, count: int, stream_s: float) -> list[SessionResult]:
    """``count`` paced sessions at ``url`` (:func:`admitted_session`), session i starting i x SESSION_OFFSET_S
    after the first."""
    async def one(index: int) -> SessionResult:
        await asyncio.sleep(index * SESSION_OFFSET_S)
        return await admitted_session(url, to_pcm16(session_speech(index, stream_s)))

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def measure_point(replica: ReplicaProcess, mode: str, count: int, repeat: int, settings: SessionsSettings) -> dict:
    """``count`` sessions at once on ``replica`` (already warm): one point of the sweep."""
    cpu_before = replica.cpu_seconds()
    results = asyncio.run(_clients(replica.url, count, settings.stream_s))
    cpu_used = replica.cpu_seconds() - cpu_before
    samples = round(settings.stream_s * SAMPLE_RATE)
    fps_video = next((r.ready["fps"] for r in results if r.ready is not None), 25.0)
    expected = frames_complete(samples, fps_video)
    latencies, errors, ok, fps, server_p95, stages = [], [], 0, [], [], {}
    floor = None
    for result in results:
        if result.ready is None or result.done is None or result.error is not None:
            errors.append((result.error or {}).get("message", f"closed with code {result.close_code}"))
            continue
        floor = result.ready["latency_floor_s"]
        skipped = sum(f.skipped for f in result.frames)
        ok += int(len(result.frames) == expected and skipped == 0)
        latencies += frame_latencies(result, fps_video)
        stats = result.done["stats"]
        fps.append(stats["sustained_fps"] or 0.0)
        server_p95.append(stats["latency_s"]["p95"])
        for name, stage in stats["stages"].items():
            stages[name] = stages.get(name, 0.0) + stage["total_s"] / (count * settings.stream_s)
    lat = np.asarray(latencies, dtype=np.float64)
    bound = None if floor is None else floor + settings.budget_ms / 1000
    p95 = float(np.percentile(lat, 95)) if lat.size else None
    held = ok == count and p95 is not None and p95 <= bound
    return {
        "mode": mode, "sessions": count, "repeat": repeat, "held": held, "sessions_ok": ok,
        "frames_expected": expected * count, "frames": sum(len(r.frames) for r in results),
        "frames_skipped": sum(f.skipped for r in results for f in r.frames), "errors": errors,
        "latency_floor_s": floor, "bound_s": bound,
        "latency_median_s": float(np.percentile(lat, 50)) if lat.size else None, "latency_p95_s": p95,
        "latency_max_s": float(lat.max()) if lat.size else None,
        "server_latency_p95_s": max(server_p95) if server_p95 else None,
        "min_sustained_fps": min(fps) if fps else None, "replica_cpu_s": cpu_used, "stage_s_per_media_s": stages,
    }


def sessions_per_replica(points: list[dict], mode: str, counts: tuple[int, ...]) -> int:
    """The largest count held in every repeat, with every smaller count tried held too (0 if none)."""
    best = 0
    for count in sorted(counts):
        rows = [p for p in points if p["mode"] == mode and p["sessions"] == count]
        if not rows or not all(p["held"] for p in rows):
            break
        best = count
    return best


def run(settings: SessionsSettings) -> dict:
    """The sweep: for each mode and session count, ``repeats`` fresh replicas; the results dictionary."""
    started = time.perf_counter()
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as tmp:
        for mode in settings.modes:
            for count in settings.sessions:
                for repeat in range(settings.repeats):
                    replica = ReplicaProcess(settings, count, mode, Path(tmp))
                    try:
                        with replica:
                            asyncio.run(_clients(replica.url, 1, min(1.0, settings.stream_s)))
                            point = measure_point(replica, mode, count, repeat, settings)
                    except RuntimeError as exc:
                        raise RuntimeError(f"{mode}, {count} session(s): {exc}") from None
                    points.append(point)
                    log(f"{mode}, {count} session(s): p95 {format_number(point['latency_p95_s'])} s "
                        f"(bound {format_number(point['bound_s'])} s), {point['sessions_ok']}/{count} complete, "
                        f"{'held' if point['held'] else 'not held'}")
    held = {mode: sessions_per_replica(points, mode, settings.sessions) for mode in settings.modes}
    cost = {mode: (settings.price / n if n else None) for mode, n in held.items()}
    over_plain = {mode: n / held["plain"] for mode, n in held.items() if mode != "plain" and held.get("plain")}
    device = torch.device(settings.device)
    return {"schema": SCHEMA, "smoke": settings.smoke,
            "settings": {**asdict(settings), "price_per_hour": settings.price}, "environment": describe(device),
            "points": points, "sessions_per_replica": held, "cost_per_stream_hour": cost,
            "over_plain": over_plain, "wall_s": time.perf_counter() - started}


def validate(results: dict) -> list[str]:
    """Problems with ``results``' layout (empty when it is as this module documents)."""
    problems = []
    for key in ("schema", "smoke", "settings", "environment", "points", "sessions_per_replica",
                "cost_per_stream_hour", "over_plain", "wall_s"):
        if key not in results:
            problems.append(f"missing {key}")
    if results.get("schema") != SCHEMA:
        problems.append(f"schema is not {SCHEMA}")
    for i, point in enumerate(results.get("points", [])):
        missing = [k for k in POINT_KEYS if k not in point]
        if missing:
            problems.append(f"points[{i}] lacks {missing}")
        elif point["held"] and not (point["sessions_ok"] == point["sessions"]
                                    and point["latency_p95_s"] <= point["bound_s"]):
            problems.append(f"points[{i}] is held without all its sessions complete within the bound")
    for mode, count in results.get("sessions_per_replica", {}).items():
        if not isinstance(count, int) or count < 0:
            problems.append(f"sessions_per_replica[{mode}] is not a count")
    return problems


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The results as a Markdown page."""
    s, env = results["settings"], results["environment"]
    steps = s["steps"] if s["steps"] is not None else "the model's"
    lines = [
        f"# Sessions per replica: {s['model']} on {env['device']}"
        + (" (smoke run, not a measurement)" if results["smoke"] else ""),
        "",
        f"{env['date']} · torch {env['torch']} · commit {commit_text(env)} · server torch threads "
        f"{s['threads'] or 'default'} · backend {s['backend']} · {steps} steps, {s['schedule']} schedule, first clip "
        f"{s['first_clip']} frames, lag policy grow",
        "",
        f"Each point: a fresh `emote serve` process with N slots, warmed up by one session, then N clients streaming "
        f"{s['stream_s']:g} s of their own speech in real time ({BLOCK_MS:g} ms blocks), joining "
        f"{SESSION_OFFSET_S} s apart. Latency: at the client, from sending the audio block holding a frame's time "
        f"to receiving the frame (JPEG and socket included), pooled over the sessions. Held: every session got all "
        f"its frames (none skipped) and the p95 is within the bound, the latency floor (clip cut and look-ahead) "
        f"+ {s['budget_ms']:g} ms. Replica CPU: the server's CPU seconds per second of speech per session "
        f"({env['cpu_count']} cores here). Denoise and decode: the sessions' wall seconds in each stage (as the "
        f"server timed them, sharing the CPU) per second of speech per session.",
        "",
    ]
    if plot_name:
        lines += [f"![p95 latency and sustained fps against sessions]({plot_name})", ""]
    rows = []
    for p in results["points"]:
        cpu = p["replica_cpu_s"] / (s["stream_s"] * p["sessions"])
        rows.append((p["mode"], str(p["sessions"]), f"{p['sessions_ok']}/{p['sessions']}",
                     f"{p['frames']} / {p['frames_expected']}", str(p["frames_skipped"]),
                     *(format_ms(p[key]) for key in ("latency_median_s", "latency_p95_s", "latency_max_s",
                                                     "latency_floor_s", "bound_s", "server_latency_p95_s")),
                     format_number(p["min_sustained_fps"]), format_number(cpu),
                     format_number(p["stage_s_per_media_s"].get("denoise")),
                     format_number(p["stage_s_per_media_s"].get("decode")), "yes" if p["held"] else "no"))
    lines += [markdown_table(("mode", "sessions", "complete", "frames", "skipped", "latency p50 ms", "latency p95 ms",
                              "latency max ms", "floor ms", "bound ms", "server-side p95 ms", "lowest sustained fps",
                              "replica CPU s per s", "denoise s per s", "decode s per s", "held"), rows), ""]
    held_rows = [(mode, str(n), "-" if results["cost_per_stream_hour"][mode] is None
                  else f"${results['cost_per_stream_hour'][mode]:.3f}")
                 for mode, n in results["sessions_per_replica"].items()]
    lines += ["## Sessions per replica", "",
              f"Cost per stream-hour: the replica's price, an assumed ${s['price_per_hour']:.3f} per hour "
              f"(`--price-per-hour`), over the sessions it holds.", "",
              markdown_table(("mode", "sessions per replica", "cost per stream-hour"), held_rows), ""]
    for mode, ratio in results["over_plain"].items():
        lines += [f"{mode} / plain sessions per replica: **{format_ratio(ratio)}**", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    """p95 latency (with the bound) and the lowest sustained fps against the session count, per mode."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in results["settings"]["modes"]:
        rows = sorted((p for p in results["points"] if p["mode"] == mode), key=lambda p: (p["sessions"], p["repeat"]))
        counts = [p["sessions"] for p in rows]
        left.plot(counts, [1000 * (p["latency_p95_s"] or math.nan) for p in rows], "o-", label=f"{mode}: p95")
        right.plot(counts, [p["min_sustained_fps"] or math.nan for p in rows], "o-", label=mode)
    bounds = [p["bound_s"] for p in results["points"] if p["bound_s"] is not None]
    if bounds:
        left.axhline(1000 * max(bounds), color="grey", linestyle="--", label="bound (floor + budget)")
    right.axhline(25, color="grey", linestyle="--", label="25 fps")
    left.set(xlabel="live sessions on the replica", ylabel="audio-to-frame latency p95 (ms)", yscale="log")
    right.set(xlabel="live sessions on the replica", ylabel="lowest sustained fps of a session (frames/s)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{results['settings']['model']} on {results['environment']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="talking64", help="model name, preset or directory (default talking64)")
    parser.add_argument("--sessions", type=int_tuple, help="session counts to try (default 1,2,3,4)")
    parser.add_argument("--modes", default="plain,batched",
                        help="comma-separated, of plain, batched, ray (needs the ray extra); default plain,batched")
    parser.add_argument("--schedule", choices=["clip", "rolling"], help="clip (default) or rolling")
    parser.add_argument("--group", type=int, help="frames per group of the rolling schedule (default 2)")
    parser.add_argument("--budget-ms", type=float, help="latency allowed above the floor at p95 (default 250)")
    parser.add_argument("--gather-ms", type=float, help="the batched mode's gather window (default 5 ms)")
    parser.add_argument("--price-per-hour", type=float, help="replica price in $/h (default 2.50 cuda, 0.085 cpu)")
    add_common_flags(parser, "device", "out_dir", backend="engine backend (default: emote serve's, torchscript on "
                                                          "the CPU)",
                     stream_s="speech per session (default 8 s)", steps="sampler steps (default: the model's)",
                     repeats="fresh replicas per point (default 1)",
                     threads="the server's torch threads (default: torch's)",
                     smoke="tiny model, 1 session, 1 s, 1 step: checks the benchmark")
    parser.set_defaults(backend=None)
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or not set(modes) <= set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    args.modes = modes
    if args.stream_s is not None and not args.stream_s >= 1:
        parser.error("--stream-seconds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smoke = dict(model="tiny", sessions=(1,), stream_s=1.0, steps=1, extra_serve_args=("--size", "64")) \
        if args.smoke else {}
    given = {k: v for k, v in dict(sessions=args.sessions, stream_s=args.stream_s, steps=args.steps,
                                   schedule=args.schedule, group=args.group, budget_ms=args.budget_ms,
                                   gather_ms=args.gather_ms, repeats=args.repeats, threads=args.threads,
                                   price_per_hour=args.price_per_hour).items() if v is not None}
    settings = SessionsSettings(**{**dict(model=args.model, device=args.device, backend=args.backend,
                                          modes=args.modes, smoke=args.smoke), **smoke, **given})
    device = torch.device(settings.device)
    if cuda_missing(device, "bench.sessions"):
        return 2
    try:
        results = run(settings)
    except RuntimeError as exc:
        print(f"bench.sessions: {exc}", file=sys.stderr)
        return 1
    problems = validate(results)
    if problems:
        print("bench.sessions: malformed results: " + "; ".join(problems), file=sys.stderr)
        return 1
    out_dir = results_dir(args.out_dir, settings.smoke, device)
    steps = "" if settings.steps is None else f"-{settings.steps}step"
    stem = out_dir / f"sessions-{slug(Path(settings.model).name)}-{settings.device.split(':')[0]}{steps}"
    png = plot(results, stem.with_suffix(".png"))
    write_atomic(stem.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(results, png.name))
    for mode, count in results["sessions_per_replica"].items():
        cost = results["cost_per_stream_hour"][mode]
        print(f"{mode}: {count} session(s) per replica" + ("" if cost is None else f", ${cost:.3f} per stream-hour"))
    print(f"results: {stem}.json\n         {stem}.md\n         {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
