"""The fixed pixel codec (VAE kind "pixel"): exact round trip, shapes, and a model directory without VAE weights."""

from __future__ import annotations

import torch

from engine.config import VAEConfig
from engine.models.checkpoint import load_model, random_model, save_model
from engine.models.vae import VAE
from engine.training.model_config import talking_head_config


def test_round_trip_is_exact_and_scaled():
    vae = VAE(VAEConfig(kind="pixel", config=dict(factor=4, in_channels=3), scaling_factor=2.5))
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = vae.encode(images)
    assert latents.shape == (2, 48, 16, 16)
    torch.testing.assert_close(latents[:, :, 0, 0].view(2, 3, 4, 4), images[:, :, :4, :4] * 2.5)
    torch.testing.assert_close(vae.decode(latents), images, atol=1e-6, rtol=0)
    assert sum(p.numel() for p in vae.parameters()) == 0


def test_talking_model_directory_round_trip(tmp_path):
    model = random_model(talking_head_config(), seed=0)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.vae.kind == "pixel" and loaded.config.scheduler["prediction_type"] == "sample"
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, loaded.backbone.state_dict()[key])
