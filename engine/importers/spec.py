"""What an importable system is: the files it ships, a key map per file, and how its config is derived.

A :class:`SystemSpec` lists :class:`SourceSpec` entries (one per weight file or model folder) for each
variant and a ``build_config`` function that turns the shipped configs and tensor shapes into our
:class:`~engine.config.ModelConfig`. Shared tables (the SD VAE) and shape readers live here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engine.config import FaceLocatorConfig, ModelConfig, TemporalConfig, VAEConfig
from engine.importers.keymap import KeyMap, Rule
from engine.importers.sources import model_folder_weights, read_json
from engine.models.checkpoint import CheckpointError, read_state_dict, read_torch_object

MOTION_HEADS = 8
"""Heads of the AnimateDiff v2 motion modules (Hallo's and EchoMimic's inference configs; not in the weights)."""

MOTION_NORM_GROUPS = 32
"""GroupNorm groups of AnimateDiff's motion modules (fixed in its code, whatever the UNet uses)."""


@dataclass(frozen=True)
class SourceSpec:
    """One thing a system ships that holds weights.

    Attributes:
        role: short name (printed, and recorded in the provenance).
        candidates: paths relative to a search root (:data:`engine.importers.sources.SEARCH_ROOTS`);
            a folder means a diffusers / transformers model folder (its weight file is read).
        keymap: the rules for this file's keys.
        reader: ``"state_dict"`` (a flat dict of tensors) or ``"whisper"`` (OpenAI's
            ``{"dims", "model_state_dict"}`` file).
        required: a missing optional source is skipped (and said so).
        fills_only: read only when other sources leave keys missing, and then used only for those
            keys and only where the shapes agree (initial values the system overwrites, like
            EchoMimic's SD base UNet).
    """

    role: str
    candidates: tuple[str, ...]
    keymap: KeyMap
    reader: str = "state_dict"
    required: bool = True
    fills_only: bool = False


@dataclass(frozen=True)
class SystemSpec:
    """An importable system: its sources per variant and how to derive our config.

    ``build_config(src, states, variant)`` gets the ``--src`` folder and the tensors read so far
    (role -> state dict, sources in order, ``fills_only`` ones excluded) and returns our config.
    ``config_files``: (role, candidate paths) of the config files ``build_config`` reads, recorded
    in the provenance when present. ``fallbacks`` names the inputs of the original pipeline this
    engine cannot compute and what stands in for them (one line each).
    """

    name: str
    description: str
    variants: dict[str, tuple[SourceSpec, ...]]
    build_config: Callable[[Path, dict[str, dict[str, torch.Tensor]], str], ModelConfig]
    config_files: tuple[tuple[str, tuple[str, ...]], ...] = ()
    fallbacks: tuple[str, ...] = ()


VAE_KEYMAP: KeyMap = (
    Rule(r"(.+\.attentions\.\d+)\.query\.(weight|bias)", "vae", r"\1.to_q.\2",
         "pre-0.14 diffusers attention name", reshape="conv1x1_to_linear"),
    Rule(r"(.+\.attentions\.\d+)\.key\.(weight|bias)", "vae", r"\1.to_k.\2",
         "pre-0.14 diffusers attention name", reshape="conv1x1_to_linear"),
    Rule(r"(.+\.attentions\.\d+)\.value\.(weight|bias)", "vae", r"\1.to_v.\2",
         "pre-0.14 diffusers attention name", reshape="conv1x1_to_linear"),
    Rule(r"(.+\.attentions\.\d+)\.proj_attn\.(weight|bias)", "vae", r"\1.to_out.0.\2",
         "pre-0.14 diffusers attention name", reshape="conv1x1_to_linear"),
    Rule(r"(.+\.attentions\.\d+\.to_[qkv])\.(weight)", "vae", r"\1.\2",
         "diffusers attention (a [C, C, 1, 1] weight becomes [C, C])", reshape="conv1x1_to_linear"),
    Rule(r"(.+\.attentions\.\d+\.to_out\.0)\.(weight)", "vae", r"\1.\2",
         "diffusers attention (a [C, C, 1, 1] weight becomes [C, C])", reshape="conv1x1_to_linear"),
    Rule(r"(.+)", "vae", r"\1", "diffusers AutoencoderKL keys as they are"),
)
"""sd-vae-ft-mse in diffusers layout (both systems), current or pre-0.14 attention names."""


def read_source(path: Path, reader: str) -> dict[str, torch.Tensor]:
    """Tensors of one source: a weight file, or a model folder's weight file, by ``reader``."""
    path = Path(path)
    if path.is_dir():
        path = model_folder_weights(path)
    if reader == "state_dict":
        return read_state_dict(path)
    if reader == "whisper":
        return whisper_state(path)
    raise ValueError(f"unknown source reader {reader!r}")


def whisper_state(path: Path) -> dict[str, torch.Tensor]:
    """``model_state_dict`` of an OpenAI whisper checkpoint (``{"dims": {...}, "model_state_dict": {...}}``)."""
    data = read_torch_object(path)
    if not isinstance(data, dict) or not isinstance(data.get("model_state_dict"), dict):
        raise CheckpointError(f"{path}: not an OpenAI whisper checkpoint (no 'model_state_dict')")
    return data["model_state_dict"]


def whisper_dims(path: Path) -> dict[str, int]:
    """``dims`` of an OpenAI whisper checkpoint (``n_mels``, ``n_audio_ctx``, ``n_audio_state``, ...)."""
    data = read_torch_object(path)
    dims = data.get("dims") if isinstance(data, dict) else None
    if not isinstance(dims, dict):
        raise CheckpointError(f"{path}: not an OpenAI whisper checkpoint (no 'dims')")
    return {k: int(v) for k, v in dims.items()}


def vae_config(folder: Path) -> VAEConfig:
    """Our :class:`VAEConfig` from a diffusers VAE folder's ``config.json``."""
    data = read_json(Path(folder) / "config.json")
    params = {k: v for k, v in data.items() if not k.startswith("_")}
    return VAEConfig(kind="kl", config=params, scaling_factor=float(data.get("scaling_factor", 0.18215)))


def temporal_config(state: dict[str, torch.Tensor], prefix: str = "") -> TemporalConfig:
    """Where the motion modules sit and how long their position table is, from the key names.

    ``state`` holds a 3D UNet's keys (after stripping ``prefix``): ``down_blocks.i.motion_modules``
    means resolution ``2**i``; ``mid_block.motion_modules`` turns the mid block's on.
    """
    keys = [k[len(prefix):] for k in state if k.startswith(prefix) and ".motion_modules." in k]
    if not keys:
        raise CheckpointError("no motion_modules keys: not an AnimateDiff-style 3D UNet")
    downs = sorted({int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.motion_modules\.", k))})
    pe = next(state[prefix + k] for k in keys if k.endswith(".pos_encoder.pe"))
    return TemporalConfig(num_attention_heads=MOTION_HEADS, max_frames=int(pe.shape[1]),
                          norm_num_groups=MOTION_NORM_GROUPS, resolutions=tuple(2 ** i for i in downs),
                          mid_block=any(k.startswith("mid_block.motion_modules.") for k in keys))


def face_locator_config(state: dict[str, torch.Tensor], prefix: str = "") -> FaceLocatorConfig:
    """Input planes and block widths of a face locator from its conv shapes (added after ``conv_in``)."""
    conv_in = state[prefix + "conv_in.weight"]
    widths = [int(conv_in.shape[0])]
    index = 1
    while prefix + f"blocks.{index}.weight" in state:
        widths.append(int(state[prefix + f"blocks.{index}.weight"].shape[0]))
        index += 2
    return FaceLocatorConfig(conditioning_channels=int(conv_in.shape[1]), block_out_channels=tuple(widths),
                             target="conv_in")


def attn2_context_dim(state: dict[str, torch.Tensor], prefix: str = "") -> int | None:
    """Width of the tokens the spatial ``attn2`` reads (``to_k`` input), or None if there is no ``attn2``."""
    for key, tensor in state.items():
        if key.startswith(prefix) and re.search(r"\.attentions\.\d+\.transformer_blocks\.0\.attn2\.to_k\.weight$", key):
            return int(tensor.shape[1])
    return None
