"""Where an imported model came from: ``provenance.json`` in its model directory.

Written by ``emote import`` beside ``config.json``: the system and variant, when and with what it was
imported, every source file with its size and sha256, what the key maps did, and the inputs of the
original pipeline that this engine replaces with fallbacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"


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


def fallback_note(directory: Path) -> str | None:
    """One line naming the fallbacks an imported model runs with (None for other models), e.g. for
    ``emote generate``: ``note: hallo import runs with fallbacks: face embedding: ...; region masks: ...``."""
    data = read_provenance(directory) if Path(directory).is_dir() else None
    if not data or not data.get("fallbacks"):
        return None
    return f"note: {data.get('system', 'imported')} import runs with fallbacks: " + "; ".join(data["fallbacks"])
