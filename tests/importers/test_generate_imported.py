"""``emote generate --model IMPORTED_DIR`` end to end on the tiny imported checkpoints: an MP4 comes out."""

from __future__ import annotations

from pathlib import Path

from support import speech, write_wav

from engine.cli import main
from engine.media import read_video_info

PORTRAIT = Path(__file__).resolve().parents[2] / "engine" / "assets" / "demo" / "portrait.png"


def generate(model: Path, tmp_path: Path, seconds: float, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "out.mp4"
    audio = write_wav(tmp_path / "speech.wav", speech(seconds, hz=160, syllable_hz=4))
    code = main(["generate", "--model", str(model), "--image", str(PORTRAIT), "--audio", str(audio), "--out", str(out),
                 "--steps", "1", "--quiet", *extra])
    return code, out


def notes(capsys, system: str) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"note: {system} import")]


def test_hallo_import_generates_an_mp4_and_names_its_fallbacks(hallo_model, tmp_path, capsys):
    """Two full 16-frame clips (Hallo pads the audio to whole clips), the video cut back to the audio's 20 frames;
    one line names the fallbacks, one what is reproduced of Hallo's pipeline and what is approximated."""
    code, out = generate(hallo_model, tmp_path, 0.8)
    assert code == 0
    info = read_video_info(out)
    assert info["frames"] == 20 and info["fps"] == 25 and (info["width"], info["height"]) == (128, 128)
    fallbacks, reproduced = notes(capsys, "hallo")
    assert "runs with fallbacks" in fallbacks and "region masks" in fallbacks
    assert "reproduces its pipeline's" in reproduced and "whole waveform padded to whole clips" in reproduced
    assert "reference reader" in reproduced and "VAE decode + encode" in reproduced
    assert "approximates" in reproduced and "not the whole audio" not in reproduced


def test_hallo_import_with_no_reproduce_says_so(hallo_model, tmp_path, capsys):
    """The engine's own clips: 16 frames, then the 4 the audio has."""
    code, out = generate(hallo_model, tmp_path, 0.8, "--no-reproduce")
    assert code == 0 and read_video_info(out)["frames"] == 20
    assert "--no-reproduce" in notes(capsys, "hallo")[-1]


def test_hallo_stream_note_names_what_streaming_approximates(hallo_model, tmp_path, capsys):
    """A stream cannot wait for the whole audio: its note says the audio features are windowed."""
    out = tmp_path / "live.mp4"
    audio = write_wav(tmp_path / "speech.wav", speech(0.3, hz=160, syllable_hz=4))
    code = main(["stream", "--model", str(hallo_model), "--image", str(PORTRAIT), "--audio", str(audio),
                 "--out", str(out), "--steps", "1", "--quiet"])
    assert code == 0
    reproduced = notes(capsys, "hallo")[-1]
    assert "not the whole audio" in reproduced and "reference reader" in reproduced


def test_echomimic_import_generates_an_mp4(echomimic_model, tmp_path, capsys):
    """EchoMimic's 38 frames of 1.5 s at 24 fps (its chunker runs two frames past the audio), the whole video
    in overlapping 12-frame context windows, whisper-tiny tokens."""
    code, out = generate(echomimic_model, tmp_path, 1.5)
    assert code == 0
    info = read_video_info(out)
    assert info["frames"] == 38 and info["fps"] == 24
    reproduced = notes(capsys, "echomimic_v1")[-1]
    assert "12-frame context windows overlapping by 3" in reproduced and "its frame count" in reproduced


def test_echomimic_import_with_no_reproduce_runs_clips(echomimic_model, tmp_path):
    """The engine's own form: three 12-frame clips, the audio's 36 frames."""
    code, out = generate(echomimic_model, tmp_path, 1.5, "--no-reproduce")
    assert code == 0 and read_video_info(out)["frames"] == 36


def test_echomimic_stream_runs_causal_context_windows(echomimic_model, tmp_path, capsys):
    """`emote stream` at 30 fps: every frame of the audio comes out (windows of 12, the last 3 held back until
    the next window or the end), and the note says what holding them back costs at that rate."""
    out = tmp_path / "live.mp4"
    audio = write_wav(tmp_path / "speech.wav", speech(1.0, hz=160, syllable_hz=4))
    code = main(["stream", "--model", str(echomimic_model), "--image", str(PORTRAIT), "--audio", str(audio),
                 "--out", str(out), "--steps", "1", "--fps", "30", "--quiet"])
    assert code == 0 and read_video_info(out)["frames"] == 30
    reproduced = notes(capsys, "echomimic_v1")[-1]
    assert "as a causal chain" in reproduced and "+100 ms latency" in reproduced
