"""Frame sinks: where a session's frames go (an MP4 with the input audio, a PNG sequence, a callback).

A sink receives frames in index order and, for sinks that keep sound, the input audio as it arrives.
Leaving a sink's ``with`` block normally closes it; leaving it by an exception aborts it (nothing
half-written is left), except Ctrl-C (``KeyboardInterrupt``), the usual way to end a live stream:
the frames written so far are kept as a finished, playable output.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import TYPE_CHECKING, Callable

import numpy as np

from engine.media import PathLike, PngSequenceWriter, VideoWriter
from engine.timebase import SAMPLE_RATE

if TYPE_CHECKING:
    from engine.stream.session import Frame


class FrameSink(abc.ABC):
    """Consumes frames (and optionally the input audio) of one stream."""

    @abc.abstractmethod
    def write(self, frame: Frame) -> None:
        """Take the next frame (indices increase; a gap means frames were skipped)."""

    def write_audio(self, pcm: np.ndarray) -> None:
        """Take input audio as it arrives, float32 [samples] mono at 16 kHz (ignored unless the sink keeps sound)."""

    def finish(self) -> None:
        """Complete the output where the sink keeps it until ``close()``, which then only moves it into place.

        A run with several sinks finishes them all before closing any, so a failure in one leaves none.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Finish the output and put it in place."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop and leave no partial output."""

    @property
    @abc.abstractmethod
    def frames_written(self) -> int:
        """Frames that made it into the output (held frames filling skipped indices included)."""

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or (issubclass(exc_type, KeyboardInterrupt) and self.frames_written > 0):
            self.close()
        else:
            self.abort()


class _SequenceSink(FrameSink):
    """A sink whose output position is the frame index: skipped frames are filled by holding the last image.

    So frame ``i`` of the output is always shown at ``i / fps``, and audio stays in sync when the
    real-time policy skips frames. ``held_frames`` counts the fillers.
    """

    def __init__(self) -> None:
        self.held_frames = 0
        self._next = 0
        self._last: np.ndarray | None = None

    @abc.abstractmethod
    def _write_image(self, image: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] image to the output."""

    def write(self, frame: Frame) -> None:
        if frame.index < self._next:
            raise ValueError(f"frame {frame.index} arrived after frame {self._next - 1}: frames must come in order")
        filler = frame.image if self._last is None else self._last
        for _ in range(frame.index - self._next):
            self._write_image(filler)
            self.held_frames += 1
        self._write_image(frame.image)
        self._last = frame.image
        self._next = frame.index + 1


class Mp4Sink(_SequenceSink):
    """An MP4 (H.264 + AAC) through :class:`engine.media.VideoWriter`, with the input audio interleaved.

    On close the audio track is cut or padded to the video's length; the file appears at ``path`` only
    then (written beside it under a hidden temporary name until then).
    """

    def __init__(self, path: PathLike, fps: float, size: tuple[int, int], preset: str = "veryfast", crf: int = 18):
        """``size`` is (width, height) in pixels (even); ``fps`` frames per second; ``preset``/``crf`` for x264."""
        super().__init__()
        self.writer = VideoWriter(path, fps, size, sample_rate=SAMPLE_RATE, preset=preset, crf=crf)
        self.path = self.writer.path

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def _write_image(self, image: np.ndarray) -> None:
        self.writer.write_frame(image)

    def write_audio(self, pcm: np.ndarray) -> None:
        self.writer.write_audio(pcm)

    def finish(self) -> None:
        self.writer.finish()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class PngSink(_SequenceSink):
    """``frame_000000.png``, ... in ``directory`` through :class:`engine.media.PngSequenceWriter`; no audio."""

    def __init__(self, directory: PathLike, compress_level: int = 1):
        """``compress_level``: PNG zlib level, 0 (fastest) to 9 (smallest)."""
        super().__init__()
        self.writer = PngSequenceWriter(directory, compress_level=compress_level)
        self.path = self.writer.path

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def _write_image(self, image: np.ndarray) -> None:
        self.writer.write_frame(image)

    def finish(self) -> None:
        self.writer.finish()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class CallbackSink(FrameSink):
    """Calls ``fn(frame)`` for each frame as it comes (skipped indices are not filled), and
    ``audio_fn(pcm)`` for each block of input audio when given."""

    def __init__(self, fn: Callable[[Frame], None], audio_fn: Callable[[np.ndarray], None] | None = None):
        self.fn, self.audio_fn = fn, audio_fn
        self._count = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._count

    def write(self, frame: Frame) -> None:
        if self._closed:
            raise ValueError("callback sink is closed")
        self.fn(frame)
        self._count += 1

    def write_audio(self, pcm: np.ndarray) -> None:
        if self.audio_fn is not None and not self._closed:
            self.audio_fn(pcm)

    def close(self) -> None:
        self._closed = True

    def abort(self) -> None:
        self._closed = True
