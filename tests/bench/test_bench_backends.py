"""The per-network backend benchmark's smoke run: one session recorded, every call replayed on each variant,
ONNX Runtime's outputs equal eager PyTorch's, a variant that cannot run here is named with its reason
(no time asserted)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from bench.backends import SCHEMA, main, max_difference, output_tensors, variant_list
from engine.models.reference_net import ReferenceBank


def test_smoke_run_replays_every_call_on_each_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOTE_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--smoke", "--variants", "torch,onnxruntime,torch-cuda-graphs", "--out-dir", str(tmp_path)]
    assert main(args) == 0

    results = json.loads((tmp_path / "backends-tiny-64.json").read_text())
    assert results["schema"] == SCHEMA and results["smoke"] is True and results["baseline"] == "torch"
    assert [v["name"] for v in results["variants"]] == ["torch", "onnxruntime"]
    assert results["variants"][1]["options"] == {"threads": 1} == {"threads": results["environment"]["torch_threads"]}
    assert "CUDA" in results["skipped"]["torch-cuda-graphs"]
    session = results["session"]
    assert session["frames"] == math.ceil(0.5 * 25)
    assert (sum(c["count"] for c in results["calls"]) == session["calls"] > session["distinct_calls"]
            == len(results["calls"]))
    assert {"audio_tokens", "reference", "backbone", "vae_decode"} <= set(results["networks"])
    for call in results["calls"]:
        assert set(call["seconds"]) == {"torch", "onnxruntime"}
        assert all(len(f["values"]) == 1 and f["median"] > 0 for f in call["seconds"].values())
        assert call["max_rel_diff"]["torch"] == 0.0
        assert call["max_rel_diff"]["onnxruntime"] <= 1e-4, call
    backbone = results["networks"]["backbone"]
    per_s = backbone["seconds_per_video_second"]
    assert backbone["speedup"]["onnxruntime"] == pytest.approx(per_s["torch"] / per_s["onnxruntime"])
    totals = results["total_seconds_per_video_second"]
    assert totals["torch"] == pytest.approx(sum(n["seconds_per_video_second"]["torch"]
                                                for n in results["networks"].values()))
    page = (tmp_path / "backends-tiny-64.md").read_text()
    assert "smoke run" in page and "skipped `torch-cuda-graphs`" in page and "onnxruntime speed-up" in page
    assert "all networks" in capsys.readouterr().out


def test_output_comparison_flattens_banks_and_refuses_other_layouts():
    import torch

    bank = ReferenceBank(tokens=[torch.zeros(1, 4, 2)], features=[torch.ones(1, 2, 2, 2)])
    assert [t.shape for t in output_tensors(bank)] == [(1, 4, 2), (1, 2, 2, 2)]
    other = ReferenceBank(tokens=[torch.zeros(1, 4, 2)], features=[torch.ones(1, 2, 2, 2) * 1.5])
    assert max_difference(output_tensors(other), output_tensors(bank)) == 0.5
    assert max_difference([torch.zeros(3)], [torch.zeros(4)]) is None
    assert output_tensors(None) == []


def test_variant_names_are_checked():
    assert variant_list("torch, onnxruntime") == ("torch", "onnxruntime")
    for bad in ("", "torch,torch", "torch,cuda"):
        with pytest.raises(argparse.ArgumentTypeError):
            variant_list(bad)
