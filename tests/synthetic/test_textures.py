"""Textured training faces: patterns that stay put, hair that turns with the head, held-out faces unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.lipsync import mouth_opening
from engine.synthetic import clips
from engine.synthetic.clips import TEXTURED_SHARE, recipe
from engine.synthetic.face_drawing import Identity, Pose, render
from engine.synthetic.textures import PATTERNS, Pattern, Texture, value_noise


def _textured_seed() -> int:
    return next(s for s in range(100) if recipe(s, "train").identity.texture is not None)


def test_a_share_of_training_faces_is_textured_and_no_held_out_face_is():
    train = [recipe(s, "train").identity.texture is not None for s in range(300)]
    assert abs(np.mean(train) - TEXTURED_SHARE) < 0.08
    assert not any(recipe(s, "heldout").identity.texture is not None for s in range(100))


def test_the_texture_leaves_the_rest_of_the_recipe_alone(monkeypatch):
    seed = _textured_seed()
    textured = recipe(seed, "train")
    monkeypatch.setattr(clips, "TEXTURED_SHARE", 0.0)
    plain = recipe(seed, "train")
    assert plain.identity.texture is None
    assert dataclasses.replace(textured, identity=plain.identity) == plain
    kept = ("hair_style", "cx", "cy", "rx", "ry", "iris", "lips", "mouth_y", "mouth_w")
    assert all(getattr(textured.identity, k) == getattr(plain.identity, k) for k in kept)
    assert render(plain.identity, Pose(), 64).tobytes() != render(textured.identity, Pose(), 64).tobytes()


@pytest.mark.parametrize("kind", PATTERNS)
def test_every_pattern_varies_within_its_amount(kind):
    grid = (np.arange(64, dtype=np.float32) + 0.5) / 64
    y, x = np.meshgrid(grid, grid, indexing="ij")
    pattern = Pattern(kind, (255.0, 0.0, 0.0), 0.7, 4.0, 0.3, 1.0, 5)
    field = pattern.field(x, y)
    assert field.shape == (64, 64) and 0.0 <= field.min() and field.max() <= 0.7 + 1e-6
    assert field.std() > 0.02, "a pattern is not a flat colour"
    painted = pattern.paint((0.0, 0.0, 255.0), x, y)
    assert np.allclose(painted[..., 0], 255.0 * field, atol=1e-3)
    with pytest.raises(ValueError, match="pattern kind"):
        dataclasses.replace(pattern, kind="plaid").field(x, y)


def test_value_noise_is_smooth_deterministic_and_in_range():
    grid = (np.arange(128, dtype=np.float64) + 0.5) / 128
    y, x = np.meshgrid(grid, grid, indexing="ij")
    a, b = value_noise(x, y, 4.0, 1), value_noise(x, y, 4.0, 1)
    assert np.array_equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert np.abs(np.diff(a, axis=1)).max() < 0.1 and not np.array_equal(a, value_noise(x, y, 4.0, 2))


def test_background_stays_put_and_hair_turns_with_the_head():
    identity = dataclasses.replace(Identity(), texture=Texture.sample(np.random.default_rng(3)))
    upright, rolled = render(identity, Pose(roll=0.0), 64), render(identity, Pose(roll=0.15), 64)
    corner = (slice(0, 6), slice(0, 6))
    assert np.array_equal(upright[corner], rolled[corner]), "the background does not move with the head"
    flat_hair = dataclasses.replace(identity, texture=dataclasses.replace(identity.texture, hair=dataclasses.replace(
        identity.texture.hair, amount=0.0)))
    hair = np.abs(render(identity, Pose(), 64).astype(int) - render(flat_hair, Pose(), 64).astype(int)).sum(-1) > 0
    assert hair[:20].any() and not hair[48:, 24:40].any(), "hair streaks are on the hair, not the chin"


def test_the_mouth_still_reads_on_a_textured_face():
    identity = recipe(_textured_seed(), "train").identity
    box = np.asarray(identity.mouth_box()) * 64
    closed, wide = render(identity, Pose(opening=0.0), 64), render(identity, Pose(opening=1.0), 64)
    assert mouth_opening(closed[None], box)[0] < 2.0 < 10.0 < mouth_opening(wide[None], box)[0]
