"""Hallo's per-session inputs on a Hallo-shaped tiny model: masks per resolution level, face tokens;
models without audio modules / image projection get none and refuse them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import hallo_tiny, tiny_random_model

from engine.backends.torch_eager import TorchEagerBackend
from engine.faces import FaceBox, box_mask
from engine.models.checkpoint import random_model
from engine.region_masks import MASK_SIZE, fallback_region_masks, lip_box
from engine.stream.hallo_conditions import hallo_conditions

SIZE, LATENT = 128, 16
REGION = FaceBox(40, 24, 88, 96)


@pytest.fixture(scope="module")
def backend() -> TorchEagerBackend:
    return TorchEagerBackend(random_model(hallo_tiny(), seed=0))


@pytest.fixture(scope="module")
def face_mask() -> np.ndarray:
    return box_mask(REGION, SIZE)


def centre_of_mass(plane: torch.Tensor, side: int) -> tuple[float, float]:
    """(x, y) of a flattened ``[side * side]`` weight map, in fractions of the side."""
    grid = plane.view(side, side)
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    total = grid.sum()
    return float((grid.sum(0) * coords).sum() / total), float((grid.sum(1) * coords).sum() / total)


def test_fallback_masks_at_every_level_follow_the_face_box(backend, face_mask):
    levels = hallo_conditions(backend, backend.model.config, face_mask, LATENT).region_masks
    assert [tuple(m.shape) for m in levels] == [(1, 3, 256), (1, 3, 64), (1, 3, 16)]
    lips = lip_box(REGION)
    for level, masks in enumerate(levels):
        side = LATENT >> level
        full, face, lip = masks[0]
        x, y = centre_of_mass(lip, side)
        assert abs(x - 0.5) < 0.05 and REGION.y0 / SIZE < lips.y0 / SIZE - 0.1 < y < lips.y1 / SIZE + 0.1
        _, face_y = centre_of_mass(face, side)
        assert face_y < y
        corner = full.view(side, side)[0, 0]
        assert corner > 0.9 and face.view(side, side)[0, 0] < 0.1
    np.testing.assert_allclose(levels[0][0].view(3, LATENT, LATENT).numpy(),
                               torch.nn.functional.avg_pool2d(torch.from_numpy(fallback_region_masks(face_mask)),
                                                              MASK_SIZE // LATENT).numpy(), atol=1e-6)


def test_given_masks_of_any_size_are_area_resized(backend, face_mask):
    masks = np.zeros((3, 32, 32), np.float32)
    masks[2, 16:, :] = 1
    levels = hallo_conditions(backend, backend.model.config, face_mask, LATENT, region_masks=masks).region_masks
    lip = levels[1][0, 2].view(8, 8)
    assert lip[4:].eq(1).all() and lip[:4].eq(0).all() and levels[0][0, :2].eq(0).all()
    with pytest.raises(ValueError, match=r"\[3, h, w\]"):
        hallo_conditions(backend, backend.model.config, face_mask, LATENT, region_masks=masks[:2])


def test_face_embedding_tokens_and_the_zero_embedding_for_the_unconditional_branch(backend, face_mask):
    cfg = backend.model.config
    assert hallo_conditions(backend, cfg, face_mask, LATENT).image_tokens is None
    embedding = np.linspace(-1, 1, cfg.image_proj.embedding_dim).astype(np.float32)
    out = hallo_conditions(backend, cfg, face_mask, LATENT, face_embedding=embedding)
    with torch.no_grad():
        want = backend.model.image_proj(torch.from_numpy(embedding)[None])
    torch.testing.assert_close(out.image_tokens, want)
    torch.testing.assert_close(out.uncond_image_tokens[0], backend.model.backbone.default_image_tokens)
    assert not torch.allclose(out.image_tokens[0], out.uncond_image_tokens[0])


def test_models_without_hallo_pieces_get_nothing_and_refuse_inputs(face_mask):
    tiny = TorchEagerBackend(tiny_random_model(seed=0))
    out = hallo_conditions(tiny, tiny.model.config, face_mask, LATENT)
    assert (out.image_tokens, out.uncond_image_tokens, out.region_masks) == (None, None, None)
    with pytest.raises(ValueError, match="no audio modules"):
        hallo_conditions(tiny, tiny.model.config, face_mask, LATENT, region_masks=np.ones((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="no image projection"):
        hallo_conditions(tiny, tiny.model.config, face_mask, LATENT, face_embedding=np.zeros(512, np.float32))
