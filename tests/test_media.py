"""engine.media: image and audio readers, the MP4 and PNG-sequence writers, read_video_info."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from support import SR, tone

from engine.media import (
    MediaError,
    PngSequenceWriter,
    VideoWriter,
    audio_duration,
    check_outputs,
    image_size_error,
    load_audio,
    load_image,
    read_video_info,
)

FPS = 25
FRAME_S = 1 / FPS  # one video frame: the tolerance on every duration


def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - PyAV raises different types for unknown codecs across versions
        return False
    return True


def _write_audio(path: Path, codec: str, pcm: np.ndarray, rate: int, channels: int = 1) -> Path:
    """Encode mono float PCM with PyAV (copied to every channel)."""
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        planar = np.ascontiguousarray(np.repeat(pcm[None], channels, axis=0))
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        if fmt != "fltp":
            frame = av.AudioResampler(format=fmt, layout=layout, rate=rate).resample(frame)[0]
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


def _no_partials(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".partial-" in p.name]


# ---------------------------------------------------------------------------------------------- images

@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)


def test_png_round_trip_is_exact(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    image = np.zeros((32, 48, 3), np.uint8)
    image[..., 0] = 200
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    out = load_image(tmp_path / "a.jpg")
    assert out.shape == (32, 48, 3)
    assert abs(float(out[..., 0].mean()) - 200) < 4 and float(out[..., 2].mean()) < 8


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = np.zeros((20, 60, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(image).save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (60, 20, 3)


def test_grayscale_and_16_bit_become_rgb(tmp_path: Path) -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 1], gray)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])

    deep = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(deep).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png")[..., 0], gray)


def test_alpha_is_composited_onto_background(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    white = load_image(tmp_path / "a.png")
    assert white.shape == (8, 8, 3)
    assert (white[:4] == [255, 0, 0]).all() and (white[4:] == 255).all()
    black = load_image(tmp_path / "a.png", background=(0, 0, 0))
    assert (black[4:] == 0).all()


def test_video_file_falls_back_to_pyav_first_frame(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "v.mp4", FPS, (32, 32)) as writer:
        writer.write_frame(np.full((32, 32, 3), 200, np.uint8))
        writer.write_frame(np.zeros((32, 32, 3), np.uint8))
    out = load_image(tmp_path / "v.mp4")
    assert out.shape == (32, 32, 3) and abs(float(out.mean()) - 200) < 6


def test_image_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(MediaError, match="no such file") as err:
        load_image(missing)
    _one_line_naming(err, missing)

    corrupt = tmp_path / "photo.jpg"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="not a readable image") as err:
        load_image(corrupt)
    _one_line_naming(err, corrupt)

    good = tmp_path / "t.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(MediaError) as err:
        load_image(truncated)
    _one_line_naming(err, truncated)


# ----------------------------------------------------------------------------------------------- audio

AUDIO_CASES = [
    ("wav16k_mono.wav", "pcm_s16le", 16000, 1),
    ("wav44k_stereo.wav", "pcm_s16le", 44100, 2),
    ("aac44k_stereo.m4a", "aac", 44100, 2),
    ("aac16k_mono.m4a", "aac", 16000, 1),
    ("mp3_44k.mp3", "libmp3lame", 44100, 1),
    ("opus_48k.ogg", "libopus", 48000, 2),
    ("flac_22k.flac", "flac", 22050, 1),
]


@pytest.mark.parametrize("name,codec,rate,channels", AUDIO_CASES, ids=[c[0] for c in AUDIO_CASES])
def test_audio_round_trip_length_and_frequency(tmp_path: Path, name: str, codec: str, rate: int,
                                               channels: int) -> None:
    if not _has_encoder(codec):
        pytest.skip(f"PyAV {av.__version__} has no {codec} encoder")
    path = _write_audio(tmp_path / name, codec, tone(2.0, rate=rate), rate, channels)
    pcm = load_audio(path)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(audio_duration(pcm, SR) - 2.0) <= FRAME_S, f"{name}: {len(pcm)} samples"
    assert abs(_dominant_hz(pcm, SR) - 440.0) < 2.0
    assert np.abs(pcm).max() <= 1.0
    assert 0.4 < np.abs(pcm[SR // 4:-SR // 4]).max() < 0.6  # channels averaged, not summed


def test_aac_priming_is_trimmed_so_timing_holds(tmp_path: Path) -> None:
    pcm = np.zeros(32000, np.float32)
    pcm[8000:8160] = 0.8  # a 10 ms click at 0.5 s
    back = load_audio(_write_audio(tmp_path / "click.m4a", "aac", pcm, SR))
    assert abs(len(back) - 32000) <= 16  # within 1 ms, far inside one frame
    assert abs(int(np.argmax(np.abs(back) > 0.3)) - 8000) <= 16


def test_load_audio_resamples_to_other_rates(tmp_path: Path) -> None:
    path = _write_audio(tmp_path / "t.wav", "pcm_s16le", tone(1.0, 1000.0, rate=44100), 44100)
    pcm = load_audio(path, sample_rate=8000)
    assert abs(len(pcm) - 8000) <= 8
    assert abs(_dominant_hz(pcm, 8000) - 1000.0) < 2.0


def test_silence_is_not_an_error(tmp_path: Path) -> None:
    path = _write_audio(tmp_path / "quiet.wav", "pcm_s16le", np.zeros(16000, np.float32), SR)
    pcm = load_audio(path)
    assert len(pcm) == 16000 and not pcm.any()


def test_audio_duration() -> None:
    assert audio_duration(np.zeros(24000, np.float32), 16000) == 1.5
    assert audio_duration(8000, 16000) == 0.5


def test_audio_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(MediaError, match="no such file") as err:
        load_audio(missing)
    _one_line_naming(err, missing)

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"this is not audio at all, " * 100)
    with pytest.raises(MediaError, match="not a readable media file") as err:
        load_audio(corrupt)
    _one_line_naming(err, corrupt)

    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
    with pytest.raises(MediaError, match="no samples") as err:
        load_audio(empty)
    _one_line_naming(err, empty)

    picture = tmp_path / "picture.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    with pytest.raises(MediaError, match="no audio stream") as err:
        load_audio(picture)
    _one_line_naming(err, picture)


# --------------------------------------------------------------------------------------------- writers

def _frames(count: int, width: int = 64, height: int = 48):
    for i in range(count):
        yield np.full((height, width, 3), (i * 7) % 256, np.uint8)


def test_video_writer_three_seconds(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with VideoWriter(target, FPS, size=(64, 48), audio=tone(3.0, rate=SR)) as writer:
        for frame in _frames(75):
            writer.write_frame(frame)
        assert writer.frames_written == 75
        assert not target.exists()  # only the temporary file exists until close
    info = read_video_info(target)
    assert info["frames"] == 75 and info["fps"] == pytest.approx(25.0)
    assert (info["width"], info["height"]) == (64, 48)
    assert info["duration"] == pytest.approx(3.0)
    assert abs(info["audio_duration"] - 3.0) <= FRAME_S
    assert info["audio_sample_rate"] == SR
    assert info["video_start"] == 0 and info["audio_start"] == 0
    audio = load_audio(target)
    assert abs(_dominant_hz(audio, SR) - 440.0) < 2.0
    _no_partials(tmp_path)


def test_video_frames_keep_order_and_content(tmp_path: Path) -> None:
    target = tmp_path / "order.mp4"
    levels = [30, 220, 120]
    with VideoWriter(target, FPS, (32, 32)) as writer:
        for level in levels:
            writer.write_frame(np.full((32, 32, 3), level, np.uint8))
    with av.open(str(target)) as container:
        means = [float(f.to_ndarray(format="rgb24").mean()) for f in container.decode(video=0)]
    assert len(means) == 3
    assert all(abs(m - level) < 6 for m, level in zip(means, levels, strict=True))


@pytest.mark.parametrize("audio_s", [1.3, 2.0, 2.77])
def test_streaming_interleaved_audio_is_fitted_to_video(tmp_path: Path, audio_s: float) -> None:
    rng = np.random.default_rng(int(audio_s * 100))
    pcm = tone(audio_s, rate=SR)
    target = tmp_path / "stream.mp4"
    position = 0
    with VideoWriter(target, FPS, (64, 48), preset="ultrafast") as writer:
        for frame in _frames(50):
            writer.write_frame(frame)
            step = int(rng.integers(1, 1200))
            writer.write_audio(pcm[position:position + step])
            position += step
        writer.write_audio(pcm[position:])
    info = read_video_info(target)
    assert info["frames"] == 50
    assert abs(info["audio_duration"] - 2.0) <= FRAME_S
    back = load_audio(target)
    if audio_s >= 2.0:
        assert abs(_dominant_hz(back, SR) - 440.0) < 2.0
    else:  # zero padding after the given audio
        tail = back[int(1.4 * SR):]
        assert np.abs(tail).max() < 0.02 and np.abs(back[:int(1.2 * SR)]).max() > 0.3


def test_video_writer_without_audio_writes_silence(tmp_path: Path) -> None:
    target = tmp_path / "silent.mp4"
    with VideoWriter(target, 10, (32, 32)) as writer:
        for frame in _frames(7, 32, 32):
            writer.write_frame(frame)
    info = read_video_info(target)
    assert info["frames"] == 7 and abs(info["audio_duration"] - 0.7) <= 0.1
    assert np.abs(load_audio(target)).max() < 0.01


def test_exception_inside_with_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, FPS, (32, 32), audio=tone(1.0, rate=SR)) as writer:
            for frame in _frames(5, 32, 32):
                writer.write_frame(frame)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_abort_and_failed_close_leave_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    writer = VideoWriter(target, FPS, (32, 32))
    writer.write_frame(np.zeros((32, 32, 3), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(MediaError, match="no video frames") as err:
        with VideoWriter(target, FPS, (32, 32)):
            pass
    _one_line_naming(err, target)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_replaced_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with VideoWriter(target, FPS, (32, 32)) as writer:
            writer.write_frame(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("stop")
    assert target.read_bytes() == b"old"
    with VideoWriter(target, FPS, (32, 32)) as writer:
        writer.write_frame(np.zeros((32, 32, 3), np.uint8))
    assert read_video_info(target)["frames"] == 1
    _no_partials(tmp_path)


def test_video_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", FPS, (33, 32))
    with pytest.raises(MediaError, match="preset"):
        VideoWriter(tmp_path / "p.mp4", FPS, (32, 32), preset="warp")
    with pytest.raises(MediaError, match="fps"):
        VideoWriter(tmp_path / "f.mp4", 0, (32, 32))
    with VideoWriter(tmp_path / "v.mp4", FPS, (32, 32)) as writer:
        with pytest.raises(MediaError, match="frame is 16x16"):
            writer.write_frame(np.zeros((16, 16, 3), np.uint8))
        with pytest.raises(MediaError, match="uint8"):
            writer.write_frame(np.zeros((32, 32, 3), np.float32))
        with pytest.raises(MediaError, match="mono"):
            writer.write_audio(np.zeros((2, 100), np.float32))
        writer.write_frame(np.zeros((32, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == [tmp_path / "v.mp4"]


def test_png_sequence_writer(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    frames = list(_frames(3, 20, 10))
    with PngSequenceWriter(target) as writer:
        for frame in frames:
            writer.write_frame(frame)
        assert writer.frames_written == 3 and not target.exists()
    assert sorted(p.name for p in target.iterdir()) == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(load_image(target / f"frame_{i:06d}.png"), frame)

    with PngSequenceWriter(target) as writer:  # an earlier sequence is replaced
        writer.write_frame(frames[0])
    assert [p.name for p in target.iterdir()] == ["frame_000000.png"]
    _no_partials(tmp_path)


def test_png_sequence_writer_on_error_and_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    with pytest.raises(RuntimeError):
        with PngSequenceWriter(target) as writer:
            writer.write_frame(np.zeros((4, 4, 3), np.uint8))
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []

    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(MediaError, match="other than a frame sequence"):
        PngSequenceWriter(target)
    assert (target / "notes.txt").exists()


def test_read_video_info_errors(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no such file"):
        read_video_info(tmp_path / "none.mp4")
    wav = _write_audio(tmp_path / "a.wav", "pcm_s16le", tone(0.1, rate=SR), SR)
    with pytest.raises(MediaError, match="no video stream") as err:
        read_video_info(wav)
    _one_line_naming(err, wav)


def test_image_size_is_checked_from_the_header(tmp_path: Path) -> None:
    import tracemalloc

    cases = {"pixels.png": (7000, 7000), "side.png": (9000, 64)}  # 49 MP, under Pillow's own bomb limit
    for name, size in cases.items():
        Image.new("1", size).save(tmp_path / name)
        tracemalloc.start()
        try:
            with pytest.raises(MediaError, match="larger than the limit of 8192 pixels on a side and 40 megapixels"):
                load_image(tmp_path / name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20e6, f"{name}: {peak / 1e6:.0f} MB traced, the pixels were decoded"
    assert image_size_error(*cases["pixels.png"]) is not None and image_size_error(6000, 6000) is None
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(MediaError, match="at least 32 pixels"):
        load_image(tmp_path / "dot.png", min_side=32)


def test_writers_replace_only_their_own_kind(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    (tmp_path / "real.mp4").write_bytes(b"keep")
    link = tmp_path / "link.mp4"
    link.symlink_to(tmp_path / "real.mp4")
    (tmp_path / "file").write_bytes(b"keep")
    with pytest.raises(MediaError, match="not a regular file"):
        VideoWriter(fifo, FPS, (32, 32))
    with pytest.raises(MediaError, match="symbolic link"):
        VideoWriter(link, FPS, (32, 32))
    with pytest.raises(MediaError, match="exists and is a file"):
        PngSequenceWriter(tmp_path / "file")
    assert fifo.is_fifo() and link.is_symlink() and (tmp_path / "real.mp4").read_bytes() == b"keep"

    target = tmp_path / "late.mp4"  # turned into a FIFO while the video was written
    with pytest.raises(MediaError, match="not a regular file"):
        with VideoWriter(target, FPS, (32, 32)) as writer:
            writer.write_frame(np.zeros((32, 32, 3), np.uint8))
            os.mkfifo(target)
    assert target.is_fifo()
    _no_partials(tmp_path)


def test_check_outputs_refuses_inputs_and_overlaps(tmp_path: Path) -> None:
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    photo.write_bytes(b"photo")
    (tmp_path / "alias.png").symlink_to(photo)
    refused = [
        ([photo], [], "is the input"),
        ([tmp_path / "in" / "." / "photo.png"], [], "is the input"),
        ([], [tmp_path / "in"], "holds the input"),
        ([], [tmp_path], "holds the input"),
        ([tmp_path / "a.mp4"], [tmp_path / "a.mp4"], "overlaps the output"),
        ([tmp_path / "a.mp4"], [tmp_path / "a.mp4" / "frames"], "overlaps the output"),
        ([tmp_path / "d" / "a.mp4"], [tmp_path / "d"], "overlaps the output"),
    ]
    for files, directories, message in refused:
        with pytest.raises(MediaError, match=message):
            check_outputs(files, directories, inputs=[tmp_path / "alias.png"])
    check_outputs([tmp_path / "a.mp4"], [tmp_path / "frames"], inputs=[photo])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.png", "in"]
