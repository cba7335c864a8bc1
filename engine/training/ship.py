"""Ship a trained model directory into the repository, small, with a manifest of hashes.

The large components (ReferenceNet, backbone, face locator) are stored as float16, halving the files;
the audio and speed encoders (small, run in float32 by every backend) stay float32. Backends cast to
their compute dtype when they load a model, so nothing else changes. ``manifest.json`` records the
SHA-256 of ``config.json`` and of every weights file, the parameter counts, and how the model was made;
:func:`verify` recomputes the hashes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from engine.models.checkpoint import CONFIG_FILE

HALF_COMPONENTS = ("reference_net", "backbone", "face_locator")
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 of ``config.json`` and of every ``*.safetensors`` file in a model directory, by file name."""
    directory = Path(directory)
    names = [CONFIG_FILE] + sorted(p.name for p in directory.glob("*.safetensors"))
    return {name: sha256(directory / name) for name in names}


def ship(source: Path, target: Path, provenance: dict) -> dict:
    """Copy model directory ``source`` to ``target`` (atomically replaced), float16 where it is safe, and
    write its manifest (``provenance``: how it was made, e.g. the command and the training summary)."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copyfile(source / CONFIG_FILE, tmp / CONFIG_FILE)
        parameters = {}
        for path in sorted(source.glob("*.safetensors")):
            state = load_file(str(path))
            if path.stem in HALF_COMPONENTS:
                state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            save_file(state, str(tmp / path.name), metadata={"component": path.stem})
            parameters[path.stem] = int(sum(v.numel() for v in state.values() if v.is_floating_point()))
        manifest = dict(name=json.loads((source / CONFIG_FILE).read_text()).get("name"), files=file_hashes(tmp),
                        parameters=parameters, float16=list(HALF_COMPONENTS), provenance=provenance)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def verify(directory: Path) -> list[str]:
    """Files whose SHA-256 differs from the manifest's (or that are missing / not listed); empty when intact."""
    directory = Path(directory)
    recorded = json.loads((directory / MANIFEST).read_text())["files"]
    actual = file_hashes(directory)
    return sorted(name for name in set(recorded) | set(actual) if recorded.get(name) != actual.get(name))

