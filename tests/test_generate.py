"""`emote generate` end to end on the tiny preset: the MP4, determinism, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import SR, speech, tiny_random_model, write_wav

from engine.cli import main
from engine.media import read_video_info

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo"
PORTRAIT = ASSETS / "portrait.png"


def decode_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def generate(tmp_path: Path, out: str, *extra: str, audio: Path | None = None, image: Path = PORTRAIT) -> int:
    audio = audio or write_wav(tmp_path / "speech.wav", speech(3.0, hz=160, syllable_hz=4))
    return main(["generate", "--image", str(image), "--audio", str(audio), "--out", str(tmp_path / out),
                 "--model", "tiny", "--steps", "1", "--quiet", *extra])


def test_three_seconds_give_75_frames_with_matching_audio(tmp_path):
    assert generate(tmp_path, "a.mp4", "--seed", "3") == 0
    info = read_video_info(tmp_path / "a.mp4")
    assert info["frames"] == 75 and info["fps"] == 25
    assert (info["width"], info["height"]) == (128, 128)
    assert abs(info["audio_duration"] - 3.0) <= 1 / 25
    assert generate(tmp_path, "b.mp4", "--seed", "3") == 0
    assert np.array_equal(decode_frames(tmp_path / "a.mp4"), decode_frames(tmp_path / "b.mp4"))


def test_png_sequence_and_size(tmp_path):
    audio = write_wav(tmp_path / "short.wav", speech(0.5, hz=160, syllable_hz=4))
    assert generate(tmp_path, "c.mp4", "--size", "96", "--png-dir", str(tmp_path / "png"), audio=audio) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 13 and Image.open(pngs[0]).size == (96, 96)


def _bad_model_dir(tmp_path: Path) -> Path:
    from engine.models.checkpoint import save_model

    save_model(tiny_random_model(), tmp_path / "model")
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    cfg["unet"]["block_out_channels"] = [32, 64, 128]
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    return tmp_path / "model"


@pytest.mark.parametrize("case, message", [
    ("missing image", "no such file"),
    ("corrupt image", "not a readable image"),
    ("unreadable audio", "not a readable media file"),
    ("empty audio", "empty"),
    ("silent audio", "silent"),
    ("no face", "no face"),
    ("wrong model shapes", "shape mismatches"),
])
def test_bad_input_is_one_line_nonzero_and_no_output(tmp_path, capsys, case, message):
    image, audio, extra = PORTRAIT, None, []
    if case == "missing image":
        image = tmp_path / "nowhere.png"
    elif case == "corrupt image":
        image = tmp_path / "corrupt.jpg"
        image.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    elif case == "unreadable audio":
        audio = tmp_path / "noise.wav"
        audio.write_bytes(np.random.RandomState(0).bytes(4000))
    elif case == "empty audio":
        audio = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    elif case == "silent audio":
        audio = write_wav(tmp_path / "silent.wav", np.zeros(SR, np.float32))
    elif case == "no face":
        image = tmp_path / "blank.png"
        Image.new("RGB", (200, 160), (90, 120, 200)).save(image)
        extra = ["--require-face"]
    elif case == "wrong model shapes":
        extra = ["--model", str(_bad_model_dir(tmp_path))]
    code = generate(tmp_path, "out.mp4", *extra, audio=audio, image=image)
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.startswith("emote: error:")]
    assert len(lines) == 1 and message in lines[0].lower(), err
    assert not (tmp_path / "out.mp4").exists()
    assert not list(tmp_path.glob(".out.mp4*")), "no partial file may be left"


def _refused_in_one_line(capsys, code: int, message: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("emote: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


def _no_partials(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".partial-" in p.name], "no partial output may be left"


@pytest.mark.parametrize("target", ["image", "audio", "image's folder"])
def test_an_output_never_replaces_an_input(tmp_path, capsys, target):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = inputs / "photo.png"
    image.write_bytes(PORTRAIT.read_bytes())
    audio = write_wav(inputs / "speech.wav", speech(0.5, hz=160, syllable_hz=4))
    before = {p: p.read_bytes() for p in (image, audio)}
    args = ["generate", "--image", str(image), "--audio", str(audio), "--model", "tiny", "--steps", "1", "--quiet"]
    if target == "image's folder":
        args += ["--out", str(tmp_path / "out.mp4"), "--png-dir", str(inputs)]
    else:
        args += ["--out", str(image if target == "image" else audio)]
    _refused_in_one_line(capsys, main(args), "an output never replaces an input")
    assert {p: p.read_bytes() for p in (image, audio)} == before
    assert not (tmp_path / "out.mp4").exists()
    _no_partials(tmp_path)


def test_an_output_into_the_model_directory_is_refused(tmp_path, capsys):
    from engine.models.checkpoint import save_model

    save_model(tiny_random_model(), tmp_path / "model")
    config = tmp_path / "model" / "config.json"
    before = config.read_bytes()
    code = generate(tmp_path, "model/config.json", "--model", str(tmp_path / "model"))
    _refused_in_one_line(capsys, code, "an output never replaces an input")
    assert config.read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, capsys, kind):
    import os
    import stat

    out = tmp_path / "out.mp4"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "symlink":
        (tmp_path / "elsewhere.mp4").write_bytes(b"keep me")
        out.symlink_to(tmp_path / "elsewhere.mp4")
    else:  # a device node of its own (as /dev/full), so that a regression replaces nothing of the machine's
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root (CI runs as root)")
        os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    mode = out.lstat().st_mode
    audio = write_wav(tmp_path / "s.wav", speech(0.5, hz=160, syllable_hz=4))
    code = main(["generate", "--image", str(PORTRAIT), "--audio", str(audio),
                 "--out", str(out), "--model", "tiny", "--steps", "1", "--quiet"])
    _refused_in_one_line(capsys, code, "exists and is")
    assert out.lstat().st_mode == mode and not stat.S_ISREG(mode)
    _no_partials(tmp_path)


@pytest.mark.parametrize("png_dir", ["x.mp4", "x.mp4/frames", "foreign"])
def test_outputs_appear_together_or_not_at_all(tmp_path, capsys, png_dir):
    out = tmp_path / "d" / "x.mp4"
    (tmp_path / "d" / "foreign").mkdir(parents=True)
    (tmp_path / "d" / "foreign" / "notes.txt").write_text("not a frame")
    audio = write_wav(tmp_path / "s.wav", speech(0.5, hz=160, syllable_hz=4))
    code = main(["generate", "--image", str(PORTRAIT), "--audio", str(audio), "--out", str(out),
                 "--png-dir", str(tmp_path / "d" / png_dir), "--model", "tiny", "--steps", "1", "--quiet"])
    assert code == 2, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["foreign"]
    assert [p.name for p in (tmp_path / "d" / "foreign").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("flag, value", [
    ("--size", "0"), ("--size", "20000"), ("--size", "100"), ("--clip", "0"), ("--first-clip", "0"),
    ("--fps", "nan"), ("--fps", "1e6"), ("--fps", "inf"), ("--seed", "-1"), ("--steps", "0"), ("--group", "0"),
    ("--cfg-audio", "nan"), ("--head-speed", "inf"), ("--motion-anchor", "1.5"), ("--motion-anchor", "nan"),
])
def test_bad_numbers_are_usage_errors_naming_the_flag(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        generate(tmp_path, "out.mp4", flag, value)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[-1].startswith(f"emote generate: error: argument {flag}: "), err
    assert value in err[-1]
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("side", [1, 31])
def test_a_too_small_photo_is_refused(tmp_path, capsys, side):
    image = tmp_path / "dot.png"
    Image.new("RGB", (side, side), (200, 150, 120)).save(image)
    _refused_in_one_line(capsys, generate(tmp_path, "out.mp4", image=image), "at least 32 pixels")
    assert not (tmp_path / "out.mp4").exists()


def test_a_huge_photo_is_refused_from_its_header(tmp_path, capsys):
    import tracemalloc

    image = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(image)  # a few hundred KB on disk, 432 MB as RGB
    tracemalloc.start()
    try:
        code = generate(tmp_path, "out.mp4", image=image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _refused_in_one_line(capsys, code, "larger than the limit")
    assert peak < 100e6, f"{peak / 1e6:.0f} MB traced: the pixels were decoded"
