"""EchoMimic v1 (antgroup/echomimic, commit a53e970): files, key maps and config.

What its audio-driven inference loads (read from its ``infer_audio2vid.py`` at that commit), under
``pretrained_weights/``: ``reference_unet.pth`` (strict), ``denoising_unet.pth`` (non-strict, over the SD base UNet and
``motion_module.pth``), ``face_locator.pth``, ``audio_processor/whisper_tiny.pt`` (OpenAI format),
``sd-vae-ft-mse``, and ``sd-image-variations-diffusers/unet`` (architecture, and initial values that
the two UNet files overwrite). The ``acc`` variant swaps in ``denoising_unet_acc.pth`` and
``motion_module_acc.pth`` and runs 6 steps without guidance.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import (AudioConfig, ModelConfig, ReferenceNetConfig, ReproductionConfig, SamplingDefaults,
                           SpeedConfig, UNetConfig)
from engine.importers.keymap import KeyMap, Rule
from engine.importers.sources import find, read_json, require
from engine.importers.spec import (VAE_KEYMAP, SourceSpec, SystemSpec, attn2_context_dim, face_locator_config,
                                   temporal_config, vae_config, whisper_dims)
from engine.sampling.schedules import NoiseSchedule

AUDIO_ATTENTION_SCALE = 3.0
"""EchoMimic multiplies the output of every audio cross-attention (``attn2``) by 3."""
CONTEXT_FRAMES, CONTEXT_OVERLAP = 12, 3
"""``infer_audio2vid.py``'s defaults: the whole video denoised in 12-frame context windows overlapping by 3."""
NOISE_CLAMP = 1.5
"""Its pipeline's ``prepare_latents`` clamps the initial noise to [-1.5, 1.5]."""

REFERENCE_KEYMAP: KeyMap = (
    Rule(r"(.+)", "reference_net", r"\1", "ReferenceNet: SD 2D UNet without attn2/norm2 and output head"),
)
DENOISING_KEYMAP: KeyMap = (
    Rule(r"(.+)", "backbone", r"\1", "backbone: SD names, attn2 over whisper tokens, motion_modules"),
)
MOTION_KEYMAP: KeyMap = (
    Rule(r"(.+\.motion_modules\..+)", "backbone", r"\1", "AnimateDiff v2 motion modules, full backbone names"),
)
BASE_UNET_KEYMAP: KeyMap = (
    Rule(r"(.+)", "backbone", r"\1", "SD base UNet: initial values the EchoMimic files overwrite"),
)
FACE_KEYMAP: KeyMap = (
    Rule(r"(.+)", "face_locator", r"\1", "face locator (1-plane mask)"),
)
_WHISPER_LAYER = r"encoder\.blocks\.(\d+)\."
WHISPER_KEYMAP: KeyMap = (
    Rule(r"decoder\..+", None, reason="whisper text decoder (EchoMimic runs only the encoder)"),
    Rule(r"encoder\.positional_embedding", "audio_encoder", "encoder.embed_positions.weight",
         "OpenAI -> transformers whisper name"),
    Rule(r"encoder\.(conv[12])\.(weight|bias)", "audio_encoder", r"encoder.\1.\2", "same name"),
    Rule(_WHISPER_LAYER + r"attn\.query\.(weight|bias)", "audio_encoder", r"encoder.layers.\1.self_attn.q_proj.\2",
         "OpenAI -> transformers whisper name"),
    Rule(_WHISPER_LAYER + r"attn\.key\.weight", "audio_encoder", r"encoder.layers.\1.self_attn.k_proj.weight",
         "OpenAI -> transformers whisper name"),
    Rule(_WHISPER_LAYER + r"attn\.value\.(weight|bias)", "audio_encoder", r"encoder.layers.\1.self_attn.v_proj.\2",
         "OpenAI -> transformers whisper name"),
    Rule(_WHISPER_LAYER + r"attn\.out\.(weight|bias)", "audio_encoder", r"encoder.layers.\1.self_attn.out_proj.\2",
         "OpenAI -> transformers whisper name"),
    Rule(_WHISPER_LAYER + r"attn_ln\.(weight|bias)", "audio_encoder",
         r"encoder.layers.\1.self_attn_layer_norm.\2", "OpenAI -> transformers whisper name"),
    Rule(_WHISPER_LAYER + r"mlp\.0\.(weight|bias)", "audio_encoder", r"encoder.layers.\1.fc1.\2",
         "OpenAI -> transformers whisper name"),
    Rule(_WHISPER_LAYER + r"mlp\.2\.(weight|bias)", "audio_encoder", r"encoder.layers.\1.fc2.\2",
         "OpenAI -> transformers whisper name"),
    Rule(_WHISPER_LAYER + r"mlp_ln\.(weight|bias)", "audio_encoder", r"encoder.layers.\1.final_layer_norm.\2",
         "OpenAI -> transformers whisper name"),
    Rule(r"encoder\.ln_post\.(weight|bias)", "audio_encoder", r"encoder.layer_norm.\1",
         "OpenAI -> transformers whisper name (loaded, not used: EchoMimic reads the states before it)"),
)
"""``whisper_tiny.pt`` (``model_state_dict``): OpenAI whisper names -> transformers ``WhisperEncoder`` names."""

BASE_UNET = ("sd-image-variations-diffusers/unet",)


def _sources(suffix: str) -> tuple[SourceSpec, ...]:
    return (
        SourceSpec("reference_unet", ("reference_unet.pth",), REFERENCE_KEYMAP),
        SourceSpec("motion_module", (f"motion_module{suffix}.pth",), MOTION_KEYMAP, required=False),
        SourceSpec("denoising_unet", (f"denoising_unet{suffix}.pth",), DENOISING_KEYMAP),
        SourceSpec("base_unet", BASE_UNET, BASE_UNET_KEYMAP, required=False, fills_only=True),
        SourceSpec("face_locator", ("face_locator.pth",), FACE_KEYMAP),
        SourceSpec("whisper", ("audio_processor/whisper_tiny.pt",), WHISPER_KEYMAP, reader="whisper"),
        SourceSpec("vae", ("sd-vae-ft-mse",), VAE_KEYMAP),
    )


FALLBACKS = (
    "face box: OpenCV's detector stands in for MTCNN (the face mask is the box, as in EchoMimic)",
)


def build_config(src: Path, states: dict[str, dict[str, torch.Tensor]], variant: str) -> ModelConfig:
    """Our config for EchoMimic v1 weights: architecture from the SD base unet config and the shapes,
    behaviour from ``infer_audio2vid(_acc).py`` and ``inference_v2.yaml`` (24 fps, 12-frame clips, no
    motion frames, whisper-tiny levels, attn2 x3, 30 steps at CFG 2.5, or 6 steps without CFG), and what
    offline generation reproduces of its pipeline: whole-audio whisper features, its frame count, the whole
    video in overlapping context windows (:class:`engine.config.ReproductionConfig`)."""
    backbone = dict(states.get("motion_module", {}), **states["denoising_unet"])
    config_path = find(src, tuple(f"{folder}/config.json" for folder in BASE_UNET))
    unet = UNetConfig.from_diffusers(read_json(config_path)) if config_path is not None else UNetConfig()
    unet.cross_attention_dim = attn2_context_dim(backbone) or unet.cross_attention_dim
    unet.cross_attention_scale = AUDIO_ATTENTION_SCALE
    whisper_path = require(src, "whisper checkpoint", ("audio_processor/whisper_tiny.pt",))
    dims = whisper_dims(whisper_path)
    audio = AudioConfig(kind="whisper", window=2, projection=None, encoder=dict(
        d_model=dims["n_audio_state"], encoder_layers=dims["n_audio_layer"],
        encoder_attention_heads=dims["n_audio_head"], encoder_ffn_dim=4 * dims["n_audio_state"],
        num_mel_bins=dims["n_mels"], max_source_positions=dims["n_audio_ctx"]))
    vae = vae_config(require(src, "VAE folder", ("sd-vae-ft-mse",)))
    sample_size = read_json(config_path).get("sample_size", 64) if config_path is not None else 64
    sampling = (SamplingDefaults(steps=6, sampler="ddim", cfg_audio=1.0, cfg_ref=1.0) if variant == "acc" else
                SamplingDefaults(steps=30, sampler="ddim", cfg_audio=2.5, cfg_ref=2.5))
    reference_cross = attn2_context_dim(states["reference_unet"]) is not None
    return ModelConfig(
        name="echomimic_v1" + ("_acc" if variant == "acc" else ""), resolution=int(sample_size) * 8,
        latent_downscale=8, fps=24.0, clip_frames=12, motion_frames=0, motion_init="zeros", unet=unet,
        temporal=temporal_config(backbone), speed=SpeedConfig(enabled=False),
        face_locator=face_locator_config(states["face_locator"]),
        reference_net=ReferenceNetConfig(cross_attention=reference_cross), audio=audio, vae=vae,
        scheduler=NoiseSchedule.hallo().to_dict(), sampling=sampling,
        reproduce=ReproductionConfig(system="echomimic_v1", whole_audio=True, context_frames=CONTEXT_FRAMES,
                                     context_overlap=CONTEXT_OVERLAP, whisper_chunk_frames=True,
                                     noise_clamp=NOISE_CLAMP))


SYSTEM = SystemSpec(
    name="echomimic",
    description="EchoMimic v1 (antgroup/echomimic): reference/denoising UNets, motion module, face locator, "
                "whisper-tiny, sd-vae-ft-mse",
    variants={"standard": _sources(""), "acc": _sources("_acc")},
    build_config=build_config,
    config_files=(("unet config", tuple(f"{folder}/config.json" for folder in BASE_UNET)),
                  ("vae config", ("sd-vae-ft-mse/config.json",))),
    fallbacks=FALLBACKS,
)
