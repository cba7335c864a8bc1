"""Frame sinks: MP4 with interleaved input audio, PNG sequence, callback; abort and Ctrl-C behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import SR, tone

from engine.media import read_video_info
from engine.stream.session import Frame
from engine.stream.sinks import CallbackSink, Mp4Sink, PngSink

FPS = 25
SIZE = 64


def frame(index: int) -> Frame:
    """A frame whose brightness encodes its index."""
    image = np.full((SIZE, SIZE, 3), (index * 9) % 256, np.uint8)
    image[:, : SIZE // 2, 0] = 255
    return Frame(index, index / FPS, image)


def stream_into(sink, seconds: float, skip: set[int] = frozenset(), end_frame: int | None = None) -> None:
    """Feed ``sink`` as a live run would: 20 ms audio blocks, each frame once its audio is in."""
    pcm = tone(seconds, 220, 0.3)
    total = end_frame if end_frame is not None else int(np.ceil(seconds * FPS))
    next_frame = 0
    for start in range(0, pcm.size, 320):
        sink.write_audio(pcm[start:start + 320])
        while next_frame < total and (next_frame + 1) * SR // FPS <= start + 320:
            if next_frame not in skip:
                sink.write(frame(next_frame))
            next_frame += 1
    while next_frame < total:
        sink.write(frame(next_frame))
        next_frame += 1


def no_leftovers(directory: Path) -> bool:
    return not any(".partial-" in p.name for p in directory.iterdir())


def test_mp4_sink_carries_the_input_audio(tmp_path: Path):
    out = tmp_path / "live.mp4"
    with Mp4Sink(out, FPS, (SIZE, SIZE)) as sink:
        stream_into(sink, 1.5)
    info = read_video_info(out)
    assert info["frames"] == 38 and (info["width"], info["height"]) == (SIZE, SIZE)
    assert info["duration"] == pytest.approx(38 / FPS)
    assert info["audio_sample_rate"] == SR
    assert abs(info["audio_duration"] - info["duration"]) <= 1 / FPS
    assert no_leftovers(tmp_path)


def test_mp4_sink_holds_the_last_frame_over_skipped_ones(tmp_path: Path):
    out = tmp_path / "skips.mp4"
    with Mp4Sink(out, FPS, (SIZE, SIZE)) as sink:
        stream_into(sink, 1.0, skip={10, 11, 12})
    assert sink.held_frames == 3 and sink.frames_written == 25
    info = read_video_info(out)
    assert info["frames"] == 25
    assert abs(info["audio_duration"] - info["duration"]) <= 1 / FPS


def test_mp4_sink_abort_leaves_nothing(tmp_path: Path):
    out = tmp_path / "gone.mp4"
    sink = Mp4Sink(out, FPS, (SIZE, SIZE))
    stream_into(sink, 0.5)
    sink.abort()
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with Mp4Sink(out, FPS, (SIZE, SIZE)) as sink:
            stream_into(sink, 0.5)
            raise RuntimeError("generation failed")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_keeps_a_playable_file(tmp_path: Path):
    out = tmp_path / "interrupted.mp4"
    with pytest.raises(KeyboardInterrupt):
        with Mp4Sink(out, FPS, (SIZE, SIZE)) as sink:
            stream_into(sink, 0.4)
            raise KeyboardInterrupt
    info = read_video_info(out)
    assert info["frames"] == 10 and abs(info["audio_duration"] - info["duration"]) <= 1 / FPS
    early = tmp_path / "early.mp4"
    with pytest.raises(KeyboardInterrupt):
        with Mp4Sink(early, FPS, (SIZE, SIZE)):
            raise KeyboardInterrupt
    assert not early.exists() and no_leftovers(tmp_path)


def test_frames_out_of_order_are_refused(tmp_path: Path):
    sink = Mp4Sink(tmp_path / "order.mp4", FPS, (SIZE, SIZE))
    sink.write(frame(0))
    sink.write(frame(1))
    with pytest.raises(ValueError, match="frame 1 arrived after frame 1"):
        sink.write(frame(1))
    sink.abort()


def test_png_sink_names_frames_by_index(tmp_path: Path):
    out = tmp_path / "frames"
    with PngSink(out) as sink:
        sink.write_audio(tone(0.1, 220, 0.3))
        for i in (0, 1, 2, 5, 6):
            sink.write(frame(i))
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(7)]
    assert sink.held_frames == 2
    np.testing.assert_array_equal(np.asarray(Image.open(out / "frame_000004.png")), frame(2).image)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "frame_000005.png")), frame(5).image)
    assert no_leftovers(tmp_path)


def test_png_sink_abort_leaves_nothing(tmp_path: Path):
    with pytest.raises(ValueError):
        with PngSink(tmp_path / "frames") as sink:
            sink.write(frame(0))
            raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []


def test_callback_sink_calls_in_order():
    seen: list[int] = []
    heard: list[int] = []
    with CallbackSink(lambda f: seen.append(f.index), audio_fn=lambda pcm: heard.append(pcm.size)) as sink:
        stream_into(sink, 0.5, skip={3})
    assert seen == [i for i in range(13) if i != 3]
    assert sum(heard) == 8000 and sink.frames_written == 12
    with pytest.raises(ValueError, match="closed"):
        sink.write(frame(20))
