"""The optional Hallo pieces on the tiny preset: audio modules, face-embedding tokens, region masks,
norm1 motion features, skipped plain-block motion modules; their defaults and the config round trip.

Numerical parity with Hallo's own modules is in tests/importers/test_parity.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from support import hallo_tiny, random_hallo, randomize_

from engine.config import ModelConfig, preset
from engine.models.blocks import UNetContext
from engine.models.checkpoint import load_model, save_model
from engine.models.hallo_audio import RegionAudioBlock, region_mask_levels
from engine.models.model import EmoteModel
from engine.pipeline import open_model, with_region_weights

B, F, LATENT = 1, 2, 8


@pytest.fixture(scope="module")
def model() -> EmoteModel:
    return random_hallo(std=0.05)


@pytest.fixture(scope="module")
def baseline(model: EmoteModel, inputs: dict) -> torch.Tensor:
    """The backbone's output with every optional input left out."""
    return _run(model, **inputs)


@pytest.fixture(scope="module")
def inputs(model: EmoteModel) -> dict:
    """Backbone inputs: a clip, audio tokens, reference bank and norm1 motion features."""
    gen = torch.Generator().manual_seed(0)
    cfg = model.config
    with torch.no_grad():
        reference = model.reference_net(torch.randn(B, 4, LATENT, LATENT, generator=gen))
        motion = model.reference_net(torch.randn(B * 2, 4, LATENT, LATENT, generator=gen))
    return dict(sample=torch.randn(B, 4, F, LATENT, LATENT, generator=gen), timestep=torch.tensor(300),
                audio_tokens=torch.randn(B, F, cfg.audio.projection.tokens, cfg.audio_modules.cross_attention_dim,
                                         generator=gen),
                reference_bank=reference.tokens, motion_features=motion.motion_features(B))


def _run(model: EmoteModel, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.backbone(kwargs.pop("sample"), kwargs.pop("timestep"), **kwargs)


def test_hallo_layout_has_audio_modules_with_input_widths(model):
    keys = model.backbone.state_dict()
    assert "down_blocks.0.audio_modules.0.transformer_blocks.0.attn2_2.to_k.weight" in keys
    assert "mid_block.audio_modules.0.transformer_blocks.0.zero_conv_lip.weight" in keys
    widths = model.config.unet.block_out_channels
    up = model.backbone.up_blocks[1].audio_modules[0].proj_in.weight
    assert tuple(up.shape[:2]) == (widths[0], widths[1])  # inner = the block's input width, not its own
    assert list(model.components()) == ["reference_net", "backbone", "face_locator", "image_proj", "audio_encoder",
                                        "vae"]


def test_no_face_embedding_means_the_zero_embedding_tokens(model, inputs, baseline):
    with torch.no_grad():
        zero_tokens = model.image_proj(torch.zeros(B, model.config.image_proj.embedding_dim))
        other = model.image_proj(torch.ones(B, model.config.image_proj.embedding_dim))
    torch.testing.assert_close(baseline, _run(model, **inputs, image_tokens=zero_tokens))
    assert not torch.allclose(baseline, _run(model, **inputs, image_tokens=other))
    with torch.no_grad():
        default = model.reference_net(inputs["sample"][:, :, 0])
        explicit = model.reference_net(inputs["sample"][:, :, 0], context=zero_tokens)
    torch.testing.assert_close(default.tokens[-1], explicit.tokens[-1])


def test_no_region_masks_means_weight_one_everywhere(model, inputs, baseline):
    levels = len(model.config.unet.block_out_channels)
    ones = region_mask_levels(torch.ones(B, 3, LATENT, LATENT), levels)
    torch.testing.assert_close(baseline, _run(model, **inputs, region_masks=ones))
    lips_only = region_mask_levels(torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(B, 3, LATENT, LATENT), levels)
    assert not torch.allclose(baseline, _run(model, **inputs, region_masks=lips_only))
    with pytest.raises(ValueError, match="levels"):
        _run(model, **inputs, region_masks=ones[:-1])


def test_audio_goes_to_the_audio_modules_not_attn2(model, inputs, baseline):
    silent = dict(inputs, audio_tokens=torch.zeros_like(inputs["audio_tokens"]))
    assert not torch.allclose(baseline, _run(model, **silent))
    module = model.backbone.down_blocks[0].audio_modules[0]
    x = torch.randn(F, module.norm.num_channels, 4, 4)
    assert torch.equal(module(x, UNetContext(temb=torch.zeros(1))), x)
    assert model.backbone.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.in_features == \
        model.config.unet.cross_attention_dim


def test_norm1_motion_features_are_the_bank_tokens_as_maps(model):
    with torch.no_grad():
        bank = model.reference_net(torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(1)))
    first = bank.features[0]
    n, c, h, w = first.shape
    torch.testing.assert_close(first, bank.tokens[0].transpose(1, 2).reshape(n, c, h, w))


def test_plain_block_motion_modules_are_built_but_skipped(model, inputs, baseline):
    changed = copy.deepcopy(model)
    plain = [b for b in [*changed.backbone.down_blocks, *changed.backbone.up_blocks] if not hasattr(b, "attentions")]
    assert plain and all(hasattr(b, "motion_modules") and not b.run_motion_modules for b in plain)
    assert changed.backbone.mid_block.run_motion_modules
    with torch.no_grad():
        for b in plain:
            for module in b.motion_modules:
                module.temporal_transformer.proj_out.weight.add_(1.0)
    torch.testing.assert_close(_run(changed, **inputs), baseline)


def test_one_plane_mask_feeds_a_three_plane_face_locator(model):
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:45, 15:50] = 1
    locator = randomize_(copy.deepcopy(model.face_locator), std=0.05, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(locator(mask), locator(mask.expand(1, 3, -1, -1)))


def test_region_mask_levels_area_average():
    masks = torch.zeros(2, 3, 8, 6)
    masks[:, 2, :4, :] = 1
    levels = region_mask_levels(masks, 3)
    assert [tuple(m.shape) for m in levels] == [(2, 3, 48), (2, 3, 12), (2, 3, 4)]
    assert levels[1][0, 2].view(4, 3)[:2].eq(1).all() and levels[1][0, 2].view(4, 3)[2:].eq(0).all()


def test_config_round_trip_and_saved_model(model, inputs, baseline, tmp_path):
    cfg = model.config
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again.audio_modules.region_weights, tuple)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.backbone.default_image_tokens, model.backbone.default_image_tokens)
    torch.testing.assert_close(_run(loaded, **inputs), baseline)


def test_image_proj_needs_audio_modules():
    cfg = hallo_tiny()
    cfg.audio_modules.enabled = False
    with pytest.raises(ValueError, match="image_proj needs audio_modules"):
        EmoteModel.on_meta(cfg)


def test_presets_have_none_of_it():
    for name in ("tiny", "sd15"):
        model = EmoteModel.on_meta(preset(name))
        assert not any(".audio_modules." in k for k in model.backbone.state_dict())
        assert "image_proj" not in model.components()
        assert all(b.run_motion_modules for b in [*model.backbone.down_blocks, *model.backbone.up_blocks])


def test_region_weights_are_options_defaulting_to_hallos(model, inputs, baseline, tmp_path):
    """Hallo's --pose_weight / --face_weight / --lip_weight: each multiplies its branch's projection
    (``zero_conv_*``, bias included) in every audio module; unset ones keep the model's (Hallo's 1)."""
    save_model(model, tmp_path / "m")
    default = open_model(str(tmp_path / "m"))
    assert default.config.audio_modules.region_weights == (1.0, 1.0, 1.0)
    torch.testing.assert_close(_run(default, **inputs), baseline)

    chosen = open_model(str(tmp_path / "m"), region_weights=(2.0, None, 0.5))
    blocks = [m for m in chosen.backbone.modules() if isinstance(m, RegionAudioBlock)]
    assert blocks and all(b.region_weights == (2.0, 1.0, 0.5) for b in blocks)
    assert chosen.config.audio_modules.region_weights == (2.0, 1.0, 0.5)
    scaled = copy.deepcopy(default)
    with torch.no_grad():
        for block in (m for m in scaled.backbone.modules() if isinstance(m, RegionAudioBlock)):
            for conv, factor in ((block.zero_conv_full, 2.0), (block.zero_conv_lip, 0.5)):
                conv.weight.mul_(factor)
                conv.bias.mul_(factor)
    got = _run(chosen, **inputs)
    torch.testing.assert_close(got, _run(scaled, **inputs))
    assert not torch.allclose(got, baseline)


def test_region_weights_need_audio_modules():
    with pytest.raises(ValueError, match="audio modules"):
        open_model("tiny", region_weights=(None, None, 2.0))
    assert with_region_weights(preset("tiny"), (None, None, None)) == preset("tiny")


def test_cli_passes_region_weights(monkeypatch, tmp_path):
    """``emote generate`` / ``emote stream``: --pose-weight / --face-weight / --lip-weight reach the request."""
    import engine.pipeline as pipeline
    from engine.cli import main

    class Captured(Exception):
        pass

    def capture(request, *args, **kwargs):
        raise Captured(request.region_weights)

    monkeypatch.setattr(pipeline, "generate", capture)
    monkeypatch.setattr(pipeline, "stream", capture)
    common = ["--model", "tiny", "--image", "p.png", "--out", str(tmp_path / "o.mp4"), "--quiet"]
    with pytest.raises(Captured) as generated:
        main(["generate", *common, "--audio", "a.wav", "--face-weight", "1.5"])
    assert generated.value.args[0] == (None, 1.5, None)
    with pytest.raises(Captured) as streamed:
        main(["stream", *common, "--stdin-pcm", "16000", "--pose-weight", "0.5", "--lip-weight", "2"])
    assert streamed.value.args[0] == (0.5, None, 2.0)
