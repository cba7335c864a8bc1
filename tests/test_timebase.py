"""The time base (sample rate, frame <-> sample) and the frame rate stored once in a model's config."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from engine.config import ConfigError, ModelConfig, preset
from engine.pipeline import open_model
from engine.timebase import (SAMPLE_RATE, check_fps, frame_start, frames_complete, frames_covering,
                             samples_per_frame)

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "engine" / "assets" / "models" / "talking64" / "config.json"


@pytest.mark.parametrize("fps", [25.0, 12.5, 20.0, 50.0])
def test_frames_and_samples_agree(fps: float) -> None:
    """Where a frame is a whole number of samples, frame i's audio is [frame_start(i), frame_start(i + 1)):
    a stream cut at a frame's end has that frame complete and covered, one more sample reaches the next."""
    for frame in range(0, 400, 7):
        end = frame_start(frame + 1, fps)
        assert end - frame_start(frame, fps) == samples_per_frame(fps)
        assert frames_complete(end, fps) == frame + 1 == frames_covering(end, fps)
        assert frames_complete(end - 1, fps) == frame
        assert frames_covering(end + 1, fps) == frame + 2


@pytest.mark.parametrize("fps", [24.0, 29.97, 30.0])
def test_frame_counts_are_exact_floor_and_ceil(fps: float) -> None:
    """Frame counts equal the exact floor / ceil of seconds x fps (rational arithmetic), float error or not."""
    rate = Fraction(fps)
    for samples in range(0, 100_000, 37):
        exact = Fraction(samples) * rate / SAMPLE_RATE
        assert frames_complete(samples, fps) == math.floor(exact)
        assert frames_covering(samples, fps) == math.ceil(exact)
    assert [frame_start(i, fps) for i in range(4)] == [round(i * SAMPLE_RATE / rate) for i in range(4)]


def test_the_rates() -> None:
    assert SAMPLE_RATE == 16000
    assert (frame_start(25, 25.0), samples_per_frame(25.0), samples_per_frame(24.0)) == (16000, 640, 667)
    assert frames_covering(16001, 25.0) == 26 and frames_complete(15999, 25.0) == 24
    assert check_fps(25) == 25.0
    for bad in (0, -1.0, float("nan"), float("inf"), True, "25"):
        with pytest.raises(ValueError, match="fps must be a positive number"):
            check_fps(bad)


def test_config_stores_fps_once() -> None:
    data = preset("tiny").to_dict()
    assert "fps" not in data["audio"] and data["fps"] == 25.0
    assert ModelConfig.from_dict(data) == preset("tiny")


def test_config_files_with_audio_fps_still_load(tmp_path: Path) -> None:
    """Config files written before the frame rate was stored once carry it twice (``fps`` and ``audio.fps``,
    as talking64's did until its retraining); they load, and are written back with it once."""
    shipped = json.loads(SHIPPED_CONFIG.read_text())
    assert "fps" not in shipped["audio"] and shipped["fps"] == 25.0
    assert ModelConfig.load(SHIPPED_CONFIG).fps == 25.0
    legacy = preset("tiny").to_dict()
    legacy["fps"] = legacy["audio"]["fps"] = 30.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(legacy))
    loaded = ModelConfig.load(path)
    assert loaded.fps == 30.0 and "fps" not in loaded.to_dict()["audio"]
    assert ModelConfig.from_dict({"preset": "tiny", "audio": {"fps": 24.0}}).fps == 24.0


def test_config_files_with_two_frame_rates_are_refused(tmp_path: Path) -> None:
    legacy = preset("tiny").to_dict()
    legacy["audio"]["fps"] = 24.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(legacy))
    with pytest.raises(ConfigError, match=r"config.json: audio.fps \(24.0\) differs from fps \(25.0\)"):
        ModelConfig.load(path)
    path.write_text(json.dumps({"preset": "tiny", "fps": 0}))
    with pytest.raises(ConfigError, match=r"config.json: fps: input should be greater than or equal to 1"):
        ModelConfig.load(path)


def test_an_fps_override_reaches_the_audio_encoder() -> None:
    model = open_model("tiny", fps=30.0)
    assert model.config.fps == model.audio_encoder.fps == 30.0
    assert preset("tiny").fps == 25.0
