"""The key-map data model, and the tables of both systems as data."""

from __future__ import annotations

import re

import pytest
import torch

from engine.importers import echomimic, hallo
from engine.importers.keymap import RESHAPES, Rule, apply_keymap, match, missing_keys
from engine.importers.run import SYSTEMS
from engine.importers.spec import VAE_KEYMAP

EXPECTED = {"net": {"a.weight": (4, 3), "a.bias": (4,), "attn.to_q.weight": (2, 2)}}


def test_first_matching_rule_wins_and_templates_rename():
    keymap = (Rule(r"skip\..+", None, reason="not ours"), Rule(r"model\.(.+)", "net", r"\1"),
              Rule(r"(.+)", "net", r"\1"))
    state = {"model.a.weight": torch.ones(4, 3), "a.bias": torch.ones(4), "skip.x": torch.ones(1)}
    result = apply_keymap(keymap, state, EXPECTED)
    assert result.mapped == {"model.a.weight": ("net", "a.weight"), "a.bias": ("net", "a.bias")}
    assert result.dropped == {"skip.x": "not ours"}
    assert result.rule_counts[keymap[1]] == 1 and result.rule_counts[keymap[2]] == 1
    assert missing_keys(result, EXPECTED) == {"net": ["attn.to_q.weight"]}


def test_unknown_keys_are_ones_no_rule_places():
    keymap = (Rule(r"model\.(.+)", "net", r"\1"),)
    result = apply_keymap(keymap, {"other.w": torch.ones(1), "model.nope": torch.ones(1)}, EXPECTED)
    assert result.unknown == ["other.w", "model.nope"]


def test_shape_mismatch_is_recorded_not_placed():
    result = apply_keymap((Rule(r"(.+)", "net", r"\1"),), {"a.bias": torch.ones(5)}, EXPECTED)
    assert result.mismatched == {"a.bias": ((5,), (4,))} and not result.mapped


def test_named_reshape_applies_only_when_shapes_differ():
    rule = Rule(r"(.+)", "net", r"\1", reshape="conv1x1_to_linear")
    conv = torch.arange(4.0).reshape(2, 2, 1, 1)
    result = apply_keymap((rule,), {"attn.to_q.weight": conv}, EXPECTED)
    assert result.reshaped == {"attn.to_q.weight": "conv1x1_to_linear"}
    torch.testing.assert_close(result.tensors["net"]["attn.to_q.weight"], conv.reshape(2, 2))
    with pytest.raises(ValueError, match="unknown reshape"):
        Rule(r"x", "net", reshape="transpose")
    assert set(RESHAPES) == {"conv1x1_to_linear"}


def test_old_vae_attention_names_are_renamed_and_squeezed():
    state = {"encoder.mid_block.attentions.0.query.weight": torch.ones(8, 8, 1, 1),
             "encoder.mid_block.attentions.0.proj_attn.bias": torch.ones(8),
             "decoder.conv_in.weight": torch.ones(8, 4, 3, 3)}
    expected = {"vae": {"encoder.mid_block.attentions.0.to_q.weight": (8, 8),
                        "encoder.mid_block.attentions.0.to_out.0.bias": (8,), "decoder.conv_in.weight": (8, 4, 3, 3)}}
    result = apply_keymap(VAE_KEYMAP, state, expected)
    assert not result.unknown and not result.mismatched
    assert set(result.tensors["vae"]) == set(expected["vae"])
    assert list(result.reshaped.values()) == ["conv1x1_to_linear"]


@pytest.mark.parametrize("key, component, ours", [
    ("denoising_unet.down_blocks.0.audio_modules.1.transformer_blocks.0.attn2_2.to_k.weight", "backbone",
     "down_blocks.0.audio_modules.1.transformer_blocks.0.attn2_2.to_k.weight"),
    ("audioproj.proj1.weight", "audio_encoder", "audioproj.proj1.weight"),
    ("imageproj.norm.bias", "image_proj", "norm.bias"),
    ("reference_unet.conv_in.weight", "reference_net", "conv_in.weight"),
])
def test_hallo_net_table(key, component, ours):
    rule, found = match(hallo.NET_KEYMAP, key)
    assert (rule.component, found.expand(rule.target)) == (component, ours)


@pytest.mark.parametrize("key, ours", [
    ("wav2vec2.encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("wav2vec2.encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("wav2vec2.feature_extractor.conv_layers.0.conv.weight", "feature_extractor.conv_layers.0.conv.weight"),
    ("masked_spec_embed", "masked_spec_embed"),
])
def test_wav2vec2_table(key, ours):
    rule, found = match(hallo.WAV2VEC_KEYMAP, key)
    assert found.expand(rule.target) == ours
    rule, _ = match(hallo.WAV2VEC_KEYMAP, "lm_head.weight")
    assert rule.drops


@pytest.mark.parametrize("key, ours", [
    ("encoder.positional_embedding", "encoder.embed_positions.weight"),
    ("encoder.blocks.3.attn.query.bias", "encoder.layers.3.self_attn.q_proj.bias"),
    ("encoder.blocks.0.attn.key.weight", "encoder.layers.0.self_attn.k_proj.weight"),
    ("encoder.blocks.1.attn.out.weight", "encoder.layers.1.self_attn.out_proj.weight"),
    ("encoder.blocks.2.attn_ln.weight", "encoder.layers.2.self_attn_layer_norm.weight"),
    ("encoder.blocks.2.mlp.0.bias", "encoder.layers.2.fc1.bias"),
    ("encoder.blocks.2.mlp.2.weight", "encoder.layers.2.fc2.weight"),
    ("encoder.blocks.2.mlp_ln.bias", "encoder.layers.2.final_layer_norm.bias"),
    ("encoder.ln_post.weight", "encoder.layer_norm.weight"),
])
def test_whisper_rename_table(key, ours):
    rule, found = match(echomimic.WHISPER_KEYMAP, key)
    assert rule.component == "audio_encoder" and found.expand(rule.target) == ours
    rule, _ = match(echomimic.WHISPER_KEYMAP, "decoder.blocks.0.cross_attn.key.weight")
    assert rule.drops and "decoder" in rule.reason


def test_whisper_key_bias_does_not_exist_in_either_layout():
    """OpenAI's key projection has no bias, like transformers' k_proj: the table has no row for one."""
    assert match(echomimic.WHISPER_KEYMAP, "encoder.blocks.0.attn.key.bias") is None


def test_every_table_row_is_valid_and_drops_say_why():
    for spec in SYSTEMS.values():
        for sources in spec.variants.values():
            for source in sources:
                for rule in source.keymap:
                    re.compile(rule.pattern)
                    assert rule.reason, (spec.name, source.role, rule.pattern)
                    if not rule.drops:
                        assert rule.component in {"reference_net", "backbone", "face_locator", "image_proj",
                                                  "audio_encoder", "vae"}


def test_echomimic_acc_variant_reads_the_acc_files():
    files = {s.role: s.candidates for s in echomimic.SYSTEM.variants["acc"]}
    assert files["denoising_unet"] == ("denoising_unet_acc.pth",)
    assert files["motion_module"] == ("motion_module_acc.pth",)
    assert files["reference_unet"] == ("reference_unet.pth",)
