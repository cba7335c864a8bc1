"""Backends with one signature: a whole tiny session on ONNX Runtime against torch; GPU backends where present.

Tolerance of a whole clip (steps=1, 2 guidance branches, uint8 frames): at most 2 grey levels
anywhere, mean under 0.05 levels. The fp32 graphs agree with torch to ~1e-6, so differences show
only where a value sits on a rounding boundary of the uint8 conversion.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.backends
from engine.backends import BACKENDS, SHAPED_BY_SESSIONS, make_backend
from engine.backends.torch_eager import TorchEagerBackend
from engine import DEFAULT_MODEL
from engine.models.checkpoint import load_model, model_directory
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from export.engine_cache import EngineCache

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()
MAX_LEVELS = 2
MEAN_LEVELS = 0.05
ROOT = Path(__file__).resolve().parents[2]


def test_onnxruntime_clip_matches_torch(tiny_model: EmoteModel, onnx_cache: EngineCache,
                                        exported: dict[str, Path], run_session) -> None:
    options = dict(cfg_audio=2.0, first_clip_frames=3)
    want = run_session(TorchEagerBackend(tiny_model), tiny_model, 0.5, **options)
    backend = make_backend("onnxruntime", tiny_model, "cpu", torch.float32, cache_dir=onnx_cache.root)
    got = run_session(backend, tiny_model, 0.5, **options)
    assert got.shape == want.shape == (13, 128, 128, 3)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())
    built = sorted(p.name.split("-")[0] for p in (onnx_cache.root / "onnx").glob("*.json"))
    assert set(built) >= {"audio", "reference", "backbone", "vae_decoder", "vae_encoder"}
    threads = {session.get_session_options().intra_op_num_threads for session in backend._sessions.values()}
    assert threads == {torch.get_num_threads()}, \
        "ONNX Runtime should follow torch's intra-op threads, not take every core"


def test_onnxruntime_keeps_its_optimised_cpu_graphs(tiny_model: EmoteModel, onnx_cache: EngineCache,
                                                     exported: dict[str, Path], tmp_path: Path, run_session) -> None:
    """The first session optimises each graph and saves it; the next loads it (same frames, bit for bit); a
    damaged one is made again; a re-exported graph gets its own and the old one is removed."""
    import shutil

    shutil.copytree(onnx_cache.root / "onnx", tmp_path / "onnx")

    def run() -> tuple[np.ndarray, dict[str, str]]:
        backend = make_backend("onnxruntime", tiny_model, "cpu", torch.float32, cache_dir=tmp_path)
        frames = run_session(backend, tiny_model, 0.5)
        return frames, {name: session._model_path for (name, _), session in backend._sessions.items()}

    want, paths = run()
    assert all(path.endswith("model.onnx") for path in paths.values())
    saved = {p.name.split("-")[0]: p for p in (tmp_path / "ort-optimized").iterdir() if p.is_dir()}
    assert set(saved) == set(paths) and all((p / "graph.onnx").exists() for p in saved.values())

    got, paths = run()
    assert np.array_equal(got, want)
    assert all(Path(path) == saved[name] / "graph.onnx" for name, path in paths.items())

    (saved["backbone"] / "graph.onnx").write_bytes(b"not a graph")
    got, paths = run()
    assert np.array_equal(got, want) and paths["backbone"].endswith("model.onnx")
    assert (saved["backbone"] / "graph.onnx").stat().st_size > 100

    graph = exported["backbone"].name
    (tmp_path / "onnx" / f"{graph}.json").unlink()
    got, _ = run()
    assert np.array_equal(got, want)
    backbones = [p for p in (tmp_path / "ort-optimized").iterdir() if p.is_dir() and p.name.startswith("backbone-")]
    assert len(backbones) == 1 and backbones[0] != saved["backbone"]


def test_the_default_model_runs_on_onnxruntime(tmp_path: Path, run_session) -> None:
    """talking64: a VAE without weights (the pixel codec), the speed encoder and the face locator exported too."""
    model = load_model(model_directory(DEFAULT_MODEL))
    assert not any(True for _ in model.vae.model.parameters())
    options = dict(first_clip_frames=3, steps=2)
    want = run_session(TorchEagerBackend(model), model, 0.5, **options)
    got = run_session(make_backend("onnxruntime", model, "cpu", torch.float32, cache_dir=tmp_path), model, 0.5,
                      **options)
    assert got.shape == want.shape == (13, 128, 128, 3)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())


def test_make_backend_names_and_clear_errors(tiny_model: EmoteModel) -> None:
    assert BACKENDS == ("torch", "torch-cuda-graphs", "onnxruntime", "torchscript", "tensorrt")
    with pytest.raises(ValueError, match="unknown backend 'onnx'; available: torch, torch-cuda-graphs"):
        make_backend("onnx", tiny_model)
    with pytest.raises(ValueError, match="float32 or float16"):
        make_backend("onnxruntime", tiny_model, "cpu", torch.bfloat16)
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            make_backend("torch-cuda-graphs", tiny_model, "cuda", torch.float16)
    if not HAS_TENSORRT:
        with pytest.raises(RuntimeError, match="TensorRT is not installed"):
            make_backend("tensorrt", tiny_model, "cuda", torch.float16)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_make_backend_hands_the_sessions_options_to_the_backends_shaped_by_them(
        tiny_model: EmoteModel, monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """On either path (the CPU's compute thread or a CUDA backend built directly) the sessions' options reach the
    backends whose graphs follow the clip sizes (torchscript's traces, TensorRT's profiles), and only those."""
    made: dict[str, dict] = {}

    def record(name: str, model: EmoteModel, device: str, dtype: torch.dtype, **options: object) -> TorchEagerBackend:
        made[name] = options
        return TorchEagerBackend(model, "cpu", dtype)

    monkeypatch.setattr(engine.backends, "_make", record)
    generation = GenerationOptions(first_clip_frames=3)
    for name in BACKENDS:
        backend = make_backend(name, tiny_model, device, generation=generation)
        if device == "cpu":
            backend.compute.close()
    assert SHAPED_BY_SESSIONS == {"torchscript", "tensorrt"}
    assert {name for name, options in made.items() if options.get("options") is generation} == SHAPED_BY_SESSIONS
    assert all("options" not in options for name, options in made.items() if name not in SHAPED_BY_SESSIONS)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: make engines would build")
def test_make_engines_says_why_in_one_line_without_tensorrt(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "export.trt_build", "--model", "tiny", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0], result.stderr
    assert not any(tmp_path.iterdir())


def test_cuda_graphs_are_kept_least_recently_used_first_out() -> None:
    """The torch-cuda-graphs backend's graph store (CPU-side logic): bounded, the least recently used evicted."""
    from engine.backends.torch_cuda_graphs import LeastRecentlyUsed

    graphs: LeastRecentlyUsed[str] = LeastRecentlyUsed(2)
    graphs.put(("a", ()), "A")
    graphs.put(("b", ()), "B")
    assert graphs.get(("a", ())) == "A"
    graphs.put(("c", ()), "C")
    assert len(graphs) == 2 and graphs.get(("b", ())) is None
    assert graphs.get(("a", ())) == "A" and graphs.get(("c", ())) == "C"
    with pytest.raises(ValueError, match="at least one graph"):
        LeastRecentlyUsed(0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="torch-cuda-graphs needs a CUDA device (none here)")
def test_cuda_graphs_clip_matches_eager_on_cuda(tiny_model: EmoteModel, run_session) -> None:
    model = copy.deepcopy(tiny_model).to("cuda")
    want = run_session(make_backend("torch", model, "cuda", torch.float32), model, 0.5, first_clip_frames=3)
    backend = make_backend("torch-cuda-graphs", model, "cuda", torch.float32)
    got = run_session(backend, model, 0.5, first_clip_frames=3)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS
    assert backend.captured >= 3


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TENSORRT and HAS_CUDA), reason="tensorrt is not importable here (it cannot be "
                    "installed on these machines: its wheels come only from NVIDIA's index)")
def test_tensorrt_clip_matches_torch(tiny_model: EmoteModel, tmp_path: Path, run_session) -> None:
    model = copy.deepcopy(tiny_model).to("cuda")
    want = run_session(make_backend("torch", model, "cuda", torch.float32), model, 0.5, first_clip_frames=3)
    backend = make_backend("tensorrt", model, "cuda", torch.float32, cache_dir=tmp_path)
    got = run_session(backend, model, 0.5, first_clip_frames=3)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 4 and diff.mean() <= 0.2
    again = make_backend("tensorrt", model, "cuda", torch.float32, cache_dir=tmp_path, build=False)
    assert np.array_equal(run_session(again, model, 0.5, first_clip_frames=3), got)
