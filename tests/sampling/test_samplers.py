"""DDIM, LCM and Euler samplers against diffusers' schedulers, and per-frame timesteps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.sampling import DDIMSampler, EulerSampler, LCMSampler, NoiseSchedule, Sampler, make_sampler, sample

from sampling import diffusers_oracles as oracles
from sampling.diffusers_oracles import fake_model

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SCHEDULES = {
    "sd": NoiseSchedule.sd(),
    "hallo": NoiseSchedule.hallo(),
    "sd-v": dataclasses.replace(NoiseSchedule.sd(), prediction_type="v_prediction"),
    "hallo-eps": dataclasses.replace(NoiseSchedule.hallo(), prediction_type="epsilon", rescale_betas_zero_snr=False),
    "hallo-x0": dataclasses.replace(NoiseSchedule.hallo(), prediction_type="sample"),
}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diffusers_loop(scheduler, num_steps: int, noise: torch.Tensor, **step_kwargs) -> torch.Tensor:
    """The standard diffusers denoising loop with `fake_model`."""
    scheduler.set_timesteps(num_steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(fake_model(model_input, t), t, x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_ddim_step_matches_diffusers(name: str, eta: float) -> None:
    schedule, num_steps = SCHEDULES[name], 10
    oracle = oracles.ddim(schedule)
    oracle.set_timesteps(num_steps)
    sampler = DDIMSampler(schedule, eta=eta)
    x = oracles.gaussian(0)
    steps, prevs = sampler.timesteps(num_steps), sampler.prev_timesteps(num_steps)
    for t, t_prev in zip(steps.tolist(), prevs.tolist()):
        if schedule.prediction_type == "epsilon" and schedule.alpha_cumprod_at(t) == 0:
            continue  # x0 = (x - eps) / 0 in both
        output = fake_model(x, torch.tensor(t))
        expected = oracle.step(output, t, x, eta=eta, variance_noise=oracles.gaussian(7) if eta else None)
        ours = sampler.step(output, t, t_prev, x, generator=seeded(7))
        torch.testing.assert_close(ours, expected.prev_sample, atol=1e-5, rtol=1e-5)


def test_ddim_prev_timesteps_follow_diffusers_rule_not_the_next_timestep() -> None:
    sampler = DDIMSampler(NoiseSchedule.hallo())
    assert sampler.prev_timesteps(6).tolist() == [833, 666, 500, 333, 166, 0]
    assert DDIMSampler(NoiseSchedule.sd()).prev_timesteps(50).tolist()[-2:] == [1, -1]


@pytest.mark.parametrize(("name", "num_steps"), [("sd", 25), ("hallo", 40), ("hallo", 6), ("sd-v", 4), ("sd", 1)])
def test_ddim_loop_matches_diffusers(name: str, num_steps: int) -> None:
    schedule, noise = SCHEDULES[name], oracles.gaussian(0)
    expected = diffusers_loop(oracles.ddim(schedule), num_steps, noise)
    ours = sample(fake_model, DDIMSampler(schedule), noise, num_steps)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_stochastic_ddim_loop_matches_diffusers_with_the_same_generator() -> None:
    schedule, noise = NoiseSchedule.hallo(), oracles.gaussian(0)
    expected = diffusers_loop(oracles.ddim(schedule), 8, noise, eta=1.0, generator=seeded(3))
    ours = sample(fake_model, DDIMSampler(schedule, eta=1.0), noise, 8, generator=seeded(3))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    deterministic = sample(fake_model, DDIMSampler(schedule), noise, 8)
    assert not torch.allclose(ours, deterministic, atol=1e-3)


def test_lcm_timesteps_match_diffusers() -> None:
    oracle, sampler = oracles.lcm(NoiseSchedule.sd()), LCMSampler(NoiseSchedule.sd())
    for num_steps in range(1, 51):
        oracle.set_timesteps(num_steps)
        assert sampler.timesteps(num_steps).tolist() == oracle.timesteps.tolist(), num_steps
    assert sampler.timesteps(4).tolist() == [999, 759, 499, 259]
    with pytest.raises(ValueError, match="LCM num_steps"):
        sampler.timesteps(51)


def test_lcm_boundary_scalings() -> None:
    """c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / sqrt((10 t)^2 + 0.25)."""
    c_skip, c_out = LCMSampler(NoiseSchedule.sd()).boundary_scalings(torch.tensor([0, 1, 19]))
    torch.testing.assert_close(c_skip, torch.tensor([1.0, 0.25 / 100.25, 0.25 / 36100.25], dtype=torch.float64))
    torch.testing.assert_close(c_out, torch.tensor([0.0, 10 / 100.25**0.5, 190 / 36100.25**0.5], dtype=torch.float64))


@pytest.mark.parametrize(
    ("name", "num_steps"), [("sd", 4), ("hallo", 4), ("hallo", 1), ("sd-v", 8), ("hallo", 2), ("sd", 50)]
)
def test_lcm_loop_matches_diffusers(name: str, num_steps: int) -> None:
    schedule, noise = SCHEDULES[name], oracles.gaussian(0)
    expected = diffusers_loop(oracles.lcm(schedule), num_steps, noise, generator=seeded(5))
    ours = sample(fake_model, LCMSampler(schedule), noise, num_steps, generator=seeded(5))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "num_steps"), [("sd", 1), ("sd", 4), ("hallo", 6), ("hallo", 8), ("sd-v", 25)])
def test_euler_trailing_matches_diffusers_step_by_step(name: str, num_steps: int) -> None:
    """Our Euler sample is diffusers' scale_model_input(sample) after every step, and the end equals.

    Under zero-SNR diffusers holds x_sigma = 4096 x_t in float32, so its own error is ~7e-5
    (see test_euler_zero_snr_is_accurate_in_float32 for ours)."""
    schedule, noise = SCHEDULES[name], oracles.gaussian(0)
    atol = 2e-4 if schedule.rescale_betas_zero_snr else 1e-5
    oracle, sampler = oracles.euler(schedule), EulerSampler(schedule)
    oracle.set_timesteps(num_steps)
    assert sampler.timesteps(num_steps).tolist() == oracle.timesteps.long().tolist()
    x_sigma = noise * oracle.init_noise_sigma
    x = sampler.init_sample(noise, sampler.timesteps(num_steps)[0])
    for t, t_prev, t_oracle in zip(sampler.timesteps(num_steps), sampler.prev_timesteps(num_steps), oracle.timesteps):
        model_input = oracle.scale_model_input(x_sigma, t_oracle)
        torch.testing.assert_close(x, model_input, atol=atol, rtol=1e-5)
        x_sigma = oracle.step(fake_model(model_input, t_oracle), t_oracle, x_sigma).prev_sample
        x = sampler.step(fake_model(x, t), t, t_prev, x)
    torch.testing.assert_close(x, x_sigma, atol=atol, rtol=1e-5)
    torch.testing.assert_close(sample(fake_model, sampler, noise, num_steps), x, atol=0, rtol=0)


def test_euler_zero_snr_is_accurate_in_float32() -> None:
    """Float32 latents stay within 5e-6 of the same chain run in float64 (sigma_max = 4096)."""
    sampler, noise = EulerSampler(NoiseSchedule.hallo()), oracles.gaussian(0)
    x32, x64 = sampler.init_sample(noise, 999), sampler.init_sample(noise.double(), 999)
    for t, t_prev in zip(sampler.timesteps(6), sampler.prev_timesteps(6)):
        x32 = sampler.step(fake_model(x32, t), t, t_prev, x32)
        x64 = sampler.step(fake_model(x64.float(), t).double(), t, t_prev, x64)
        torch.testing.assert_close(x32.double(), x64, atol=5e-6, rtol=0)


SAMPLERS = {
    "ddim": DDIMSampler(NoiseSchedule.hallo()),
    "ddim-eta": DDIMSampler(NoiseSchedule.sd(), eta=0.5),
    "lcm": LCMSampler(NoiseSchedule.hallo()),
    "euler": EulerSampler(NoiseSchedule.sd()),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_per_frame_timesteps_all_equal_match_the_per_sample_path(name: str) -> None:
    sampler, x = SAMPLERS[name], oracles.gaussian(0)
    t, t_prev = torch.tensor([700, 300]), torch.tensor([500, -1])
    per_frame_t, per_frame_prev = t[:, None].expand(2, 3), t_prev[:, None].expand(2, 3)
    output = fake_model(x, t)
    expected = sampler.step(output, t, t_prev, x, generator=seeded(9))
    ours = sampler.step(output, per_frame_t, per_frame_prev, x, generator=seeded(9))
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_per_frame_timesteps_differing_give_each_frame_its_own_step(name: str) -> None:
    sampler, x = SAMPLERS[name], oracles.gaussian(0)
    t = torch.tensor([[999, 600, 200], [259, 759, 40]])
    t_prev = torch.tensor([[800, 400, -1], [-1, 499, 20]])
    output = fake_model(x, t)
    ours = sampler.step(output, t, t_prev, x, generator=seeded(9))
    for frame in range(3):
        per_sample = sampler.step(output, t[:, frame], t_prev[:, frame], x, generator=seeded(9))
        torch.testing.assert_close(ours[:, :, frame], per_sample[:, :, frame], atol=0, rtol=0)
    assert not torch.allclose(ours[:, :, 0], ours[:, :, 1], atol=1e-2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sample_loop_with_per_frame_timesteps_equals_per_sample(name: str) -> None:
    sampler, noise, shapes = SAMPLERS[name], oracles.gaussian(0), []

    def recording_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return fake_model(x, t)

    per_frame = sample(recording_model, sampler, noise, 4, generator=seeded(2), per_frame=True)
    per_sample = sample(recording_model, sampler, noise, 4, generator=seeded(2))
    torch.testing.assert_close(per_frame, per_sample, atol=0, rtol=0)
    assert shapes == [(2, 3)] * 4 + [(2,)] * 4


def test_half_precision_latents_keep_their_dtype() -> None:
    x = oracles.gaussian(0).half()
    for sampler in SAMPLERS.values():
        out = sampler.step(fake_model(x, torch.tensor(500)), 500, 250, x, generator=seeded(1))
        assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_make_sampler_by_name() -> None:
    schedule = NoiseSchedule.hallo()
    ddim = make_sampler("ddim", schedule, eta=0.3)
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 0.3
    assert isinstance(make_sampler("lcm", schedule), LCMSampler)
    assert isinstance(make_sampler("euler", schedule), Sampler)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("heun", schedule)
