"""Media I/O: portrait images in, speech audio in, MP4 (H.264 + AAC) or PNG frames out.

Every failure is a ``MediaError`` whose message is one line that starts with the file's name.
Images are checked against one size limit (:func:`image_size_error`, shared with the live server's
uploads) from their header, before any pixel is decoded.
Writers never leave half-written output: they write into a hidden temporary file or directory beside
the target (``.name.partial-XXXX``) and rename it onto the target only when closed without error. A
target that exists must be what the writer makes (a regular file, a directory of frames): device
nodes, FIFOs and symbolic links are refused. :func:`check_outputs` refuses a set of outputs that
would replace an input or each other.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import warnings
from collections import deque
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from PIL import Image, ImageOps

from engine.timebase import SAMPLE_RATE

PathLike = str | os.PathLike

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_FRAME_NAME = "frame_{:06d}.png"
_FRAME_PATTERN = re.compile(r"frame_\d{6}\.png")
MIN_PORTRAIT_SIDE = 32
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_LIMIT = f"the limit of {MAX_IMAGE_SIDE} pixels on a side and {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"


class MediaError(ValueError):
    """A media file that cannot be read or written; the message is one line naming the file."""


def _reason(exc: BaseException) -> str:
    """One-line reason from an exception, without the file name that PIL / FFmpeg append."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = re.sub(r"\s*'[^']*'\s*$", "", str(text)).rstrip(": ")
    return " ".join(text.split()) or type(exc).__name__


def _existing_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if p.is_dir():
        raise MediaError(f"{p}: is a directory, not a file")
    return p


# ---------------------------------------------------------------------------------------------- images

def image_size_error(width: int, height: int, min_side: int = 1) -> str | None:
    """Why an image of ``width`` x ``height`` pixels is refused (one line), or None when it is within the limits.

    The limits: at least ``min_side`` pixels on each side, at most :data:`MAX_IMAGE_SIDE` on a side and
    :data:`MAX_IMAGE_PIXELS` in all (the CLI's files and the server's uploads alike).
    """
    if min(width, height) < min_side:
        return f"the image is {width}x{height}; it needs at least {min_side} pixels on each side"
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        return f"the image is {width}x{height}, larger than {IMAGE_LIMIT}"
    return None


def load_image(path: PathLike, background: tuple[int, int, int] = (255, 255, 255), min_side: int = 1) -> np.ndarray:
    """Read an image file as RGB.

    Any format Pillow reads (EXIF orientation applied; first frame of animations), else the first
    video frame PyAV decodes. Transparency is composited onto ``background`` (RGB, 0-255), grayscale
    and palette images become RGB, 16-bit images are scaled to 8 bits. The size is checked from the
    header (:func:`image_size_error`, with ``min_side``) before anything is decoded.

    Returns uint8 [H, W, 3] RGB.
    """
    p = _existing_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                _check_image_size(p, im.width, im.height, min_side)
                im.load()
                return _pil_to_rgb(ImageOps.exif_transpose(im), background)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError(f"{p}: the image is larger than {IMAGE_LIMIT}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, MediaError):
            raise
        pil_reason = _reason(exc)
    try:
        return _first_video_frame(p, min_side)
    except MediaError:
        raise
    except (av.FFmpegError, StopIteration, ValueError):
        raise MediaError(f"{p}: not a readable image ({pil_reason})") from None


def _check_image_size(path: Path, width: int, height: int, min_side: int) -> None:
    error = image_size_error(width, height, min_side)
    if error is not None:
        raise MediaError(f"{path}: {error}")


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        deep = np.asarray(im, dtype=np.float64)
        gray = np.clip(np.round(deep * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if im.mode == "F":
        gray = np.clip(np.round(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        im = Image.alpha_composite(canvas, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _first_video_frame(path: Path, min_side: int) -> np.ndarray:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:  # zero when the header does not say: the decoded frame is checked then
            _check_image_size(path, width, height, min_side)
        frame = next(container.decode(stream))
        _check_image_size(path, frame.width, frame.height, min_side)
        return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


# ----------------------------------------------------------------------------------------------- audio

def audio_duration(samples: np.ndarray | int, sample_rate: int) -> float:
    """Duration in seconds of ``samples`` (a [samples] array or a sample count) at ``sample_rate`` Hz."""
    n = int(samples) if isinstance(samples, (int, np.integer)) else int(np.asarray(samples).shape[0])
    return n / float(sample_rate)


def _open_audio(path: PathLike) -> tuple[Path, av.container.InputContainer, av.audio.stream.AudioStream]:
    p = _existing_file(path)
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{p}: not a readable media file ({_reason(exc)})") from None
    if not container.streams.audio:
        container.close()
        raise MediaError(f"{p}: no audio stream")
    return p, container, container.streams.audio[0]


def _padding_trim(stream: av.audio.stream.AudioStream, decoded_s: float) -> float | None:
    """Seconds of audio the stream declares, when the decoder returned a few codec frames more.

    Frame-based encoders (AAC, MP3) pad the last frame; the container records the true duration. The
    cut applies only when the excess is at most four codec frames, so a wrong header never eats audio.
    """
    frame_size = stream.codec_context.frame_size or 0
    if stream.duration is None or stream.time_base is None or frame_size <= 0 or not stream.rate:
        return None
    declared = float(stream.duration * stream.time_base)
    excess = decoded_s - declared
    if declared > 0 and 0 < excess <= 4 * frame_size / stream.rate:
        return declared
    return None


def _decode_audio(path: PathLike, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to mono float32 [samples] at ``sample_rate`` Hz (None: native rate)."""
    p, container, stream = _open_audio(path)
    with container:
        rate = sample_rate or stream.rate
        if not rate:
            raise MediaError(f"{p}: audio stream has no sample rate")
        resampler = av.AudioResampler(format="fltp", rate=rate)
        chunks: list[np.ndarray] = []
        decoded_s = 0.0
        try:
            for frame in container.decode(stream):
                decoded_s += frame.samples / frame.sample_rate
                chunks.extend(f.to_ndarray().mean(axis=0) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().mean(axis=0) for f in resampler.resample(None))
        except av.FFmpegError as exc:
            raise MediaError(f"{p}: corrupt audio ({_reason(exc)})") from None
        declared = _padding_trim(stream, decoded_s)
    pcm = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if declared is not None:
        pcm = pcm[:int(round(declared * rate))]
    return np.clip(pcm, -1.0, 1.0), rate


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read the first audio stream of any file PyAV opens (wav, mp3, m4a/aac, ogg/opus, flac, or a video).

    The track is resampled to ``sample_rate`` Hz with PyAV's resampler and its channels are averaged to
    mono (identical channels keep their amplitude; nothing clips). Encoder priming and end padding are
    trimmed where the container declares them (MP4 edit lists, MP3 gapless headers), so an AAC round
    trip keeps its length. Silence is returned as is.

    Returns float32 [samples] in [-1, 1].
    """
    pcm, _ = _decode_audio(path, sample_rate)
    if pcm.shape[0] == 0:
        raise MediaError(f"{Path(path)}: audio stream has no samples")
    return pcm


# ---------------------------------------------------------------------------------------------- writers

def _partial_path(target: Path, directory: bool) -> Path:
    """Create a hidden temporary file or directory beside ``target`` (usual umask permissions)."""
    for _ in range(100):
        candidate = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
        try:
            if directory:
                candidate.mkdir(mode=0o777)
            else:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {target}")


def _check_target_kind(target: Path, directory: bool) -> None:
    """Refuse a target that exists and is not what the writer makes: a directory (``directory``), else a regular file.

    The check does not follow a symbolic link: a link is refused, as are device nodes, FIFOs and sockets.
    """
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MediaError(f"{target}: cannot inspect the output ({_reason(exc)})") from None
    if stat.S_ISLNK(mode):
        raise MediaError(f"{target}: exists and is a symbolic link; outputs replace only what they write")
    if stat.S_ISDIR(mode) != directory:
        raise MediaError(f"{target}: exists and is {'a directory' if stat.S_ISDIR(mode) else 'a file'}")
    if not directory and not stat.S_ISREG(mode):
        raise MediaError(f"{target}: exists and is not a regular file (a device, FIFO or socket)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(files: Sequence[PathLike], directories: Sequence[PathLike] = (),
                  inputs: Sequence[PathLike] = ()) -> None:
    """Refuse a run's outputs before anything is written; MediaError (one line naming the output) if unsafe.

    ``files`` are output files, ``directories`` output directories (replaced as a whole), ``inputs``
    the files the run reads. Each output must be absent or of its own kind (:func:`_check_target_kind`),
    must not be an input (by path, through links, or the same file), a directory output must not hold
    an input, and no output may be, or lie inside, another.
    """
    outputs = [(Path(f), False) for f in files] + [(Path(d), True) for d in directories]
    sources = [(Path(i), Path(i).resolve()) for i in inputs]
    placed: list[tuple[Path, Path]] = []
    for target, directory in outputs:
        _check_target_kind(target, directory)
        where = target.resolve()
        for name, source in sources:
            if source == where or (directory and source.is_relative_to(where)) or _same_file(target, name):
                held = "holds" if source != where and directory else "is"
                raise MediaError(f"{target}: {held} the input {name}; an output never replaces an input")
        for other, there in placed:
            if where.is_relative_to(there) or there.is_relative_to(where):
                raise MediaError(f"{target}: overlaps the output {other}; each output needs its own place")
        placed.append((target, where))


def _prepare_target(path: PathLike, directory: bool) -> Path:
    target = Path(path)
    _check_target_kind(target, directory)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MediaError(f"{target}: cannot create the output directory ({_reason(exc)})") from None
    return target


def _check_frame(target: Path, frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise MediaError(f"{target}: frames must be uint8 [H, W, 3] RGB, got {frame.dtype} {list(frame.shape)}")
    if size is not None and (frame.shape[1], frame.shape[0]) != size:
        raise MediaError(f"{target}: frame is {frame.shape[1]}x{frame.shape[0]}, the output is {size[0]}x{size[1]}")
    return np.ascontiguousarray(frame)


class VideoWriter:
    """Write an MP4 with one H.264 video track (libx264, yuv420p) and one mono AAC audio track.

    Frames (uint8 [H, W, 3] RGB) and audio (float32 [samples] mono in [-1, 1] at ``sample_rate`` Hz)
    may be written interleaved in any amounts (streaming), or the whole track passed as ``audio``.
    Audio is encoded as soon as the video written so far covers it. On ``close()`` the audio track is
    cut or zero-padded to the video's length (frames / fps), both tracks starting at 0, and the file is
    renamed from ``.name.partial-XXXX`` onto ``path``. A track of silence is written when no audio is
    given. Leaving the ``with`` block by an exception, or ``abort()``, deletes the temporary file.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float | Fraction,
        size: tuple[int, int],
        sample_rate: int = SAMPLE_RATE,
        audio: np.ndarray | None = None,
        preset: str = "veryfast",
        crf: int = 18,
        audio_bitrate: int = 64000,
    ) -> None:
        """``size`` is (width, height) in pixels, both even; ``fps`` frames per second; ``crf`` x264 quality."""
        self.path = Path(path)
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise MediaError(f"{self.path}: frame size must be positive and even for yuv420p, got {width}x{height}")
        if sample_rate <= 0:
            raise MediaError(f"{self.path}: sample rate must be positive, got {sample_rate}")
        if preset not in X264_PRESETS:
            raise MediaError(f"{self.path}: unknown x264 preset {preset!r} (one of {', '.join(X264_PRESETS)})")
        if not fps > 0:
            raise MediaError(f"{self.path}: fps must be positive, got {fps}")
        self.fps = Fraction(fps).limit_denominator(1001)
        _prepare_target(self.path, directory=False)
        self.size = (width, height)
        self.sample_rate = int(sample_rate)
        self._frames = 0
        self._audio_encoded = 0
        self._pending: deque[np.ndarray] = deque()
        self._pending_samples = 0
        self._closed = False
        self._finished = False
        try:
            self._tmp = _partial_path(self.path, directory=False)
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot create the output file ({_reason(exc)})") from None
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.width, self._video.height = width, height
            self._video.pix_fmt = "yuv420p"
            self._video.codec_context.time_base = 1 / self.fps
            self._video.codec_context.options = {"crf": str(crf), "preset": preset}
            self._audio = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
            self._audio.codec_context.bit_rate = int(audio_bitrate)
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.abort()
            raise MediaError(f"{self.path}: cannot open the video encoder ({_reason(exc)})") from None
        if audio is not None:
            self.write_audio(audio)

    @property
    def frames_written(self) -> int:
        """Number of video frames written so far."""
        return self._frames

    def _samples_for_frames(self, frames: int) -> int:
        return int(round(Fraction(frames * self.sample_rate) / self.fps))

    def write_frame(self, frame: np.ndarray) -> None:
        """Append one frame, uint8 [H, W, 3] RGB of the writer's size."""
        self._check_open()
        frame = _check_frame(self.path, frame, self.size)
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = self._frames
        video_frame.time_base = self._video.codec_context.time_base
        self._encode(self._video, video_frame, "video")
        self._frames += 1
        self._flush_audio(self._samples_for_frames(self._frames))

    def write_audio(self, pcm: np.ndarray) -> None:
        """Append float32 [samples] mono PCM at ``sample_rate`` Hz (values outside [-1, 1] are clipped)."""
        self._check_open()
        pcm = np.asarray(pcm)
        if pcm.ndim != 1 or not np.issubdtype(pcm.dtype, np.floating):
            raise MediaError(f"{self.path}: audio must be float [samples] mono, got {pcm.dtype} {list(pcm.shape)}")
        if pcm.shape[0]:
            self._pending.append(np.clip(pcm, -1.0, 1.0).astype(np.float32, copy=False))
            self._pending_samples += pcm.shape[0]
            self._flush_audio(self._samples_for_frames(self._frames))

    def _flush_audio(self, until: int) -> None:
        """Encode buffered audio up to sample index ``until`` of the track, as far as the buffer reaches."""
        count = min(until - self._audio_encoded, self._pending_samples)
        if count <= 0:
            return
        taken: list[np.ndarray] = []
        need = count
        while need > 0:
            head = self._pending.popleft()
            if head.shape[0] > need:
                self._pending.appendleft(head[need:])
                head = head[:need]
            taken.append(head)
            need -= head.shape[0]
        self._pending_samples -= count
        self._encode_audio(np.concatenate(taken) if len(taken) > 1 else taken[0])

    def _encode_audio(self, chunk: np.ndarray) -> None:
        audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None]), format="fltp", layout="mono")
        audio_frame.sample_rate = self.sample_rate
        audio_frame.pts = self._audio_encoded
        audio_frame.time_base = Fraction(1, self.sample_rate)
        self._encode(self._audio, audio_frame, "audio")
        self._audio_encoded += chunk.shape[0]

    def _encode(self, stream: av.stream.Stream, frame: av.frame.Frame | None, what: str) -> None:
        """Encode ``frame`` (None: flush) and mux the packets; any failure aborts the file."""
        try:
            self._container.mux(stream.encode(frame))
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise MediaError(f"{self.path}: writing {what} failed ({_reason(exc)})") from None

    def _check_open(self) -> None:
        if self._closed or self._finished:
            raise MediaError(f"{self.path}: writer is already closed")

    def finish(self) -> None:
        """Fit the audio to the video's length and finish both encoders; the file stays under its temporary name.

        ``close()`` then only moves it onto ``path`` (so several outputs can be finished before any appears).
        """
        if self._closed or self._finished:
            return
        if self._frames == 0:
            self.abort()
            raise MediaError(f"{self.path}: no video frames were written")
        total = self._samples_for_frames(self._frames)
        self._flush_audio(total)
        if self._audio_encoded < total:
            self._encode_audio(np.zeros(total - self._audio_encoded, np.float32))
        self._pending.clear()
        self._pending_samples = 0
        self._encode(self._video, None, "video")
        self._encode(self._audio, None, "audio")
        try:
            self._container.close()
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise MediaError(f"{self.path}: finishing the file failed ({_reason(exc)})") from None
        try:
            _check_target_kind(self.path, directory=False)
        except MediaError:
            self.abort()
            raise
        self._finished = True

    def close(self) -> None:
        """:meth:`finish`, then move the file onto ``path``."""
        if self._closed:
            return
        self.finish()
        try:
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise MediaError(f"{self.path}: finishing the file failed ({_reason(exc)})") from None
        self._closed = True

    def abort(self) -> None:
        """Stop writing and delete the temporary file; nothing is left at ``path``."""
        if self._closed:
            return
        self._closed = True
        container = getattr(self, "_container", None)
        if container is not None and not self._finished:
            try:
                container.close()
            except (av.FFmpegError, OSError):
                pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class PngSequenceWriter:
    """Write frames as ``frame_000000.png``, ``frame_000001.png``, ... into ``directory``.

    Frames go into a hidden temporary directory beside the target, renamed onto it on ``close()``. An
    existing target directory is replaced only when it holds nothing but ``frame_*.png`` files (an
    earlier sequence); otherwise the constructor refuses. Exceptions and ``abort()`` delete the
    temporary directory.
    """

    def __init__(self, directory: PathLike, compress_level: int = 1) -> None:
        """``compress_level`` is PNG's zlib level, 0 (fastest) to 9 (smallest)."""
        self.path = _prepare_target(directory, directory=True)
        if self.path.exists() and any(not _FRAME_PATTERN.fullmatch(p.name) for p in self.path.iterdir()):
            raise MediaError(f"{self.path}: exists and holds files other than a frame sequence")
        self.compress_level = int(compress_level)
        self._frames = 0
        self._size: tuple[int, int] | None = None
        self._closed = False
        try:
            self._tmp = _partial_path(self.path, directory=True)
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot create the output directory ({_reason(exc)})") from None

    @property
    def frames_written(self) -> int:
        """Number of frames written so far."""
        return self._frames

    def write_frame(self, frame: np.ndarray) -> None:
        """Append one frame, uint8 [H, W, 3] RGB; every frame must have the first one's size."""
        if self._closed:
            raise MediaError(f"{self.path}: writer is already closed")
        frame = _check_frame(self.path, frame, self._size)
        self._size = (frame.shape[1], frame.shape[0])
        try:
            Image.fromarray(frame).save(self._tmp / _FRAME_NAME.format(self._frames),
                                        compress_level=self.compress_level)
        except OSError as exc:
            self.abort()
            raise MediaError(f"{self.path}: writing a frame failed ({_reason(exc)})") from None
        self._frames += 1

    def finish(self) -> None:
        """Check that ``directory`` may still be replaced; ``close()`` then only moves the sequence into place."""
        if self._closed:
            return
        try:
            _check_target_kind(self.path, directory=True)
        except MediaError:
            self.abort()
            raise

    def close(self) -> None:
        """:meth:`finish`, then move the sequence onto ``directory`` (replacing an earlier sequence there)."""
        if self._closed:
            return
        self.finish()
        old = None
        try:
            if self.path.exists():
                old = _partial_path(self.path, directory=True)
                os.replace(self.path, old)
                os.replace(self._tmp, self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self._tmp, self.path)
        except OSError as exc:
            if old is not None and not self.path.exists():
                os.replace(old, self.path)
            elif old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self.abort()
            raise MediaError(f"{self.path}: finishing the sequence failed ({_reason(exc)})") from None
        self._closed = True

    def abort(self) -> None:
        """Stop writing and delete the temporary directory; ``directory`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> PngSequenceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------------------- probing

def load_video_frames(path: PathLike) -> tuple[list[np.ndarray], float]:
    """Every video frame of ``path`` as uint8 ``[H, W, 3]`` RGB, in order, and the frame rate (frames per second)."""
    p = _existing_file(path)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise MediaError(f"{p}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{p}: not a readable video ({_reason(exc)})") from None
    if not frames:
        raise MediaError(f"{p}: the video has no frames")
    return frames, rate


def read_video_info(path: PathLike) -> dict:
    """Describe a video file by decoding it.

    Returns a dict: ``frames`` (int, video frames decoded), ``fps`` (float), ``width`` and ``height``
    (pixels), ``duration`` (video seconds, frames / fps), ``video_start`` (seconds), ``audio_duration``
    (seconds of decoded audio after padding trim, None without audio), ``audio_sample_rate`` (Hz, None
    without audio), ``audio_start`` (seconds, None without audio).
    """
    p = _existing_file(path)
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{p}: not a readable media file ({_reason(exc)})") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"{p}: no video stream")
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate or video.base_rate
        try:
            frames = sum(1 for _ in container.decode(video))
        except av.FFmpegError as exc:
            raise MediaError(f"{p}: corrupt video ({_reason(exc)})") from None
        video_start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        audio_rate = audio_stream.rate if audio_stream is not None else None
        audio_start = (float(audio_stream.start_time * audio_stream.time_base)
                       if audio_stream is not None and audio_stream.start_time is not None else None)
        info = {
            "frames": frames,
            "fps": float(rate) if rate else None,
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "duration": frames / float(rate) if rate else None,
            "video_start": video_start,
        }
    audio_duration_s = None
    if audio_stream is not None:
        pcm, native = _decode_audio(p, None)
        audio_duration_s = audio_duration(pcm, native)
    info.update(audio_duration=audio_duration_s, audio_sample_rate=audio_rate, audio_start=audio_start)
    return info
