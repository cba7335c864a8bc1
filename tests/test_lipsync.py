"""The lip-sync score, and the shipped talking-face model: it loads, its hashes hold, its mouth follows speech.

CI bounds (stated here, looser than the issue's on the full held-out set: correlation >= 0.6, controls
< 0.2, see the table in README.md): on two short held-out clips (3.5 s and 6.9 s together) the 4-step
student must reach a pooled lag-0 correlation of at least ``CI_MIN_CORRELATION`` with its peak at lag 0
(+-1 frame); silence or another clip's speech must score below ``CONTROL_MAX`` and at least
``CONTROL_MARGIN`` below the clip's own speech. On so few frames a mouth that drifts without speech can
correlate weakly with the truth by chance (silence scored 0.27 on these clips when the bounds were set;
own speech 0.76).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import DEFAULT_MODEL
from engine.cli import main
from engine.lipsync import (comparison_table, evaluate, generate, heldout_clips, lagged_correlation, markdown,
                            mouth_opening, portrait_mask, score)
from engine.media import read_video_info
from engine.models.checkpoint import load_model, model_directory, resolve_config
from engine.options import GenerationOptions
from engine.training.ship import MANIFEST, file_hashes, verify

SHIPPED = Path(__file__).resolve().parents[1] / "engine" / "assets" / "models" / "talking64"
CI_MIN_CORRELATION = 0.5
CONTROL_MAX = 0.35
CONTROL_MARGIN = 0.35
ROLLING_MAX_DROP = 0.05
"""The rolling schedule (k = 2) may lose at most this much lip-sync correlation against clip-wise."""
ROLLING_MAX_CHANGE = 3.1
"""...and its mean frame-to-frame change (0-255) may be at most the clip-wise figure of the model shipped before
the distillation's temporal term (3.10 on these two clips): an absolute bound, not a ratio to its own clip-wise
figure, which the temporal term lowers more than the rolling schedule's."""
STUDENT = GenerationOptions(steps=4, sampler="lcm")


@pytest.fixture(scope="module")
def clips():
    return heldout_clips(2, first_seed=100, sentences=1)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return load_model(SHIPPED)


@pytest.fixture(scope="module")
def clipwise(student, clips):
    """The 4-step student, clip-wise, on the clips' own speech: (score, frames)."""
    return evaluate(student, clips, STUDENT)


def test_metric_on_ground_truth(clips):
    measured = [mouth_opening(c.frames, c.mouth_box) for c in clips]
    truth = [c.opening for c in clips]
    result = score(measured, truth, 64)
    assert result.correlation > 0.9 and result.lag == 0
    shifted = [np.roll(m, 3) for m in measured]
    assert score(shifted, truth, 64).lag == 3
    swapped = [measured[1][:len(truth[0])], measured[0][:len(truth[1])]]
    n = min(len(swapped[0]), len(truth[0])), min(len(swapped[1]), len(truth[1]))
    assert abs(score([swapped[0][:n[0]], swapped[1][:n[1]]], [truth[0][:n[0]], truth[1][:n[1]]], 64).correlation) < 0.3


def test_a_still_mouth_scores_zero():
    truth = [np.sin(np.arange(50) / 3.0)]
    still = [np.full(50, 7.0) + 1e-3 * np.cos(np.arange(50))]
    assert abs(lagged_correlation(still, truth, 0, floor=0.5)) < 0.01


def test_shipped_model_hashes_and_config():
    assert model_directory(DEFAULT_MODEL) == SHIPPED and resolve_config(DEFAULT_MODEL).name == "talking64"
    manifest = json.loads((SHIPPED / MANIFEST).read_text())
    assert verify(SHIPPED) == []
    assert set(manifest["files"]) == set(file_hashes(SHIPPED))
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["name"] == "talking64" and config["resolution"] == 64
    assert config["sampling"]["sampler"] == "lcm" and config["sampling"]["steps"] == 4
    assert config["sampling"]["motion_anchor"] == 0.5 and config["sampling"]["noise"] == "session"
    assert "engine.training.train" in manifest["provenance"]["command"]
    assert sum((SHIPPED / name).stat().st_size for name in manifest["files"]) < 12 * 2 ** 20


def test_shipped_student_lip_syncs_and_controls_fail(student, clips, clipwise):
    options = STUDENT
    own, frames = clipwise
    assert own.correlation >= CI_MIN_CORRELATION, own
    assert abs(own.lag) <= 1, own
    assert own.pixel_error < 40
    for audio in ("silence", "other"):
        control, _ = evaluate(student, clips, options, audio=audio)
        assert control.correlation < CONTROL_MAX, (audio, control)
        assert own.correlation - control.correlation >= CONTROL_MARGIN, (audio, control)
    clip = clips[0]
    streamed = generate(student, clip.reference, portrait_mask(clip), clip.audio, options, block=160)
    np.testing.assert_array_equal(streamed, frames[0])


def test_generate_uses_the_shipped_model_by_default(tmp_path, clips, capsys):
    clip = clips[1]
    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(clip.sample_rate)
        f.writeframes((np.clip(clip.audio[:clip.sample_rate], -1, 1) * 32767).astype("<i2").tobytes())
    image = tmp_path / "portrait.png"
    Image.fromarray(clip.reference).save(image)
    box = ",".join(f"{v * 64:.0f}" for v in clip.recipe.identity.face_box())
    assert main(["generate", "--image", str(image), "--audio", str(wav), "--out", str(tmp_path / "d.mp4"),
                 "--face-box", box, "--quiet"]) == 0
    info = read_video_info(tmp_path / "d.mp4")
    assert (info["width"], info["height"], info["frames"]) == (64, 64, 25)
    assert "random weights" not in capsys.readouterr().err


def test_rolling_schedule_keeps_lip_sync_and_smoothness(student, clips, clipwise):
    clip_score, _ = clipwise
    rolling = GenerationOptions(steps=4, sampler="lcm", schedule="rolling", group_frames=2)
    result, _ = evaluate(student, clips, rolling)
    assert result.correlation >= clip_score.correlation - ROLLING_MAX_DROP, (result, clip_score)
    assert result.lag == 0
    assert result.smoothness <= ROLLING_MAX_CHANGE, (result, clip_score)


def test_students_only_table_leaves_the_teacher_out(student, clips):
    rows = comparison_table(None, student, clips[:1], guidance=3.0, controls=False, rolling=False)
    assert [(r["model"], r["steps"]) for r in rows] == [("ground truth", 0), ("student", 4), ("student", 2),
                                                        ("student", 1)]
    assert all(r["audio"] == "own" and r["cfg_audio"] == 1.0 for r in rows[1:])
    assert "| student | lcm | 4 |" in markdown(rows)
