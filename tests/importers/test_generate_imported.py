"""``emote generate --model IMPORTED_DIR`` end to end on the tiny imported checkpoints: an MP4 comes out."""

from __future__ import annotations

from pathlib import Path

from support import speech, write_wav

from engine.cli import main
from engine.media import read_video_info

PORTRAIT = Path(__file__).resolve().parents[2] / "engine" / "assets" / "demo" / "portrait.png"


def generate(model: Path, tmp_path: Path, seconds: float) -> tuple[int, Path]:
    out = tmp_path / "out.mp4"
    audio = write_wav(tmp_path / "speech.wav", speech(seconds, hz=160, syllable_hz=4))
    code = main(["generate", "--model", str(model), "--image", str(PORTRAIT), "--audio", str(audio), "--out", str(out),
                 "--steps", "1", "--quiet"])
    return code, out


def test_hallo_import_generates_an_mp4_and_names_its_fallbacks(hallo_model, tmp_path, capsys):
    """Two clips (16 frames, then 4 after 2 motion frames through the ReferenceNet's norm1 features)."""
    code, out = generate(hallo_model, tmp_path, 0.8)
    assert code == 0
    info = read_video_info(out)
    assert info["frames"] == 20 and info["fps"] == 25 and (info["width"], info["height"]) == (128, 128)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: hallo import")]
    assert len(notes) == 1 and "region masks" in notes[0]


def test_echomimic_import_generates_an_mp4(echomimic_model, tmp_path):
    """Three 12-frame clips at 24 fps, no motion frames, whisper-tiny tokens."""
    code, out = generate(echomimic_model, tmp_path, 1.5)
    assert code == 0
    info = read_video_info(out)
    assert info["frames"] == 36 and info["fps"] == 24
