"""The sessions-per-replica benchmark: its smoke run against a real ``emote serve`` process writes valid
results (no time asserted), and the pieces that turn measurements into figures."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench import sessions
from bench.sessions import SCHEMA, frame_latencies, main, sessions_per_replica, validate
from engine.serve.client import SessionResult
from engine.serve.protocol import FrameMessage


def test_smoke_run_against_a_served_replica_writes_results(tmp_path, capsys):
    assert main(["--smoke", "--out-dir", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "sessions-tiny-cpu-1step.json").read_text())
    assert results["schema"] == SCHEMA and results["smoke"] is True and validate(results) == []
    points = results["points"]
    assert [(p["mode"], p["sessions"]) for p in points] == [("plain", 1), ("batched", 1)]
    for point in points:
        assert point["errors"] == [] and point["frames"] == point["frames_expected"] == 25
        assert point["latency_p95_s"] >= point["latency_median_s"] > 0 and point["replica_cpu_s"] > 0
        assert point["bound_s"] == pytest.approx(point["latency_floor_s"] + 0.25)
    assert set(results["sessions_per_replica"]) == {"plain", "batched"}
    page = (tmp_path / "sessions-tiny-cpu-1step.md").read_text()
    assert "smoke run" in page and "cost per stream-hour" in page and "| plain | 1 | 1/1 |" in page
    assert (tmp_path / "sessions-tiny-cpu-1step.png").stat().st_size > 0
    assert "per replica" in capsys.readouterr().out


def _frame(index: int) -> FrameMessage:
    return FrameMessage(index, index / 25, 64, "jpeg", False, b"")


def test_frame_latency_counts_from_the_block_holding_the_frames_time():
    result = SessionResult(sent_samples=[320, 640, 960, 1280], sent_at=[10.0, 10.02, 10.04, 10.06],
                           frames=[_frame(0), _frame(1), _frame(2)], arrivals=[10.5, 10.6, 11.0])
    # frame 0 is at sample 0 (block 0), frame 1 at sample 640 (block 2: samples 640-959), frame 2 at 1280
    # (not sent: no latency)
    assert frame_latencies(result, 25.0) == pytest.approx([0.5, 0.56])


def test_sessions_per_replica_needs_every_smaller_count_held_in_every_repeat():
    def point(n: int, held: bool, repeat: int = 0) -> dict:
        return {"mode": "plain", "sessions": n, "repeat": repeat, "held": held}

    assert sessions_per_replica([point(1, True), point(2, True), point(3, False), point(4, True)],
                                "plain", (1, 2, 3, 4)) == 2
    assert sessions_per_replica([point(1, True), point(2, True), point(2, False, 1)], "plain", (1, 2)) == 1
    assert sessions_per_replica([point(1, False)], "plain", (1,)) == 0
    assert sessions_per_replica([point(1, True)], "batched", (1,)) == 0


def test_validate_refuses_a_point_held_outside_its_bound():
    good = {"mode": "plain", "sessions": 2, "repeat": 0, "held": True, "sessions_ok": 2, "frames_expected": 50,
            "frames": 50, "frames_skipped": 0, "errors": [], "latency_floor_s": 0.36, "bound_s": 0.61,
            "latency_median_s": 0.4, "latency_p95_s": 0.5, "latency_max_s": 0.55, "server_latency_p95_s": 0.45,
            "min_sustained_fps": 25.1, "replica_cpu_s": 3.0, "stage_s_per_media_s": {"denoise": 0.4}}
    results = {"schema": SCHEMA, "smoke": False, "settings": {}, "environment": {}, "points": [good],
               "sessions_per_replica": {"plain": 2}, "cost_per_stream_hour": {"plain": 0.04},
               "over_plain": {}, "wall_s": 1.0}
    assert validate(results) == []
    assert validate({**results, "points": [{**good, "latency_p95_s": 0.7}]}) != []
    assert validate({**results, "points": [{**good, "sessions_ok": 1}]}) != []


def test_a_session_answered_busy_connects_again(monkeypatch):
    """The server frees a slot only once the previous client's socket has closed: a measured session that
    connects in that moment is answered ``busy`` and must start again, not count as a failed session."""
    answers = [SessionResult(error={"code": "busy", "message": "at its limit"}), SessionResult(done={"stats": {}})]
    calls = []

    async def fake_stream_session(url, pcm, sample_rate, **kwargs):
        calls.append(url)
        return answers[len(calls) - 1]

    monkeypatch.setattr(sessions, "stream_session", fake_stream_session)
    monkeypatch.setattr(sessions, "BUSY_RETRY_S", 0.0)
    results = asyncio.run(sessions._clients("ws://127.0.0.1:1/session", 1, 0.1))
    assert len(calls) == 2 and results[0].error is None and results[0].done == {"stats": {}}
