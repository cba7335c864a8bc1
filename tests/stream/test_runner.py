"""The threaded streaming runtime: equivalence with offline, pacing, lag policies, errors, flushing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support import speech, write_wav

from engine.backends.torch_eager import TorchEagerBackend
from engine.cli import main
from engine.media import MediaError, read_video_info
from engine.options import GenerationOptions
from engine.stream.chunk_planner import ChunkPlanner
from engine.stream.runner import LagPolicy, LiveSession, run_stream
from engine.stream.session import Session
from engine.stream.sinks import CallbackSink, Mp4Sink, PngSink
from engine.stream.sources import FileSource

PORTRAIT = Path(__file__).resolve().parents[2] / "engine" / "assets" / "demo" / "portrait.png"


class SlowBackend(TorchEagerBackend):
    """The eager backend with a fixed delay per backbone call (a machine too slow for real time)."""

    def __init__(self, model, delay: float):
        super().__init__(model)
        self.delay = delay

    def backbone(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().backbone(*args, **kwargs)


def offline(model, portrait, pcm, **options):
    session = Session(TorchEagerBackend(model), model.config, *portrait, GenerationOptions(steps=1, **options))
    session.push_audio(pcm)
    session.end()
    return list(session.frames())


def test_live_session_in_10ms_blocks_equals_offline(model, portrait):
    pcm = speech(1.0, hz=170)
    want = offline(model, portrait, pcm, first_clip_frames=4)
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait,
                               GenerationOptions(steps=1, first_clip_frames=4)))
    for block in np.array_split(pcm, len(pcm) // 160):
        live.push_audio(block)
    live.end()
    got = list(live)
    assert [f.index for f in got] == [f.index for f in want]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, want))


def test_the_end_of_run_table_says_how_often_the_drift_guard_acted(model, portrait):
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait,
                               GenerationOptions(steps=1, first_clip_frames=4, motion_anchor=0.4)))
    live.push_audio(speech(1.0, hz=170))
    live.end()
    frames = list(live)
    updates = live.session.anchored
    assert updates == len(ChunkPlanner(model.config.clip_frames, 4).ready(len(frames), len(frames))) > 1
    assert live.stats.summary()["drift_guard"] == {"strength": 0.4, "updates": updates}
    assert f"| drift guard (toward the reference) | {updates} motion-frame updates, each 0.4 of the way back |" \
        in live.stats.table()


def test_async_iteration(model, portrait):
    pcm = speech(0.4, hz=170)
    want = offline(model, portrait, pcm)

    async def consume():
        live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, GenerationOptions(steps=1)))
        live.push_audio(pcm)
        live.end()
        return [frame async for frame in live]

    got = asyncio.run(consume())
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, want)) and len(got) == len(want)


def test_reset_starts_a_new_utterance_with_the_same_reference(model, portrait):
    pcm = speech(0.4, hz=170)
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, GenerationOptions(steps=1)))
    live.push_audio(pcm)
    live.end()
    first = list(live)
    bank = live.session.reference_tokens
    live.reset()
    live.push_audio(pcm)
    live.end()
    second = list(live)
    assert live.session.reference_tokens is bank
    assert [f.index for f in second] == [f.index for f in first]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second))


def test_paced_file_gives_frames_before_the_audio_ends(model, portrait, tmp_path):
    pcm = speech(3.0, hz=170)
    source = FileSource(write_wav(tmp_path / "s.wav", pcm), block_ms=20, realtime=True)
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait,
                               GenerationOptions(steps=1, first_clip_frames=4)))
    heard_at_frame = []
    stats = run_stream(source, live, [], on_frame=lambda f, running: heard_at_frame.append(running.stats.samples_in))
    summary = stats.summary()
    assert len(heard_at_frame) == 75
    assert heard_at_frame[0] < 0.5 * pcm.size, "the first frame comes while most of the audio is still unsent"
    assert summary["time_to_first_frame_s"] > 0 and summary["latency_s"]["median"] > 0
    assert summary["latency_s"]["max"] >= summary["latency_s"]["median"]


def test_skip_policy_bounds_latency_and_grow_loses_nothing(model, portrait, tmp_path):
    pcm = speech(3.0, hz=170)
    wav = write_wav(tmp_path / "s.wav", pcm)

    def run(policy):
        backend = SlowBackend(model, delay=0.6)
        live = LiveSession(Session(backend, model.config, *portrait, GenerationOptions(steps=1, clip_frames=4)),
                           policy)
        frames = []
        stats = run_stream(FileSource(wav, block_ms=20, realtime=True), live, [CallbackSink(frames.append)])
        return frames, stats.summary()

    skip_frames, skip = run(LagPolicy("skip", max_lag_s=0.3))
    grow_frames, grow = run(LagPolicy("grow"))
    assert len(skip_frames) == len(grow_frames) == 75
    assert grow["frames_skipped"] == 0 and not any(f.skipped for f in grow_frames)
    assert skip["frames_skipped"] > 0 and skip["frames_skipped"] == sum(f.skipped for f in skip_frames)
    assert skip["latency_s"]["max"] < grow["latency_s"]["max"]


def test_stream_cli_equals_generate(tmp_path, capsys):
    wav = write_wav(tmp_path / "s.wav", speech(0.6, hz=170))
    common = ["--image", str(PORTRAIT), "--model", "tiny", "--steps", "1", "--quiet", "--first-clip", "4"]
    assert main(["generate", "--audio", str(wav), "--out", str(tmp_path / "g.mp4"), *common]) == 0
    assert main(["stream", "--audio", str(wav), "--out", str(tmp_path / "s.mp4"), *common]) == 0
    assert "time to first frame" in capsys.readouterr().out.lower()
    import av

    def frames(path):
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    g, s = frames(tmp_path / "g.mp4"), frames(tmp_path / "s.mp4")
    assert len(g) == len(s) == 15 and all(np.array_equal(a, b) for a, b in zip(g, s))


def test_ending_mid_clip_flushes_and_durations_agree(tmp_path):
    wav = write_wav(tmp_path / "odd.wav", speech(1.37, hz=170))
    assert main(["stream", "--audio", str(wav), "--out", str(tmp_path / "o.mp4"), "--image", str(PORTRAIT),
                 "--model", "tiny", "--steps", "1", "--quiet"]) == 0
    info = read_video_info(tmp_path / "o.mp4")
    assert info["frames"] == 35
    assert abs(info["audio_duration"] - info["frames"] / 25) <= 1 / 25


def test_mic_without_a_device_is_a_one_line_error(tmp_path, capsys):
    code = main(["stream", "--mic", "--out", str(tmp_path / "m.mp4"), "--image", str(PORTRAIT), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("emote: error:") and "device" in err[-1].lower()
    assert not (tmp_path / "m.mp4").exists()


def test_a_worker_failure_reaches_the_consumer(model, portrait):
    class Broken(TorchEagerBackend):
        def backbone(self, *args, **kwargs):
            raise RuntimeError("backbone exploded")

    live = LiveSession(Session(Broken(model), model.config, *portrait, GenerationOptions(steps=1)))
    live.push_audio(speech(0.5, hz=170))
    live.end()
    with pytest.raises(RuntimeError, match="backbone exploded"):
        list(live)
    torch.set_num_threads(torch.get_num_threads())


def test_outputs_of_a_run_appear_together_or_not_at_all(model, portrait, tmp_path):
    out, frames = tmp_path / "x.mp4", tmp_path / "frames"
    session = Session(TorchEagerBackend(model), model.config, *portrait, GenerationOptions(steps=1))
    sinks = [PngSink(frames), Mp4Sink(out, session.fps, (session.size, session.size))]

    def take_the_mp4s_place(frame, running):
        out.mkdir(exist_ok=True)

    with pytest.raises(MediaError, match="x.mp4"):
        run_stream(FileSource(write_wav(tmp_path / "s.wav", speech(0.4, hz=170))), LiveSession(session), sinks,
                   on_frame=take_the_mp4s_place)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.wav", "x.mp4"], "the frames may not appear alone"
    assert list(out.iterdir()) == []
