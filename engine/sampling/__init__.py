"""Noise schedules, samplers and classifier-free guidance for the backbone's denoising loop."""

from engine.sampling.guidance import Branch, GuidanceScales, branches_needed, combine, split_batched
from engine.sampling.samplers import (
    DDIMSampler,
    EulerSampler,
    LCMSampler,
    Sampler,
    make_sampler,
    sample,
)
from engine.sampling.schedules import NoiseSchedule, expand_as_latents, spaced_timesteps

__all__ = [
    "Branch",
    "DDIMSampler",
    "EulerSampler",
    "GuidanceScales",
    "LCMSampler",
    "NoiseSchedule",
    "Sampler",
    "branches_needed",
    "combine",
    "expand_as_latents",
    "make_sampler",
    "sample",
    "spaced_timesteps",
    "split_batched",
]
