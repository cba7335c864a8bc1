"""Find the face in a portrait and cut the square, face-centred crop the model animates.

Detection uses OpenCV's Haar frontal-face cascade (shipped by opencv-python-headless 4.x). When no face
is found, ``prepare_portrait`` either falls back to a centred box (``on_missing="center"``) or raises
``NoFaceError`` (``on_missing="error"``). All boxes are in pixels, ``x`` to the right, ``y`` down,
``x1`` / ``y1`` exclusive.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from engine.media import load_image

CASCADE_FILE = "haarcascade_frontalface_default.xml"
ON_MISSING = ("center", "error")
_DETECT_MAX_SIDE = 640


class NoFaceError(ValueError):
    """No face was found in a portrait and the caller asked for an error; the message is one line."""


@dataclass(frozen=True)
class FaceBox:
    """An axis-aligned box in pixels: columns ``x0`` to ``x1``, rows ``y0`` to ``y1`` (``x0 < x1``, ``y0 < y1``)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(float(v)) for v in values):
            raise ValueError(f"face box {values}: coordinates must be finite numbers")
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise ValueError(f"face box {values}: needs x0 < x1 and y0 < y1")

    @classmethod
    def parse(cls, text: str) -> FaceBox:
        """Read ``"x0,y0,x1,y1"`` (pixels, e.g. the ``--face-box`` option); raises ValueError with a one-line reason."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4:
            raise ValueError(f"face box {text!r}: expected four numbers 'x0,y0,x1,y1' in pixels")
        return cls(*values)

    @property
    def width(self) -> float:
        """Width in pixels."""
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        """Height in pixels."""
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        """Centre (x, y) in pixels."""
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def as_tuple(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``."""
        return self.x0, self.y0, self.x1, self.y1

    def grow(self, margin: float) -> FaceBox:
        """Each side moves out by ``margin`` times the box's extent on that axis (negative shrinks)."""
        dx, dy = margin * self.width, margin * self.height
        return FaceBox(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy)

    def square(self) -> FaceBox:
        """The square of side ``max(width, height)`` with the same centre."""
        cx, cy = self.center
        half = max(self.width, self.height) / 2
        return FaceBox(cx - half, cy - half, cx + half, cy + half)

    def clip(self, width: float, height: float) -> FaceBox:
        """The part of the box inside an image of ``width`` x ``height`` pixels; ValueError if none is."""
        x0, x1 = min(max(self.x0, 0), width), min(max(self.x1, 0), width)
        y0, y1 = min(max(self.y0, 0), height), min(max(self.y1, 0), height)
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"face box {self.as_tuple()}: lies outside the {width}x{height} image")
        return FaceBox(x0, y0, x1, y1)

    def map(self, scale: float, dx: float = 0.0, dy: float = 0.0) -> FaceBox:
        """The box shifted by (``dx``, ``dy``) pixels, then scaled by ``scale`` about the origin."""
        return FaceBox((self.x0 + dx) * scale, (self.y0 + dy) * scale, (self.x1 + dx) * scale, (self.y1 + dy) * scale)


@dataclass(frozen=True)
class Portrait:
    """A face-centred square crop ready for the model.

    ``image`` uint8 [size, size, 3] RGB; ``mask`` float32 [size, size], 1 on pixels whose centre lies
    inside the face box grown by the mask margin, else 0; ``face_box`` the face in crop pixels;
    ``crop_box`` the square region of the source image (source pixels, may extend past its edges,
    which are replicated) that was resized to ``size``; ``detected`` True when the detector found the
    face (False for a face box given by the caller and for the centred fallback).
    """

    image: np.ndarray
    mask: np.ndarray
    face_box: FaceBox
    crop_box: FaceBox
    detected: bool


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder, CASCADE_FILE) if folder else None
    if path is None or not os.path.isfile(path) or not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(f"OpenCV {cv2.__version__} ships no {CASCADE_FILE} (install 'opencv-python-headless<5', "
                           "or pass a face box)")
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise RuntimeError(f"{path}: OpenCV could not load the face cascade")
    return classifier


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {list(image.shape)}")
    return image


def detect_face(image: np.ndarray, min_face_fraction: float = 0.1) -> FaceBox | None:
    """The largest frontal face in ``image`` (uint8 [H, W, 3] RGB), in image pixels, or None.

    Faces narrower than ``min_face_fraction`` of the image's shorter side are ignored. Images are
    scanned at most 640 pixels on their longer side. Raises RuntimeError when OpenCV has no cascade.
    """
    image = _check_image(image)
    classifier = _cascade()
    height, width = image.shape[:2]
    scale = min(1.0, _DETECT_MAX_SIDE / max(height, width))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_side = max(20, int(min_face_fraction * min(gray.shape)))
    found = classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(found) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in box) for box in found), key=lambda b: b[2] * b[3])
    return FaceBox(x / scale, y / scale, (x + w) / scale, (y + h) / scale)


def _fallback_box(width: int, height: int) -> FaceBox:
    """A centred square covering the middle half of the shorter side."""
    side = min(width, height) / 2
    cx, cy = width / 2, height / 2
    return FaceBox(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def box_mask(box: FaceBox, size: int) -> np.ndarray:
    """float32 [size, size]: 1 on pixels whose centre lies inside ``box`` (pixels), 0 elsewhere."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    cols = (centres >= box.x0) & (centres < box.x1)
    rows = (centres >= box.y0) & (centres < box.y1)
    return (rows[:, None] & cols[None, :]).astype(np.float32)


def prepare_portrait(
    image: np.ndarray | str | os.PathLike,
    size: int,
    face_box: FaceBox | None = None,
    crop_scale: float = 2.0,
    mask_margin: float = 0.1,
    on_missing: str = "center",
) -> Portrait:
    """Cut the square crop of side ``crop_scale`` x face size centred on the face, resized to ``size``.

    ``image`` is uint8 [H, W, 3] RGB or a path (read with ``engine.media.load_image``). The face is
    ``face_box`` (source pixels, must overlap the image) when given, else the largest detected face;
    its size is ``max(width, height)``. Parts of the crop outside the image repeat the edge pixels.
    Without a face,
    ``on_missing="center"`` uses a centred box half the shorter side wide (``detected=False``) and
    ``on_missing="error"`` raises NoFaceError. ``size`` must be a positive multiple of 8.
    """
    if size <= 0 or size % 8:
        raise ValueError(f"portrait size must be a positive multiple of 8, got {size}")
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    if not crop_scale > 0:
        raise ValueError(f"crop_scale must be positive, got {crop_scale}")
    name = None
    if isinstance(image, (str, os.PathLike)):
        name = Path(image)
        image = load_image(name)
    image = _check_image(image)
    height, width = image.shape[:2]

    if face_box is not None:
        face_box.clip(width, height)
    box = face_box if face_box is not None else detect_face(image)
    detected = face_box is None and box is not None
    if box is None:
        if on_missing == "error":
            where = f"{name}: " if name is not None else ""
            raise NoFaceError(f"{where}no face found in the {width}x{height} image (pass a face box, "
                              "or allow the centred fallback)")
        box = _fallback_box(width, height)

    cx, cy = box.center
    side = max(1, round(crop_scale * max(box.width, box.height)))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    crop_box = FaceBox(x0, y0, x0 + side, y0 + side)
    resized = crop_square(image, crop_box, size)

    scale = size / side
    crop_face = box.map(scale, -x0, -y0)
    mask = box_mask(crop_face.grow(mask_margin), size)
    return Portrait(image=resized, mask=mask, face_box=crop_face, crop_box=crop_box, detected=detected)


def crop_square(image: np.ndarray, crop_box: FaceBox, size: int, replicate: bool = True) -> np.ndarray:
    """The square ``crop_box`` (integer pixel corners, may extend past the image) of ``image``, resized to ``size``.

    ``image``: ``[H, W]`` or ``[H, W, C]`` (uint8 or float32). Outside the image the edge pixels repeat
    (``replicate``) or the crop is 0. Area filter when shrinking, cubic when growing. Returns ``[size, size(, C)]``.
    """
    height, width = image.shape[:2]
    x0, y0, side = int(crop_box.x0), int(crop_box.y0), int(crop_box.width)
    pad_left, pad_top = max(0, -x0), max(0, -y0)
    pad_right, pad_bottom = max(0, x0 + side - width), max(0, y0 + side - height)
    source = image
    if pad_left or pad_top or pad_right or pad_bottom:
        border = cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT
        source = cv2.copyMakeBorder(image, pad_top, pad_bottom, pad_left, pad_right, border, value=0)
    crop = source[y0 + pad_top:y0 + pad_top + side, x0 + pad_left:x0 + pad_left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interpolation))
