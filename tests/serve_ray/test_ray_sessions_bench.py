"""The sessions-per-replica benchmark through Ray Serve (mode ``ray``): its smoke run starts `emote serve --ray`
with one replica, streams a session through Ray's proxy, and leaves no Ray process behind (no time asserted)."""

from __future__ import annotations

import json
import subprocess

import pytest

NO_RAY = "ray[serve] is not installed (pip install 'ray[serve]==2.60.0', or the project's ray extra)"
pytest.importorskip("ray", exc_type=ImportError, reason=NO_RAY)
pytest.importorskip("ray.serve", exc_type=ImportError, reason=NO_RAY)

from bench.sessions import main, validate  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def raylets() -> int:
    result = subprocess.run(["pgrep", "-c", "raylet"], capture_output=True, text=True)
    return int(result.stdout.strip() or 0)


def test_smoke_run_through_ray_serve(tmp_path):
    before = raylets()
    assert main(["--smoke", "--modes", "ray", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "sessions-tiny-cpu-1step.json").read_text())
    assert validate(results) == []
    (point,) = results["points"]
    assert point["mode"] == "ray" and point["errors"] == [] and point["frames"] == point["frames_expected"] == 25
    assert point["replica_cpu_s"] > 0 and results["over_plain"] == {}
    assert raylets() == before, "the benchmark left a Ray cluster running"
