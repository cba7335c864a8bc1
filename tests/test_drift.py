"""Drift metrics (engine.drift) on frames whose answers are known, and the shipped model's drift over a
20-s held-out stream with and without the session's drift guard."""

from __future__ import annotations

import numpy as np
import pytest

from engine.drift import (clip_starts, drift_report, measure, region_error, seam_and_inside_change,
                          synthetic_streams, windows)
from engine.faces import FaceBox
from engine.models.checkpoint import load_model
from engine.options import GenerationOptions
from engine.stream.chunk_planner import ChunkPlanner

DRIFTING_TALKER = 100
"""The held-out talker of the 20-s test: one whose face drifts without the guard."""


def test_region_error_averages_inside_the_mask_only():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    frames[1, :2] = 30
    mask = np.zeros((4, 4), np.float32)
    mask[:2, :] = 1
    assert region_error(frames, np.zeros((4, 4, 3), np.uint8), mask).tolist() == [0.0, 30.0]
    truth = np.full((2, 4, 4, 3), 10, np.uint8)
    assert region_error(frames, truth, 1 - mask).tolist() == [10.0, 10.0]
    with pytest.raises(ValueError, match="empty"):
        region_error(frames, truth, np.zeros((4, 4), np.float32))


def test_windows_cut_by_seconds_and_fold_a_short_tail_into_the_last():
    values = np.arange(10, dtype=float)
    assert windows(values, fps=2.0, window_s=2.0) == [1.5, 5.5, 8.5]
    assert windows(np.arange(9, dtype=float), fps=2.0, window_s=2.0) == [1.5, 6.0]


def test_seam_change_is_measured_where_clips_start():
    frames = np.zeros((9, 2, 2, 3), np.uint8)
    level = 0
    for i in range(1, 9):
        level += 6 if i in (4, 8) else 2
        frames[i] = level
    assert seam_and_inside_change(frames, [0, 4, 8]) == (6.0, 2.0)


def test_clip_starts_follow_the_sessions_planner():
    options = GenerationOptions(first_clip_frames=4, clip_frames=8)
    planner = ChunkPlanner(8, 4)
    assert clip_starts(37, options, clip_frames=12) == [c.start for c in planner.ready(37, 37)] \
        == [0, 4, 12, 20, 28, 36]
    assert clip_starts(30, GenerationOptions(), clip_frames=12) == [0, 12, 24]
    assert clip_starts(7, GenerationOptions(schedule="rolling", group_frames=2), 8) == [0, 2, 4, 6]


def test_a_face_that_drifts_has_a_ratio_above_one_and_the_static_region_stays_apart():
    reference = np.full((16, 16, 3), 100, np.uint8)
    frames = np.repeat(reference[None], 40, axis=0).astype(np.int16)
    frames[:, 4:12, 4:12] += np.linspace(0, 40, 40).astype(np.int16)[:, None, None, None]
    report = drift_report("ramp", frames.clip(0, 255).astype(np.uint8), fps=4.0, face_box=FaceBox(4, 4, 12, 12),
                          reference=reference, clip_starts=[0, 8, 16, 24, 32], window_s=5.0)
    assert len(report.face) == 2 and report.face[1] > report.face[0] > 0
    assert report.drift_ratio == pytest.approx(report.face[1] / report.face[0])
    assert report.static == [0.0, 0.0]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_shipped_model_holds_its_face_over_20_s_without_visible_seams():
    """talking64 on a held-out talker for 20 s with its defaults (drift guard, one noise for every clip): the
    face-box error of the last 5 s stays within 1.15x of the first 5 s and the frame change at clip seams within
    1.5x of that inside clips; without the guard the face ends further from the truth, and with a noise per
    clip the seams show."""
    model = load_model("talking64").float()
    assert model.config.sampling.motion_anchor > 0 and model.config.sampling.noise == "session"
    (stream,) = synthetic_streams(1, 20.0, model.config.resolution, model.config.fps, first_seed=DRIFTING_TALKER)
    shipped = measure(model, stream, GenerationOptions())
    unguarded = measure(model, stream, GenerationOptions(motion_anchor=0.0))
    clip_noise = measure(model, stream, GenerationOptions(noise="clip"))
    assert shipped.drift_ratio <= 1.15, shipped
    assert shipped.face[-1] < unguarded.face[-1], (shipped, unguarded)
    assert shipped.seam_ratio <= 1.5, shipped
    assert clip_noise.seam_ratio > 1.5, clip_noise
