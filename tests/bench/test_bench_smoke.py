"""The benchmark harness end to end in its smoke mode: files written, JSON layout checked, no time asserted."""

from __future__ import annotations

import json

from bench.__main__ import main
from bench.report import validate


def test_smoke_run_writes_results_that_follow_the_layout(tmp_path, capsys):
    assert main(["--smoke", "--out-dir", str(tmp_path)]) == 0

    stem = "tiny-32-steps1"
    results = json.loads((tmp_path / f"{stem}.json").read_text())
    assert validate(results) == []
    assert results["smoke"] is True
    names = [c["name"] for c in results["configurations"]]
    assert names == ["reference", "engine-1step-kl", "engine-1step-tiny"]
    reference = results["configurations"][0]
    assert reference["steps"] == 40 and reference["guidance"] == 3.5
    assert reference["calls"]["stream"]["backbone"] == 40 * reference["stream"]["clips"]
    for config in results["configurations"]:
        assert config["flops"]["per_frame"] > 0
        assert config["calls"]["stream"]["backbone"] > 0
        assert len(config["latencies_s"]) == results["settings"]["repeats"]
    assert set(results["ratios"]) == {"engine-1step-kl", "engine-1step-tiny"}
    env = results["environment"]
    assert env["device_kind"] == "cpu" and env["torch"] and env["date"]

    report = (tmp_path / f"{stem}.md").read_text()
    assert "reference (Hallo" in report and "engine 1 step, tiny decoder" in report
    assert "## engine / reference" in report and f"{stem}.png" in report
    assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(tmp_path / f"{stem}.json") in capsys.readouterr().out
