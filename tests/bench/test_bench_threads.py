"""The threads benchmark's smoke run end to end: every way run in its own process on the same speech, the files
written, the ratios consistent with the times (no time asserted)."""

from __future__ import annotations

import json

import pytest

from bench.threads import MODES, main


def test_smoke_run_writes_consistent_results(tmp_path, capsys):
    assert main(["--smoke", "--model", "tiny", "--out-dir", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "threads-tiny.json").read_text())
    rows = results["rows"]
    assert [(r["backend"], r["threads"], r["mode"]) for r in rows] == [("torch", 1, m) for m in MODES]
    assert len({r["frames"] for r in rows}) == 1 and rows[0]["frames"] > 0, "every way makes the same frames"
    sync = rows[0]["s_per_frame"]["median"]
    for row in rows:
        assert row["s_per_frame"]["median"] > 0 and row["switches_per_frame"]["median"] >= 0
        assert row["ratio_to_sync"]["median"] == pytest.approx(row["s_per_frame"]["median"] / sync)
    markdown = (tmp_path / "threads-tiny.md").read_text()
    assert markdown.count("| torch | 1 |") == len(MODES) and markdown in capsys.readouterr().out
