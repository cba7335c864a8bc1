"""Fixtures shared by the streaming tests: the tiny preset with seeded weights (the portrait: tests/conftest.py)."""

from __future__ import annotations

import pytest

from engine.config import preset
from engine.models.checkpoint import random_model
from engine.models.model import EmoteModel


@pytest.fixture(scope="session")
def model() -> EmoteModel:
    return random_model(preset("tiny"), seed=0)
