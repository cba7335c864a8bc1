"""The schedule benchmark: the floors and call counts it states, and its smoke run end to end (files written,
JSON layout checked, every figure finite and consistent with the schedule; no time asserted)."""

from __future__ import annotations

import json
import math

import pytest

from bench.schedule_report import validate
from bench.schedule_specs import ScheduleSpec, frame_floors_s, schedule_specs
from bench.schedules import main

FPS, LOOKAHEAD, STEPS = 25.0, 2, 4


def test_release_frames_floors_and_calls_follow_each_schedule():
    clip, rolling = ScheduleSpec("clip", 4), ScheduleSpec("rolling", 2)
    assert clip.release_frames(STEPS, LOOKAHEAD, 10) == [6] * 4 + [10] * 4 + [12] * 2
    assert rolling.release_frames(STEPS, LOOKAHEAD, 10) == [10] * 2 + [12] * 8, "S - 1 groups later, or the end"
    assert clip.latency_floor_s(STEPS, LOOKAHEAD, FPS) == pytest.approx(5 / FPS)
    assert rolling.latency_floor_s(STEPS, LOOKAHEAD, FPS) == pytest.approx(9 / FPS)
    assert rolling.ttff_floor_s(STEPS, LOOKAHEAD, FPS) == pytest.approx(10 / FPS)
    assert clip.backbone_calls(STEPS, 10) == 12 and rolling.backbone_calls(STEPS, 10) == 5 + 3

    samples = 10 * 640
    floors = frame_floors_s(clip.release_frames(STEPS, LOOKAHEAD, 10), lambda n: n / 16000, samples, FPS, 16000)
    assert floors == pytest.approx([5 / FPS, 4 / FPS, 3 / FPS, 2 / FPS] * 2 + [1 / FPS, 0.0])
    assert [s.name for s in schedule_specs()] == ["clip-12", "clip-4", "clip-2", "rolling-k1", "rolling-k2",
                                                   "rolling-k4"]
    with pytest.raises(ValueError):
        ScheduleSpec("diagonal", 2)


def test_smoke_run_writes_consistent_results(tmp_path, capsys):
    assert main(["--smoke", "--out-dir", str(tmp_path)]) == 0

    stem = "schedules-tiny-32"
    results = json.loads((tmp_path / f"{stem}.json").read_text())
    assert validate(results) == []
    assert results["smoke"] is True and results["environment"]["device_kind"] == "cpu"
    settings = results["settings"]
    steps, fps, lookahead = settings["steps"], settings["fps"], settings["lookahead_frames"]
    assert steps == STEPS and results["baseline"] == "clip-12"
    specs = {s.name: s for s in schedule_specs()}
    assert [c["name"] for c in results["configurations"]] == list(specs)

    frames = math.ceil(settings["stream_s"] * fps - 1e-9)
    for config in results["configurations"]:
        spec, stream, e2e = specs[config["name"]], config["stream"], config["end_to_end"]
        assert config["steps"] == steps and stream["frames"] == frames
        assert stream["backbone_calls"] == spec.backbone_calls(steps, frames)
        assert stream["calls"]["stream"]["backbone"] == stream["backbone_calls"]
        assert stream["backbone_frame_steps"] == steps * frames, "every frame denoised through every step"
        floors = config["floors"]
        assert floors["latency_s"] == pytest.approx((spec.span(steps) - 1 + lookahead) / fps)
        assert floors["per_frame_p95_s"] <= floors["latency_s"] + 1e-9
        for latencies, frame_floors in zip(config["latencies_s"], config["floors_s"]):
            assert len(latencies) == len(frame_floors) == frames
            assert all(lat >= floor >= 0 for lat, floor in zip(latencies, frame_floors)), "latency below its floor"
        assert e2e["time_to_first_frame_s"]["median"] >= config["floors_s"][0][0]
        assert e2e["latency_median_s"]["median"] <= e2e["latency_p95_s"]["median"] <= e2e["latency_max_s"]["median"]
        assert e2e["sustained_fps"]["median"] > 0
        assert results["ratios"][config["name"]]["latency_p95_s"] > 0
    rolling_k1 = next(c for c in results["configurations"] if c["name"] == "rolling-k1")["stream"]
    assert rolling_k1["backbone_calls"] - (steps - 1) == frames, "once per frame, then S - 1 to empty the window"
    assert results["ratios"]["clip-12"]["latency_p95_s"] == pytest.approx(1.0)

    report = (tmp_path / f"{stem}.md").read_text()
    assert "rolling, k = 1" in report and "## Against clip-wise, clip 12" in report and f"{stem}.png" in report
    assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(tmp_path / f"{stem}.json") in capsys.readouterr().out
