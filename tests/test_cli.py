"""The ``emote`` command line: help, info on presets (meta device) and model directories, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import preset

DEMO_DIR = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "info" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "engine.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: emote" in out.stdout


@pytest.mark.parametrize("name", ["tiny", "sd15"])
def test_info_reports_parameters_per_component(name, capsys):
    assert main(["info", "--model", name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    counts = report["parameters"]
    assert set(counts) == {"reference_net", "backbone", "face_locator", "speed_encoder", "audio_encoder", "vae"}
    assert report["total"] == sum(counts.values())
    if name == "sd15":
        assert counts["reference_net"] == 859_508_800 and counts["vae"] == 83_653_863
        assert counts["backbone"] > 859_520_964 + 453_209_280
    else:
        assert sum(counts.values()) < 10_000_000


def test_info_on_a_model_directory_and_a_bad_path(tmp_path, capsys):
    preset("tiny").save(tmp_path / "config.json")
    assert main(["info", "--model", str(tmp_path)]) == 0
    assert "backbone" in capsys.readouterr().out
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emote: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, field", [
    ({"resolution": "sixty-four"}, "resolution"),
    ({"unet": 5}, "unet"),
    ({"clip_frames": 8.5}, "clip_frames"),
    ({"unet": {"block_out_channels": [32, "64", 64]}}, "unet.block_out_channels.1"),
    ({"temporal": {"mid_block": 1}}, "temporal.mid_block"),
    ({"audio": {"window": None}}, "audio.window"),
    ({"scheduler": {"num_train_timesteps": "1000"}}, "scheduler.num_train_timesteps"),
    ([1, 2], "must be a JSON object"),
    ({"preset": ["tiny"]}, "preset"),
    ({"audio": {"projection": {"tokens": 4, "intermediate_dim": 64, "output_dim": 64, "width": 1}}},
     "unknown audio projection keys: width"),
])
@pytest.mark.parametrize("command", ["info", "generate"])
def test_a_config_of_wrong_types_is_one_line_naming_field_and_file(tmp_path, capsys, change, field, command):
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    data = preset("tiny").to_dict()
    if isinstance(change, dict):
        for key, value in change.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data[key], dict) else value
    else:
        data = change
    config.write_text(json.dumps(data))
    args = ["info", "--model", str(config.parent)] if command == "info" else [
        "generate", "--model", str(config.parent), "--image", str(DEMO_DIR / "portrait.png"),
        "--audio", str(DEMO_DIR / "speech.wav"), "--out", str(tmp_path / "out.mp4"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"emote: error: {config}: ") and field in err[0], err
    assert not (tmp_path / "out.mp4").exists()
