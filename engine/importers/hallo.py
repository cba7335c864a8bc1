"""Hallo (fudan-generative-vision/hallo, commit 8fd7c57): files, key maps and config.

What its inference loads (read from its ``scripts/inference.py`` at that commit): ``hallo/net.pth`` (one state dict with
the prefixes ``reference_unet.``, ``denoising_unet.``, ``face_locator.``, ``imageproj.``,
``audioproj.``; it overwrites every UNet tensor, so SD1.5 and ``mm_sd_v15_v2.ckpt`` are not read),
``sd-vae-ft-mse`` (diffusers), ``wav2vec/wav2vec2-base-960h`` (transformers ``Wav2Vec2ForCTC``),
and SD1.5's ``unet/config.json`` for the architecture (SD1.5 defaults when absent).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Wav2Vec2Config

from engine.config import (AudioConfig, AudioModulesConfig, ImageProjConfig, ModelConfig, ProjectionConfig,
                           ReferenceNetConfig, ReproductionConfig, SamplingDefaults, SpeedConfig, UNetConfig)
from engine.importers.keymap import KeyMap, Rule
from engine.importers.provenance import FACE_EMBEDDING, REGION_MASKS, VOCAL_SEPARATION, fallback_line
from engine.importers.sources import find, read_json, require
from engine.importers.spec import (VAE_KEYMAP, SourceSpec, SystemSpec, attn2_context_dim, face_locator_config,
                                   temporal_config, vae_config)
from engine.models.checkpoint import CheckpointError
from engine.sampling.schedules import NoiseSchedule

NET_KEYMAP: KeyMap = (
    Rule(r"reference_unet\.(.+)", "reference_net", r"\1", "ReferenceNet: SD1.5 2D UNet, no output head"),
    Rule(r"denoising_unet\.(.+)", "backbone", r"\1",
         "backbone: SD1.5 + motion_modules (AnimateDiff v2) + audio_modules, names as they are"),
    Rule(r"face_locator\.(.+)", "face_locator", r"\1", "face locator (3-plane mask)"),
    Rule(r"imageproj\.(.+)", "image_proj", r"\1", "face embedding -> attn2 tokens"),
    Rule(r"audioproj\.(.+)", "audio_encoder", r"audioproj.\1", "wav2vec window -> audio tokens"),
)
"""``hallo/net.pth``: prefixes become components; nothing else changes."""

WAV2VEC_KEYMAP: KeyMap = (
    Rule(r"lm_head\.(weight|bias)", None, reason="CTC head (Hallo keeps the hidden states only)"),
    Rule(r"(?:wav2vec2\.)?(.+)\.weight_g", "audio_encoder", r"\1.parametrizations.weight.original0",
         "weight norm: legacy weight_g -> parametrization"),
    Rule(r"(?:wav2vec2\.)?(.+)\.weight_v", "audio_encoder", r"\1.parametrizations.weight.original1",
         "weight norm: legacy weight_v -> parametrization"),
    Rule(r"(?:wav2vec2\.)?(.+)", "audio_encoder", r"\1", "Wav2Vec2ForCTC prefix 'wav2vec2.' dropped"),
)
"""``wav2vec2-base-960h`` (``Wav2Vec2ForCTC`` or ``Wav2Vec2Model`` files)."""

SD15_UNET_CONFIG = ("stable-diffusion-v1-5/unet/config.json",)

SOURCES = (
    SourceSpec("net", ("hallo/net.pth",), NET_KEYMAP),
    SourceSpec("vae", ("sd-vae-ft-mse",), VAE_KEYMAP),
    SourceSpec("wav2vec2", ("wav2vec/wav2vec2-base-960h",), WAV2VEC_KEYMAP),
)

FALLBACKS = tuple(fallback_line(name) for name in (FACE_EMBEDDING, REGION_MASKS, VOCAL_SEPARATION))
REPRODUCTION = ReproductionConfig(system="hallo", whole_audio=True, motion_roundtrip=True, alternating_reference=True)
"""What offline generation of an imported Hallo model reproduces of its ``scripts/inference.py``."""


def build_config(src: Path, states: dict[str, dict[str, torch.Tensor]], variant: str) -> ModelConfig:
    """Our config for Hallo's weights: architecture from SD1.5's unet config and the tensor shapes,
    behaviour from ``configs/inference/default.yaml`` (16-frame clips, 2 motion frames, 25 fps,
    40 DDIM steps at CFG 3.5, zero-SNR v-prediction), and what its ``scripts/inference.py`` does that
    offline generation reproduces: whole-audio features padded to whole clips, motion frames through VAE
    decode + encode, its reference reader (:class:`engine.config.ReproductionConfig`)."""
    net = states["net"]
    config_path = find(src, SD15_UNET_CONFIG)
    unet = UNetConfig.from_diffusers(read_json(config_path)) if config_path is not None else UNetConfig()
    unet.cross_attention_dim = attn2_context_dim(net, "denoising_unet.") or unet.cross_attention_dim
    temporal = temporal_config(net, "denoising_unet.")
    temporal.skip_plain_blocks = True
    face = face_locator_config(net, "face_locator.")
    proj = net["imageproj.proj.weight"]
    image_proj = ImageProjConfig(enabled=True, embedding_dim=int(proj.shape[1]),
                                 tokens=int(proj.shape[0] // net["imageproj.norm.weight"].shape[0]))
    audio_dim = int(net["denoising_unet.mid_block.audio_modules.0.transformer_blocks.0.attn2_0.to_k.weight"].shape[1])
    wav2vec_dir = require(src, "wav2vec2 model folder", ("wav2vec/wav2vec2-base-960h",))
    encoder = Wav2Vec2Config.from_pretrained(str(wav2vec_dir), local_files_only=True)
    proj_in = int(net["audioproj.proj1.weight"].shape[1])
    per_frame = encoder.num_hidden_layers * encoder.hidden_size
    window_frames = proj_in // per_frame
    if proj_in != window_frames * per_frame or window_frames % 2 == 0:
        raise CheckpointError(f"audioproj.proj1 takes {proj_in} features: not an odd window of "
                              f"{encoder.num_hidden_layers} wav2vec2 layers x {encoder.hidden_size}")
    out_dim = int(net["audioproj.norm.weight"].shape[0])
    projection = ProjectionConfig(tokens=int(net["audioproj.proj3.weight"].shape[0]) // out_dim,
                                  intermediate_dim=int(net["audioproj.proj1.weight"].shape[0]), output_dim=out_dim)
    audio = AudioConfig(kind="wav2vec2", encoder=encoder.to_diff_dict(), window=(window_frames - 1) // 2,
                        projection=projection)
    vae = vae_config(require(src, "VAE folder", ("sd-vae-ft-mse",)))
    sample_size = read_json(config_path).get("sample_size", 64) if config_path is not None else 64
    return ModelConfig(
        name="hallo", resolution=int(sample_size) * 8, latent_downscale=8, fps=25.0, clip_frames=16, motion_frames=2,
        motion_init="reference", unet=unet, temporal=temporal, speed=SpeedConfig(enabled=False), face_locator=face,
        reference_net=ReferenceNetConfig(cross_attention=True, context_tokens=image_proj.tokens, motion_source="norm1"),
        audio=audio, vae=vae, scheduler=NoiseSchedule.hallo().to_dict(), image_proj=image_proj,
        audio_modules=AudioModulesConfig(enabled=True, cross_attention_dim=audio_dim),
        sampling=SamplingDefaults(steps=40, sampler="ddim", cfg_audio=3.5, cfg_ref=3.5),
        reproduce=REPRODUCTION)


SYSTEM = SystemSpec(
    name="hallo",
    description="Hallo (fudan-generative-vision/hallo): net.pth + sd-vae-ft-mse + wav2vec2-base-960h",
    variants={"standard": SOURCES},
    build_config=build_config,
    config_files=(("unet config", SD15_UNET_CONFIG), ("vae config", ("sd-vae-ft-mse/config.json",)),
                  ("wav2vec2 config", ("wav2vec/wav2vec2-base-960h/config.json",))),
    fallbacks=FALLBACKS,
)
