"""Face embeddings from ``.npy`` files: shapes taken, bad files refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from engine.face_embedding import load_face_embedding
from engine.media import MediaError


def test_flat_or_batched_array_of_the_right_size(tmp_path):
    values = np.arange(8, dtype=np.float64) - 3.5
    np.save(tmp_path / "flat.npy", values)
    np.save(tmp_path / "row.npy", values[None].astype(np.float32))
    for name in ("flat.npy", "row.npy"):
        got = load_face_embedding(tmp_path / name, 8)
        assert got.dtype == np.float32 and got.shape == (8,)
        np.testing.assert_array_equal(got, values.astype(np.float32))


@pytest.mark.parametrize(("value", "match"), [
    (np.zeros(7), "expected 8 numbers"),
    (np.zeros((2, 4)), "expected 8 numbers"),
    (np.array(["a"] * 8), "expected 8 numbers"),
    (np.full(8, np.nan), "non-finite"),
])
def test_wrong_files_are_refused(tmp_path, value, match):
    np.save(tmp_path / "e.npy", value)
    with pytest.raises(MediaError, match=match):
        load_face_embedding(tmp_path / "e.npy", 8)


def test_missing_or_not_numpy(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_face_embedding(tmp_path / "none.npy", 8)
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(MediaError, match="not a NumPy array file"):
        load_face_embedding(tmp_path / "text.npy", 8)
