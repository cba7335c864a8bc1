"""Hallo's full / face / lip region masks, from the portrait's face box or from given face and lip masks.

Hallo's audio modules weight their three audio cross-attentions by these masks
(:mod:`engine.models.hallo_audio`). Its pipeline (``hallo/utils/util.py`` ``get_mask``, commit 8fd7c57)
makes them from mediapipe landmarks, on mask images resized to 64x64:

    face  box of the face silhouette, grown 1.2x about its centre, Gaussian-blurred (51x51 kernel)
    lip   box of the lips, grown 2x, Gaussian-blurred (31x31 kernel)
    each blurred mask min-max normalised to [0, 1]; then the three region masks are
    full = 1 - face (the rest of the image: head pose), face = max(face - lip, 0), lip = lip.

Without mediapipe the fallback uses the same recipe on boxes: the face region is the portrait's face
mask (the face box grown by 10% per side, i.e. 1.2x, as Hallo's), the lip box is
:data:`LIP_BOX` of that region (the lips' box grown 2x, for frontal-face proportions: mouth centre at
~78% of the face box's height, lips ~12% of its height and ~36% of its width).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from engine.faces import FaceBox, box_mask, crop_square
from engine.media import MediaError, load_image

MASK_SIZE = 64
"""Side of Hallo's mask images, in pixels, whatever the portrait's size."""
FACE_BLUR = 51
"""Gaussian kernel side for the face mask at :data:`MASK_SIZE` (OpenCV's sigma for it: 8 px)."""
LIP_BLUR = 31
"""Gaussian kernel side for the lip mask at :data:`MASK_SIZE` (sigma 5 px)."""
LIP_BOX = (0.2, 0.64, 0.8, 0.84)
"""The fallback lip box as fractions ``(x0, y0, x1, y1)`` of the face region's box (x right, y down)."""


def separate_regions(face: np.ndarray, lip: np.ndarray) -> np.ndarray:
    """Face and lip region masks -> Hallo's full / face / lip masks.

    Args:
        face, lip: ``[S, S]`` masks in [0, 1] over the portrait (any side ``S``; 1 inside the region).
    Returns:
        float32 ``[3, MASK_SIZE, MASK_SIZE]`` in [0, 1]: full (outside the blurred face), face (the blurred
        face minus the blurred lips), lip (the blurred lips).
    """
    face = _blurred(face, FACE_BLUR)
    lip = _blurred(lip, LIP_BLUR)
    return np.stack([1.0 - face, np.maximum(face - lip, 0.0), lip]).astype(np.float32)


def _blurred(mask: np.ndarray, kernel: int) -> np.ndarray:
    """``[S, S]`` mask -> ``[MASK_SIZE, MASK_SIZE]``: resized (bilinear), blurred, min-max normalised to [0, 1]."""
    small = cv2.resize(np.asarray(mask, dtype=np.float32), (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(small, (kernel, kernel), 0)
    low, high = float(blurred.min()), float(blurred.max())
    if high - low < 1e-6:
        return np.clip(blurred, 0.0, 1.0)
    return (blurred - low) / (high - low)


def lip_box(face_region: FaceBox) -> FaceBox:
    """The fallback lip box (pixels) inside the face region's box (pixels): :data:`LIP_BOX` of it."""
    x0, y0, x1, y1 = LIP_BOX
    return FaceBox(face_region.x0 + x0 * face_region.width, face_region.y0 + y0 * face_region.height,
                   face_region.x0 + x1 * face_region.width, face_region.y0 + y1 * face_region.height)


def fallback_region_masks(face_mask: np.ndarray) -> np.ndarray:
    """The portrait's face mask (``[S, S]``, 1 on the face region) -> Hallo's masks ``[3, 64, 64]``.

    Face region = the mask; lips = :func:`lip_box` of the mask's bounding box. An empty mask gives
    full = 1, face = lip = 0.
    """
    face = np.asarray(face_mask, dtype=np.float32)
    rows, cols = np.nonzero(face > 0.5)
    if rows.size == 0:
        return np.stack([np.ones((MASK_SIZE, MASK_SIZE)), np.zeros((MASK_SIZE, MASK_SIZE)),
                         np.zeros((MASK_SIZE, MASK_SIZE))]).astype(np.float32)
    region = FaceBox(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
    return separate_regions(face, box_mask(lip_box(region), face.shape[0]))


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file -> float32 ``[H, W]`` in [0, 1].

    ``.npy``: a 2-D array of values in [0, 1] (or 0-255 for uint8). Anything else: an image (PNG, ...),
    read as grey levels / 255 (colour images: the mean of the channels).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise MediaError(f"{path}: not a NumPy array file ({exc})") from None
        mask = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    else:
        mask = load_image(path).astype(np.float32).mean(axis=2) / 255.0
    if mask.ndim != 2 or not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise MediaError(f"{path}: a mask must be a 2-D array of values in [0, 1], got shape {list(mask.shape)}")
    return mask


def portrait_region_masks(face: np.ndarray, lip: np.ndarray, image_shape: tuple[int, int], crop_box: FaceBox,
                          size: int) -> np.ndarray:
    """Face and lip masks over the source photo -> Hallo's masks ``[3, 64, 64]`` of the portrait crop.

    Args:
        face, lip: ``[H, W]`` masks in [0, 1], the photo's size (what Hallo's ``get_mask`` draws).
        image_shape: the photo's ``(H, W)``.
        crop_box: the portrait's square in photo pixels (``Portrait.crop_box``).
        size: the portrait's side in pixels.
    """
    regions = []
    for name, mask in (("face", face), ("lip", lip)):
        if mask.shape != tuple(image_shape):
            raise ValueError(f"the {name} mask is {mask.shape[1]}x{mask.shape[0]}, the photo "
                             f"{image_shape[1]}x{image_shape[0]}: masks must be drawn over the photo")
        regions.append(np.clip(crop_square(mask, crop_box, size, replicate=False), 0.0, 1.0))
    return separate_regions(*regions)
