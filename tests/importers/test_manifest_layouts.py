"""Full-size checkpoints synthesised from the layout manifests in tests/fixtures/compat (meta tensors) map
strictly.

Every key of every file each system ships lands on one of our parameters with its shape, or is
dropped by a rule with a reason; and every one of our parameters is covered. EchoMimic's
``denoising_unet.pth`` is tried both ways: with the motion-module keys, and without them beside
``motion_module.pth``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support import COMPAT, read_manifest

from engine.importers import echomimic, hallo
from engine.importers.keymap import KeyMapResult, apply_keymap, missing_keys
from engine.importers.run import expected_shapes
from engine.importers.spec import SystemSpec
from engine.models.model import EmoteModel

CONFIGS = COMPAT / "tools" / "configs"
WHISPER_TINY_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                         n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def meta_state(manifest: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """A weightless state dict with every key and shape of a manifest."""
    return {prefix + k: torch.empty(shape, device="meta") for k, shape in read_manifest(manifest).items()}


def sort_keys(spec: SystemSpec, variant: str, states: dict[str, dict[str, torch.Tensor]],
              expected: dict[str, dict[str, tuple[int, ...]]]) -> KeyMapResult:
    result = KeyMapResult()
    for source in spec.variants[variant]:
        if source.role in states:
            result.merge(apply_keymap(source.keymap, states[source.role], expected))
    return result


def assert_strict(result: KeyMapResult, expected: dict[str, dict[str, tuple[int, ...]]]) -> None:
    assert result.unknown == []
    assert result.mismatched == {}
    assert {c: keys for c, keys in missing_keys(result, expected).items() if keys} == {}


@pytest.fixture(scope="module")
def hallo_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config files of a Hallo checkout (weights come from the manifests)."""
    root = tmp_path_factory.mktemp("hallo_configs")
    for folder, source in (("stable-diffusion-v1-5/unet", "sd15_unet"), ("sd-vae-ft-mse", "sd_vae"),
                           ("wav2vec/wav2vec2-base-960h", "wav2vec2-base-960h")):
        (root / folder).mkdir(parents=True)
        shutil.copy(CONFIGS / source / "config.json", root / folder / "config.json")
    return root


@pytest.fixture(scope="module")
def echomimic_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config files of an EchoMimic checkout, and a whisper file holding only its dims."""
    root = tmp_path_factory.mktemp("echomimic_configs") / "pretrained_weights"
    for folder, source in (("sd-image-variations-diffusers/unet", "sd15_unet"), ("sd-vae-ft-mse", "sd_vae")):
        (root / folder).mkdir(parents=True)
        shutil.copy(CONFIGS / source / "config.json", root / folder / "config.json")
    (root / "audio_processor").mkdir()
    torch.save({"dims": WHISPER_TINY_DIMS, "model_state_dict": {}}, root / "audio_processor" / "whisper_tiny.pt")
    return root.parent


def test_hallo_manifests_map_strictly(hallo_checkout):
    wav2vec = meta_state("hallo/audio_encoder_wav2vec2.tsv", prefix="wav2vec2.")
    wav2vec.update({"lm_head.weight": torch.empty(32, 768, device="meta"),
                    "lm_head.bias": torch.empty(32, device="meta")})
    states = {"net": meta_state("hallo/net_pth.tsv"), "vae": meta_state("hallo/vae.tsv"), "wav2vec2": wav2vec}
    cfg = hallo.build_config(hallo_checkout, states, "standard")
    expected = expected_shapes(EmoteModel.on_meta(cfg))
    result = sort_keys(hallo.SYSTEM, "standard", states, expected)
    assert_strict(result, expected)
    assert dict(result.drop_reasons()) == {"CTC head (Hallo keeps the hidden states only)": 2}
    assert len(result.mapped) == 2656 + 248 + 211
    audio = [k for k in expected["backbone"] if ".audio_modules." in k]
    assert len(audio) == 672


def test_hallo_config_is_what_its_inference_runs(hallo_checkout):
    states = {"net": meta_state("hallo/net_pth.tsv")}
    cfg = hallo.build_config(hallo_checkout, states, "standard")
    assert (cfg.clip_frames, cfg.motion_frames, cfg.fps, cfg.resolution) == (16, 2, 25.0, 512)
    assert cfg.motion_init == "reference" and cfg.reference_net.motion_source == "norm1"
    assert cfg.temporal.skip_plain_blocks and cfg.temporal.mid_block and cfg.temporal.max_frames == 32
    assert cfg.image_proj.enabled and (cfg.image_proj.embedding_dim, cfg.image_proj.tokens) == (512, 4)
    assert cfg.audio_modules.enabled and cfg.audio_modules.cross_attention_dim == 768
    assert cfg.audio.kind == "wav2vec2" and cfg.audio.window == 2 and cfg.audio.projection.tokens == 32
    assert cfg.face_locator.conditioning_channels == 3 and cfg.face_locator.block_out_channels == (16, 32, 64, 128)
    assert cfg.scheduler["beta_schedule"] == "linear" and cfg.scheduler["prediction_type"] == "v_prediction"
    assert (cfg.sampling.steps, cfg.sampling.cfg_audio, cfg.sampling.cfg_ref) == (40, 3.5, 3.5)
    assert not cfg.speed.enabled


@pytest.mark.parametrize("motion_in_denoising", [True, False], ids=["full-denoising", "denoising+motion_module"])
def test_echomimic_manifests_map_strictly(echomimic_checkout, motion_in_denoising):
    states = {"reference_unet": meta_state("echomimic_v1/reference_unet.tsv"),
              "face_locator": meta_state("echomimic_v1/face_locator.tsv"),
              "whisper": meta_state("echomimic_v1/audio_encoder_whisper_tiny.tsv"),
              "vae": meta_state("echomimic_v1/vae.tsv")}
    if motion_in_denoising:
        states["denoising_unet"] = meta_state("echomimic_v1/denoising_unet.tsv")
    else:
        states["denoising_unet"] = meta_state("echomimic_v1/denoising_unet_without_motion.tsv")
        states["motion_module"] = meta_state("echomimic_v1/motion_module.tsv")
    cfg = echomimic.build_config(echomimic_checkout, states, "standard")
    expected = expected_shapes(EmoteModel.on_meta(cfg))
    result = sort_keys(echomimic.SYSTEM, "standard", states, expected)
    assert_strict(result, expected)
    assert dict(result.drop_reasons()) == {"whisper text decoder (EchoMimic runs only the encoder)": 100}


def test_echomimic_config_is_what_its_inference_runs(echomimic_checkout):
    states = {"reference_unet": meta_state("echomimic_v1/reference_unet.tsv"),
              "denoising_unet": meta_state("echomimic_v1/denoising_unet.tsv"),
              "face_locator": meta_state("echomimic_v1/face_locator.tsv")}
    standard = echomimic.build_config(echomimic_checkout, states, "standard")
    acc = echomimic.build_config(echomimic_checkout, states, "acc")
    assert (standard.unet.cross_attention_dim, standard.unet.cross_attention_scale) == (384, 3.0)
    assert not standard.reference_net.cross_attention
    assert (standard.clip_frames, standard.motion_frames, standard.fps) == (12, 0, 24.0)
    assert standard.audio.kind == "whisper" and standard.audio.window == 2 and standard.audio.projection is None
    assert standard.face_locator.block_out_channels == (16, 32, 96, 256)
    assert not standard.temporal.skip_plain_blocks and not standard.image_proj.enabled
    assert (standard.sampling.steps, standard.sampling.cfg_audio) == (30, 2.5)
    assert (acc.sampling.steps, acc.sampling.cfg_audio, acc.sampling.cfg_ref) == (6, 1.0, 1.0)
    assert EmoteModel.on_meta(standard).audio_encoder.output_tokens == 50


def test_the_checkout_configs_are_the_shared_ones():
    """The configs in tests/fixtures/compat are the systems' own (SD1.5's UNet shape)."""
    data = json.loads((CONFIGS / "sd15_unet" / "config.json").read_text())
    assert data["block_out_channels"] == [320, 640, 1280, 1280] and data["attention_head_dim"] == 8
