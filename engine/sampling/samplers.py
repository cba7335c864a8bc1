"""Samplers: one reverse step from timestep t to t_prev, with per-frame timesteps allowed.

Every sampler keeps its sample in the variance-preserving form x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,
which is also what the model reads, so no sampler needs a separate "scale the model input" call.
Timesteps t and t_prev are a scalar, [B] or per-frame [B, F] (latents [B, C, F, h, w]); t_prev = -1
marks the end of the chain (the clean sample). A step is a pure function of its arguments (no
step counter), so clips at staggered noise levels can share one call.

Equivalence with diffusers (the test oracles):
- DDIMSampler == DDIMScheduler.step; its t_prev is diffusers' t - T // num_steps (which, under
  trailing spacing, is not always the next timestep: 6 steps go 999 -> 833, 832 -> 666, ...,
  166 -> 0).
- LCMSampler == LCMScheduler.step; same noise given the same generator state.
- EulerSampler == EulerDiscreteScheduler (trailing, final sigma 0): diffusers keeps
  x_sigma = x_t / sqrt(a_t) and feeds scale_model_input(x_sigma) = x_t to the model; this sampler
  keeps x_t, so its sample after each step equals diffusers' scale_model_input of its sample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch

from engine.sampling.schedules import (
    NoiseSchedule,
    as_timesteps,
    compute_dtype,
    expand_as_latents,
    spaced_timesteps,
    x0_eps_from_output,
)

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler(ABC):
    """A reverse-diffusion update rule over a `NoiseSchedule`."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    @abstractmethod
    def timesteps(self, num_steps: int) -> torch.Tensor:
        """Timesteps at which the model is called, LongTensor [num_steps], descending."""

    def prev_timesteps(self, num_steps: int) -> torch.Tensor:
        """The t_prev paired with each of `timesteps(num_steps)`, LongTensor [num_steps]:
        the next timestep, and -1 after the last."""
        steps = self.timesteps(num_steps)
        return torch.cat([steps[1:], steps.new_tensor([-1])])

    def init_sample(self, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The starting sample at timestep `t` made from unit Gaussian `noise` (here: the noise)."""
        return noise

    @abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Move `sample` from timestep t to t_prev.

        Args:
            model_output: the model's eps or v at (sample, t), shaped like `sample`.
            t, t_prev: scalar, [B] or per-frame [B, F] timesteps; t_prev = -1 ends the chain.
            sample: latents x_t [B, C, F, h, w] (or [B, C, h, w] with scalar / [B] timesteps).
            generator: source of the noise for stochastic samplers.

        Returns:
            x_{t_prev}, shaped and typed like `sample`.
        """

    def _alpha(self, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """alpha_bar at `t`, broadcast onto `sample` in its compute dtype."""
        return expand_as_latents(self.schedule.alpha_cumprod_at(t), sample).to(compute_dtype(sample))


class DDIMSampler(Sampler):
    """DDIM (arXiv 2010.02502): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z, with
    s = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) and z unit Gaussian noise.
    eta = 0 is deterministic; eta = 1 is DDPM-like."""

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0) -> None:
        super().__init__(schedule)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The schedule's spaced timesteps, LongTensor [num_steps]."""
        return self.schedule.timesteps(num_steps)

    def prev_timesteps(self, num_steps: int) -> torch.Tensor:
        """t - T // num_steps (-1 where negative), as diffusers' DDIMScheduler steps, LongTensor [num_steps]."""
        prev = self.timesteps(num_steps) - self.schedule.num_train_timesteps // num_steps
        return prev.clamp(min=-1)

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One DDIM step (see the class docstring); `generator` feeds z when eta > 0."""
        dtype = compute_dtype(sample)
        t, t_prev = as_timesteps(t), as_timesteps(t_prev)
        alpha_t = self.schedule.alpha_cumprod_at(t)
        alpha_prev = self.schedule.alpha_cumprod_at(t_prev)
        x0, eps = x0_eps_from_output(
            model_output.to(dtype),
            sample.to(dtype),
            expand_as_latents(alpha_t, sample).to(dtype),
            self.schedule.prediction_type,
        )
        variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
        std = self.eta * variance.sqrt()
        direction = (1 - alpha_prev - std**2).clamp(min=0).sqrt()
        prev = expand_as_latents(alpha_prev.sqrt(), sample).to(dtype) * x0
        prev = prev + expand_as_latents(direction, sample).to(dtype) * eps
        if self.eta > 0:
            prev = prev + expand_as_latents(std, sample).to(dtype) * _gaussian_like(prev, generator)
        return prev.to(sample.dtype)


class LCMSampler(Sampler):
    """Latent consistency model multistep sampling (arXiv 2310.04378).

    At timestep t the consistency function is
        denoised = c_skip(t) x_t + c_out(t) x0,
        c_skip = sd^2 / ((k t)^2 + sd^2),  c_out = k t / sqrt((k t)^2 + sd^2),
    with sd = 0.5 and k = `timestep_scaling` (10). Then the sample is re-noised to t_prev:
    sqrt(a_prev) denoised + sqrt(1 - a_prev) z; at t_prev = -1 the result is `denoised`.
    Timesteps come from the distillation grid of `original_inference_steps` (50) points
    T/50 - 1, 2T/50 - 1, ..., T - 1, taken at evenly spaced indices from the top (4 steps: 999,
    759, 499, 259); the schedule's own spacing does not apply.
    """

    sigma_data = 0.5

    def __init__(
        self, schedule: NoiseSchedule, original_inference_steps: int = 50, timestep_scaling: float = 10.0
    ) -> None:
        super().__init__(schedule)
        if not 1 <= original_inference_steps <= schedule.num_train_timesteps:
            raise ValueError(f"original_inference_steps must be in [1, T], got {original_inference_steps}")
        self.original_inference_steps = original_inference_steps
        self.timestep_scaling = timestep_scaling

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """LongTensor [num_steps] from the distillation grid (1 <= num_steps <= original_inference_steps)."""
        grid_size = self.original_inference_steps
        if not 1 <= num_steps <= grid_size:
            raise ValueError(f"LCM num_steps must be in [1, {grid_size}], got {num_steps}")
        spacing = self.schedule.num_train_timesteps // grid_size
        grid = np.arange(grid_size, 0, -1, dtype=np.int64) * spacing - 1
        picks = np.floor(np.linspace(0, grid_size, num_steps, endpoint=False)).astype(np.int64)
        return torch.from_numpy(grid[picks])

    def boundary_scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_skip, c_out) at timesteps `t` (any shape), float64."""
        scaled = t.to(torch.float64) * self.timestep_scaling
        denominator = scaled**2 + self.sigma_data**2
        return self.sigma_data**2 / denominator, scaled / denominator.sqrt()

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One consistency step (see the class docstring); `generator` feeds the re-noising z,
        which is drawn (shaped like `sample`) only when some t_prev >= 0."""
        dtype = compute_dtype(sample)
        t, t_prev = as_timesteps(t), as_timesteps(t_prev)
        x0, _ = x0_eps_from_output(
            model_output.to(dtype), sample.to(dtype), self._alpha(t, sample), self.schedule.prediction_type
        )
        c_skip, c_out = self.boundary_scalings(t)
        denoised = expand_as_latents(c_out, sample).to(dtype) * x0
        denoised = denoised + expand_as_latents(c_skip, sample).to(dtype) * sample.to(dtype)
        if not bool((t_prev >= 0).any()):
            return denoised.to(sample.dtype)
        alpha_prev = self._alpha(t_prev, sample)
        renoised = alpha_prev.sqrt() * denoised + (1 - alpha_prev).sqrt() * _gaussian_like(denoised, generator)
        keep_denoised = expand_as_latents(t_prev < 0, sample)
        return torch.where(keep_denoised, denoised, renoised).to(sample.dtype)


class EulerSampler(Sampler):
    """Euler steps on the probability-flow ODE in sigma space, trailing spacing, final sigma 0.

    With sigma_t = sqrt((1 - a_t) / a_t) and x_sigma = x_t / sqrt(a_t) (diffusers' formulas):
        d = (x_sigma - x0) / sigma_t,  x_sigma' = x_sigma + d (sigma_prev - sigma_t),
    and the result is returned in VP form x_sigma' / sqrt(sigma_prev^2 + 1). sigma at t_prev = -1 is 0.
    x_sigma' is evaluated as x0 + d sigma_prev (the same value): it never forms x_sigma, which under
    zero-SNR reaches 4096 x_t and costs diffusers' float32 loop about 7e-5 of absolute error.
    As in diffusers, alpha_bar is floored at 2^-24 so that sigma stays finite under zero-SNR
    (sigma_max = 4096), and the chain starts at x_sigma = sigma_max * noise (`init_sample`).
    """

    min_alpha_cumprod = 2.0**-24

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """Trailing-spaced timesteps, LongTensor [num_steps] (first is T - 1)."""
        return spaced_timesteps(self.schedule.num_train_timesteps, num_steps, "trailing")

    def sigmas(self, t: int | torch.Tensor) -> torch.Tensor:
        """sigma at timesteps `t` (any shape), float64; 0 where t < 0."""
        t = as_timesteps(t)
        alpha = self.schedule.alpha_cumprod_at(t).clamp(min=self.min_alpha_cumprod)
        sigma = ((1 - alpha) / alpha).sqrt()
        return torch.where(t >= 0, sigma, torch.zeros_like(sigma))

    def init_sample(self, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """sigma_t * noise in sigma space, i.e. sqrt(1 - a_t) * noise in VP form."""
        sigma = expand_as_latents(self.sigmas(t), noise)
        return (noise * (sigma / (sigma**2 + 1).sqrt()).to(compute_dtype(noise))).to(noise.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One Euler step (see the class docstring); deterministic, `generator` is unused."""
        dtype = compute_dtype(sample)
        sigma = expand_as_latents(self.sigmas(t), sample)
        sigma_prev = expand_as_latents(self.sigmas(t_prev), sample)
        alpha = 1 / (sigma**2 + 1)
        x0, _ = x0_eps_from_output(
            model_output.to(dtype), sample.to(dtype), alpha.to(dtype), self.schedule.prediction_type
        )
        derivative = sample.to(dtype) * ((sigma**2 + 1).sqrt() / sigma).to(dtype) - x0 / sigma.to(dtype)
        x_sigma_prev = x0 + derivative * sigma_prev.to(dtype)
        return (x_sigma_prev / (sigma_prev**2 + 1).sqrt().to(dtype)).to(sample.dtype)


SAMPLERS: dict[str, type[Sampler]] = {"ddim": DDIMSampler, "lcm": LCMSampler, "euler": EulerSampler}


def make_sampler(name: str, schedule: NoiseSchedule, **options: float | int) -> Sampler:
    """Build a sampler by name ("ddim", "lcm", "euler") with its keyword options (e.g. eta)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](schedule, **options)


def sample(
    model_fn: ModelFn,
    sampler: Sampler,
    noise: torch.Tensor,
    num_steps: int,
    *,
    generator: torch.Generator | None = None,
    per_frame: bool = False,
) -> torch.Tensor:
    """Run the full chain from noise to clean latents.

    Args:
        model_fn: (x [B, C, F, h, w], t) -> model output shaped like x; t is a LongTensor [B],
            or [B, F] when `per_frame`.
        sampler: the update rule.
        noise: unit Gaussian noise [B, C, F, h, w] (or [B, C, h, w] when not `per_frame`).
        num_steps: number of model calls.
        generator: noise source for stochastic samplers.
        per_frame: hand model_fn and the sampler per-frame timesteps [B, F] (all frames equal).

    Returns:
        The final latents, shaped and typed like `noise`.
    """
    shape = (noise.shape[0], noise.shape[2]) if per_frame else (noise.shape[0],)
    steps = sampler.timesteps(num_steps).tolist()
    prevs = sampler.prev_timesteps(num_steps).tolist()
    x = sampler.init_sample(noise, torch.full(shape, steps[0], dtype=torch.long))
    for t, t_prev in zip(steps, prevs):
        t_now = torch.full(shape, t, dtype=torch.long, device=noise.device)
        t_next = torch.full(shape, t_prev, dtype=torch.long, device=noise.device)
        x = sampler.step(model_fn(x, t_now), t_now, t_next, x, generator=generator)
    return x


def _gaussian_like(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Unit Gaussian noise shaped like `sample`, drawn on the generator's device (as diffusers'
    randn_tensor does, so equal generator states give equal noise) and moved to the sample's."""
    device = generator.device if generator is not None else sample.device
    noise = torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype)
    return noise.to(sample.device)
