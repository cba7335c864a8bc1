"""The peer benchmark (``bench.peer``) without Hallo's environment: its ratios, report, command line, set-up
errors, inputs, random weights and stand-ins; the real run only where ``EMOTE_PEER_ENV`` names an environment."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.peer import main, markdown, runs, summarise, write_inputs
from bench.peer_hallo import SIZES, randomised

REPO = Path(__file__).resolve().parents[2]


def fake_results(rounds: list[dict[str, float]]) -> dict:
    """A results dict as :func:`bench.peer.measure` makes it, from seconds per frame per round and run."""
    plan = runs()
    raw = {f"1/{run.name}": [{"frames": 32, "s_per_frame": r[run.name]} for r in rounds] for run in plan}
    environment = {"device": "Test CPU", "torch": "2.0", "cpu_count": 2, "date": "2026-01-01T00:00:00+00:00",
                   "git": {"commit": "0123456789abcdef", "dirty": False}}
    peer = {"commit": "8fd7c572a3d43c2a9c1a5473219ce4fc1b6e3ed2", "repository": "https://example.invalid/hallo.git",
            "torch": "2.0", "stubs": ["insightface"]}
    return {"schema": "emote.bench.peer/1", "peer": peer, "size": "tiny", "resolution": 128, "frames": 32,
            "rounds": len(rounds), "device": "cpu", "backend": "torch", "load_average_1min": [3.0, 4.0],
            "environment": environment, "raw": raw, "rows": summarise(raw, [1], plan)}


ROUNDS = [{"hallo": 1.0, "engine-hallo-recipe": 0.5, "engine-own": 0.1},
          {"hallo": 3.0, "engine-hallo-recipe": 1.0, "engine-own": 0.2},
          {"hallo": 2.0, "engine-hallo-recipe": 2.0, "engine-own": 0.1}]


def test_ratios_are_hallo_over_each_run_per_round_then_the_median():
    rows = {r["run"]: r for r in fake_results(ROUNDS)["rows"]}
    assert rows["engine-hallo-recipe"]["hallo_over_this"]["values"] == pytest.approx([2.0, 3.0, 1.0])
    assert rows["engine-hallo-recipe"]["hallo_over_this"]["median"] == pytest.approx(2.0)
    assert rows["engine-own"]["hallo_over_this"]["values"] == pytest.approx([10.0, 15.0, 20.0])
    assert rows["hallo"]["hallo_over_this"]["values"] == pytest.approx([1.0, 1.0, 1.0])
    assert rows["engine-own"]["s_per_frame"]["median"] == pytest.approx(0.1)
    assert (rows["engine-own"]["steps"], rows["engine-own"]["cfg"]) == (4, 1.0)
    assert (rows["engine-hallo-recipe"]["steps"], rows["engine-hallo-recipe"]["cfg"]) == (40, 3.5)


def test_render_writes_the_markdown_and_plot_of_a_results_file(tmp_path, capsys):
    path = tmp_path / "peer-hallo-tiny-128.json"
    path.write_text(json.dumps(fake_results(ROUNDS)))
    assert main(["--render", str(path)]) == 0
    markdown = (tmp_path / "peer-hallo-tiny-128.md").read_text()
    assert "| 1 | engine, Hallo's recipe | 40 | 3.5 | 1.000 (0.500-2.000) | 2.00x (1.00x-3.00x) |" in markdown
    assert "| 1 | engine, its own settings | 4 | none | 0.100 (0.100-0.200) | 15.0x (10.0x-20.0x) |" in markdown
    assert "| 1 | Hallo's own pipeline | 40 | 3.5 | 2.000 (1.000-3.000) | 1.00x |" in markdown
    assert "Test CPU" in markdown and "8fd7c57" in markdown and "3.0, 4.0" in markdown
    assert markdown in capsys.readouterr().out
    assert "busier than its cores" not in markdown, "1 thread only: no caveat about waiting workers"
    pytest.importorskip("matplotlib")
    assert (tmp_path / "peer-hallo-tiny-128.png").stat().st_size > 0


def test_a_loaded_machine_at_two_threads_gets_the_caveat():
    results = fake_results(ROUNDS)
    for row in results["rows"]:
        row["threads"] = 2
    assert "busier than its cores" in markdown(results)
    results["load_average_1min"] = [0.5, 1.0]
    assert "busier than its cores" not in markdown(results)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_a_missing_peer_environment_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["--peer-env", str(tmp_path / "absent"), "--out-dir", str(out)]) == 2
    assert "no peer environment in" in one_line_error(capsys) and not out.exists()
    monkeypatch.delenv("EMOTE_PEER_ENV", raising=False)
    assert main(["--out-dir", str(out)]) == 2
    assert "--setup" in one_line_error(capsys) and not out.exists()


def test_an_unfinished_peer_environment_is_refused(tmp_path, capsys):
    (tmp_path / "peer.json").write_text("{}")
    assert main(["--peer-env", str(tmp_path)]) == 2
    assert "incomplete" in one_line_error(capsys)


def test_the_command_line_exits_2_without_a_peer_environment(tmp_path):
    env = dict(os.environ, EMOTE_PEER_ENV=str(tmp_path / "absent"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "bench.peer"], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("python -m bench.peer: no peer environment in")


def test_render_of_an_unreadable_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--render", str(tmp_path / "none.json")]) == 2
    assert "cannot read" in one_line_error(capsys)


def test_setup_from_a_missing_repository_fails_in_one_line_and_leaves_nothing(tmp_path, capsys):
    target = tmp_path / "env"
    assert main(["--setup", str(target), "--hallo-repo", str(tmp_path / "no-such-repo")]) == 2
    assert "git clone failed" in one_line_error(capsys)
    assert not target.exists()


def test_setup_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["--setup", str(tmp_path), "--hallo-repo", str(tmp_path)]) == 2
    assert "not empty" in one_line_error(capsys)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_the_inputs_are_the_portrait_its_face_box_an_embedding_and_whole_clips_of_speech(tmp_path):
    inputs = write_inputs(tmp_path, "tiny", 32)
    image = np.asarray(Image.open(inputs / "portrait.png"))
    assert image.shape == (128, 128, 3)
    x0, y0, x1, y1 = json.loads((inputs / "face.json").read_text())["bbox"]
    assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
    assert np.load(inputs / "face_embedding.npy").shape == (SIZES["tiny"]["face_embedding_dim"],)
    with wave.open(str(inputs / "speech.wav")) as f:
        assert (f.getframerate(), f.getnframes()) == (16000, 32 * 16000 // 25)


def test_randomised_weights_replace_every_value_at_a_scale_of_order_one():
    state = {"conv.weight": torch.zeros(8, 4, 3, 3), "conv.bias": torch.zeros(8), "norm.weight": torch.zeros(8),
             "pe": torch.zeros(1, 32, 8), "steps": torch.zeros(3, dtype=torch.long)}
    out = randomised(state, 0)
    bound = (3.0 / 36) ** 0.5
    assert 0 < out["conv.weight"].abs().max() <= bound and out["conv.weight"].std() > bound / 4
    assert 0 < out["conv.bias"].abs().max() <= 0.1
    assert ((out["norm.weight"] - 1).abs() <= 0.1).all() and out["norm.weight"].std() > 0
    assert 0 < out["pe"].abs().max() <= 1
    assert torch.equal(out["steps"], state["steps"])
    assert torch.equal(randomised(state, 0)["conv.weight"], out["conv.weight"])
    assert not torch.equal(randomised(state, 1)["conv.weight"], out["conv.weight"])


def test_the_torchvision_stand_in_matches_the_pil_path():
    spec = importlib.util.spec_from_file_location("stub_transforms",
                                                  REPO / "bench" / "peer_stubs" / "torchvision" / "transforms.py")
    transforms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transforms)
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    pipeline = transforms.Compose([transforms.Resize((2, 3)), transforms.ToTensor(),
                                   transforms.Normalize([0.5] * 3, [0.5] * 3)])
    out = pipeline(Image.fromarray(pixels))
    expected = np.asarray(Image.fromarray(pixels).resize((3, 2), Image.BILINEAR), np.float32) / 255
    assert out.shape == (3, 2, 3)
    np.testing.assert_allclose(out.numpy(), (expected.transpose(2, 0, 1) - 0.5) / 0.5, atol=1e-6)


@pytest.mark.skipif(not os.environ.get("EMOTE_PEER_ENV"),
                    reason="no peer environment: make one with python -m bench.peer --setup DIR, then set "
                           "EMOTE_PEER_ENV=DIR (a few minutes and about 2 GB; Hallo's repository must be reachable)")
def test_smoke_run_against_hallos_own_pipeline(tmp_path):
    """Both sides make the same 16 frames; the ratios agree with the times (no time asserted)."""
    assert main(["--peer-env", os.environ["EMOTE_PEER_ENV"], "--smoke", "--work", str(tmp_path / "work"),
                 "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "peer-hallo-tiny-128.json").read_text())
    rows = {r["run"]: r for r in results["rows"]}
    assert set(rows) == {"hallo", "engine-hallo-recipe", "engine-own"}
    assert {r["frames"] for r in rows.values()} == {16}
    hallo = rows["hallo"]["s_per_frame"]["median"]
    for row in rows.values():
        assert row["hallo_over_this"]["median"] == pytest.approx(hallo / row["s_per_frame"]["median"])
    assert results["raw"]["1/hallo"][0]["pipeline_calls"] == 1
