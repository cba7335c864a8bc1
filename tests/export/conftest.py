"""Shared fixtures for the export tests: one tiny model, its graphs exported once, a session runner."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from engine.backends.base import Backend
from engine.config import preset
from engine.models.checkpoint import random_model
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from engine.stream.session import Session
from export.engine_cache import EngineCache
from export.networks import NETWORK_NAMES, StreamShapes, make_network
from export.onnx_export import cached_export

SR = 16000


def wake_zero_parameters_(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Fill every all-zero parameter (biases, zero-initialised projections) with N(0, std) noise,
    so that paths a fresh model switches off (motion modules, face locator) take part in parity tests."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


@pytest.fixture(scope="session")
def tiny_model() -> EmoteModel:
    return wake_zero_parameters_(random_model(preset("tiny"), seed=0))


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


def speech(seconds: float, seed: int = 1) -> np.ndarray:
    """A voiced-looking test signal: a 180 Hz tone, amplitude-modulated at 3 Hz, plus a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.RandomState(seed)
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.randn(t.size)).astype(
        np.float32)


@pytest.fixture(scope="session")
def run_session(portrait: tuple[np.ndarray, np.ndarray]) -> Callable[..., np.ndarray]:
    """``run(backend, model, seconds, **options)`` -> uint8 frames ``[N, H, W, 3]`` of a whole session."""

    def run(backend: Backend, model: EmoteModel, seconds: float, **options) -> np.ndarray:
        session = Session(backend, model.config, *portrait, GenerationOptions(**{"steps": 1, **options}))
        session.push_audio(speech(seconds))
        session.end()
        return np.stack([frame.image for frame in session.frames()])

    return run
