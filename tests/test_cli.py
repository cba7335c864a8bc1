"""The ``emote`` command line: help, info on presets (meta device) and model directories, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.cli import main
from engine.config import preset


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
