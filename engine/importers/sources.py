"""Finding and reading the files a foreign system ships, and fingerprinting them for provenance.

Every weight file is read as untrusted input: safetensors, or ``torch.load(weights_only=True)``
(:func:`engine.models.checkpoint.read_torch_object`), which refuses a pickle that needs code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.checkpoint import CheckpointError

SEARCH_ROOTS = ("", "pretrained_models", "pretrained_weights")
"""Where under ``--src`` the expected paths are looked for: the folder itself, or the ``pretrained_models``
(Hallo) / ``pretrained_weights`` (EchoMimic) folder of a checkout."""

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")
"""Weight file names of a diffusers or transformers model folder, in order of preference."""

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One file an import read: its role, where it was, its size in bytes and its sha256 (hex)."""

    role: str
    path: Path
    size: int
    sha256: str

    def to_dict(self, root: Path) -> dict[str, Any]:
        """JSON form; ``path`` relative to ``root`` when it lies under it."""
        try:
            shown = str(self.path.resolve().relative_to(root.resolve()))
        except ValueError:
            shown = str(self.path)
        return {"role": self.role, "path": shown, "bytes": self.size, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(role: str, path: Path) -> SourceFile:
    """A :class:`SourceFile` for ``path``."""
    path = Path(path)
    return SourceFile(role, path, path.stat().st_size, sha256_file(path))


def find(src: Path, candidates: tuple[str, ...]) -> Path | None:
    """The first of ``candidates`` (paths relative to a search root) that exists under ``src``, or None."""
    for root in SEARCH_ROOTS:
        for candidate in candidates:
            path = Path(src) / root / candidate
            if path.exists():
                return path
    return None


def require(src: Path, role: str, candidates: tuple[str, ...]) -> Path:
    """Like :func:`find`, but a missing file is a one-line error naming what was looked for."""
    path = find(src, candidates)
    if path is None:
        raise CheckpointError(f"{src}: no {role} found (looked for {' or '.join(candidates)} under "
                              f"{', '.join(repr(r or '.') for r in SEARCH_ROOTS)})")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; a parse error names the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def model_folder_weights(folder: Path) -> Path:
    """The weight file of a diffusers / transformers model folder (``config.json`` + weights)."""
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise CheckpointError(f"{folder}: no weights file ({', '.join(WEIGHT_FILES)})")
