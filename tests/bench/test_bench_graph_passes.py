"""The graph-passes benchmark's smoke run end to end: both graphs of every traced network made, checked against
each other and timed, the files written, the ratios the per-round quotients of the times (no time asserted)."""

from __future__ import annotations

import json

import pytest

from bench.graph_passes import PASSES, TOLERANCE, main
from engine.backends.torchscript_backend import TRACED_NETWORKS


def test_smoke_run_writes_consistent_results(tmp_path, capsys):
    assert main(["--smoke", "--out-dir", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "graph-passes-tiny.json").read_text())
    rows = results["rows"]
    assert [(r["network"], r["threads"]) for r in rows] == [(name, 1) for name in TRACED_NETWORKS]
    for row in rows:
        assert 0 <= row["relative_difference"] <= TOLERANCE
        frozen, optimised = (row["ms"][kind]["values"] for kind in PASSES)
        assert len(frozen) == len(optimised) == results["rounds"] and min(frozen + optimised) > 0
        assert row["ratio"]["values"] == pytest.approx([o / f for o, f in zip(optimised, frozen)])
    markdown = (tmp_path / "graph-passes-tiny.md").read_text()
    assert all(f"| {name} |" in markdown for name in TRACED_NETWORKS) and markdown in capsys.readouterr().out
    assert (tmp_path / "graph-passes-tiny.png").stat().st_size > 0
