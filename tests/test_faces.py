"""engine.faces: FaceBox, Haar detection on the demo portrait, prepare_portrait crops and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.faces as faces
from engine.faces import FaceBox, NoFaceError, detect_face, prepare_portrait
from engine.media import load_image

DEMO_PORTRAIT = Path(faces.__file__).resolve().parent / "assets" / "demo" / "portrait.png"


# ----------------------------------------------------------------------------------------------- FaceBox

def test_facebox_parse() -> None:
    assert FaceBox.parse("10,20,110,140") == FaceBox(10, 20, 110, 140)
    assert FaceBox.parse(" 1.5, 2 ,3.5,4 ").as_tuple() == (1.5, 2, 3.5, 4)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "1,2,3,4,5", "", "10,10,5,20", "0,5,10,5", "0,0,nan,4"])
def test_facebox_parse_errors_are_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="face box") as err:
        FaceBox.parse(text)
    assert "\n" not in str(err.value)


def test_facebox_grow_square_clip() -> None:
    box = FaceBox(0, 0, 100, 50)
    assert box.grow(0.1) == FaceBox(-10, -5, 110, 55)
    assert box.grow(-0.1) == FaceBox(10, 5, 90, 45)
    assert box.square() == FaceBox(0, -25, 100, 75)
    assert box.width == 100 and box.height == 50 and box.center == (50, 25)
    assert FaceBox(-20, 10, 300, 90).clip(200, 80) == FaceBox(0, 10, 200, 80)
    with pytest.raises(ValueError, match="outside"):
        FaceBox(300, 0, 400, 10).clip(200, 80)


# ------------------------------------------------------------------------------------------------ detection

def test_demo_portrait_is_detected() -> None:
    image = load_image(DEMO_PORTRAIT)
    box = detect_face(image)
    assert box is not None, "the demo portrait must be found by the Haar cascade"
    height, width = image.shape[:2]
    cx, cy = box.center
    assert abs(cx - width / 2) < 0.1 * width and abs(cy - 0.5 * height) < 0.15 * height
    assert 0.3 * width < box.width < 0.7 * width


def test_no_face_in_blank_or_noise() -> None:
    assert detect_face(np.full((240, 320, 3), 128, np.uint8)) is None
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert detect_face(noise) is None


def test_missing_cascade_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(faces.cv2.data, "haarcascades", str(tmp_path))
    faces._cascade.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="haarcascade_frontalface_default.xml"):
            detect_face(np.zeros((64, 64, 3), np.uint8))
    finally:
        monkeypatch.undo()
        faces._cascade.cache_clear()


# ------------------------------------------------------------------------------------------ prepare_portrait

def test_prepare_demo_portrait() -> None:
    portrait = prepare_portrait(DEMO_PORTRAIT, 256)
    assert portrait.detected
    assert portrait.image.shape == (256, 256, 3) and portrait.image.dtype == np.uint8
    assert portrait.mask.shape == (256, 256) and portrait.mask.dtype == np.float32
    assert set(np.unique(portrait.mask)) == {0.0, 1.0}
    box = portrait.face_box
    assert box.width == pytest.approx(128, abs=1) and box.center == pytest.approx((128, 128), abs=2)


def test_mask_covers_grown_face_box_in_crop_coordinates() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    portrait = prepare_portrait(image, 200, face_box=FaceBox(50, 50, 150, 150), mask_margin=0.1)
    assert portrait.crop_box == FaceBox(0, 0, 200, 200)
    np.testing.assert_array_equal(portrait.image, image)
    assert portrait.face_box == FaceBox(50, 50, 150, 150)
    assert not portrait.detected
    expected = np.zeros((200, 200), np.float32)
    expected[40:160, 40:160] = 1
    np.testing.assert_array_equal(portrait.mask, expected)


def test_mask_scales_with_resize() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    portrait = prepare_portrait(image, 64, face_box=FaceBox(100, 100, 300, 300), mask_margin=0.0)
    assert portrait.crop_box == FaceBox(0, 0, 400, 400)
    assert portrait.face_box == FaceBox(16, 16, 48, 48)
    assert portrait.mask.sum() == 32 * 32 and portrait.mask[16:48, 16:48].all()
    small = prepare_portrait(image, 64, face_box=FaceBox(150, 150, 250, 250), crop_scale=4.0, mask_margin=0.0)
    assert small.face_box == FaceBox(24, 24, 40, 40)
    assert small.mask.sum() == 16 * 16


def test_crop_leaving_the_image_replicates_edges() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    image[..., 0] = np.arange(100, dtype=np.uint8)[None, :] + 50  # red rises left to right
    image[..., 1] = np.arange(100, dtype=np.uint8)[:, None] + 50  # green rises top to bottom
    portrait = prepare_portrait(image, 80, face_box=FaceBox(0, 0, 40, 40))
    assert portrait.crop_box == FaceBox(-20, -20, 60, 60)
    out = portrait.image
    np.testing.assert_array_equal(out[20:, 20:], image[:60, :60])
    assert (out[:20, :20] == image[0, 0]).all()
    np.testing.assert_array_equal(out[:20, 20:], np.broadcast_to(image[0, :60], (20, 60, 3)))
    np.testing.assert_array_equal(out[20:, :20], np.broadcast_to(image[:60, :1], (60, 20, 3)))


def test_centre_fallback_without_a_face() -> None:
    blank = np.full((240, 320, 3), 90, np.uint8)
    portrait = prepare_portrait(blank, 240)
    assert not portrait.detected
    assert portrait.crop_box == FaceBox(40, 0, 280, 240)
    assert portrait.face_box == FaceBox(60, 60, 180, 180)
    assert portrait.mask.sum() == 144 * 144  # 120 px box grown by 10 % per side


def test_on_missing_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(path)
    with pytest.raises(NoFaceError, match="no face found") as err:
        prepare_portrait(path, 64, on_missing="error")
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(NoFaceError):
        prepare_portrait(np.zeros((64, 64, 3), np.uint8), 64, on_missing="error")


def test_prepare_portrait_rejects_bad_arguments() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple of 8"):
        prepare_portrait(image, 60)
    with pytest.raises(ValueError, match="on_missing"):
        prepare_portrait(image, 64, on_missing="skip")
    with pytest.raises(ValueError, match="outside"):
        prepare_portrait(image, 64, face_box=FaceBox(100, 100, 120, 120))
    with pytest.raises(ValueError, match="uint8"):
        prepare_portrait(image.astype(np.float32), 64)
