"""diffusers schedulers built with a NoiseSchedule's settings, and a fixed fake model (test oracles)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

from engine.sampling import NoiseSchedule

LATENT_SHAPE = (2, 4, 3, 6, 5)  # [B, C, F, h, w]


def beta_kwargs(schedule: NoiseSchedule) -> dict:
    """Settings every diffusers scheduler shares with ours."""
    return {
        "num_train_timesteps": schedule.num_train_timesteps,
        "beta_start": schedule.beta_start,
        "beta_end": schedule.beta_end,
        "beta_schedule": schedule.beta_schedule,
        "prediction_type": schedule.prediction_type,
        "rescale_betas_zero_snr": schedule.rescale_betas_zero_snr,
        "timestep_spacing": schedule.timestep_spacing,
        "steps_offset": schedule.steps_offset,
    }


def ddim(schedule: NoiseSchedule) -> DDIMScheduler:
    """diffusers DDIM; clip_sample must be turned off (its default is True)."""
    return DDIMScheduler(**beta_kwargs(schedule), set_alpha_to_one=schedule.set_alpha_to_one, clip_sample=False)


def lcm(schedule: NoiseSchedule) -> LCMScheduler:
    """diffusers LCM with the default distillation grid (50) and timestep scaling (10)."""
    return LCMScheduler(**beta_kwargs(schedule), set_alpha_to_one=schedule.set_alpha_to_one, clip_sample=False)


def euler(schedule: NoiseSchedule) -> EulerDiscreteScheduler:
    """diffusers Euler, trailing spacing, final sigma 0."""
    kwargs = beta_kwargs(schedule) | {"timestep_spacing": "trailing"}
    return EulerDiscreteScheduler(**kwargs, final_sigmas_type="zero")


def fake_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed model linear in x and t: 0.6 x + 0.4 (t / 1000) base - 0.1, with t a scalar, [B] or [B, F]."""
    base = torch.randn(x.shape, generator=torch.Generator().manual_seed(1234), dtype=x.dtype)
    level = torch.as_tensor(t, dtype=x.dtype) / 1000
    if level.ndim == 1:
        level = level.view(-1, *([1] * (x.ndim - 1)))
    elif level.ndim == 2:
        level = level.view(level.shape[0], 1, level.shape[1], 1, 1)
    return 0.6 * x + 0.4 * level * base - 0.1


def gaussian(seed: int, shape: tuple[int, ...] = LATENT_SHAPE) -> torch.Tensor:
    """Seeded unit Gaussian noise, float32."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
