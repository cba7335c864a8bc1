"""One always-on session of `emote serve` through each transport: the WebSocket protocol and WebRTC.

For every round and transport (round-robin), a fresh ``emote serve --webrtc`` process (one slot, lag policy
``grow``, the model's own settings) is warmed up by a 1-s WebSocket session, then one always-on session runs
while its client sends ``--seconds`` of speech with pauses (speech, 1 s of silence, speech) in real time in
20 ms blocks: over the socket as PCM messages; over WebRTC as an aiortc audio track (the microphone's part),
with the avatar's video and audio tracks received and a ``control`` data channel for the server's figures.

Figures per session: frames received against the frames the seconds make at the stream's fps, frames
skipped, the server's audio-to-frame latency p50 / p95 (the session's own figure: audio in -> frame out,
before the transport) against the bound (the latency floor + ``--budget-ms``), the lowest sustained fps, the
server's CPU seconds per second of video; for WebRTC also how much later than its timestamp each frame
arrived, relative to the earliest (p95). WebRTC's CPU per second minus the socket's is what the WebRTC path
(encode, RTP, SRTP, pacing) costs. Results: ``bench/results/<device>/always-on-<model>[-<S>step].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.cli import results_dir, write_results
from bench.environment import describe
from bench.harness import log
from bench.report import commit_text, format_ms, format_number, markdown_table, pyplot
from bench.sessions import BUSY_RETRY_S, BUSY_WAIT_S, ReplicaProcess, SessionsSettings, _clients, admitted_session
from bench.speech import SAMPLE_RATE, session_speech
from engine.serve.client import to_pcm16
from engine.timebase import frames_complete

SCHEMA = "emote-bench-always-on/1"
TRANSPORTS = ("websocket", "webrtc")
BLOCK = SAMPLE_RATE // 50
"""Samples of one 20 ms block, the client's send unit on both transports."""
PAUSE_S = 1.0


def client_speech(seconds: float) -> np.ndarray:
    """``seconds`` of int16 16 kHz speech: half of it, ``PAUSE_S`` of silence, the other half."""
    speech = to_pcm16(session_speech(0, max(1.0, seconds - PAUSE_S)))
    half = speech.size // 2
    return np.concatenate([speech[:half], np.zeros(round(PAUSE_S * SAMPLE_RATE), np.int16), speech[half:]])


def point(transport: str, round_index: int, seconds: float, frames: int, expected: int, stats: dict, ready: dict,
          cpu_s: float, budget_ms: float, arrival_delay_p95_s: float | None = None) -> dict:
    """One session's figures (``stats``: the server's latency p50/p95, skipped, sustained fps)."""
    bound = ready["latency_floor_s"] + budget_ms / 1000
    p95 = stats.get("latency_p95_s")
    held = frames >= expected and stats["frames_skipped"] == 0 and p95 is not None and p95 <= bound
    return {"transport": transport, "round": round_index, "seconds": seconds, "frames": frames,
            "frames_expected": expected, "frames_skipped": stats["frames_skipped"],
            "latency_p50_s": stats.get("latency_p50_s"), "latency_p95_s": p95,
            "latency_floor_s": ready["latency_floor_s"], "bound_s": bound, "sustained_fps": stats["sustained_fps"],
            "server_cpu_s_per_s": cpu_s / seconds, "arrival_delay_p95_s": arrival_delay_p95_s, "held": held}


async def websocket_session(replica: ReplicaProcess, pcm16: np.ndarray) -> tuple[int, dict, dict]:
    """The session over the socket: (frames received, the server's final figures, its ``ready``)."""
    result = await admitted_session(replica.url, pcm16, always_on=True)
    if result.error is not None or result.done is None:
        raise RuntimeError(f"websocket session failed: {result.error or result.close_code}")
    summary = result.done["stats"]
    stats = {"frames_skipped": summary["frames_skipped"], "sustained_fps": summary["sustained_fps"],
             "latency_p50_s": summary["latency_s"]["median"], "latency_p95_s": summary["latency_s"]["p95"]}
    return len(result.frames), stats, result.ready


async def webrtc_session(replica: ReplicaProcess, pcm16: np.ndarray) -> tuple[int, dict, dict, float | None]:
    """The session over WebRTC: (frames whose timestamp falls within the speech, the server's last figures, its
    ``ready``, the p95 of how much later than its timestamp a frame arrived, relative to the earliest)."""
    import aiohttp
    import av
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class Microphone(MediaStreamTrack):
        """``pcm16`` as 20 ms audio frames at real time, then the end of the track."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.next, self.started = 0, None

        async def recv(self) -> av.AudioFrame:
            if self.next >= pcm16.size:
                self.stop()
                raise MediaStreamError
            self.started = self.started or time.perf_counter()
            await asyncio.sleep(max(0.0, self.started + self.next / SAMPLE_RATE - time.perf_counter()))
            block = np.zeros(BLOCK, np.int16)
            chunk = pcm16[self.next:self.next + BLOCK]
            block[:chunk.size] = chunk
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self.next, fractions.Fraction(1, SAMPLE_RATE)
            self.next += BLOCK
            return frame

    seconds = pcm16.size / SAMPLE_RATE
    pc = RTCPeerConnection()
    pc.addTrack(Microphone())
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("control")
    messages: dict[str, dict] = {}

    @channel.on("message")
    def keep(data: str) -> None:  # the last message of each type
        message = json.loads(data)
        messages[message["type"]] = message

    arrivals: list[tuple[float, float]] = []  # (arrival, pts in seconds)
    readers: list[asyncio.Task] = []

    async def read(track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    arrivals.append((time.perf_counter(), float(frame.pts * frame.time_base)))
        except MediaStreamError:
            return

    pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer_url = replica.url.replace("ws://", "http://").replace("/session", "/webrtc/offer")
        deadline = time.monotonic() + BUSY_WAIT_S
        async with aiohttp.ClientSession() as http:
            while True:  # busy (503) while the warm-up's slot is being freed
                async with http.post(offer_url, json={"type": "offer", "sdp": pc.localDescription.sdp}) as response:
                    answer = await response.json()
                if response.status != 503 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(BUSY_RETRY_S)
        if response.status != 200:
            raise RuntimeError(f"webrtc offer refused: {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        deadline = time.perf_counter() + seconds + 60
        while not any(pts >= seconds for _, pts in arrivals) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # a stats message after the last frame counted
    finally:
        await pc.close()
        for task in readers:
            task.cancel()
    if "ready" not in messages or "stats" not in messages:
        raise RuntimeError("webrtc session: no ready or stats message on the control channel")
    counted = [(arrival, pts) for arrival, pts in arrivals if pts < seconds]
    lateness = np.array([arrival - pts for arrival, pts in counted])
    delay = float(np.percentile(lateness - lateness.min(), 95)) if lateness.size else None
    return len(counted), messages["stats"]["stats"], messages["ready"], delay


def measure(args: argparse.Namespace) -> dict:
    """Every transport ``args.rounds`` times, round-robin, each on a fresh server."""
    pcm16 = client_speech(args.seconds)
    seconds = pcm16.size / SAMPLE_RATE
    server_flags = ("--webrtc", *(("--size", "64") if args.smoke else ()))
    settings = SessionsSettings(model=args.model, sessions=(1,), modes=("plain",), steps=args.steps,
                                threads=args.threads, extra_serve_args=server_flags)
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-always-on-") as tmp:
        for round_index in range(args.rounds):
            for transport in args.transports:
                with ReplicaProcess(settings, 1, "plain", Path(tmp)) as replica:
                    asyncio.run(_clients(replica.url, 1, 1.0))
                    cpu_before = replica.cpu_seconds()
                    if transport == "websocket":
                        frames, stats, ready = asyncio.run(websocket_session(replica, pcm16))
                        delay = None
                    else:
                        frames, stats, ready, delay = asyncio.run(webrtc_session(replica, pcm16))
                    cpu = replica.cpu_seconds() - cpu_before
                fps = ready["fps"]
                row = point(transport, round_index, seconds, frames, frames_complete(pcm16.size, fps), stats, ready,
                            cpu, args.budget_ms, delay)
                points.append(row)
                log(f"{transport} round {round_index + 1}: {frames}/{row['frames_expected']} frames, p95 "
                    f"{format_ms(row['latency_p95_s'])} (bound {format_ms(row['bound_s'])}), CPU "
                    f"{row['server_cpu_s_per_s']:.2f} s per s, {'held' if row['held'] else 'not held'}")
    cost = {}
    for transport in args.transports:
        cpu = [p["server_cpu_s_per_s"] for p in points if p["transport"] == transport]
        cost[transport] = float(np.median(cpu))
    webrtc_extra = cost["webrtc"] - cost["websocket"] if set(TRANSPORTS) <= set(cost) else None
    return {"schema": SCHEMA, "smoke": args.smoke, "model": args.model, "steps": args.steps, "seconds": seconds,
            "rounds": args.rounds, "threads": args.threads,
            "budget_ms": args.budget_ms, "environment": describe(torch.device("cpu")), "points": points,
            "median_cpu_s_per_s": cost, "webrtc_extra_cpu_s_per_s": webrtc_extra}


def markdown(results: dict, plot_name: str | None = None) -> str:
    """The results as a Markdown page."""
    env = results["environment"]
    steps = f"{results['steps']} steps" if results["steps"] else "the model's steps"
    rows = [(p["transport"], str(p["round"] + 1), f"{p['frames']} / {p['frames_expected']}", str(p["frames_skipped"]),
             format_ms(p["latency_p50_s"]), format_ms(p["latency_p95_s"]), format_ms(p["bound_s"]),
             format_number(p["sustained_fps"]), format_number(p["server_cpu_s_per_s"]),
             format_ms(p["arrival_delay_p95_s"]), "yes" if p["held"] else "no") for p in results["points"]]
    extra = results["webrtc_extra_cpu_s_per_s"]
    lines = [f"# One always-on session per transport: {results['model']} on {env['device']}"
             + (" (smoke run, not a measurement)" if results["smoke"] else ""), "",
             f"{env['date']} · commit {commit_text(env)} · "
             f"{steps} · server threads {results['threads'] or 'default'} · "
             f"{results['seconds']:g} s of speech with a {PAUSE_S:g}-s pause, sent in real time in 20 ms blocks · "
             f"{results['rounds']} rounds, round-robin, a fresh `emote serve --webrtc` per session", "",
             "Latency: the server's own figure (audio in -> frame out, before the transport). Held: every frame "
             f"came, none skipped, p95 within the latency floor + {results['budget_ms']:g} ms. Arrival delay "
             "(WebRTC): how much later than its timestamp a frame arrived at the client, relative to the earliest.",
             "",
             markdown_table(("transport", "round", "frames", "skipped", "latency p50 ms", "latency p95 ms", "bound ms",
                             "sustained fps", "server CPU s per s", "arrival delay p95 ms", "held"), rows), ""]
    if extra is not None:
        lines += [f"Median server CPU per second of video: WebSocket "
                  f"{results['median_cpu_s_per_s']['websocket']:.2f} s, WebRTC "
                  f"{results['median_cpu_s_per_s']['webrtc']:.2f} s: the WebRTC path costs **{extra * 1000:.0f} ms of "
                  f"CPU per second of video** more (encode, RTP, SRTP, pacing).", ""]
    if plot_name:
        lines += [f"![latency and CPU per transport]({plot_name})", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    """p95 latency (with the bound) and server CPU per second, per session, by transport."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for transport in TRANSPORTS:
        rows = [p for p in results["points"] if p["transport"] == transport]
        if not rows:
            continue
        rounds = [p["round"] + 1 for p in rows]
        left.plot(rounds, [1000 * (p["latency_p95_s"] or np.nan) for p in rows], "o-", label=transport)
        right.plot(rounds, [p["server_cpu_s_per_s"] for p in rows], "o-", label=transport)
    bounds = [p["bound_s"] for p in results["points"]]
    if bounds:
        left.axhline(1000 * max(bounds), color="grey", linestyle="--", label="bound")
    left.set(xlabel="round", ylabel="server latency p95 (ms)")
    right.set(xlabel="round", ylabel="server CPU s per s of video")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"always-on, {results['model']} on {results['environment']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stem(results: dict) -> str:
    """The results' file name without suffix: ``always-on-<model>[-<steps>step]``."""
    return f"always-on-{results['model']}" + (f"-{results['steps']}step" if results["steps"] else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.always_on", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="talking64", help="model name, preset or directory (default talking64)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="client speech with its pause, s (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="sessions per transport, round-robin (default 2)")
    parser.add_argument("--transports", type=lambda s: tuple(s.split(",")), default=TRANSPORTS,
                        help="comma-separated, of websocket, webrtc (default both)")
    parser.add_argument("--budget-ms", type=float, default=250.0, help="latency allowed above the floor at p95")
    parser.add_argument("--threads", type=int, help="the server's torch intra-op threads (default: torch's)")

    parser.add_argument("--out-dir", type=Path, help="where the files go (default bench/results/<device>/)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model at 64 px, 1 step, 2 s, 1 round: checks the benchmark, not a speed")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.steps, args.seconds, args.rounds = "tiny", 1, 2.0, 1
    if not args.transports or not set(args.transports) <= set(TRANSPORTS):
        parser.error(f"--transports: choose from {', '.join(TRANSPORTS)}")
    if args.seconds < 2 or args.rounds < 1:
        parser.error("--seconds must be at least 2 and --rounds at least 1")
    try:
        results = measure(args)
    except RuntimeError as exc:
        print(f"bench.always_on: {exc}", file=sys.stderr)
        return 1
    directory = results_dir(args.out_dir, args.smoke, torch.device("cpu"))
    md = write_results(results, directory, stem(results), markdown, plot)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
