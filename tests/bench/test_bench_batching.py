"""The session-batching benchmark's smoke run: files written, both modes made every frame, the batched mode
shared its backbone calls (no time asserted)."""

from __future__ import annotations

import json

from bench.batching import SCHEMA, main


def test_smoke_run_writes_results(tmp_path, capsys):
    assert main(["--smoke", "--gather-ms", "200", "--out-dir", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "batching-tiny-128.json").read_text())
    assert results["schema"] == SCHEMA and results["smoke"] is True
    assert results["settings"]["sessions"] == 2 and results["environment"]["device_kind"] == "cpu"
    sequential, batched = results["rounds"]["sequential"][0], results["rounds"]["batched"][0]
    assert sequential["frames"] == batched["frames"] == 2 * round(0.3 * 25)
    occupancy = {int(n): calls for n, calls in batched["occupancy"].items()}
    assert sum(occupancy.values()) == batched["backbone_calls"] < sequential["backbone_calls"]
    assert sum(n * calls for n, calls in occupancy.items()) == sequential["backbone_calls"]
    assert results["ratio"] > 0 and results["fps"]["batched"] > 0
    page = (tmp_path / "batching-tiny-128.md").read_text()
    assert "batched / sequential" in page and "smoke run" in page
    assert "ratio" in capsys.readouterr().out
