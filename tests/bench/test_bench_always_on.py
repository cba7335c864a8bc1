"""The always-on transport benchmark: its smoke run against a real `emote serve --webrtc` writes valid results (no
time asserted), and the pieces that turn a session into figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.always_on import PAUSE_S, SCHEMA, client_speech, main, point
from bench.speech import SAMPLE_RATE

pytest.importorskip("aiortc", reason="aiortc is not installed (pip install -e '.[webrtc]')")


def test_smoke_run_through_both_transports_writes_results(tmp_path, capsys):
    assert main(["--smoke", "--out-dir", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "always-on-tiny-1step.json").read_text())
    assert results["schema"] == SCHEMA and results["smoke"] is True
    points = {p["transport"]: p for p in results["points"]}
    assert set(points) == {"websocket", "webrtc"}
    for p in points.values():
        assert p["frames"] >= p["frames_expected"] == 50 and p["frames_skipped"] == 0, p
        assert p["latency_p95_s"] >= p["latency_p50_s"] > 0 and p["server_cpu_s_per_s"] > 0, p
        assert p["bound_s"] == pytest.approx(p["latency_floor_s"] + 0.25)
    assert points["websocket"]["arrival_delay_p95_s"] is None and points["webrtc"]["arrival_delay_p95_s"] >= 0
    assert results["webrtc_extra_cpu_s_per_s"] == pytest.approx(
        points["webrtc"]["server_cpu_s_per_s"] - points["websocket"]["server_cpu_s_per_s"])
    page = (tmp_path / "always-on-tiny-1step.md").read_text()
    assert "smoke run" in page and "| webrtc | 1 |" in page and "ms of CPU per second of video" in page
    assert (tmp_path / "always-on-tiny-1step.png").stat().st_size > 0
    assert "| websocket | 1 |" in capsys.readouterr().out


def test_the_clients_speech_pauses_in_the_middle():
    pcm = client_speech(4.0)
    assert pcm.dtype == np.int16 and pcm.size == 4 * SAMPLE_RATE
    pause = round(PAUSE_S * SAMPLE_RATE)
    silent = np.flatnonzero(np.convolve(pcm != 0, np.ones(pause), mode="valid") == 0)
    assert silent.size and 0.3 * pcm.size < silent[0] < 0.45 * pcm.size, "one 1-s pause near the middle"
    assert np.any(pcm[:silent[0]] != 0) and np.any(pcm[silent[0] + pause:] != 0)


def test_a_session_is_held_only_with_every_frame_none_skipped_and_p95_in_bound():
    ready = {"latency_floor_s": 0.36}
    stats = {"frames_skipped": 0, "sustained_fps": 25.0, "latency_p50_s": 0.4, "latency_p95_s": 0.6}
    held = point("webrtc", 0, 10.0, 250, 250, stats, ready, cpu_s=15.0, budget_ms=250)
    assert held["held"] and held["bound_s"] == pytest.approx(0.61) and held["server_cpu_s_per_s"] == 1.5
    assert not point("webrtc", 0, 10.0, 249, 250, stats, ready, 15.0, 250)["held"]
    assert not point("webrtc", 0, 10.0, 250, 250, {**stats, "frames_skipped": 1}, ready, 15.0, 250)["held"]
    assert not point("webrtc", 0, 10.0, 250, 250, {**stats, "latency_p95_s": 0.62}, ready, 15.0, 250)["held"]
