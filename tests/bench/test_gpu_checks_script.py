"""bench/gpu_checks.sh, the one command a lent GPU machine runs, driven here with a stand-in for its python3:
every step runs in order, each under its own limit (a step that hangs is stopped and the next still runs),
and the results are packed after every step."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_checks.sh"
STEPS = ("kernel-tests", "kernel-bench", "reference-attention", "backends", "end-to-end")


def fake_python(tmp_path: Path) -> Path:
    """An executable that records its arguments and hangs when they name the module in $HANG_ON."""
    stub = tmp_path / "python3"
    stub.write_text('#!/usr/bin/env bash\necho "$*" >> "$CALLS"\necho "$PYTHONPATH" >> "$CALLS.path"\n'
                    'case "$*" in *"$HANG_ON"*) [ -n "$HANG_ON" ] && sleep 60;; esac\nexit 0\n')
    stub.chmod(0o755)
    return stub


def test_every_step_runs_in_order_and_a_hung_step_is_cut_off(tmp_path):
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    env = {**os.environ, "PY": str(fake_python(tmp_path)), "OUT": str(out), "CALLS": str(calls),
           "HANG_ON": "bench.backends", "GPU_CHECKS_SCALE": "0.02", "EMOTE_PATH": str(tmp_path / "path")}
    env.pop("PYTHONPATH", None)
    subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    log = (out / "gpu-checks.log").read_text()
    positions = [log.index(f"step {name} (limit") for name in STEPS]
    assert positions == sorted(positions)
    assert "step backends: stopped at its limit" in log
    for name in ("kernel-tests", "kernel-bench", "reference-attention", "end-to-end"):
        assert f"step {name}: exit 0" in log
    recorded = calls.read_text().splitlines()
    assert any(line.startswith("-m pytest -q -p no:cacheprovider tests/kernels") for line in recorded)
    assert any("-m bench --preset sd15 --device cuda" in line for line in recorded)
    assert "-m bench.backends --model sd15 --device cuda --size 512" in " ".join(recorded)
    with tarfile.open(out / "results.tgz") as packed:
        assert any(name.startswith("bench/results/amd-epyc/") for name in packed.getnames())
    assert not (out / "results.tgz.partial").exists()


def test_every_step_finds_the_kernels_as_emote_kernels(tmp_path):
    """The GPU machine runs the tree uninstalled: each step's PYTHONPATH leads to the working tree's
    kernels/ under the name an install gives them."""
    out, calls, linked = tmp_path / "out", tmp_path / "calls.txt", tmp_path / "path"
    env = {**os.environ, "PY": str(fake_python(tmp_path)), "OUT": str(out), "CALLS": str(calls),
           "HANG_ON": "", "GPU_CHECKS_SCALE": "0.02", "EMOTE_PATH": str(linked)}
    env.pop("PYTHONPATH", None)
    subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    paths = Path(f"{calls}.path").read_text().splitlines()
    assert len(paths) >= len(STEPS)
    assert all(p.split(":")[0] == str(linked) for p in paths)
    assert (linked / "emote_kernels").resolve() == REPO / "kernels"
    assert (linked / "emote_kernels" / "dispatch.py").is_file()
