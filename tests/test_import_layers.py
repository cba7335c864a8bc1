"""The engine's import graph runs one way: no module imports from a layer above its own.

Every import is read from the source (``import`` and ``from ... import`` anywhere in a module, function
bodies included); an import under ``if TYPE_CHECKING:`` is for type hints only and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("engine.timebase", "engine.limits", "engine.allocator", "engine.__init__"),
    ("engine.config", "engine.options"),
    ("engine.media", "engine.faces", "engine.face_embedding", "engine.region_masks", "engine.strip",
     "engine.synthetic"),
    ("engine.models",),
    ("engine.sampling",),
    ("engine.importers", "engine.training", "export"),
    ("engine.backends",),
    ("engine.stream",),
    ("engine.pipeline", "engine.lipsync", "engine.drift"),
    ("engine.serve", "engine.integrations"),
    ("engine.cli", "engine.assets"),
)
"""Bottom first. A module may import from its own layer and the layers below; ``bench`` is above them all."""

BOTTOM = ("engine.timebase", "engine.limits", "engine.config")
"""Modules that may import nothing of the engine's but the time base and the shared limits (the leaves: nothing at
all)."""
LEAVES = ("engine.timebase", "engine.limits", "engine.allocator")


def module_name(path: Path) -> str:
    """``engine/stream/session.py`` -> ``engine.stream.session`` (a package's ``__init__`` keeps the suffix)."""
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def layer_of(module: str) -> int:
    """Index into :data:`LAYERS` of the module or package ``module``; ``bench`` is one above the top.

    A bare package name (``import engine``, ``from engine import X``) is its ``__init__``."""
    if module.split(".")[0] == "bench":
        return len(LAYERS)
    names = (module, f"{module}.__init__")
    for index, layer in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for name in names for prefix in layer):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of engine, export or bench in ``path``, but type-only ones."""
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(node) for branch in ast.walk(tree)
                 if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
                 for statement in branch.body for node in ast.walk(statement)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in ("engine", "export", "bench")]
    return found


SOURCES = sorted([*(REPO / "engine").rglob("*.py"), *(REPO / "export").rglob("*.py")])


def test_every_module_has_a_layer():
    assert SOURCES
    for path in SOURCES:
        layer_of(module_name(path))


def test_no_import_goes_up_a_layer():
    upward = []
    for path in SOURCES:
        module = module_name(path)
        for line, target in imports(path):
            if layer_of(target) > layer_of(module):
                upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", BOTTOM)
def test_configuration_sits_at_the_bottom(module):
    path = REPO / (module.replace(".", "/") + ".py")
    allowed = set(LEAVES) if module not in LEAVES else set()
    assert {target for _, target in imports(path)} <= allowed


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checks above can fail: a config module importing the models is seen, a type-only import is not."""
    source = tmp_path / "config.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom engine.timebase import SAMPLE_RATE\n"
                      "def f():\n    from engine.models.audio import AudioEncoder\n"
                      "if TYPE_CHECKING:\n    from engine.stream.session import Session\n")
    assert [target for _, target in imports(source)] == ["engine.timebase", "engine.models.audio"]
    assert layer_of("engine.models.audio") > layer_of("engine.config")
    assert layer_of("bench.cli") > layer_of("engine.cli") > layer_of("engine.serve.hub")
