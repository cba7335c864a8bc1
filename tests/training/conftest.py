"""Shared fixtures of the training tests: the talking-head config and two short synthetic clips (one moving
head, one still)."""

from __future__ import annotations

import pytest

from engine.synthetic.clips import make_clip
from engine.training.model_config import talking_head_config


@pytest.fixture(scope="package")
def config():
    return talking_head_config()


@pytest.fixture(scope="package")
def clips():
    return [make_clip(11, head_motion=True, sentences=1), make_clip(12, head_motion=False, sentences=1)]
