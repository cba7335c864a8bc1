"""Where an imported model came from: ``provenance.json`` in its model directory.

Written by ``emote import`` beside ``config.json``: the system and variant, when and with what it was
imported, every source file with its size and sha256, what the key maps did, and the inputs of the
original pipeline that this engine replaces with fallbacks.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"

FACE_EMBEDDING = "face embedding"
REGION_MASKS = "region masks"
VOCAL_SEPARATION = "vocal separation"
INPUT_FALLBACKS = {
    FACE_EMBEDDING: "none (insightface; --face-embedding gives one) -> the tokens of a zero embedding, as Hallo "
                    "does when it finds no face",
    REGION_MASKS: "none (mediapipe; --face-mask and --lip-mask give them) -> made from the face box: face = the "
                  "box grown 1.2x, lip = a box over its lower part, full = the rest",
    VOCAL_SEPARATION: "none (Kim_Vocal_2) -> the audio goes to wav2vec2 as it is",
}
"""What stands in for each input an imported pipeline computes with a model this engine does not ship, by
input name: what this engine does now (a provenance written by an older import may describe it otherwise)."""


def fallback_line(name: str) -> str:
    """``"<name>: <what stands in for it>"`` for an input of :data:`INPUT_FALLBACKS`."""
    return f"{name}: {INPUT_FALLBACKS[name]}"


def read_provenance(directory: Path) -> dict[str, Any] | None:
    """The provenance of a model directory, or None (a preset, or a model not made by an import)."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def format_provenance(data: dict[str, Any]) -> list[str]:
    """Lines for ``emote info``: system, import time, then one line per source file (role, path, sha256)."""
    lines = [f"imported     {data.get('system', '?')} ({data.get('variant', '?')}) from {data.get('source', '?')}, "
             f"{data.get('imported_at', '?')} with {data.get('imported_with', '?')}"]
    for entry in data.get("files", []):
        lines.append(f"  {entry.get('role', '?'):<15} sha256 {entry.get('sha256', '?')}  {entry.get('path', '?')} "
                     f"({entry.get('bytes', 0):,} bytes)")
    for note in data.get("fallbacks", []):
        lines.append(f"  fallback       {note}")
    return lines


def fallback_note(directory: Path, supplied: Collection[str] = ()) -> str | None:
    """One line naming the fallbacks an imported model runs with, e.g. for ``emote generate``:
    ``note: hallo import runs with fallbacks: face embedding: ...; region masks: ...``.

    ``supplied``: names of the inputs the user gave (``"face embedding"``, ``"region masks"``), left out.
    An input of :data:`INPUT_FALLBACKS` is described as this engine handles it now. None for models not
    made by an import, and when nothing runs on a fallback.
    """
    data = read_provenance(directory) if Path(directory).is_dir() else None
    if not data:
        return None
    notes = []
    for note in data.get("fallbacks", []):
        name = str(note).split(":", 1)[0]
        if name not in supplied:
            notes.append(fallback_line(name) if name in INPUT_FALLBACKS else str(note))
    if not notes:
        return None
    return f"note: {data.get('system', 'imported')} import runs with fallbacks: " + "; ".join(notes)
