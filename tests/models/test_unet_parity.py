"""Our ReferenceNet and backbone against diffusers' UNet2DConditionModel on the same weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock as DiffusersBlock
from diffusers.models.attention_processor import Attention as DiffusersAttention
from support import randomize_

from engine.config import ModelConfig, TemporalConfig, UNetConfig
from engine.models.backbone import Backbone
from engine.models.blocks import Attention
from engine.models.reference_net import ReferenceNet
from engine.models.temporal import TemporalTransformerBlock

SMALL_SD15 = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2, attention_head_dim=4, cross_attention_dim=24, norm_num_groups=8, sample_size=16)


@pytest.fixture(scope="module")
def diffusers_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return randomize_(UNet2DConditionModel(**SMALL_SD15)).eval()


def _config(unet: UNet2DConditionModel, **overrides) -> ModelConfig:
    cfg = ModelConfig(unet=UNetConfig.from_diffusers(dict(unet.config)), temporal=TemporalConfig(num_attention_heads=4))
    cfg.speed.dim, cfg.speed.hidden_dim = 16, 16
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_backbone_matches_diffusers_unet(diffusers_unet):
    backbone = Backbone(_config(diffusers_unet)).eval()
    missing, unexpected = backbone.load_state_dict(diffusers_unet.state_dict(), strict=False)
    assert unexpected == []
    assert all(".motion_modules." in k for k in missing)
    b, f, h, w = 2, 3, 16, 12
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(b, 4, f, h, w, generator=gen)
    audio = torch.randn(b, f, 5, 24, generator=gen)
    t = torch.tensor([10, 730])
    with torch.no_grad():
        ours = backbone(sample, t, audio_tokens=audio)
        theirs = diffusers_unet(sample.permute(0, 2, 1, 3, 4).reshape(b * f, 4, h, w), t.repeat_interleave(f),
                                encoder_hidden_states=audio.flatten(0, 1)).sample
    ours = ours.permute(0, 2, 1, 3, 4).reshape(b * f, 4, h, w)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_reference_net_bank_is_diffusers_norm1_output(diffusers_unet):
    refnet = ReferenceNet(_config(diffusers_unet)).eval()
    missing, unexpected = refnet.load_state_dict(diffusers_unet.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["conv_norm_out.bias", "conv_norm_out.weight",
                                                    "conv_out.bias", "conv_out.weight"]
    captured = []
    hooks = [m.norm1.register_forward_hook(lambda mod, inp, out: captured.append(out))
             for m in diffusers_unet.modules() if isinstance(m, DiffusersBlock)]
    gen = torch.Generator().manual_seed(2)
    latents, context = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 3, 24, generator=gen)
    with torch.no_grad():
        bank = refnet(latents, 0, context=context)
        diffusers_unet(latents, torch.zeros(2), encoder_hidden_states=context)
    for hook in hooks:
        hook.remove()
    assert len(bank.tokens) == len(captured) == refnet.num_bank_layers
    for ours, theirs in zip(bank.tokens, captured):
        assert (ours - theirs).abs().max().item() <= 1e-5
    assert len(bank.features) == refnet.num_motion_locations


def test_reference_attention_equals_attention_over_concatenated_tokens():
    torch.manual_seed(3)
    ours = randomize_(Attention(32, 4, 8))
    theirs = DiffusersAttention(32, heads=4, dim_head=8, out_bias=True)
    theirs.load_state_dict(ours.state_dict())
    frames = 3
    x, bank = torch.randn(2 * frames, 10, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        got = ours(x, reference=bank)
        keys = torch.cat([x, bank.repeat_interleave(frames, dim=0)], dim=1)
        want = theirs(x, encoder_hidden_states=keys)
    assert (got - want).abs().max().item() <= 1e-5


def test_temporal_block_matches_diffusers_block_with_sinusoidal_positions():
    """AnimateDiff's block = diffusers' BasicTransformerBlock with two self-attentions and positions."""
    dim, heads, frames, tokens = 32, 4, 7, 6
    ours = randomize_(TemporalTransformerBlock(dim, heads, max_frames=24, speed_dim=None), seed=4).eval()
    theirs = DiffusersBlock(dim, heads, dim // heads, double_self_attention=True, positional_embeddings="sinusoidal",
                            num_positional_embeddings=24).eval()
    renamed = {}
    for key, value in ours.state_dict().items():
        key = key.replace("attention_blocks.0.", "attn1.").replace("attention_blocks.1.", "attn2.")
        key = key.replace("norms.0.", "norm1.").replace("norms.1.", "norm2.").replace("ff_norm.", "norm3.")
        if "pos_encoder" not in key:
            renamed[key] = value
    theirs.load_state_dict(renamed, strict=False)
    x = torch.randn(2 * frames, tokens, dim)
    with torch.no_grad():
        got = ours(x, frames, None)
        seq = x.view(2, frames, tokens, dim).permute(0, 2, 1, 3).reshape(2 * tokens, frames, dim)
        want = theirs(seq).view(2, tokens, frames, dim).permute(0, 2, 1, 3).reshape(2 * frames, tokens, dim)
    assert (got - want).abs().max().item() <= 1e-5
