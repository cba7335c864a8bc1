"""Imported tiny checkpoints against Hallo's and EchoMimic's own modules (fixtures made by their code).

``fixtures/make_fixtures.py`` ran their networks at a reduced width on stand-in weights and saved the
inputs and outputs; here the same weights go through ``emote import`` and our networks must give the
same numbers (fp32, max abs diff <= 1e-4): face locator, image / audio projection, the audio
encoders' hidden states, the ReferenceNet's bank, and one backbone step (EchoMimic's with its
guidance batch: unconditional and conditional).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synth import uniform
from tiny_sources import ECHOMIMIC, HALLO, meta, parity

from engine.models.checkpoint import load_model
from engine.models.model import EmoteModel

TOLERANCE = 1e-4


def _max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, (tuple(ours.shape), tuple(theirs.shape))
    return (ours.float() - theirs.float()).abs().max().item()


def _bank_names(model: EmoteModel) -> list[str]:
    """Transformer-block names of the ReferenceNet in bank order (forward order)."""
    blocks = [(m.bank_index, name) for name, m in model.reference_net.named_modules() if hasattr(m, "bank_index")]
    return [name for _, name in sorted(blocks)]


@pytest.fixture(scope="module")
def hallo(hallo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> EmoteModel:
    """The imported Hallo model with the fixture's pose / face / lip weights set in its config."""
    directory = tmp_path_factory.mktemp("hallo_weights") / "model"
    directory.mkdir()
    for path in hallo_model.iterdir():
        (directory / path.name).symlink_to(path)
    config = json.loads((hallo_model / "config.json").read_text())
    config["audio_modules"]["region_weights"] = meta(HALLO)["region_weights"]
    (directory / "config.json").unlink()
    (directory / "config.json").write_text(json.dumps(config))
    return load_model(directory)


@pytest.fixture(scope="module")
def echomimic(echomimic_model: Path) -> EmoteModel:
    return load_model(echomimic_model)


@torch.no_grad()
def test_hallo_face_locator_and_projections(hallo):
    p = parity(HALLO)
    assert _max_diff(hallo.face_locator(p["face_mask"]), p["face_features"]) <= TOLERANCE
    assert _max_diff(hallo.image_proj(p["face_emb"]), p["image_tokens"]) <= TOLERANCE
    assert _max_diff(hallo.audio_encoder.audioproj(p["audio_windows"]), p["audio_tokens"]) <= TOLERANCE


@torch.no_grad()
def test_hallo_wav2vec2_hidden_states(hallo):
    p = parity(HALLO)
    hallo.audio_encoder.config.normalize = False
    try:
        ours = hallo.audio_encoder.features(p["input_values"][0], num_frames=meta(HALLO)["audio_frames"])
    finally:
        hallo.audio_encoder.config.normalize = True
    assert _max_diff(ours, p["wav2vec_features"]) <= TOLERANCE


@torch.no_grad()
def test_hallo_reference_net_bank(hallo):
    p = parity(HALLO)
    latents = p["ref_latents"]
    bank = hallo.reference_net(latents, context=p["image_tokens"].expand(latents.shape[0], -1, -1))
    names = _bank_names(hallo)
    assert len(names) == len(bank.tokens) == sum(k.startswith("bank.") for k in p)
    for name, tokens in zip(names, bank.tokens):
        assert _max_diff(tokens, p[f"bank.{name}"]) <= TOLERANCE, name


@torch.no_grad()
def test_hallo_backbone_step(hallo):
    """Reference frame + 2 motion frames through the ReferenceNet, then one step of the backbone with
    face tokens, audio modules, region masks, face-locator features, and the 8x8 motion modules skipped."""
    p, m = parity(HALLO), meta(HALLO)
    context = p["image_tokens"]
    reference = hallo.reference_net(p["ref_latents"][:1], context=context)
    motion = hallo.reference_net(p["ref_latents"][1:], context=context.expand(m["motion_frames"], -1, -1))
    masks = [torch.stack([p[f"mask.{region}.{level}"][0] for region in ("full", "face", "lip")])[None]
             for level in range(4)]
    out = hallo.backbone(p["noisy"], torch.tensor(m["timestep"]), audio_tokens=p["audio_tokens"],
                         reference_bank=reference.tokens, motion_features=motion.motion_features(1),
                         face_features=p["face_features"][:, None], image_tokens=context, region_masks=masks)
    assert _max_diff(out, p["output"]) <= TOLERANCE


@torch.no_grad()
def test_hallo_skipped_motion_modules_matter(hallo):
    """The parity above depends on skipping the 8x8 motion modules (their weights are not zero)."""
    plain = [b for b in [*hallo.backbone.down_blocks, *hallo.backbone.up_blocks] if not hasattr(b, "attentions")]
    assert plain and all(hasattr(b, "motion_modules") and not b.run_motion_modules for b in plain)
    weights = plain[0].motion_modules[0].temporal_transformer.proj_out.weight
    assert weights.abs().max() > 0


@torch.no_grad()
def test_echomimic_face_locator_and_reference_net(echomimic):
    p = parity(ECHOMIMIC)
    assert _max_diff(echomimic.face_locator(p["face_mask"]), p["face_features"]) <= TOLERANCE
    bank = echomimic.reference_net(p["ref_latents"])
    for name, tokens in zip(_bank_names(echomimic), bank.tokens):
        assert _max_diff(tokens, p[f"bank.{name}"]) <= TOLERANCE, name


@torch.no_grad()
def test_echomimic_backbone_step_with_guidance_batch(echomimic):
    """Batch [unconditional, conditional] as EchoMimic's CFG runs it: no reference, zero audio and zero
    face features for the first; attn2 over whisper tokens scaled by 3."""
    p, m = parity(ECHOMIMIC), meta(ECHOMIMIC)
    bank = echomimic.reference_net(p["ref_latents"])
    face = p["face_features"][:, None]
    out = echomimic.backbone(p["noisy"].expand(2, -1, -1, -1, -1), torch.tensor(m["timestep"]),
                             audio_tokens=torch.cat([torch.zeros_like(p["audio_tokens"]), p["audio_tokens"]]),
                             reference_bank=[t.expand(2, -1, -1) for t in bank.tokens],
                             face_features=torch.cat([torch.zeros_like(face), face]),
                             reference_keep=torch.tensor([False, True]))
    assert _max_diff(out, p["output"]) <= TOLERANCE


@torch.no_grad()
def test_echomimic_whisper_levels_through_the_rename_table(echomimic):
    p, m = parity(ECHOMIMIC), meta(ECHOMIMIC)
    mel = uniform("input.mel", (1, 80, 3000)).float()
    levels = echomimic.audio_encoder.whisper_mel_levels(mel)[0, : m["whisper_steps"]]
    assert _max_diff(levels, p["whisper_levels"]) <= TOLERANCE
