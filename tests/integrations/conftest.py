"""Fixtures of the voice-agent integration tests: the tiny preset with seeded weights, and a clock that moves
only when a test says so (the portrait: tests/conftest.py)."""

from __future__ import annotations

import pytest
from support import tiny_random_model

from engine.models.model import EmoteModel


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def model() -> EmoteModel:
    return tiny_random_model(seed=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
