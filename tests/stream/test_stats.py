"""Stream measures on constructed timelines (a fake clock): each number checked against its definition."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.stream.stats import StreamStats, latency_floor, ttff_floor

SR = 16000
FPS = 25
SPF = SR // FPS  # 640 samples per frame


class Clock:
    """A clock the test sets by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def at(clock: Clock, t: float, record, *args) -> None:
    clock.now = t
    record(*args)


def test_ttff_and_latency_use_the_arrival_of_the_block_holding_the_frames_last_sample():
    clock = Clock()
    stats = StreamStats(FPS, clock=clock)
    # irregular blocks: (samples, arrival time)
    blocks = [(100, 10.00), (900, 10.05), (300, 10.08), (1900, 10.20), (640, 10.31), (1, 10.40)]
    for n, t in blocks:
        at(clock, t, stats.audio_in, n)
    # cumulative ends: 100, 1000, 1300, 3200, 3840, 3841
    # frame i is complete when sample (i+1)*640 - 1 is in: frame 0 -> 639 (block 1, 10.05),
    # frame 1 -> 1279 (block 2, 10.08), frames 2-4 -> 1919, 2559, 3199 (block 3, 10.20, no interpolation),
    # frame 5 -> 3839 (block 4, 10.31)
    outs = {0: 10.30, 1: 10.32, 2: 10.50, 3: 10.52, 4: 10.54, 5: 10.70}
    for i, t in outs.items():
        at(clock, t, stats.frame_out, i)
    assert stats.audio_arrival(640) == 10.05 and stats.audio_arrival(1001) == 10.08
    assert stats.audio_arrival(3841) == 10.40 and stats.audio_arrival(3842) is None
    expected = {0: 0.25, 1: 0.24, 2: 0.30, 3: 0.32, 4: 0.34, 5: 0.39}
    got = stats.latencies()
    assert got.keys() == expected.keys()
    for i in expected:
        assert got[i] == pytest.approx(expected[i])
    s = stats.summary()
    assert s["time_to_first_frame_s"] == pytest.approx(0.30)
    values = list(expected.values())
    assert s["latency_s"]["median"] == pytest.approx(np.median(values))
    assert s["latency_s"]["p95"] == pytest.approx(np.percentile(values, 95))
    assert s["latency_s"]["max"] == pytest.approx(0.39)
    assert s["frames_out"] == 6 and s["frames_skipped"] == 0
    assert s["sustained_fps"] == pytest.approx(5 / 0.40)
    assert s["generation_wall_s"] == pytest.approx(0.70)
    assert s["real_time_factor"] == pytest.approx(0.70 / (6 / FPS))
    assert s["audio_in_s"] == pytest.approx(3841 / SR)


def test_a_frame_past_the_end_of_the_audio_counts_from_the_last_block():
    clock = Clock()
    stats = StreamStats(FPS, clock=clock)
    at(clock, 1.0, stats.audio_in, 1000)  # 1.56 frames: frame 1 is cut short by the end of stream
    at(clock, 1.2, stats.frame_out, 0)
    at(clock, 1.3, stats.frame_out, 1)
    assert stats.latencies() == pytest.approx({0: 0.2, 1: 0.3})


def test_steady_stream_percentiles_fps_rtf_and_skips():
    clock = Clock()
    stats = StreamStats(FPS, clock=clock, latency_floor_s=latency_floor(12, 2, FPS), ttff_floor_s=ttff_floor(4, 2, FPS))
    # 10 ms blocks paced in real time from t=5; frames leave in clips of 4, 0.3 s after the clip's last frame
    for k in range(400):
        at(clock, 5.0 + 0.01 * (k + 1), stats.audio_in, 160)
    expected = []
    for clip_start in range(0, 100, 4):
        released = 5.0 + (clip_start + 4) / FPS + 0.3
        for j, i in enumerate(range(clip_start, clip_start + 4)):
            if i in (50, 51):
                stats.frame_skipped(i)
                continue
            out = released + 0.001 * j
            at(clock, out, stats.frame_out, i)
            expected.append(out - (5.0 + (i + 1) / FPS))
    s = stats.summary()
    assert s["frames_out"] == 98 and s["frames_skipped"] == 2
    assert s["latency_s"]["median"] == pytest.approx(np.median(expected))
    assert s["latency_s"]["p95"] == pytest.approx(np.percentile(expected, 95))
    assert s["latency_s"]["max"] == pytest.approx(max(expected))
    assert max(expected) == pytest.approx(0.3 + 3 / FPS)  # the first frame of each clip
    first_out, last_out = 5.0 + 4 / FPS + 0.3, 5.0 + 100 / FPS + 0.3 + 0.003
    assert s["time_to_first_frame_s"] == pytest.approx(first_out - 5.01)
    assert s["sustained_fps"] == pytest.approx(97 / (last_out - first_out))
    assert s["media_s"] == pytest.approx(4.0)
    assert s["real_time_factor"] == pytest.approx((last_out - 5.01) / 4.0)
    json.dumps(s)

    table = stats.table()
    lines = table.splitlines()
    assert lines[0].startswith("| measure |") and all(line.startswith("|") for line in lines)
    assert f"| time to first frame | {(first_out - 5.01) * 1000:.1f} ms | 240.0 ms |" in table
    assert f"| audio-to-frame latency, max | {max(expected) * 1000:.1f} ms | 520.0 ms |" in table
    assert f"{np.median(expected) * 1000:.1f} ms" in table
    assert f"{np.percentile(expected, 95) * 1000:.1f} ms" in table
    assert "| frames skipped | 2 |" in table and "| frames out | 98 |" in table
    assert f"{97 / (last_out - first_out):.2f}" in table and f"{(last_out - 5.01) / 4.0:.3f}" in table


def test_floors():
    assert latency_floor(12, 2, 25) == pytest.approx(13 / 25)
    assert latency_floor(1, 0, 30) == 0
    assert ttff_floor(4, 2, 25) == pytest.approx(6 / 25)


def test_stages_per_clip():
    stats = StreamStats(FPS, clock=Clock())
    for clip, (denoise, decode) in enumerate([(0.9, 0.2), (0.4, 0.1), (0.6, 0.1), (0.5, 0.1)]):
        stats.stage("denoise", denoise, clip)
        stats.stage("decode", decode, clip)
    d = stats.summary()["stages"]["denoise"]
    assert d["clips"] == 4 and d["first_s"] == 0.9 and d["max_s"] == 0.9
    assert d["steady_mean_s"] == pytest.approx(0.5) and d["total_s"] == pytest.approx(2.4)
    assert d["per_clip"] == [[0, 0.9], [1, 0.4], [2, 0.6], [3, 0.5]]
    assert "| denoise per clip (4 clips) | first 900.0 ms, then 500.0 ms |" in stats.table()


def test_status_line_is_live():
    clock = Clock()
    stats = StreamStats(FPS, clock=clock)
    assert stats.status_line() == "frames 0 | - fps | latency p50 - ms p95 - ms | lag 0.00 s | skipped 0"
    for k in range(50):  # 1 s of audio in 20 ms blocks
        at(clock, 0.02 * (k + 1), stats.audio_in, 320)
    for i in range(10):
        at(clock, 0.5 + 0.04 * i, stats.frame_out, i)
    stats.frame_skipped(10)
    line = stats.status_line()
    assert "\n" not in line
    assert line.startswith("frames 10 | 27.8 fps | latency p50 ")
    assert line.endswith("| lag 0.56 s | skipped 1")


def test_empty_run_summary_is_json_ready():
    s = StreamStats(FPS).summary()
    assert s["time_to_first_frame_s"] is None and s["latency_s"]["median"] is None
    assert s["sustained_fps"] is None and s["real_time_factor"] is None
    json.dumps(s)
    assert "| time to first frame | - |" in StreamStats(FPS).table()
