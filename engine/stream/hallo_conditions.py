"""Hallo's per-session inputs: face-embedding tokens and region masks, made once per portrait.

Only models whose config enables them get them: ``image_proj`` (face-embedding tokens for ``attn2``
and the ReferenceNet) and ``audio_modules`` (full / face / lip region masks). Other models get
nothing here, and their backbone calls are exactly what they were without this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.backends.base import Backend
from engine.config import ModelConfig
from engine.models.hallo_audio import region_mask_levels
from engine.region_masks import fallback_region_masks


@dataclass
class HalloConditions:
    """What a session adds to every backbone call of a Hallo model (None: not used or not given).

    Attributes:
        image_tokens: ``[1, T_i, D]`` the face embedding's tokens (also the ReferenceNet's context).
        uncond_image_tokens: ``[1, T_i, D]`` a zero embedding's tokens (the unconditional branch).
        region_masks: per resolution level ``[1, 3, h_l * w_l]`` full / face / lip weights.
    """

    image_tokens: torch.Tensor | None = None
    uncond_image_tokens: torch.Tensor | None = None
    region_masks: list[torch.Tensor] | None = None


def hallo_conditions(backend: Backend, config: ModelConfig, face_mask: np.ndarray, latent: int,
                     region_masks: np.ndarray | list[np.ndarray] | None = None,
                     face_embedding: np.ndarray | None = None) -> HalloConditions:
    """The session's Hallo inputs on the backend's device and dtype.

    Args:
        backend: runs the image projection.
        config: decides which inputs exist (``audio_modules``, ``image_proj``).
        face_mask: the portrait's face mask ``[S, S]`` (the fallback masks' face region).
        latent: the latent side ``h = w``.
        region_masks: float32 ``[3, h, w]`` full / face / lip masks in [0, 1] over the portrait (any
            size, area-resized to the latent; :mod:`engine.region_masks`); or, as Hallo's pipeline hands
            them to its backbone, one float32 ``[3, h_l * w_l]`` per resolution level (level 0: the latent's
            side, halved per level, rounded up), used as given; None: made from ``face_mask``.
        face_embedding: float32 ``[E]`` the face's embedding; None: a zero embedding's tokens everywhere.
    Raises:
        ValueError: an input the model does not take, or masks not shaped as above.
    """
    out = HalloConditions()
    levels = len(config.unet.block_out_channels)
    if config.audio_modules.enabled and isinstance(region_masks, (list, tuple)):
        out.region_masks = [torch.from_numpy(m)[None].to(backend.device, backend.dtype)
                            for m in _checked_levels(region_masks, latent, levels)]
    elif config.audio_modules.enabled:
        masks = fallback_region_masks(face_mask) if region_masks is None else np.asarray(region_masks, np.float32)
        if masks.ndim != 3 or masks.shape[0] != 3:
            raise ValueError(f"region masks must be [3, h, w] (full, face, lip), got {list(masks.shape)}")
        pooled = F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(masks))[None], (latent, latent))
        out.region_masks = [m.to(backend.device, backend.dtype) for m in region_mask_levels(pooled, levels)]
    elif region_masks is not None:
        raise ValueError(f"model {config.name!r} has no audio modules: it takes no region masks")
    if face_embedding is not None:
        if not config.image_proj.enabled:
            raise ValueError(f"model {config.name!r} has no image projection: it takes no face embedding")
        embedding = torch.from_numpy(np.asarray(face_embedding, np.float32).reshape(1, -1)).to(backend.device)
        out.image_tokens = backend.image_tokens(embedding)
        out.uncond_image_tokens = backend.image_tokens(torch.zeros_like(embedding))
    return out


def _checked_levels(masks: list[np.ndarray], latent: int, levels: int) -> list[np.ndarray]:
    """Per-level region masks checked: ``levels`` float32 arrays ``[3, h_l * w_l]`` in [0, 1]."""
    if len(masks) != levels:
        raise ValueError(f"region masks: {len(masks)} levels given, the UNet has {levels}")
    out, side = [], latent
    for level, mask in enumerate(masks):
        mask = np.ascontiguousarray(mask, np.float32)
        if mask.shape != (3, side * side):
            raise ValueError(f"region masks: level {level} must be [3, {side * side}] (full, face, lip), "
                             f"got {list(mask.shape)}")
        if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"region masks: level {level} has values outside [0, 1]")
        out.append(mask)
        side = -(-side // 2)
    return out
