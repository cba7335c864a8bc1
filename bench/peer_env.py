"""Make the peer benchmark's Hallo environment from nothing: ``python -m bench.peer --setup DIR``.

What ``DIR`` holds when it is done (``DIR/peer.json`` is written last, so a folder without it is unfinished):

- ``hallo/``: Hallo's repository (github.com/fudan-generative-vision/hallo) checked out at :data:`HALLO_COMMIT`,
  cloned from ``--hallo-repo`` (a URL, a local clone or a bare git directory; default: the ``HALLO_REPO``
  environment variable, else the GitHub URL);
- ``venv/``: a virtual environment with Hallo's pinned packages (:data:`HALLO_PINS`) and one torch;
- ``stubs/``: a copy of ``bench/peer_stubs`` (what each stand-in replaces and why: its README), first on
  ``PYTHONPATH`` when Hallo's code runs;
- ``setup.log``: the output of git and pip;
- ``peer.json``: the repository, commit, torch, pins and stubs, copied into every result.

Where the environment departs from Hallo's ``requirements.txt``:

- torch: Hallo pins ``torch==2.2.2+cu121`` and ``torchvision==0.17.2+cu121``; the default here is the engine's
  own torch version (so that both sides of the ratio run the same torch: it compares code and recipe, not
  torch releases), without torchvision (a stand-in supplies the four transforms Hallo's inference uses).
  ``--torch "torch==2.2.2 torchvision==0.17.2"`` installs Hallo's pins instead, where they exist for the
  Python in use; any spec naming torchvision drops the stand-in.
- added: ``huggingface_hub==0.22.2`` (unpinned by Hallo; later releases removed a function diffusers 0.27.2
  imports).
- left out, because ``scripts/inference.py`` does not import them: bitsandbytes,
  decord, mlflow, onnx, onnx2torch, onnxruntime-gpu, the two non-headless OpenCV builds, setuptools and the
  development tools (isort, pylint, pre-commit, gradio).
- replaced by stand-ins, because they need a download to do their work or cannot be installed beside a CPU
  torch: insightface, mediapipe, audio-separator, xformers (and torchvision, see above).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HALLO_URL = "https://github.com/fudan-generative-vision/hallo.git"
HALLO_COMMIT = "8fd7c572a3d43c2a9c1a5473219ce4fc1b6e3ed2"
"""The commit benchmarked (September 2024; the one the engine's Hallo importer was checked against)."""
HALLO_PINS = (
    "diffusers==0.27.2", "transformers==4.39.2", "accelerate==0.28.0", "einops==0.8.0", "omegaconf==2.3.0",
    "librosa==0.10.2.post1", "numpy==1.26.4", "opencv-python-headless==4.9.0.80", "pillow==10.3.0",
    "tqdm==4.66.4", "av==12.1.0", "moviepy==1.0.3", "huggingface_hub==0.22.2",
)
"""Hallo's pins that its inference path imports, and the one pin added (see the module docstring)."""
STUBS = Path(__file__).resolve().parent / "peer_stubs"
STUB_PACKAGES = ("insightface", "mediapipe", "audio_separator", "xformers", "torchvision")


class SetupError(RuntimeError):
    """A step of the set-up failed; the message is one line."""


def default_torch_spec() -> str:
    """``torch==<the engine's torch version>`` (its local build tag dropped: pip chooses the build)."""
    return f"torch=={torch.__version__.split('+')[0]}"


def _step(name: str, command: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if done.returncode != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] or [""]
        raise SetupError(f"{name} failed (exit {done.returncode}): {tail[0][:200]} (full output: {log})")


def setup(directory: Path, repo: str | None = None, torch_spec: str | None = None,
          python: str = sys.executable) -> dict:
    """Make the environment in ``directory`` (which must not exist or be empty); returns ``peer.json``'s content.

    ``repo``: where to clone Hallo from (None: ``$HALLO_REPO``, else GitHub). ``torch_spec``: pip
    requirement(s) for torch, space-separated (None: :func:`default_torch_spec`). ``python``: the interpreter
    the venv is made from. On failure the folder is removed and :class:`SetupError` says which step failed.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise SetupError(f"{directory} exists and is not empty: give a new folder")
    repo = repo or os.environ.get("HALLO_REPO") or HALLO_URL
    torch_spec = torch_spec or default_torch_spec()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "setup.log"
    try:
        _step("git clone", ["git", "clone", "--quiet", "--no-checkout", repo, str(directory / "hallo")], log)
        _step(f"git checkout {HALLO_COMMIT[:7]}", ["git", "-C", str(directory / "hallo"), "checkout", "--quiet",
                                                  "--detach", HALLO_COMMIT], log)
        if not (directory / "hallo" / "scripts" / "inference.py").is_file():
            raise SetupError(f"{repo} at {HALLO_COMMIT[:7]} has no scripts/inference.py: not Hallo's repository")
        venv = directory / "venv"
        _step("venv", [python, "-m", "venv", str(venv)], log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input"]
        _step("pip install torch", pip + torch_spec.split(), log)
        _step("pip install Hallo's pins", pip + list(HALLO_PINS), log)
        stubs = [name for name in STUB_PACKAGES if name != "torchvision" or "torchvision" not in torch_spec]
        for name in stubs:
            shutil.copytree(STUBS / name, directory / "stubs" / name)
        shutil.copy(STUBS / "README.md", directory / "stubs" / "README.md")
        version = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                                 capture_output=True, text=True)
        if version.returncode != 0:
            raise SetupError(f"torch does not import in {venv}: {version.stderr.strip().splitlines()[-1:]}")
        info = {"system": "hallo", "repository": HALLO_URL, "cloned_from": repo, "commit": HALLO_COMMIT,
                "torch_spec": torch_spec, "torch": version.stdout.strip(), "pins": list(HALLO_PINS), "stubs": stubs,
                "python": subprocess.run([str(venv / "bin" / "python"), "-c",
                                          "import platform; print(platform.python_version())"],
                                         capture_output=True, text=True).stdout.strip()}
        partial = directory / "peer.json.partial"
        partial.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(partial, directory / "peer.json")
        return info
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


class PeerEnvironment:
    """A finished environment (:func:`setup`): its python, the ``PYTHONPATH`` Hallo's code runs with, its facts."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        marker = self.directory / "peer.json"
        if not marker.is_file():
            raise SetupError(f"no peer environment in {self.directory} (make one with: python -m bench.peer "
                             f"--setup {self.directory})")
        self.info = json.loads(marker.read_text())
        self.python = self.directory / "venv" / "bin" / "python"
        self.source = self.directory / "hallo"
        for needed in (self.python, self.source / "scripts" / "inference.py"):
            if not needed.exists():
                raise SetupError(f"the peer environment in {self.directory} is incomplete ({needed} is missing): "
                                 "make it again")

    def env(self, threads: int | None) -> dict[str, str]:
        """The process environment for Hallo's code: stubs, then Hallo's package, on the path; ``threads``
        OpenMP threads (None: inherited)."""
        env = dict(os.environ, PYTHONPATH=f"{self.directory / 'stubs'}:{self.source}")
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        return env
