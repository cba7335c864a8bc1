"""Shared fixtures for the export tests: one tiny model, its graphs exported once, a session runner."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from support import randomize_, speech, tiny_random_model

from engine.backends.base import Backend
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from engine.stream.session import Session
from export.engine_cache import EngineCache
from export.networks import NETWORK_NAMES, make_network
from export.networks.spec import StreamShapes
from export.onnx_export import cached_export


@pytest.fixture(scope="session")
def tiny_model() -> EmoteModel:
    return randomize_(tiny_random_model(seed=0), only_zero=True)


@pytest.fixture(scope="session")
def tiny_shapes(tiny_model: EmoteModel) -> StreamShapes:
    return StreamShapes.for_model(tiny_model.config)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("engine-cache"))


@pytest.fixture(scope="session")
def exported(tiny_model: EmoteModel, tiny_shapes: StreamShapes, onnx_cache: EngineCache) -> dict[str, Path]:
    """Every tiny network exported once in fp32 (into the shared cache the backends read too)."""
    return {name: cached_export(onnx_cache, make_network(name, tiny_model, tiny_shapes), "fp32")
            for name in NETWORK_NAMES}


@pytest.fixture(scope="session")
def run_session(portrait: tuple[np.ndarray, np.ndarray]) -> Callable[..., np.ndarray]:
    """``run(backend, model, seconds, **options)`` -> uint8 frames ``[N, H, W, 3]`` of a whole session."""

    def run(backend: Backend, model: EmoteModel, seconds: float, **options) -> np.ndarray:
        session = Session(backend, model.config, *portrait, GenerationOptions(**{"steps": 1, **options}))
        session.push_audio(speech(seconds, noise=0.02))
        session.end()
        return np.stack([frame.image for frame in session.frames()])

    return run
