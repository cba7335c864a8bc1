"""The README's frame strip: frames picked evenly from a real MP4 above its waveform; bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.media import VideoWriter, load_video_frames
from engine.strip import main, pick


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "talk.mp4"
    t = np.arange(16000) / 16000
    with VideoWriter(path, 25, (64, 48), audio=(0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)) as writer:
        for i in range(25):
            writer.write_frame(np.full((48, 64, 3), 8 * i, np.uint8))
    return path


def test_frames_are_picked_evenly_first_and_last_included():
    assert pick(4, 10) == [0, 3, 6, 9]
    assert pick(1, 10) == [0]
    assert pick(8, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one frame"):
        pick(0, 10)


def test_strip_of_a_video(video, tmp_path, capsys):
    frames, fps = load_video_frames(video)
    assert len(frames) == 25 and fps == 25 and frames[0].shape == (48, 64, 3)
    assert frames[-1].mean() > frames[0].mean() + 100  # decoded in order
    out = tmp_path / "docs" / "strip.png"
    assert main(["--video", str(video), "--out", str(out), "--frames", "5", "--title", "t"]) == 0
    image = Image.open(out)
    assert image.format == "PNG" and image.width > image.height > 100
    assert "strip:" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["strip.png"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "strip.png"
    assert main(["--video", str(tmp_path / "missing.mp4"), "--out", str(out)]) == 2
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    assert main(["--video", str(tmp_path / "junk.mp4"), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("engine.strip: error: ") for line in lines)
    assert "no such file" in lines[0] and "junk.mp4" in lines[1]
    assert not out.exists()
