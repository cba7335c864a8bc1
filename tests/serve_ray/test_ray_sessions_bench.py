"""The sessions-per-replica benchmark through Ray Serve (mode ``ray``): its smoke run starts `emote serve --ray`
with one replica, streams a session through Ray's proxy, and leaves no Ray process behind (no time asserted)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

NO_RAY = "ray[serve] is not installed (pip install 'ray[serve]==2.60.0', or the project's ray extra)"
pytest.importorskip("ray", exc_type=ImportError, reason=NO_RAY)
pytest.importorskip("ray.serve", exc_type=ImportError, reason=NO_RAY)

from bench.sessions import main, validate  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def raylets() -> set[int]:
    """Process ids of the raylets running now (one per live local Ray cluster)."""
    result = subprocess.run(["pgrep", "raylet"], capture_output=True, text=True)
    return {int(pid) for pid in result.stdout.split()}


def new_raylets(before: set[int], within_s: float = 15.0) -> set[int]:
    """Raylets not in ``before`` still running after up to ``within_s`` (a cluster being shut down takes a moment)."""
    deadline = time.monotonic() + within_s
    while (left := raylets() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_smoke_run_through_ray_serve(tmp_path):
    before = raylets()
    assert main(["--smoke", "--modes", "ray", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "sessions-tiny-cpu-1step.json").read_text())
    assert validate(results) == []
    (point,) = results["points"]
    assert point["mode"] == "ray" and point["errors"] == [] and point["frames"] == point["frames_expected"] == 25
    assert point["replica_cpu_s"] > 0 and results["over_plain"] == {}
    assert not new_raylets(before), "the benchmark left a Ray cluster running"
