"""The reference-attention measurement's smoke run on the CPU (the kernel under Triton's interpreter): every
variant computes the model's attention (same output), the rows and ratios are written; without CUDA the
default run says so and exits 0."""

from __future__ import annotations

import json

from bench.bench_reference_attention import VARIANTS, main


def test_smoke_run_variants_agree_and_files_are_written(tmp_path, capsys):
    assert main(["--device", "cpu", "--smoke", "--batches", "1,2", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "reference-attention.json").read_text())
    assert results["smoke"] is True and results["dtype"] == "float32" and len(results["rows"]) == 4
    for row in results["rows"]:
        assert set(row["ms"]) == set(VARIANTS) and all(v > 0 for v in row["ms"].values())
        assert row["max_abs_diff"] <= 1e-5
        assert row["model_over_no_mask"] == row["ms"]["model"] / row["ms"]["no_mask"]
        assert row["model_over_kernel"] == row["ms"]["model"] / row["ms"]["kernel"]
    page = (tmp_path / "reference-attention.md").read_text()
    assert "smoke run" in page and "b=2 f=2 8x8 c=64" in page
    assert "model / cached bank" in capsys.readouterr().out and results["kernel_unavailable"] is None


def test_without_the_interpreter_the_cpu_run_leaves_the_kernel_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["--device", "cpu", "--smoke", "--batches", "1", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "reference-attention.json").read_text())
    assert "needs CUDA" in results["kernel_unavailable"]
    assert all("kernel" not in row["ms"] for row in results["rows"])
    assert "Kernel not measured" in (tmp_path / "reference-attention.md").read_text()


def test_without_cuda_it_measures_nothing_and_exits_0(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out-dir", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
