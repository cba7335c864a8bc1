"""Portrait uploads: checked as images from their header before any pixel is decoded.

An upload must be PNG, JPEG or WebP (by its leading bytes, then by Pillow's reading of the header),
within the image size limits the CLI's files have too (:func:`engine.media.image_size_error`, at
least :data:`engine.media.MIN_PORTRAIT_SIDE` on a side). Only then is it decoded, with EXIF
orientation applied and transparency put on white.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from engine.media import IMAGE_LIMIT, MIN_PORTRAIT_SIDE, image_size_error

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


class PortraitError(ValueError):
    """An upload that is not an acceptable image; the message is one line."""


def sniff_format(data: bytes) -> str:
    """``"PNG"``, ``"JPEG"`` or ``"WEBP"`` from the leading bytes; PortraitError for anything else."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise PortraitError("the upload is not a PNG, JPEG or WebP image")


def check_header(data: bytes) -> tuple[str, int, int]:
    """Format, width and height from the image header alone (nothing decoded); PortraitError if unacceptable."""
    expected = sniff_format(data)
    too_large = PortraitError(f"the image is larger than {IMAGE_LIMIT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[expected]) as im:
                width, height, found = im.width, im.height, im.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large from None
    except (OSError, SyntaxError, ValueError):
        raise PortraitError(f"the upload starts like a {expected} image but its header is unreadable") from None
    if found != expected:
        raise PortraitError(f"the upload's header says {found}, its leading bytes {expected}")
    error = image_size_error(width, height, MIN_PORTRAIT_SIDE)
    if error is not None:
        raise PortraitError(error)
    return expected, width, height


def decode_portrait(data: bytes, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Check ``data`` (:func:`check_header`), then decode it to uint8 RGB ``[H, W, 3]``.

    16-bit and float grayscale are scaled to 8 bits; palette and grayscale images become RGB.
    """
    fmt, _, _ = check_header(data)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                deep = np.asarray(im, dtype=np.float64) * (255.0 if im.mode == "F" else 255.0 / 65535.0)
                im = Image.fromarray(np.clip(np.round(deep), 0, 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PortraitError(f"the {fmt} image could not be decoded ({reason})") from None
    return np.ascontiguousarray(rgb)
