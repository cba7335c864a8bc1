"""Fixtures shared by the streaming tests: the tiny preset with seeded weights (the portrait: tests/conftest.py)."""

from __future__ import annotations

import pytest
from support import tiny_random_model

from engine.models.model import EmoteModel


@pytest.fixture(scope="session")
def model() -> EmoteModel:
    return tiny_random_model(seed=0)
