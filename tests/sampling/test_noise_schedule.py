"""NoiseSchedule against diffusers' DDIMScheduler: timesteps, alpha_bar, forward noising, conversions."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from engine.sampling import NoiseSchedule, expand_as_latents

from sampling import diffusers_oracles as oracles

PRESETS = {"sd": NoiseSchedule.sd(), "hallo": NoiseSchedule.hallo()}


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_timesteps_match_diffusers_for_every_step_count(preset: str, spacing: str) -> None:
    schedule = dataclasses.replace(PRESETS[preset], timestep_spacing=spacing)
    oracle = oracles.ddim(schedule)
    for num_steps in range(1, 51):  # includes 1, 4, 6, 25, 40, 50
        oracle.set_timesteps(num_steps)
        ours = schedule.timesteps(num_steps)
        assert ours.dtype == torch.long
        assert ours.tolist() == oracle.timesteps.tolist(), num_steps


def test_hallo_timesteps_are_the_documented_ones() -> None:
    hallo = NoiseSchedule.hallo()
    assert hallo.timesteps(40).tolist() == list(range(999, 0, -25))
    assert hallo.timesteps(30).tolist()[:3] == [999, 966, 932] and hallo.timesteps(30).tolist()[-1] == 32
    assert hallo.timesteps(6).tolist() == [999, 832, 666, 499, 332, 166]
    assert NoiseSchedule.sd().timesteps(50).tolist() == list(range(981, 0, -20))


def test_timesteps_reject_bad_step_counts() -> None:
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule.hallo().timesteps(0)
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule.hallo().timesteps(1001)


@pytest.mark.parametrize(
    "schedule",
    [
        NoiseSchedule.sd(),
        NoiseSchedule.hallo(),
        dataclasses.replace(NoiseSchedule.hallo(), rescale_betas_zero_snr=False, set_alpha_to_one=False),
    ],
    ids=["sd", "hallo", "linear-no-zero-snr"],
)
def test_alphas_cumprod_match_diffusers(schedule: NoiseSchedule) -> None:
    oracle = oracles.ddim(schedule)
    torch.testing.assert_close(schedule.alphas_cumprod, oracle.alphas_cumprod.double(), atol=1e-6, rtol=0)
    assert schedule.final_alpha_cumprod == pytest.approx(float(oracle.final_alpha_cumprod), abs=1e-6)


def test_zero_snr_rescale_ends_at_zero_and_keeps_the_start() -> None:
    hallo = NoiseSchedule.hallo()
    plain = dataclasses.replace(hallo, rescale_betas_zero_snr=False)
    assert hallo.alphas_cumprod[-1] == 0
    assert 0 < hallo.alphas_cumprod[-2] < 1e-6
    assert hallo.alphas_cumprod[0] == pytest.approx(float(plain.alphas_cumprod[0]), abs=1e-12)
    assert plain.alphas_cumprod[-1] > 1e-3


def test_alpha_cumprod_at_negative_timestep_is_the_final_alpha() -> None:
    sd = NoiseSchedule.sd()
    values = sd.alpha_cumprod_at(torch.tensor([[-1, 0], [999, -1]]))
    assert values.shape == (2, 2)
    assert values[0, 0] == sd.alphas_cumprod[0] and values[1, 1] == sd.alphas_cumprod[0]  # set_alpha_to_one off
    assert NoiseSchedule.hallo().alpha_cumprod_at(-1) == 1.0
    with pytest.raises(ValueError, match="< 1000"):
        sd.alpha_cumprod_at(1000)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_add_noise_per_sample_matches_diffusers(preset: str) -> None:
    schedule = PRESETS[preset]
    x0, noise = oracles.gaussian(0), oracles.gaussian(1)
    t = torch.tensor([999, 37])
    expected = oracles.ddim(schedule).add_noise(x0, noise, t)
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), expected, atol=1e-5, rtol=1e-5)


def test_add_noise_per_frame_uses_each_frames_timestep() -> None:
    schedule = NoiseSchedule.hallo()
    x0, noise = oracles.gaussian(0), oracles.gaussian(1)
    t = torch.tensor([[999, 500, 0], [10, 10, 700]])
    noisy = schedule.add_noise(x0, noise, t)
    for frame in range(3):
        per_sample = schedule.add_noise(x0, noise, t[:, frame])
        torch.testing.assert_close(noisy[:, :, frame], per_sample[:, :, frame], atol=0, rtol=0)
    assert not torch.allclose(noisy[:, :, 0], noisy[:, :, 1])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_model_output_round_trips_through_x0_and_eps(prediction_type: str) -> None:
    schedule = dataclasses.replace(NoiseSchedule.sd(), prediction_type=prediction_type)
    x0, eps = oracles.gaussian(0), oracles.gaussian(1)
    t = torch.tensor([[900, 450, 20], [1, 999, 300]])
    x_t = schedule.add_noise(x0, eps, t)
    output = schedule.from_x0_eps(x0, eps, t)
    x0_back, eps_back = schedule.to_x0_eps(output, x_t, t)
    torch.testing.assert_close(x0_back, x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(eps_back, eps, atol=2e-5, rtol=0)


def test_v_target_matches_diffusers_velocity() -> None:
    schedule = NoiseSchedule.hallo()
    x0, eps = oracles.gaussian(0), oracles.gaussian(1)
    t = torch.tensor([999, 123])
    expected = oracles.ddim(schedule).get_velocity(x0, eps, t)
    torch.testing.assert_close(schedule.from_x0_eps(x0, eps, t), expected, atol=1e-5, rtol=1e-5)


def test_dict_round_trip_through_json() -> None:
    for schedule in PRESETS.values():
        assert NoiseSchedule.from_dict(json.loads(json.dumps(schedule.to_dict()))) == schedule
    with pytest.raises(ValueError, match="clip_sample"):
        NoiseSchedule.from_dict(NoiseSchedule.sd().to_dict() | {"clip_sample": False})


@pytest.mark.parametrize(
    "change",
    [{"beta_schedule": "cosine"}, {"prediction_type": "flow"}, {"timestep_spacing": "karras"}, {"beta_end": 2.0}],
)
def test_invalid_settings_are_rejected(change: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(NoiseSchedule.sd(), **change)


def test_expand_as_latents_shapes() -> None:
    latents = torch.zeros(2, 4, 3, 6, 5)
    assert expand_as_latents(torch.tensor([1, 2]), latents).shape == (2, 1, 1, 1, 1)
    assert expand_as_latents(torch.ones(2, 3), latents).shape == (2, 1, 3, 1, 1)
    assert expand_as_latents(torch.tensor([1, 2]), torch.zeros(2, 4, 6, 5)).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="batch"):
        expand_as_latents(torch.tensor([1, 2, 3]), latents)
    with pytest.raises(ValueError, match="per-frame"):
        expand_as_latents(torch.ones(2, 4), latents)
