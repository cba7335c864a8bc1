"""Model directories, checked loading, SD1.5 weights into both UNets, untrusted files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from diffusers import UNet2DConditionModel
from support import randomize_, tiny_random_model

from engine.config import ModelConfig, preset
from engine.models.checkpoint import (CheckpointError, load_checked, load_model, load_sd15_unet, random_model,
                                      read_state_dict, resolve_config, save_model)
from engine.models.model import EmoteModel


@pytest.fixture(scope="module")
def tiny() -> EmoteModel:
    return tiny_random_model(seed=0)


def test_model_directory_round_trip(tiny, tmp_path):
    target = tmp_path / "model"
    save_model(tiny, target)
    files = sorted(p.name for p in target.iterdir())
    assert files == sorted(["config.json"] + [f"{name}.safetensors" for name in tiny.components()])
    loaded = load_model(target)
    assert loaded.config == tiny.config
    for name, module in tiny.components().items():
        theirs = loaded.components()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, theirs[key]), f"{name}.{key} changed in the round trip"
    assert not list(tmp_path.glob(".model.*")), "no temporary directory may be left behind"


def test_loaded_model_gives_the_same_output(tiny, tmp_path):
    save_model(tiny, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    x = torch.randn(1, 4, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.backbone(x, torch.tensor([7])), tiny.backbone(x, torch.tensor([7])))


def test_config_json_may_name_a_preset_and_override(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"preset": "tiny", "clip_frames": 6,
                                                      "unet": {"num_attention_heads": 2}}))
    cfg = resolve_config(tmp_path)
    assert cfg.clip_frames == 6 and cfg.unet.num_attention_heads == 2
    assert cfg.unet.block_out_channels == preset("tiny").unet.block_out_channels
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_config_field_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"preset": "tiny", "unet": {"block_widths": [1]}})


def test_mismatch_error_names_first_missing_and_unexpected_keys(tiny):
    state = dict(tiny.face_locator.state_dict())
    state.pop("conv_in.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(first: conv_in.weight\).*"
                                              r"1 unexpected keys \(first: extra.weight\)"):
        load_checked(tiny.face_locator, state, "face_locator.safetensors")


def test_shape_mismatch_is_named(tiny):
    state = dict(tiny.face_locator.state_dict())
    state["conv_out.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(first: conv_out.bias \[3\]"):
        load_checked(tiny.face_locator, state, "x")


def test_corrupt_and_missing_files(tmp_path, tiny):
    save_model(tiny, tmp_path / "m")
    (tmp_path / "m" / "backbone.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="backbone.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "vae.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "m" / "vae.safetensors")
    with pytest.raises(CheckpointError, match="neither a model directory"):
        resolve_config(tmp_path / "nowhere")


class _Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "net.pth"
    path.write_bytes(pickle.dumps({"w": _Payload()}, protocol=2))
    with pytest.raises(CheckpointError, match="net.pth: refused"):
        read_state_dict(path)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    assert torch.equal(read_state_dict(tmp_path / "ok.pth")["w"], torch.ones(2))


def _sd15_shaped_diffusers_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    u = cfg.unet
    return UNet2DConditionModel(
        block_out_channels=u.block_out_channels, down_block_types=u.down_block_types, up_block_types=u.up_block_types,
        layers_per_block=u.layers_per_block, attention_head_dim=u.num_attention_heads,
        cross_attention_dim=u.cross_attention_dim, norm_num_groups=u.norm_num_groups, sample_size=16)


@pytest.mark.parametrize("reference_cross_attention", [True, False])
def test_diffusers_unet_weights_load_into_both_unets(tmp_path, reference_cross_attention):
    cfg = preset("tiny")
    cfg.reference_net.cross_attention = reference_cross_attention
    unet = randomize_(_sd15_shaped_diffusers_unet(cfg), seed=7)
    unet.save_pretrained(tmp_path / "unet")
    model = random_model(cfg)
    load_sd15_unet(model, tmp_path)
    sd = unet.state_dict()
    for name in ("reference_net", "backbone"):
        module_state = getattr(model, name).state_dict()
        shared = [k for k in module_state if k in sd]
        assert shared and all(torch.equal(module_state[k], sd[k]) for k in shared)
    backbone_only = set(model.backbone.state_dict()) - set(sd)
    assert backbone_only and all(".motion_modules." in k for k in backbone_only)


def test_wrong_unet_is_refused_with_named_key(tmp_path):
    cfg = preset("tiny")
    other = preset("tiny")
    other.unet.cross_attention_dim = 48
    _sd15_shaped_diffusers_unet(other).save_pretrained(tmp_path / "unet")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(first: .*attn2.to_k.weight"):
        load_sd15_unet(random_model(cfg), tmp_path)
