"""The engine cache: keys change with everything that makes a plan stale; stale plans are never used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from engine.models.model import EmoteModel
from export.engine_cache import CacheKey, EngineCache, StalePlanError, metadata_path
from export.networks import make_network
from export.networks.spec import StreamShapes
from export.trt_build import BuildSettings, plan_key


def base_key(**changes) -> CacheKey:
    key = CacheKey(kind="plan", network="backbone", weights="ab" * 32, precision="fp16",
                   signature={"sample": ["batch", 4, "frames", 64, 64]},
                   profiles=[{"name": "b1-f12", "shapes": {"sample": [[1, 4, 12, 64, 64]] * 3}}],
                   versions={"tensorrt": "10.3.0", "torch": "2.11.0", "opset": "18"},
                   compute_capability="9.0", size=512)
    return dataclasses.replace(key, **changes)


CHANGES = {
    "weights": dict(weights="cd" * 32),
    "network": dict(network="vae_decoder"),
    "precision": dict(precision="bf16"),
    "shapes": dict(signature={"sample": ["batch", 4, "frames", 96, 96]}, size=768),
    "profile": dict(profiles=[{"name": "b2-f12", "shapes": {"sample": [[2, 4, 12, 64, 64]] * 3}}]),
    "tensorrt": dict(versions={"tensorrt": "8.6.1", "torch": "2.11.0", "opset": "18"}),
    "gpu": dict(compute_capability="8.6"),
    "format": dict(format=0),
}


@pytest.mark.parametrize("part", sorted(CHANGES))
def test_changing_any_keyed_part_changes_the_path(tmp_path: Path, part: str) -> None:
    cache = EngineCache(tmp_path)
    assert cache.path(base_key()) == cache.path(base_key())
    assert cache.path(base_key(**CHANGES[part])) != cache.path(base_key())


def test_plan_key_tracks_weights_size_profiles_precision_builder_tensorrt_and_gpu(tiny_model: EmoteModel,
                                                                                tmp_path: Path) -> None:
    """The real key of a backbone plan, computed without TensorRT, moves with each of its inputs."""
    cache = EngineCache(tmp_path)
    cfg = tiny_model.config

    def path(model: EmoteModel = tiny_model, shapes: StreamShapes | None = None, precision: str = "fp16",
             trt: str = "10.3.0", gpu: str = "9.0", workspace_gib: float | None = None, level: int = 3) -> Path:
        network = make_network("backbone", model, shapes or StreamShapes.for_model(cfg))
        return cache.path(plan_key(network, BuildSettings(precision, workspace_gib, level), trt, gpu))

    reference = path()
    assert path() == reference
    assert path(shapes=StreamShapes.for_model(cfg, size=256)) != reference
    assert path(shapes=StreamShapes.for_model(cfg, batches=(1,))) != reference
    assert path(shapes=StreamShapes.for_model(cfg, first_clip_frames=4)) != reference
    assert path(precision="bf16") != reference
    assert path(trt="10.4.0") != reference
    assert path(gpu="8.9") != reference
    assert path(workspace_gib=4.0) != reference and path(workspace_gib=4.0) != path(workspace_gib=8.0)
    assert path(level=5) != reference
    changed = EmoteModel(cfg)
    changed.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        changed.backbone.conv_in.bias[0] += 1e-3
    assert path(model=changed) != reference


def fake_build(payload: bytes):
    def build(target: Path) -> dict:
        target.write_bytes(payload)
        return {"note": "fake"}
    return build


def test_build_once_then_reuse(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = base_key()
    calls = []

    def build(target: Path) -> dict:
        calls.append(target)
        target.write_bytes(b"plan")
        return {}

    path = cache.get_or_build(key, build, checksum=True)
    assert cache.get_or_build(key, build, checksum=True) == path and len(calls) == 1
    assert path.read_bytes() == b"plan" and cache.status(key).state == "fresh"
    meta = json.loads(metadata_path(path).read_text())
    assert meta["key"] == key.to_dict() and meta["files"] == {path.name: 4}
    assert cache.read_verified(key) == b"plan"


def tamper_metadata(cache: EngineCache, key: CacheKey, **recorded) -> None:
    meta_file = metadata_path(cache.path(key))
    meta = json.loads(meta_file.read_text())
    meta["key"].update(recorded)
    meta_file.write_text(json.dumps(meta))


def test_mismatched_metadata_is_detected_and_refused_or_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = base_key()
    cache.get_or_build(key, fake_build(b"old plan"), checksum=True)
    tamper_metadata(cache, key, compute_capability="8.6", versions={"tensorrt": "8.6.1", "torch": "2.11.0",
                                                                     "opset": "18"})
    entry = cache.status(key)
    assert entry.state == "stale"
    assert any("compute_capability" in r and "8.6" in r for r in entry.reasons)
    assert any("versions.tensorrt" in r and "8.6.1" in r and "10.3.0" in r for r in entry.reasons)
    with pytest.raises(StalePlanError, match="compute_capability"):
        cache.get_or_build(key, fake_build(b"new plan"), on_stale="refuse")
    with pytest.raises(StalePlanError, match="stale and will not be used"):
        cache.read_verified(key)
    path = cache.get_or_build(key, fake_build(b"new plan"), on_stale="rebuild", checksum=True)
    assert cache.read_verified(key) == b"new plan" == path.read_bytes()


def test_plan_without_metadata_or_with_other_bytes_is_not_used(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = base_key()
    path = cache.get_or_build(key, fake_build(b"plan"), checksum=True)
    path.write_bytes(b"PLAN")
    with pytest.raises(StalePlanError, match="SHA-256"):
        cache.read_verified(key)
    path.write_bytes(b"longer plan")
    assert cache.status(key).state == "stale"
    metadata_path(path).unlink()
    entry = cache.status(key)
    assert entry.state == "stale" and "no metadata" in entry.reasons[0]
    cache.get_or_build(key, fake_build(b"rebuilt"), checksum=True)
    assert cache.read_verified(key) == b"rebuilt"


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = base_key()

    def broken(target: Path) -> dict:
        target.write_bytes(b"half a plan")
        raise RuntimeError("builder ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_build(key, broken)
    assert cache.status(key).state == "missing"
    assert list(cache.path(key).parent.iterdir()) == []


def test_missing_plan_explains_what_else_is_cached(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.get_or_build(base_key(versions={"tensorrt": "8.6.1", "torch": "2.11.0", "opset": "18"}),
                       fake_build(b"plan"))
    key = base_key()
    with pytest.raises(FileNotFoundError) as info:
        cache.read_verified(key)
    message = str(info.value)
    assert "1 other(s)" in message and '"8.6.1"' in message and '"10.3.0"' in message


def test_plan_keys_need_tensorrt_version_and_gpu() -> None:
    with pytest.raises(ValueError, match="compute capability"):
        base_key(compute_capability="")
    with pytest.raises(ValueError, match="kind"):
        base_key(kind="engine")
