"""The project's import names belong to it alone, in every context the code runs in.

The Triton kernels sit in the folder ``kernels/`` but import as ``emote_kernels``: the bare name
``kernels`` is HuggingFace's distribution, which transformers imports as soon as its wav2vec2 model loads.
A folder of ours importable as ``kernels`` from the repository root (where ``python -m pytest``, pytest's
subprocesses and Ray workers put it on sys.path) shadowed that package and broke transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUR_DISTRIBUTION = "emote-engine"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def our_top_level_names() -> set[str]:
    return {name.split(".")[0] for name in pyproject()["tool"]["setuptools"]["packages"]}


def test_from_the_repository_root_transformers_and_our_kernels_each_get_their_own_package():
    """One process started in the repository root, as ``python -m pytest`` is: transformers' Wav2Vec2Model
    (which imports HuggingFace's ``kernels``) and our kernels' dispatch module load side by side."""
    probe = (
        "import json, sys\n"
        "from transformers import Wav2Vec2Model\n"
        "import emote_kernels.dispatch as ours\n"
        "theirs = sys.modules.get('kernels')\n"
        "print(json.dumps({'ours': ours.__file__, 'root_on_path': '' in sys.path or sys.path[0] == '',\n"
        "                  'theirs': getattr(theirs, '__file__', None),\n"
        "                  'theirs_path': list(getattr(theirs, '__path__', []))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["root_on_path"]
    assert Path(seen["ours"]).resolve() == REPO / "kernels" / "dispatch.py"
    assert not any(Path(p).resolve() == REPO / "kernels" for p in seen["theirs_path"]), (
        "the repository's kernels/ folder is importable as `kernels`: it shadows HuggingFace's package")
    try:
        huggingface = metadata.distribution("kernels")
    except metadata.PackageNotFoundError:
        pytest.skip("HuggingFace's `kernels` is not installed here (transformers did not ask for it)")
    assert seen["theirs"] is not None
    assert Path(seen["theirs"]).resolve().is_relative_to(Path(huggingface.locate_file("")).resolve())


def test_no_other_installed_distribution_provides_one_of_our_import_names():
    owners = metadata.packages_distributions()
    taken = {name: owners[name] for name in our_top_level_names() | {"kernels"}
             if set(owners.get(name, [])) - {OUR_DISTRIBUTION}}
    assert set(taken) <= {"kernels"}, f"import names of ours that another distribution also installs: {taken}"


def test_the_package_list_names_every_package_folder_and_kernels_has_no_init():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for top in ("engine", "export", "bench") for p in (REPO / top).rglob("__init__.py")}
    data = set(pyproject()["tool"]["setuptools"]["package-data"])
    assert all((REPO / Path(*name.split("."))).is_dir() for name in data)
    assert on_disk | data | {"emote_kernels"} == listed
    assert pyproject()["tool"]["setuptools"]["package-dir"]["emote_kernels"] == "kernels"
    assert not (REPO / "kernels" / "__init__.py").exists()


@pytest.mark.timeout(300)
def test_a_wheel_built_from_the_tree_holds_the_kernels_under_their_import_name(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "would be ignored" not in done.stdout + done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("engine/assets/demo/portrait.png", "engine/assets/models/talking64/config.json",
                 "engine/serve/static/index.html"):
        assert data in names
    kernels = {Path(n).name for n in names if n.startswith("emote_kernels/")}
    assert {p.name for p in (REPO / "kernels").glob("*.py")} <= kernels
    assert not any(n.startswith("kernels/") for n in names)
    assert {n.split("/")[0] for n in names if n.endswith(".py")} == our_top_level_names()
