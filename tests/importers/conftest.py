"""Shared tiny checkouts and their imports (written once per test session).

The tests import ``synth`` and ``tiny_sources`` from this folder, which pytest puts on the path
(``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_sources

from engine.importers.run import import_model


@pytest.fixture(scope="session")
def hallo_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hallo checkout (``pretrained_models/...``) from the parity fixture."""
    return tiny_sources.write_hallo(tmp_path_factory.mktemp("hallo_src"))


@pytest.fixture(scope="session")
def echomimic_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EchoMimic checkout (``pretrained_weights/...``), motion keys only in ``motion_module.pth``."""
    return tiny_sources.write_echomimic(tmp_path_factory.mktemp("echomimic_src"))


@pytest.fixture(scope="session")
def hallo_model(hallo_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Hallo checkout imported into one of our model directories."""
    out = tmp_path_factory.mktemp("hallo_model") / "model"
    import_model("hallo", hallo_src, out)
    return out


@pytest.fixture(scope="session")
def echomimic_model(echomimic_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny EchoMimic checkout imported into one of our model directories."""
    out = tmp_path_factory.mktemp("echomimic_model") / "model"
    import_model("echomimic", echomimic_src, out)
    return out
