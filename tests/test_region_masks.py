"""Hallo's region masks: the face-box fallback's geometry, given face / lip masks cropped like the portrait,
mask files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.faces import FaceBox, box_mask, prepare_portrait
from engine.media import MediaError
from engine.region_masks import (LIP_BOX, MASK_SIZE, fallback_region_masks, lip_box, load_mask,
                                 portrait_region_masks, separate_regions)

SIZE = 128
REGION = FaceBox(32, 24, 96, 104)  # the face region (the face box grown 1.2x), portrait pixels


def at_mask_scale(box: FaceBox) -> FaceBox:
    return box.map(MASK_SIZE / SIZE)


def mean_inside(plane: np.ndarray, box: FaceBox) -> float:
    return float(plane[box_mask(box, plane.shape[0]) > 0].mean())


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    return fallback_region_masks(box_mask(REGION, SIZE))


def test_lip_box_is_the_lower_middle_of_the_face_region():
    lips = lip_box(REGION)
    assert (lips.x0, lips.y0, lips.x1, lips.y1) == pytest.approx((44.8, 75.2, 83.2, 91.2))
    x0, y0, x1, y1 = LIP_BOX
    assert 0 < x0 < 0.5 < x1 < 1 and abs((x0 + x1) / 2 - 0.5) < 1e-9 and 0.5 < y0 < y1 < 1


def test_fallback_planes_follow_the_face_and_lip_boxes(masks):
    assert masks.shape == (3, MASK_SIZE, MASK_SIZE) and masks.dtype == np.float32
    assert masks.min() >= 0 and masks.max() <= 1
    full, face, lip = masks
    lips, region = at_mask_scale(lip_box(REGION)), at_mask_scale(REGION)
    eyes = FaceBox(region.x0 + 0.3 * region.width, region.y0 + 0.3 * region.height,
                   region.x1 - 0.3 * region.width, region.y0 + 0.45 * region.height)
    corner = FaceBox(0, 0, 6, 6)
    assert mean_inside(lip, lips) > 0.6 and mean_inside(lip, eyes) < 0.05 and mean_inside(lip, corner) < 1e-3
    assert mean_inside(face, eyes) > 0.8 and mean_inside(face, corner) < 0.05
    assert mean_inside(face, lips) < mean_inside(face, eyes) - 0.3
    assert mean_inside(full, corner) > 0.95 and mean_inside(full, eyes) < 0.2
    np.testing.assert_allclose(full, 1 - np.maximum(face, 0) - lip, atol=0.5)
    row = np.unravel_index(np.argmax(lip), lip.shape)[0]
    assert lips.y0 <= row + 0.5 <= lips.y1


def test_fallback_uses_the_masks_bounding_box_and_is_mirror_symmetric(masks):
    shifted = fallback_region_masks(box_mask(REGION.map(1.0, dx=-8), SIZE))
    assert not np.allclose(shifted, masks)
    mirrored = fallback_region_masks(box_mask(FaceBox(SIZE - REGION.x1, REGION.y0, SIZE - REGION.x0, REGION.y1),
                                              SIZE))
    np.testing.assert_allclose(mirrored, masks[:, :, ::-1], atol=1e-5)


def test_empty_face_mask_gives_full_weight_everywhere():
    full, face, lip = fallback_region_masks(np.zeros((SIZE, SIZE), np.float32))
    assert full.min() == 1 and face.max() == 0 and lip.max() == 0


def test_separate_regions_is_hallo_full_face_lip():
    face, lip = box_mask(REGION, SIZE), box_mask(lip_box(REGION), SIZE)
    full, face_only, lip_only = separate_regions(face, lip)
    total = full + face_only + lip_only  # (1 - face) + max(face - lip, 0) + lip
    np.testing.assert_allclose(total[face_only > 0], 1.0, atol=1e-6)
    assert total.min() >= 1 - 1e-6
    assert lip_only.max() == pytest.approx(1.0) and full.max() == pytest.approx(1.0)
    assert 0 < lip_only[MASK_SIZE // 2, 10] < 0.05 < lip_only[MASK_SIZE // 2 + 12, MASK_SIZE // 2] < 0.95


def test_given_masks_are_cropped_like_the_portrait(tmp_path):
    rng = np.random.RandomState(0)
    photo = (rng.rand(300, 200, 3) * 255).astype(np.uint8)
    face_box = FaceBox(60, 90, 140, 170)
    portrait = prepare_portrait(photo, SIZE, face_box=face_box)
    lips_photo = FaceBox(80, 140, 120, 160)
    face_mask = box_mask_rect(face_box.grow(0.1), photo.shape[:2])
    lip_mask = box_mask_rect(lips_photo, photo.shape[:2])
    got = portrait_region_masks(face_mask, lip_mask, photo.shape[:2], portrait.crop_box, SIZE)
    crop_lips = lips_photo.map(SIZE / portrait.crop_box.width, -portrait.crop_box.x0, -portrait.crop_box.y0)
    want = separate_regions(portrait.mask, box_mask(crop_lips, SIZE))
    np.testing.assert_allclose(got, want, atol=0.05)
    with pytest.raises(ValueError, match="the photo 200x300"):
        portrait_region_masks(face_mask[:-1], lip_mask, photo.shape[:2], portrait.crop_box, SIZE)


def box_mask_rect(box: FaceBox, shape: tuple[int, int]) -> np.ndarray:
    """float32 ``shape`` mask, 1 on pixels whose centre lies inside ``box``."""
    rows = (np.arange(shape[0]) + 0.5)[:, None]
    cols = (np.arange(shape[1]) + 0.5)[None, :]
    return ((rows >= box.y0) & (rows < box.y1) & (cols >= box.x0) & (cols < box.x1)).astype(np.float32)


def test_mask_files_png_and_npy(tmp_path):
    mask = np.zeros((20, 30), np.float32)
    mask[5:10, 10:20] = 1
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", mask)
    np.save(tmp_path / "u8.npy", (mask * 255).astype(np.uint8))
    for name in ("m.png", "m.npy", "u8.npy"):
        np.testing.assert_array_equal(load_mask(tmp_path / name), mask)
    np.save(tmp_path / "bad.npy", mask * 3)
    with pytest.raises(MediaError, match="values in \\[0, 1\\]"):
        load_mask(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "missing.png")
