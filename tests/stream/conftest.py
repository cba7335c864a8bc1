"""Fixtures shared by the streaming tests: the tiny preset with seeded weights and a random portrait."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import preset
from engine.models.checkpoint import random_model
from engine.models.model import EmoteModel


@pytest.fixture(scope="session")
def model() -> EmoteModel:
    return random_model(preset("tiny"), seed=0)


@pytest.fixture(scope="session")
def portrait() -> tuple[np.ndarray, np.ndarray]:
    """A random 128x128 RGB image and a face mask over its middle."""
    rng = np.random.RandomState(0)
    image = (rng.rand(128, 128, 3) * 255).astype(np.uint8)
    mask = np.zeros((128, 128), np.float32)
    mask[32:96, 40:88] = 1
    return image, mask
