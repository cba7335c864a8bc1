"""A precomputed face-recognition embedding (Hallo's insightface ``embedding``) read from a ``.npy`` file.

Hallo projects the 512-d embedding of the portrait's face (insightface ``FaceAnalysis``,
``face["embedding"]``, not normalised) into the tokens its ``attn2`` reads (``image_proj``). The engine
ships no insightface model: the embedding can be computed elsewhere and saved with ``numpy.save``;
without one the model reads the tokens of a zero embedding (what Hallo does when it finds no face).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.media import MediaError


def load_face_embedding(path: str | os.PathLike, dim: int) -> np.ndarray:
    """float32 ``[dim]`` from a ``.npy`` file holding ``dim`` finite values (shape ``[dim]`` or ``[1, dim]``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such face embedding file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MediaError(f"{path}: not a NumPy array file ({exc})") from None
    if array.dtype.kind not in "fiu" or array.size != dim or array.squeeze().ndim > 1:
        raise MediaError(f"{path}: expected {dim} numbers (a [{dim}] array), got {array.dtype} {list(array.shape)}")
    embedding = array.astype(np.float32).reshape(dim)
    if not np.isfinite(embedding).all():
        raise MediaError(f"{path}: the face embedding has non-finite values")
    return embedding
