"""bench/bench_kernels.py without a GPU: it imports, --help works, it says so and exits 0; its helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import bench_kernels as bk

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_kernels.py"


def test_cases_cover_sd15_shapes_for_both_batches():
    cases = bk.cases()
    assert len(cases) == len(bk.OPS) * 2 * 4
    assert {(c.size, c.channels) for c in cases} == {(64, 320), (32, 640), (16, 1280), (8, 1280)}
    assert {c.batch for c in cases} == {1, 2}
    assert [c.op for c in cases[:len(bk.OPS)]] == list(bk.OPS) and cases[0].batch == 1 and cases[-1].batch == 2
    assert {c.frames for c in cases if c.op != "reference_attention"} == {16}
    assert {(c.frames, c.describe()) for c in cases
            if c.op == "reference_attention" and c.size == 8 and c.batch == 1} == {(12, "b=1 f=12 8x8 c=1280")}


def test_bytes_and_bandwidth():
    attention = bk.Case("temporal_attention", batch=2, size=8, channels=1280)
    assert attention.rows == 32
    assert attention.bytes_moved() == 4 * 32 * 1280 * 64 * 2
    reference = bk.Case("reference_attention", batch=2, size=8, channels=1280, frames=12)
    assert reference.bytes_moved() == (4 * 24 + 2 * 2) * 1280 * 64 * 2
    norm = bk.Case("group_norm_silu", batch=1, size=64, channels=320)
    assert norm.bytes_moved() == (2 * 16 * 320 * 64 * 64 + 2 * 320) * 2
    assert bk.bandwidth_gbs(2_000_000_000, 1000.0) == pytest.approx(2.0)
    assert bk.bandwidth_gbs(10, None) is None and bk.bandwidth_gbs(10, 0.0) is None
    assert bk.speedup(3.0, 1.5) == pytest.approx(2.0)
    assert bk.speedup("error: invalid configuration argument", 1.5) is None


def _row(op: str, eager: float | str, kernel: float | None = 1.0) -> dict:
    case = bk.Case(op, 1, 64, 320)
    return {"op": op, "shape": case.describe(), "dtype": "float16", "kernel_ms": kernel, "eager_ms": eager,
            "compiled_ms": None, "kernel_gbs": None if kernel is None else 100.0, "eager_gbs": None,
            "compiled_gbs": None,
            "eager_over_kernel": bk.speedup(eager, kernel), "compiled_over_kernel": None, "max_abs_diff": 1e-3}


def test_table_and_goal_summary():
    rows = [_row("temporal_attention", 2.5), _row("temporal_attention", "error: invalid | argument"),
            _row("group_norm_silu", 2.0)]
    table = bk.markdown_table(rows, "Test GPU")
    lines = table.splitlines()
    assert "Test GPU" in lines[0]
    assert all(line.count("|") == lines[2].count("|") for line in lines[2:])
    assert "error: invalid / argument" in table
    summary = bk.goal_summary(rows)
    assert summary[0].startswith("temporal_attention: speed-up over eager 2.50x") and "goal 2x met" in summary[0]
    assert "eager failed at b=1 f=12+4 64x64 c=320" in summary[0]
    assert "goal 3x not met (short by 1.50x" in summary[1]


def test_layer_norm_rows_have_no_kernel_and_give_the_decision():
    def row(eager: float, compiled: float) -> dict:
        case = bk.Case("layer_norm", 1, 64, 320)
        return {**_row("layer_norm", eager, kernel=None), "shape": case.describe(), "compiled_ms": compiled,
                "eager_gbs": bk.bandwidth_gbs(case.bytes_moved(), eager), "max_abs_diff": None}

    assert bk.Case("layer_norm", 1, 64, 320).bytes_moved() == (2 * 16 * 320 * 64 * 64 + 2 * 320) * 2
    close = [row(1.0, 0.95), row(0.5, 0.48)]
    decision = bk.layer_norm_decision(close)
    assert decision[0].startswith("layer_norm: (a) eager / (b) torch.compile 1.04x to 1.05x")
    assert "no Triton LayerNorm" in decision[0]
    assert "would pay" in bk.layer_norm_decision(close + [row(1.0, 0.5)])[0]
    assert bk.layer_norm_decision([_row("group_norm", 1.0)]) == []
    table = bk.markdown_table(close, "Test GPU").splitlines()
    assert table[-1].startswith("| layer_norm | b=1 f=12+4 64x64 c=320 | float16 | - | 0.500 | 0.480 | - |")


def test_no_gpu_says_so_and_exits_zero(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bk.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_script_help_and_no_gpu_exit_status():
    help_run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0 and "--batches" in help_run.stdout
    if not torch.cuda.is_available():
        run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "no CUDA device" in run.stdout


def test_results_are_rewritten_after_every_case_and_say_when_partial(tmp_path):
    import argparse
    import json

    args = argparse.Namespace(warmup=1, repeats=2)
    rows = [_row("temporal_attention", 2.5), _row("group_norm_silu", 2.0)]
    page = bk.write_results(tmp_path, rows[:1], "Test GPU", args, complete=False)
    assert "(partial: 1 of the run's cases measured)" in page == (tmp_path / "kernels.md").read_text()
    assert json.loads((tmp_path / "kernels.json").read_text())["complete"] is False
    page = bk.write_results(tmp_path, rows, "Test GPU", args, complete=True)
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved["complete"] is True and len(saved["rows"]) == 2 and "partial" not in page
