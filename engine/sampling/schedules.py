"""Discrete noise schedules of latent diffusion models (variance-preserving form).

A schedule maps an integer training timestep t in [0, T) to the cumulative signal level
alpha_bar_t, with x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps. The settings and their
meanings are those of diffusers' DDIMScheduler config, so a model's scheduler_config.json maps onto
them one to one; the numbers are computed in float64 and agree with diffusers' float32 tables to
about 5e-7.

Timestep tensors may be a scalar, per sample ([B]) or per frame ([B, F]); they broadcast onto
latents [B, C, F, h, w] (or [B, C, h, w] for per-sample timesteps). A negative timestep means
"past the end of the chain": its alpha_bar is the final one (1, or alpha_bar_0 when
set_alpha_to_one is false).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from engine.config import PREDICTION_TYPES, TIMESTEP_SPACINGS, NoiseScheduleConfig, PredictionType, TimestepSpacing


def spaced_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: TimestepSpacing, steps_offset: int = 0
) -> torch.Tensor:
    """Pick `num_steps` descending training timesteps out of `num_train_timesteps` (T).

    - "leading": k * (T // n) + steps_offset for k = n-1 .. 0 (SD: 981, 961, ..., 1 for n = 50).
    - "trailing": round(T - k * T / n) - 1 for k = 0 .. n-1, the T - k * T / n being numpy's
      arange(T, 0, -T / n) (whose rounding decides ties: n = 48 gives 936, not 937, at k = 3);
      always starts at T - 1 (Hallo: 999, 974, ..., 24 for n = 40; 999, 832, 666, 499, 332, 166
      for n = 6).
    - "linspace": round(linspace(0, T - 1, n)) reversed (round half to even).
    These are the values of diffusers' DDIMScheduler.set_timesteps (its "trailing" variant can
    return n + 1 entries, the last being -1, for some n > 50 such as 61; here it is always n).

    Returns:
        LongTensor [num_steps], descending.
    """
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    if spacing == "leading":
        values = np.arange(num_steps - 1, -1, -1, dtype=np.int64) * (num_train_timesteps // num_steps)
        values = values + steps_offset
    elif spacing == "trailing":
        descending = np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)[:num_steps]
        values = np.round(descending).astype(np.int64) - 1
    else:
        values = np.round(np.linspace(0, num_train_timesteps - 1, num_steps))[::-1].astype(np.int64)
    return torch.from_numpy(values.copy())


def expand_as_latents(values: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Reshape per-timestep values so that they broadcast onto latents.

    Args:
        values: scalar, [B] (one value per sample) or [B, F] (one value per frame).
        sample: latents [B, C, F, h, w] (or [B, C, h, w] when values are scalar or [B]).

    Returns:
        `values` viewed as [], [B, 1, ..., 1] or [B, 1, F, 1, 1], on sample's device.
    """
    values = values.to(sample.device)
    if values.ndim == 0:
        return values
    batch = sample.shape[0]
    if values.ndim == 1:
        if values.shape[0] != batch:
            raise ValueError(f"per-sample timesteps {tuple(values.shape)} do not match batch {batch}")
        return values.view(batch, *([1] * (sample.ndim - 1)))
    if values.ndim == 2:
        if sample.ndim != 5 or values.shape != (batch, sample.shape[2]):
            raise ValueError(
                f"per-frame timesteps {tuple(values.shape)} need latents [B, C, F, h, w] with (B, F) equal;"
                f" got latents {tuple(sample.shape)}"
            )
        return values.view(batch, 1, values.shape[1], 1, 1)
    raise ValueError(f"timesteps must be a scalar, [B] or [B, F]; got shape {tuple(values.shape)}")


def as_timesteps(t: int | torch.Tensor) -> torch.Tensor:
    """Return `t` (a Python int or an integer-valued tensor) as a LongTensor of the same shape."""
    return torch.as_tensor(t).to(torch.long)


def compute_dtype(sample: torch.Tensor) -> torch.dtype:
    """float32 for half-precision latents, else the latents' own floating dtype."""
    return torch.promote_types(sample.dtype, torch.float32)


def x0_eps_from_output(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_cumprod: torch.Tensor,
    prediction_type: PredictionType,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a model output into the predicted clean latents x0 and noise eps.

    Args:
        model_output: eps or v, shaped like `sample`.
        sample: noisy latents x_t.
        alpha_cumprod: alpha_bar_t, already broadcastable onto `sample` (see `expand_as_latents`).
        prediction_type: "epsilon": x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (infinite where a = 0);
            "v_prediction": x0 = sqrt(a) x_t - sqrt(1 - a) v, eps = sqrt(a) v + sqrt(1 - a) x_t;
            "sample": the output is x0, eps = (x_t - sqrt(a) x0) / sqrt(1 - a) (infinite where a = 1).

    Returns:
        (x0, eps), each shaped like `sample`.
    """
    sqrt_a = alpha_cumprod.sqrt()
    sqrt_1ma = (1 - alpha_cumprod).sqrt()
    if prediction_type == "epsilon":
        return (sample - sqrt_1ma * model_output) / sqrt_a, model_output
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_1ma * model_output, sqrt_a * model_output + sqrt_1ma * sample
    if prediction_type == "sample":
        return model_output, (sample - sqrt_a * model_output) / sqrt_1ma
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class NoiseSchedule(NoiseScheduleConfig):
    """A :class:`~engine.config.NoiseScheduleConfig` with its tables: betas, alpha_bar, the inference
    timesteps, and the conversions between model outputs, clean latents and noise."""

    @cached_property
    def betas(self) -> torch.Tensor:
        """Training betas, float64 [T] (after the zero-SNR rescale when enabled)."""
        count = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, count, dtype=torch.float64)
        else:
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, count, dtype=torch.float64) ** 2
        if self.rescale_betas_zero_snr:
            betas = _rescale_to_zero_terminal_snr(betas)
        return betas

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s <= t} (1 - beta_s), float64 [T]; the last is 0 under zero-SNR."""
        return torch.cumprod(1 - self.betas, dim=0)

    @property
    def final_alpha_cumprod(self) -> float:
        """alpha_bar after the last step (used for negative timesteps)."""
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """Inference timesteps for `num_steps` steps, LongTensor [num_steps], descending
        (diffusers DDIMScheduler.set_timesteps with this schedule's spacing)."""
        return spaced_timesteps(self.num_train_timesteps, num_steps, self.timestep_spacing, self.steps_offset)

    def alpha_cumprod_at(self, t: int | torch.Tensor) -> torch.Tensor:
        """alpha_bar at timesteps `t` (any shape, values in [-1, T)), float64, same shape and device
        as `t`; negative timesteps give `final_alpha_cumprod`."""
        t = as_timesteps(t)
        if bool((t >= self.num_train_timesteps).any()):
            raise ValueError(f"timesteps must be < {self.num_train_timesteps}, got max {int(t.max())}")
        table = self.alphas_cumprod.to(t.device)
        final = torch.full_like(table[0], self.final_alpha_cumprod)
        return torch.where(t >= 0, table[t.clamp(min=0)], final)

    def to_x0_eps(
        self, model_output: torch.Tensor, sample: torch.Tensor, t: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) predicted by `model_output` for noisy latents `sample` at timesteps `t`
        (scalar, [B] or [B, F]); see `x0_eps_from_output`. Computed in at least float32."""
        dtype = compute_dtype(sample)
        alpha = expand_as_latents(self.alpha_cumprod_at(t), sample).to(dtype)
        return x0_eps_from_output(model_output.to(dtype), sample.to(dtype), alpha, self.prediction_type)

    def from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The model output (training target) for clean latents x0 and noise eps at timesteps `t`:
        eps itself, v = sqrt(a) eps - sqrt(1 - a) x0 for v_prediction, or x0 for sample. Shaped like x0."""
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        alpha = expand_as_latents(self.alpha_cumprod_at(t), x0).to(compute_dtype(x0))
        return (alpha.sqrt() * eps - (1 - alpha).sqrt() * x0).to(x0.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Forward diffusion x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise.

        Args:
            x0: clean latents [B, C, F, h, w] (or [B, C, h, w]).
            noise: unit Gaussian noise, shaped like x0.
            t: scalar, [B] or per-frame [B, F] timesteps.

        Returns:
            Noisy latents shaped and typed like x0.
        """
        dtype = compute_dtype(x0)
        alpha = expand_as_latents(self.alpha_cumprod_at(t), x0).to(dtype)
        return (alpha.sqrt() * x0.to(dtype) + (1 - alpha).sqrt() * noise.to(dtype)).to(x0.dtype)


def _rescale_to_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so that its last value is 0 and its first is unchanged,
    then recover the betas (arXiv 2305.08891, Algorithm 1)."""
    root = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas
